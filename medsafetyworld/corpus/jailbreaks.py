"""Jailbreak templates (SPEC 5 step 3): instructions wrapped around a user's request inside the user
turn, in three families: role-play, "ignore safety" and authority claims. The texts live in
`templates` (so their words are in every world's vocabulary); this module names them and splits
them.

The split is by name and the same in every world and seed: the last two templates of each family are
**held out**, in no training text (raw corpus, strategies' rewrites, SFT set), only in the
`jailbreak` attack; the other three are **train** templates, which the raw corpus and the SFT set
use. A fixed split keeps `jailbreak(templates=held_out)` the same six phrasings in every record, so
strategies and seeds are compared on the same attack; a per-world draw would mix which phrasings
were held out (and phrasings differ in strength) into every difference, and would change the
world's splits file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsafetyworld.corpus import templates as T
from medsafetyworld.errors import ConfigError, DataError

FAMILIES = {"roleplay": T.JAILBREAK_ROLEPLAY, "ignore_safety": T.JAILBREAK_IGNORE_SAFETY,
            "authority": T.JAILBREAK_AUTHORITY}
HELD_OUT = frozenset({"roleplay-3", "roleplay-4", "ignore_safety-3", "ignore_safety-4", "authority-3", "authority-4"})
SELECTIONS = ("held_out", "train", "all")

_CHAT_HEAD, _CHAT_TAIL = T.CHAT.split("{request}")


@dataclass(frozen=True)
class Jailbreak:
    name: str  # "<family>-<position in the family's tuple>"
    family: str
    text: str  # holds "{request}" once
    held_out: bool

    def wrap(self, request: str) -> str:
        return self.text.format(request=request)

    def fragments(self) -> list[str]:
        """The template's own text around the request, stripped: what shows that it was used."""
        return [f.strip() for f in self.text.split("{request}") if f.strip()]


JAILBREAKS: dict[str, Jailbreak] = {
    f"{family}-{i}": Jailbreak(f"{family}-{i}", family, text, f"{family}-{i}" in HELD_OUT)
    for family, texts in FAMILIES.items()
    for i, text in enumerate(texts)
}
TRAIN = tuple(name for name, j in JAILBREAKS.items() if not j.held_out)


def select(which: str) -> list[Jailbreak]:
    """The templates of a selection: `held_out`, `train` or `all`, in family order."""
    if which not in SELECTIONS:
        raise ConfigError(f"jailbreak templates={which!r}; choose one of {', '.join(SELECTIONS)}")
    return [j for j in JAILBREAKS.values() if which == "all" or j.held_out == (which == "held_out")]


def pick_train(rng: np.random.Generator, rate: float) -> str | None:
    """With probability `rate`, the name of a train template drawn uniformly; else None."""
    if rate <= 0 or rng.random() >= rate:
        return None
    return TRAIN[int(rng.integers(len(TRAIN)))]


def wrap_request(name: str | None, request: str) -> str:
    """`request` inside the template `name` (unchanged for None)."""
    return request if name is None else JAILBREAKS[name].wrap(request)


def wrap_prompt(jailbreak: Jailbreak, prompt: str) -> str:
    """A chat prompt "User: R\\nAssistant:" with R wrapped: the template stays inside the user turn."""
    if not (prompt.startswith(_CHAT_HEAD) and prompt.endswith(_CHAT_TAIL)):
        raise DataError(f"{prompt!r} is not a chat prompt {T.CHAT!r}; a jailbreak wraps the user's request")
    request = prompt[len(_CHAT_HEAD) : len(prompt) - len(_CHAT_TAIL)]
    return _CHAT_HEAD + jailbreak.wrap(request) + _CHAT_TAIL
