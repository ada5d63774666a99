"""The strategy step: takes a stream of documents, yields a stream of documents (datatrove style)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
    world: World | None = None
    splits: Splits | None = None

    def setup(self, world: World, splits: Splits | None = None) -> Strategy:
        """Called once before streaming, with the world the documents come from and its splits (a
        strategy that rewrites text may need them, e.g. to name a safe alternative drug that is not
        an OOD treats pair). Returns self."""
        self.world, self.splits = world, splits
        return self

    def apply(self, doc: Document, rng: np.random.Generator) -> Iterable[Document]:
        raise NotImplementedError

    def __call__(self, docs: Iterable[Document], rng: np.random.Generator) -> Iterator[Document]:
        for doc in docs:
            yield from self.apply(doc, rng)

    def params(self) -> dict:
        """Parameters that change the output; they go into the corpus config hash."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"
