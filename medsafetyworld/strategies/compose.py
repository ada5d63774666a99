"""Composition: `a+b+c` applies a, then b, then c to the stream (SPEC 4).

Each step sees the previous step's output, so order matters: in `rewrite+tag` every unsafe
document is rewritten before `tag` sees it, and `tag` has nothing left to tag; give the rewriting
steps a `share` (the fraction of unsafe documents each takes) to split the unsafe documents
between them, as the `safety_pretraining` recipe does.
"""

from __future__ import annotations

from collections.abc import Iterator

from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies.base import Strategy


class Chain(Strategy):
    def __init__(self, steps: list[Strategy], recipe: str | None = None):
        if not steps:
            raise ConfigError("an empty strategy chain")
        self.steps, self.recipe = list(steps), recipe
        self.name = recipe or "+".join(s.label for s in self.steps)

    def setup(self, world, splits=None, budget=None):
        super().setup(world, splits, budget)
        for step in self.steps:
            step.setup(world, splits, budget)
        return self

    def __call__(self, docs, rng) -> Iterator:
        for step in self.steps:
            docs = step(docs, rng)
        yield from docs

    def apply(self, doc, rng):
        yield from self([doc], rng)

    def params(self):
        return {"chain": [[s.name, s.params()] for s in self.steps]}

    def schedule(self):
        found = [schedule for s in self.steps if (schedule := s.schedule()) is not None]
        if len(found) > 1:
            raise ConfigError(f"{self.label}: at most one step of a chain may schedule its data")
        return found[0] if found else None

    @property
    def label(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Chain({self.name!r})"
