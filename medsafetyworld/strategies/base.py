"""The strategy step: takes a stream of documents, yields a stream of documents (datatrove style)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from medsafetyworld.corpus.document import Document
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits


class Strategy:
    """An intervention. Subclasses set `name` and override `apply` (one document in, zero or more
    out). Strategies are pure functions of (documents, labels, rng, params): the rng is the only
    source of randomness.

    `apply` is also used on the SFT set, so a strategy that changes the format of text (reflections,
    tags, flags) gives its model the same format in post-training (SPEC 5).
    """

    name: ClassVar[str] = ""
    # Parameters a spec must give although the class has a default for them (the registry refuses
    # `curriculum(start=0.5)`: no inner strategy given is a mistake, not a wish for `raw`).
    required_params: ClassVar[tuple[str, ...]] = ()
    world: World | None = None
    splits: Splits | None = None
    budget: TokenBudget | None = None

    def setup(self, world: World, splits: Splits | None = None, budget: TokenBudget | None = None) -> Strategy:
        """Called once before streaming, with the world the documents come from and its splits (a
        strategy that rewrites text may need them, e.g. to name a safe alternative drug that is not
        an OOD treats pair) and, when the stream is rendered into a corpus, its token budget (a
        strategy that schedules data by position, like `curriculum`, needs it). Returns self."""
        self.world, self.splits, self.budget = world, splits, budget
        return self

    def apply(self, doc: Document, rng: np.random.Generator) -> Iterable[Document]:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document], rng: np.random.Generator) -> Iterator[Document]:
        for doc in docs:
            yield from self.apply(doc, rng)

    def params(self) -> dict:
        """Parameters that change the output; they go into the corpus config hash. Leave a
        parameter out while it has its default value, so adding one keeps existing hashes."""
        return {}

    def schedule(self) -> list[tuple[str, float]] | None:
        """For a strategy that orders its data (`curriculum`): [(phase, until_fraction), ...] in
        order. Documents carry `meta["phase"]`; the trainer samples phase i's tokens while the
        training progress is below its `until_fraction`. None: one unordered pool (the default)."""
        return None

    @property
    def label(self) -> str:
        """The strategy as a spec string, `name` or `name(key=value,...)` with the parameters that
        differ from their defaults: what `get_strategy` parses back, and the name runs, records
        and summaries use (parameters in `required_params` are always shown, so that it does)."""
        text = lambda v: v.label if isinstance(v, Strategy) else repr(v) if isinstance(v, str) else str(v)  # noqa: E731
        try:
            defaults = {k: text(v) for k, v in type(self)().spec_params().items() if k not in self.required_params}
        except Exception:  # a strategy whose parameters have no defaults
            defaults = {}
        shown = [f"{k}={text(v)}" for k, v in self.spec_params().items() if defaults.get(k) != text(v)]
        return f"{self.name}({','.join(shown)})" if shown else self.name

    def spec_params(self) -> dict:
        """The parameters as `get_strategy` takes them (strategies rather than their params)."""
        return self.params()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


@dataclass(frozen=True)
class TokenBudget:
    """What a position-aware strategy knows of the corpus it is rendered into: the budget and how
    the corpus writer counts a document's tokens (eos included).

    A blocked corpus (`corpus.blocks`) streams each block through its own strategy; the block's
    view says where in the whole corpus its stream begins (`offset`) and how many tokens it fills
    (`quota`), so that a schedule by position (curriculum) reads global positions. The sequential
    stream fills the whole budget from 0."""

    tokens: int
    count: Callable[[str], int]
    offset: int = 0
    quota: int | None = None  # None: tokens - offset

    def until(self, position: float) -> float:
        """Tokens this stream must fill to reach global `position`: from none (the position is
        before the stream) to its quota (after it)."""
        quota = self.tokens - self.offset if self.quota is None else self.quota
        return min(max(position - self.offset, 0), quota)
