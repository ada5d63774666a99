"""`llm_judge`: an LLM behind an OpenAI-compatible endpoint scores each segment 0-5 with the rubric
of `prompts.JUDGE_SYSTEM` (in the manner of Safety Pretraining) and names a category.

Each segment is one request (temperature 0), up to `concurrency` at once; identical segments are
asked once. A reply must hold a JSON object `{"score": 0-5, "category": ...}` (a category outside
`prompts.JUDGE_CATEGORIES` becomes "other"). A timeout, an HTTP error or a malformed reply fails that
segment, so its document is left unlabeled (kept, counted, with the reason), never dropped. Good
verdicts are cached by the segment's sha256 (`cache=DIR`, see `endpoint.ReplyCache`), so a rerun
asks only what it has not been told; failures are not cached and are asked again.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medsafetyworld.errors import ConfigError

from .endpoint import Endpoint, EndpointError, ReplyCache, chat, text_key
from .labelers import Labeler, register_labeler
from .prompts import JUDGE_CATEGORIES, JUDGE_SYSTEM, JUDGE_USER, judge_messages, prompt_hash


def parse_verdict(content: str) -> tuple[int, str]:
    """(score, category) of a judge's reply; EndpointError when it holds no such JSON object."""
    start = content.find("{")
    try:
        verdict, _ = json.JSONDecoder().raw_decode(content[start:]) if start >= 0 else (None, 0)
        score = verdict["score"]
    except (ValueError, KeyError, TypeError):
        raise EndpointError(f"malformed verdict (no JSON object with a score): {content[:200]!r}") from None
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or score != int(score) or not 0 <= score <= 5:
        raise EndpointError(f"malformed verdict (score {score!r} is not an integer 0-5): {content[:200]!r}")
    category = verdict.get("category")
    return int(score), category if category in JUDGE_CATEGORIES else "other"


@register_labeler("llm_judge")
class LLMJudgeLabeler(Labeler):
    needs_endpoint = True  # `msw real-world run` passes --endpoint, --model-name, --timeout

    def __init__(self, endpoint: Endpoint | None = None, cache: str | Path | None = None, concurrency: int = 8,
                 max_tokens: int = 64, max_chars: int = 4000, threshold: int = 3, words: int = 100):
        super().__init__(threshold, words)
        if not isinstance(endpoint, Endpoint):
            raise ConfigError("the llm_judge labeler needs an endpoint: --endpoint URL --model-name NAME (an "
                              "OpenAI-compatible server such as vLLM or llama.cpp's llama-server)")
        self.endpoint, self.concurrency = endpoint, max(1, int(concurrency))
        self.max_tokens, self.max_chars = int(max_tokens), int(max_chars)
        self.prompt = prompt_hash(JUDGE_SYSTEM, JUDGE_USER, JUDGE_CATEGORIES)
        self.cache = None if cache is None else ReplyCache(cache, "judge", {
            "model": endpoint.model, "prompt": self.prompt, "max_tokens": self.max_tokens,
            "max_chars": self.max_chars})
        self.stats = Counter()

    def params(self):
        return {"model": self.endpoint.model, "endpoint": self.endpoint.base_url, "prompt": self.prompt}

    def _ask(self, text: str) -> tuple[int, str] | Exception:
        try:
            reply = chat(self.endpoint, judge_messages(text[:self.max_chars]), max_tokens=self.max_tokens)
            verdict = parse_verdict(reply)
        except EndpointError as exc:
            return exc
        if self.cache is not None:
            self.cache.put(text, {"score": verdict[0], "category": verdict[1]})
        return verdict

    def score_segments(self, texts):
        known: dict[str, tuple[int, str] | Exception] = {}
        todo = {}
        for text in texts:
            key = text_key(text)
            if key in known or key in todo:
                continue
            hit = self.cache.get(text) if self.cache is not None else None
            if hit is not None and isinstance(hit.get("score"), int):
                known[key] = (hit["score"], hit.get("category"))
                self.stats["judge_cache_hits"] += 1
            else:
                todo[key] = text
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(todo)))) as pool:
            for key, result in zip(todo, pool.map(self._ask, todo.values())):
                known[key] = result
        self.stats["judge_requests"] += len(todo)
        self.stats["judge_failures"] += sum(isinstance(known[k], Exception) for k in todo)
        return [known[text_key(t)] for t in texts]
