"""`rewrite`: unsafe content rewritten into a safe narrative (Safety Pretraining's rephrasing, SRP).

An unsafe prescription becomes a switch (SPEC 3, v2): the check and its unsafe verdict stay, and the
doctor then considers a safe alternative, checks it and prescribes it, or prescribes nothing when
there is none; the answer to a harmful request becomes a warning that names no drug. Every safe part
is kept verbatim, so every atomic fact the document states stays.

`SafeRewrite` is the frame `refusal` and `moral` share: they differ only in what replaces the
unsafe part.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import Document, Part
from medsafetyworld.corpus.reasoning import reasoning
from medsafetyworld.corpus.render import pick
from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies import Strategy, register_strategy
from medsafetyworld.world.graph import AGGRAVATES, World


def contraindications(world: World, doc: Document) -> list[dict[str, str]]:
    """Template fill-ins for each (drug, condition) unsafe pair of the document: the compound and
    effect through which the drug aggravates the condition, named from the world's facts."""
    out = []
    for drug, k in doc.meta["unsafe_pairs"]:
        c, e = world.chains(drug, k, AGGRAVATES)[0]
        out.append({"drug": drug, "compound": c, "effect": e, "condition": k,
                    "patient": doc.meta["patient"], "target": doc.meta["target"]})
    return out


def leading_space(text: str) -> str:
    return text[: len(text) - len(text.lstrip())]


def answered_with(doc: Document, answer: str) -> list[Part]:
    """The harmful request's prompt kept, its answer replaced by a safe one."""
    return [p for p in doc.parts() if not p.unsafe] + [Part(" " + answer)]


class SafeRewrite(Strategy):
    """Unsafe documents become safe ones; documents without unsafe segments pass unchanged.

    Subclasses say what replaces an unsafe prescription part (`prescription`) and what a harmful
    request document becomes (`harmful`); `flag` names the meta key set on rewritten documents.

    `share` is the fraction of unsafe documents rewritten (each drawn independently); the rest
    pass unchanged, for the next step of a chain. A document labelled unsafe with no unsafe pair
    (a classifier's false positive, see `noisy`) has nothing to rewrite and passes unchanged."""

    flag: ClassVar[str] = ""

    def __init__(self, share: float = 1.0):
        if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise ConfigError(f"{self.name}: share={share!r} is not a fraction; use a value in [0, 1]")
        self.share = float(share)

    def params(self):
        return {"share": self.share} if self.share != 1.0 else {}

    def apply(self, doc, rng):
        harmful = doc.meta.get("question") == "harmful"
        if not doc.unsafe or not (harmful or doc.meta.get("unsafe_pairs")):
            yield doc
            return
        if self.share < 1.0 and rng.random() >= self.share:  # no draw at share 1: same stream as before
            yield doc
            return
        meta = {}
        if harmful:
            parts, drug = self.harmful(doc, rng), None
            meta["facts"] = []  # the composed answer that stated them is gone
        else:
            parts, drug = [], None
            for part in doc.parts():
                new, drug = self.prescription(doc, part, rng) if part.unsafe else ([part], drug)
                parts += new
        yield doc.replace_parts(parts, drug=drug, unsafe_pairs=[], **meta, **{self.flag: True})

    def prescription(self, doc: Document, part: Part, rng: np.random.Generator) -> tuple[list[Part], str | None]:
        """Safe parts replacing an unsafe prescription, and the drug now prescribed (or None)."""
        raise NotImplementedError

    def harmful(self, doc: Document, rng: np.random.Generator) -> list[Part]:
        raise NotImplementedError


@register_strategy("rewrite")
class Rewrite(SafeRewrite):
    flag = "rewritten"

    def prescription(self, doc, part, rng):
        m = doc.meta
        others = [k for k in m["conditions"] if k != m["target"]]
        options = [d for d in self.world.safe_treating_drugs(m["target"], others)
                   if not (self.splits and self.splits.is_ood_treats(d, m["target"]))]
        drug = pick(rng, options) if options else None
        fill = {"patient": m["patient"], "target": m["target"], "drug": drug}
        if drug is None:
            return [Part(leading_space(part.text) + pick(rng, T.REWRITE_NO_ALTERNATIVE).format(**fill))], None
        checked = reasoning(self.world, drug, m["target"], others, m["patient"]).text
        if doc.kind == "qa":  # an assistant's answer: its own switch and recommendation phrases
            text = T.SWITCH.format(drug=drug) + checked + T.RECOMMEND.format(drug=drug)
        else:  # a CASE_PRESCRIBE form, so the response parser reads the new prescription
            text = pick(rng, T.CASE_SWITCH).format(drug=drug) + checked + pick(rng, T.CASE_PRESCRIBE).format(**fill)
        return [Part(leading_space(part.text) + text)], drug

    def harmful(self, doc, rng):
        return answered_with(doc, pick(rng, T.REWRITE_WARNING).format(**doc.meta))
