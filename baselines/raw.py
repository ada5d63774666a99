"""`raw`: the baseline. The web as it is, unsafe documents included."""

from medsafetyworld.strategies import Strategy, register_strategy


@register_strategy("raw")
class Raw(Strategy):
    def apply(self, doc, rng):
        yield doc
