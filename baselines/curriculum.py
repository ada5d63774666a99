"""`curriculum(start=f, inner=S)`: safe-only (filtered) data for the first fraction f of the token
budget, strategy S after (SPEC 4).

The corpus is written in order: documents without an unsafe segment, marked `meta["phase"] =
"safe"`, until they fill f of the token budget, then S's output, marked "inner". The manifest
records where each phase starts in the token stream and the schedule [("safe", f), ("inner", 1)],
and the trainer samples only phase "safe" windows during the first fraction f of its steps, so no
unsafe token is seen before then. Post-training data gets S's format.
"""

from __future__ import annotations

from medsafetyworld.corpus.document import Document
from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies import Strategy, get_strategy, register_strategy

SAFE_PHASE, INNER_PHASE = "safe", "inner"


def in_phase(doc: Document, phase: str) -> Document:
    return Document(doc.id, doc.kind, doc.text, doc.segments, {**doc.meta, "phase": phase})


@register_strategy("curriculum")
class Curriculum(Strategy):
    required_params = ("inner",)  # a spec names the strategy after the safe phase; raw is not assumed

    def __init__(self, start: float = 0.0, inner: str | Strategy = "raw"):
        if not isinstance(start, (int, float)) or not 0.0 <= start <= 1.0:
            raise ConfigError(f"curriculum: start={start!r} is not a fraction of the budget; use a value in [0, 1]")
        self.start = float(start)
        self.inner = get_strategy(inner) if isinstance(inner, str) else inner
        if self.inner.schedule() is not None:
            raise ConfigError(f"curriculum: inner={self.inner.label} schedules its own data; curricula do not nest")

    def setup(self, world, splits=None, budget=None):
        super().setup(world, splits, budget)
        self.inner.setup(world, splits, budget)
        return self

    def params(self):
        return {"start": self.start, "inner": [self.inner.name, self.inner.params()]}

    def spec_params(self):
        return {"start": self.start, "inner": self.inner}

    def schedule(self):
        return [(SAFE_PHASE, self.start), (INNER_PHASE, 1.0)]

    def apply(self, doc, rng):
        """One document in S's format (post-training data has no phases)."""
        yield from self.inner.apply(doc, rng)

    def __call__(self, docs, rng):
        if self.budget is None:  # not rendered into a corpus (e.g. the SFT set): S's format only
            yield from self.inner(docs, rng)
            return
        # global positions: a block of a blocked corpus has only its part of the safe phase
        docs, need, seen = iter(docs), self.budget.until(self.start * self.budget.tokens), 0
        while seen < need:
            doc = next(docs, None)
            if doc is None:
                return
            if not doc.unsafe:
                seen += self.budget.count(doc.text)
                yield in_phase(doc, SAFE_PHASE)
        for doc in self.inner(docs, rng):
            yield in_phase(doc, INNER_PHASE)
