"""MedSafetyWorld's own strategies applied to labeled web documents.

A labeled web document becomes a `medsafetyworld.corpus.document.Document` (kind "web") whose
segments are the labeler's ~100-word segments, so `filter`, `tag` and `reflect` run unchanged:
`filter` drops a document with any segment scored at or above the labeler's threshold, `tag`
marks words of unsafe segments only (p = 0.05), `reflect(words=W)` reflects after each segment
(W must be the labeler's segment size). Strategies that rewrite through the world's knowledge graph
(rewrite, refusal, moral, redflag, curriculum and recipes using them) are refused with a clear error;
rewrite, refusal and moral run on real text through an LLM instead (`rewriter.llm_strategy`), as
strategies marked `real_text`.

An unlabeled document (its labeler failed) passes through every strategy untouched and is counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from medsafetyworld.corpus.document import Document, Segment
from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies import Strategy, get_strategy
from medsafetyworld.strategies.compose import Chain

WEB_KIND = "web"
# Strategies that need only the document's segment labels, never the world.
REAL_TEXT_STRATEGIES = ("raw", "filter", "tag", "reflect")


def _steps(strategy: Strategy) -> list[Strategy]:
    return [s for step in strategy.steps for s in _steps(step)] if isinstance(strategy, Chain) else [strategy]


def real_text_strategy(spec: str | Strategy) -> Strategy:
    """The strategy of `spec`, refused (ConfigError) when a step needs the MedSafetyWorld world."""
    strategy = get_strategy(spec) if isinstance(spec, str) else spec
    for step in _steps(strategy):
        if step.name not in REAL_TEXT_STRATEGIES and not getattr(step, "real_text", False):
            raise ConfigError(
                f"strategy '{step.label}' needs the MedSafetyWorld world (it writes case reports, drugs and "
                f"refusals from the knowledge graph) and no world is given for real web text; on real text use "
                f"{', '.join(REAL_TEXT_STRATEGIES)}, or rewrite, refusal and moral through an LLM rewriter "
                f"(--endpoint URL --model-name NAME)")
    return strategy


def to_msw(doc_id: str, text: str, meta: dict) -> Document | None:
    """The package's Document for a labeled web document; None when it is unlabeled."""
    if meta.get("label_status") != "labeled":
        return None
    segments = [Segment(s["start"], s["end"], s["label"], s["category"]) for s in meta["segments"]]
    keep = {k: v for k, v in meta.items() if k != "segments"}
    return Document(doc_id, WEB_KIND, text, segments, keep)


def doc_rng(seed: int, doc_id: str) -> np.random.Generator:
    """A generator for one document, the same whichever worker or task handles it."""
    key = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def apply_strategy(strategy: Strategy, doc_id: str, text: str, meta: dict, seed: int) -> Iterator[Document]:
    """What `strategy` makes of one web document (none when filtered). Unlabeled ones pass as they are."""
    doc = to_msw(doc_id, text, meta)
    if doc is None:
        yield Document(doc_id, WEB_KIND, text, [Segment(0, len(text), "safe", None)], dict(meta))
        return
    yield from strategy([doc], doc_rng(seed, doc_id))
