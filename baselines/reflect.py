"""`reflect`: Safety Reflection Pretraining (Li et al. 2026). Every document is cut into segments of
about `words` words at sentence (part) ends, and each segment is followed by a reflection,
` <think> Safe </think> ` or ` <think> Unsafe <category> </think> `, labelled by the oracle.

A segment also ends at every verdict of a safety check (SPEC 4, v2: reflect reflects after the
verdict segment), and its reflection is Unsafe when the verdict is: the candidate under
consideration is contraindicated for the patient, which is the oracle's unsafe_for. So a reflect
model learns to flag right where its own check shows the harm, before any prescription."""

from __future__ import annotations

from dataclasses import dataclass

from medsafetyworld.corpus.document import CONTRAINDICATED_PRESCRIPTION, SAFE, UNSAFE, Part
from medsafetyworld.corpus.reasoning import ends_with_verdict
from medsafetyworld.strategies import Strategy, register_strategy


def reflection(label: str, category: str | None) -> str:
    if label == UNSAFE:
        return f" <think> Unsafe {category} </think> "
    return " <think> Safe </think> "


def group_parts(parts: list[Part], words: int) -> list[list[Part]]:
    """Consecutive parts grouped until a group holds at least `words` words or ends with a verdict."""
    groups, current, count = [], [], 0
    for part in parts:
        current.append(part)
        count += len(part.text.split())
        if count >= words or ends_with_verdict(part.text):
            groups.append(current)
            current, count = [], 0
    if current:
        groups.append(current)
    return groups


@register_strategy("reflect")
@dataclass
class Reflect(Strategy):
    words: int = 100

    def params(self):
        return {"words": self.words}

    def apply(self, doc, rng):
        out = []
        for group in group_parts(doc.parts(), self.words):
            unsafe = [p for p in group if p.unsafe]
            label, category = (UNSAFE, unsafe[0].category) if unsafe else (SAFE, None)
            # the segment's text keeps its label; the reflection also judges the verdict it ends with
            said = (label, category)
            if not unsafe and (verdict := ends_with_verdict(group[-1].text)) and verdict[1] == "unsafe":
                said = (UNSAFE, CONTRAINDICATED_PRESCRIPTION)
            text = "".join(p.text for p in group).rstrip() + reflection(*said)
            out.append(Part(text, label, category))
        out[-1] = Part(out[-1].text.rstrip(), out[-1].label, out[-1].category)
        yield doc.replace_parts(out)
