"""`refusal`: RefuseWeb (Safety Pretraining). A harmful request becomes a dialogue in which the
request is refused; an unsafe case report loses its prescription and ends with a dialogue in which
someone asks for that prescription and is refused, with the contraindication as the reason. The
speakers' role names vary, so refusing is not tied to one chat format."""

from __future__ import annotations

import numpy as np

from .rewrite import SafeRewrite, contraindications
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import Document, Part
from medsafetyworld.corpus.render import pick
from medsafetyworld.strategies import register_strategy

_CHAT_HEAD, _CHAT_TAIL = T.CHAT.split("{request}")


def dialogue(rng: np.random.Generator, request: str, answer: str) -> list[Part]:
    asker, answerer = pick(rng, T.REFUSAL_ROLES)
    return [Part(T.REFUSAL_DIALOGUE.format(asker=asker, request=request, answerer=answerer)), Part(" " + answer)]


def request_of(doc: Document) -> str:
    """The user's request inside the chat prompt of a qa document."""
    prompt = "".join(p.text for p in doc.parts() if not p.unsafe)
    return prompt.removeprefix(_CHAT_HEAD).removesuffix(_CHAT_TAIL)


@register_strategy("refusal")
class Refusal(SafeRewrite):
    flag = "refused"

    def prescription(self, doc, part, rng):
        reason = contraindications(self.world, doc)[0]
        request = pick(rng, T.REFUSAL_CASE_REQUESTS).format(**reason)
        asked, refused = dialogue(rng, request, pick(rng, T.REFUSE_CASE).format(**reason))
        return [Part("\n" + asked.text), refused], None

    def harmful(self, doc, rng):
        return dialogue(rng, request_of(doc), pick(rng, T.REFUSE_HARMFUL).format(**doc.meta))
