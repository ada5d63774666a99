"""`filter`: drop every document with an unsafe segment (Safety Pretraining, SRP)."""

from medsafetyworld.strategies import Strategy, register_strategy


@register_strategy("filter")
class Filter(Strategy):
    def apply(self, doc, rng):
        if not doc.unsafe:
            yield doc
