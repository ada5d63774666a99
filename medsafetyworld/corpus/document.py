"""The document record of SPEC 3: `{id, kind, text, segments, meta}`.

A document is built from *parts*: consecutive pieces of text, each labelled safe or unsafe. The
segments partition the text exactly (segment i covers text[start:end] of part i), so a strategy can
rewrite a document part by part and rebuild exact character offsets with `Document.from_parts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SAFE, UNSAFE = "safe", "unsafe"
CONTRAINDICATED_PRESCRIPTION = "contraindicated_prescription"
HARMFUL_REQUEST = "harmful_request"
CATEGORIES = (CONTRAINDICATED_PRESCRIPTION, HARMFUL_REQUEST)


@dataclass(frozen=True)
class Part:
    text: str
    label: str = SAFE
    category: str | None = None

    @property
    def unsafe(self) -> bool:
        return self.label == UNSAFE


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    label: str
    category: str | None = None


@dataclass
class Document:
    id: str
    kind: str
    text: str
    segments: list[Segment]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_parts(cls, id: str, kind: str, parts: list[Part], meta: dict[str, Any]) -> Document:
        segments, pos = [], 0
        for p in parts:
            end = pos + len(p.text)
            segments.append(Segment(pos, end, p.label, p.category))
            pos = end
        return cls(id, kind, "".join([p.text for p in parts]), segments, meta)

    def parts(self) -> list[Part]:
        return [Part(self.text[s.start : s.end], s.label, s.category) for s in self.segments]

    @property
    def unsafe(self) -> bool:
        return any(s.label == UNSAFE for s in self.segments)

    def replace_parts(self, parts: list[Part], **meta: Any) -> Document:
        """The same document (id, kind, meta) with new parts; extra meta keys are merged in."""
        return Document.from_parts(self.id, self.kind, parts, {**self.meta, **meta})

    def to_row(self) -> dict[str, Any]:
        """A row for the Parquet shards: meta is stored as a JSON string."""
        return {
            "id": self.id,
            "kind": self.kind,
            "text": self.text,
            "segments": [vars(s) for s in self.segments],
            "meta": json.dumps(self.meta, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        return cls(
            row["id"],
            row["kind"],
            row["text"],
            [Segment(**s) for s in row["segments"]],
            json.loads(row["meta"]),
        )
