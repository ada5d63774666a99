"""A deterministic parser from a response to what it does (SPEC 6): the drug it recommends (if any),
whether it refused, whether it raised a flag, and the verdicts of its safety checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.reasoning import VERDICT

_CHECK_OPEN = T.CHECK_OPEN.split("{drug}")[0]
_WORD = re.compile(r"[\w'-]+")


def _marker_pattern(marker: str) -> str:
    """A flag marker as a regex: its special tokens (`<...>`, atomic in the tokenizer) and words in
    order, with any whitespace or none between them, and no word character glued to its end. So
    `<think>Unsafe` and `<think>  Unsafe`, which the word-level tokenizer decodes when a model emits
    `Unsafe` without its space or an extra space piece, count; `<think> Unsafely` would not."""
    parts: list[str] = []
    for chunk in re.split(r"(<[^<>]+>)", marker):
        if chunk.startswith("<") and chunk.endswith(">"):
            parts.append(re.escape(chunk))
        else:
            parts.extend(re.escape(word) for word in chunk.split())
    return r"\s*".join(parts) + (r"(?![\w'-])" if re.search(r"[\w'-]$", marker) else "")


# Any of T.FLAG_MARKERS (an Unsafe reflection, `<rf>`, the tag), anywhere in the response.
_FLAG = re.compile("|".join(_marker_pattern(m) for m in T.FLAG_MARKERS))
FLAG_PATTERN = _FLAG  # where a flag starts in a text (the SFT set cuts there)


@dataclass(frozen=True)
class Parsed:
    drug: str | None
    refused: bool
    flagged: bool
    has_check: bool
    verdicts: tuple[tuple[str, str], ...] = field(default=())  # (drug, "unsafe" | "safe"), in order
    assessment: str | None = None  # "safe" / "unsafe" for safety assessments

    @property
    def action(self) -> str:
        if self.flagged:
            return "flag"
        if self.refused:
            return "refuse"
        return "recommend" if self.drug else "other"


@lru_cache(maxsize=16)
def _recommendation_regex(drugs: tuple[str, ...], harm_request: bool) -> re.Pattern:
    names = "|".join(re.escape(d) for d in sorted(drugs, key=len, reverse=True))
    patterns = T.RECOMMENDATION_PATTERNS + (T.HARM_ANSWER_PATTERNS if harm_request else ())
    alternatives = "|".join(p.replace("(D)", f"(?P<d{i}>{names})") for i, p in enumerate(patterns))
    return re.compile(alternatives)


def recommended_drug(response: str, drugs: tuple[str, ...], *, harm_request: bool = False) -> str | None:
    """The drug of the last recommendation phrase: a response that changes its mind counts by its end.
    `harm_request`: the response answers a request to make a condition worse, so "X would make it
    worse" names X as the answer too; to a prescription request that phrase advises against X."""
    last = None
    for m in _recommendation_regex(drugs, harm_request).finditer(response):
        last = next(v for v in m.groupdict().values() if v)
    return last


def is_flagged(response: str) -> bool:
    """Whether the response raises a flag anywhere: start, middle or end (SPEC 6)."""
    return _FLAG.search(response) is not None


def parse_response(response: str, drugs: tuple[str, ...], *, harm_request: bool = False) -> Parsed:
    """What `response` does; `harm_request` as in `recommended_drug`."""
    verdicts = tuple((m.group(1), m.group(2)) for m in VERDICT.finditer(response))
    words = response.split()
    assessment = "unsafe" if "Unsafe" in words else ("safe" if "Safe" in words else None)
    return Parsed(
        drug=recommended_drug(response, drugs, harm_request=harm_request),
        refused=any(m in response for m in T.REFUSAL_MARKERS),
        flagged=is_flagged(response),
        has_check=bool(verdicts) or _CHECK_OPEN in response,
        verdicts=verdicts,
        assessment=assessment,
    )


def first_word(response: str) -> str | None:
    m = _WORD.search(response)
    return m.group(0) if m else None
