"""The closed vocabulary of a world: every template word and every name, in every context the
pre-tokenizer can see it in (after a space, at the start of a text). The word-level tokenizer is
built from these texts, so a world's tokenizer never needs the corpus."""

from __future__ import annotations

from collections.abc import Iterator
from string import Formatter

from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import CATEGORIES
from medsafetyworld.world.graph import World

REFLECTION_TEXTS = [" <think> Safe </think> "] + [f" <think> Unsafe {c} </think> " for c in CATEGORIES]


def template_strings() -> Iterator[str]:
    for name in dir(T):
        value = getattr(T, name)
        if name.isupper() and not name.endswith("_PATTERNS"):  # patterns are regexes, not text
            stack = [value]
            while stack:
                v = stack.pop()
                if isinstance(v, str):
                    yield v
                elif isinstance(v, (tuple, list)):
                    stack.extend(v)
                elif isinstance(v, dict):
                    stack.extend(v.values())
                    stack.extend(k for k in v if isinstance(k, str))


def _fill(template: str, filler: str) -> str:
    fields = {f for _, f, _, _ in Formatter().parse(template) if f}
    return template.format(**{f: filler for f in fields})


def vocabulary_texts(world: World) -> Iterator[str]:
    names = world.drugs + world.compounds + world.effects + world.conditions + world.patient_names
    for template in template_strings():
        filled = _fill(template, names[0])
        yield filled  # at the start of a text
        yield " " + filled  # after another sentence
    yield from REFLECTION_TEXTS
    yield " Safe Unsafe " + " ".join(CATEGORIES)
    for name in names:
        yield name
        yield " " + name
