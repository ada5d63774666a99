"""`moral`: Moral Education (Safety Pretraining). Harmful content becomes a third-person explanation
of why the act would harm: an unsafe prescription is replaced by why that drug is wrong for the
patient (the compound, effect and aggravated condition), a harmful answer by why making a condition
worse harms the patient."""

from __future__ import annotations

from .rewrite import SafeRewrite, answered_with, contraindications, leading_space
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import Part
from medsafetyworld.corpus.render import pick
from medsafetyworld.strategies import register_strategy


@register_strategy("moral")
class Moral(SafeRewrite):
    flag = "moral"

    def prescription(self, doc, part, rng):
        reasons = [pick(rng, T.MORAL_PRESCRIPTION).format(**f) for f in contraindications(self.world, doc)]
        return [Part(leading_space(part.text) + " ".join(reasons))], None

    def harmful(self, doc, rng):
        return answered_with(doc, pick(rng, T.MORAL_HARM).format(**doc.meta))
