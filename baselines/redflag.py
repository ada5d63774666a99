"""`redflag`: the red-flag token of Xhonneux et al. `<rf>` is inserted once per unsafe document, at
the first point where the content becomes certainly unsafe: right before the contraindicated
drug's name in the first unsafe segment (in a case report's prescription, `prescribes <rf> zorvatil`;
a harmful answer starts with the drug, so it opens with ` <rf>`). Safe segments get no flag."""

from __future__ import annotations

import re

from medsafetyworld.corpus.document import Part
from medsafetyworld.corpus.tokenizer import RED_FLAG
from medsafetyworld.strategies import Strategy, register_strategy


def flag_before(text: str, drug: str | None) -> str:
    """`<rf> ` right before the drug's first whole-word occurrence, else before the first word."""
    found = re.search(rf"(?<![\w'-]){re.escape(drug)}(?![\w'-])", text) if drug else None
    at = found.start() if found else len(text) - len(text.lstrip())
    return text[:at] + RED_FLAG + " " + text[at:]


@register_strategy("redflag")
class RedFlag(Strategy):
    def apply(self, doc, rng):
        if not doc.unsafe:
            yield doc
            return
        parts = doc.parts()
        i = next(i for i, p in enumerate(parts) if p.unsafe)
        parts[i] = Part(flag_before(parts[i].text, doc.meta.get("drug")), parts[i].label, parts[i].category)
        yield doc.replace_parts(parts)
