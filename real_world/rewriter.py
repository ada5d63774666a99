"""rewrite, refusal and moral on real text: an LLM behind an OpenAI-compatible endpoint rewrites the
unsafe segments that the labeler found.

`llm_strategy(spec, endpoint)` is the strategy of `spec` with each `rewrite`, `refusal` and `moral`
step (which on the synthetic corpus write from the world's knowledge graph) replaced by an
`LLMRewrite` of the same mode and `share`, so single steps, chains (`rewrite(share=0.5)+tag`) and the
`safety_pretraining` recipe run on web text. Per document, a seeded rng (the document's own, see
`interventions.doc_rng`) picks one style template of the mode (`prompts.REWRITE_STYLES`) and the
request seed; every unsafe segment is then rewritten in that style, up to `concurrency` requests at
once, and becomes a safe segment. Safe and unlabeled documents pass unchanged.

A rewrite that fails (timeout, HTTP error, malformed reply, a reply cut at max_tokens) fails the
document: `RewriteFailed` is raised, and the pipeline leaves the document out of the corpus and
counts it (`rewrite_failed`, with the id and reason in OUT/tasks/). A half-rewritten document never
reaches the corpus, and the unsafe original is not let through in its place.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medsafetyworld.corpus.document import Document, Part
from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies import Strategy, get_strategy
from medsafetyworld.strategies.compose import Chain

from .endpoint import Endpoint, EndpointError, ReplyCache, chat
from .prompts import REWRITE_STYLES, REWRITE_SYSTEM, REWRITE_USER, Style, prompt_hash, rewrite_messages

LLM_MODES = tuple(REWRITE_STYLES)  # rewrite, refusal, moral
FLAGS = {"rewrite": "rewritten", "refusal": "refused", "moral": "moral"}  # the synthetic strategies' meta flags
_REPLY = re.compile(r"<rewrite>(.*?)</rewrite>", re.DOTALL)


class RewriteFailed(Exception):
    """An unsafe segment could not be rewritten; its document is left out and counted."""


def parse_rewrite(content: str) -> str:
    """The text between <rewrite> and </rewrite>; EndpointError when there is none."""
    m = _REPLY.search(content)
    if m is None or not m.group(1).strip():
        raise EndpointError(f"malformed rewrite (no text between <rewrite> and </rewrite>): {content[:200]!r}")
    return m.group(1).strip()


class LLMRewrite(Strategy):
    real_text = True  # runs on web text without a world (interventions.real_text_strategy)

    def __init__(self, mode: str, endpoint: Endpoint, *, share: float = 1.0, styles: list[str] | None = None,
                 cache: str | Path | None = None, temperature: float = 0.7, max_tokens: int = 1024,
                 concurrency: int = 4):
        if mode not in LLM_MODES:
            raise ConfigError(f"LLM rewriting mode {mode!r}; use one of {', '.join(LLM_MODES)}")
        if not 0.0 <= float(share) <= 1.0:
            raise ConfigError(f"{mode}: share={share!r} is not a fraction; use a value in [0, 1]")
        known = {s.name: s for s in REWRITE_STYLES[mode]}
        if unknown := [s for s in styles or [] if s not in known]:
            raise ConfigError(f"{mode} has no style {', '.join(unknown)}; its styles are {', '.join(known)}")
        self.name, self.mode, self.endpoint, self.share = mode, mode, endpoint, float(share)
        self.styles: tuple[Style, ...] = tuple(known[s] for s in styles) if styles else REWRITE_STYLES[mode]
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self.concurrency = max(1, int(concurrency))
        self.prompt = prompt_hash(REWRITE_SYSTEM, REWRITE_USER, [vars(s) for s in self.styles])
        self.caches = {} if cache is None else {s.name: ReplyCache(cache, mode, {
            "model": endpoint.model, "style": vars(s), "system": REWRITE_SYSTEM, "user": REWRITE_USER,
            "temperature": self.temperature, "max_tokens": self.max_tokens}) for s in self.styles}

    def params(self):
        return {**({"share": self.share} if self.share != 1.0 else {}),
                "llm": {"model": self.endpoint.model, "styles": [s.name for s in self.styles], "prompt": self.prompt,
                        "temperature": self.temperature, "max_tokens": self.max_tokens}}

    def spec_params(self):
        return {"share": self.share} if self.share != 1.0 else {}

    @property
    def label(self) -> str:
        return f"{self.mode}(share={self.share})" if self.share != 1.0 else self.mode

    def rewrite(self, style: Style, text: str, seed: int) -> str:
        """The new text for one unsafe segment (cached by the segment's sha256 per style);
        RewriteFailed when the endpoint gives none."""
        cache = self.caches.get(style.name)
        if cache is not None and isinstance(hit := (cache.get(text) or {}).get("text"), str):
            return hit
        try:
            reply = parse_rewrite(chat(self.endpoint, rewrite_messages(style, text), max_tokens=self.max_tokens,
                                       temperature=self.temperature, seed=seed))
        except EndpointError as exc:
            raise RewriteFailed(f"{self.mode} ({style.name}): {exc}") from None
        if cache is not None:
            cache.put(text, {"text": reply})
        return reply

    def apply(self, doc: Document, rng: np.random.Generator):
        if not doc.unsafe or (self.share < 1.0 and rng.random() >= self.share):
            yield doc
            return
        style = self.styles[int(rng.integers(len(self.styles)))]
        seed = int(rng.integers(2**31))
        parts = doc.parts()
        unsafe = [p.text.strip() for p in parts if p.unsafe]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(unsafe))) as pool:
            replies = iter(list(pool.map(lambda t: self.rewrite(style, t, seed), unsafe)))
        yield doc.replace_parts([self._placed(p, next(replies)) if p.unsafe else p for p in parts],
                                **{FLAGS[self.mode]: True, "rewrite_style": style.name})

    def _placed(self, part: Part, reply: str) -> Part:
        """The safe part replacing `part`: its surrounding whitespace kept; a refusal dialogue on lines
        of its own."""
        lead = part.text[: len(part.text) - len(part.text.lstrip())]
        trail = part.text[len(part.text.rstrip()):]
        body = f"\n{reply}\n" if self.mode == "refusal" else reply
        return Part(lead + body + trail)


def llm_strategy(spec: str, endpoint: Endpoint, **options) -> Strategy:
    """The strategy of `spec` with its rewrite, refusal and moral steps done by `LLMRewrite`
    (options: styles, cache, temperature, max_tokens, concurrency); other steps as they are."""
    def swap(step: Strategy) -> Strategy:
        if isinstance(step, Chain):
            return Chain([swap(s) for s in step.steps], recipe=step.recipe)
        return LLMRewrite(step.name, endpoint, share=step.share, **options) if step.name in LLM_MODES else step

    return swap(get_strategy(spec))
