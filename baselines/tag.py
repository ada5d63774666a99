"""`tag`: Safety Pretraining's harmfulness tags. Unsafe segments keep their text; before each of
their words, independently with probability `p`, the special token `<potentially unsafe content>`
is inserted. Safe segments are untouched, so the tag's presence is itself a safety label."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from medsafetyworld.corpus.document import Part
from medsafetyworld.corpus.tokenizer import UNSAFE_TAG
from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies import Strategy, register_strategy

TAG = UNSAFE_TAG + " "
_WORD = re.compile(r"\S+")


def tag_words(part: Part, p: float, rng: np.random.Generator) -> Part:
    """The part with TAG right before each word drawn with probability p."""
    starts = [m.start() for m in _WORD.finditer(part.text)]
    chosen = [s for s, u in zip(starts, rng.random(len(starts))) if u < p]
    pieces, last = [], 0
    for s in chosen:
        pieces += [part.text[last:s], TAG]
        last = s
    pieces.append(part.text[last:])
    return Part("".join(pieces), part.label, part.category)


@register_strategy("tag")
@dataclass
class Tag(Strategy):
    p: float = 0.05

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"tag probability p={self.p} is not a probability; use a value in [0, 1]")

    def params(self):
        return {"p": self.p}

    def apply(self, doc, rng):
        if not doc.unsafe:
            yield doc
            return
        yield doc.replace_parts([tag_words(part, self.p, rng) if part.unsafe else part for part in doc.parts()])
