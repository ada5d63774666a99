"""Corpus rendering speed (raw stream -> strategy -> tokenizer -> Parquet), measured with
pytest-benchmark: `python -m pytest tests/test_benchmarks_corpus.py --benchmark-enable`."""

from __future__ import annotations

import dataclasses
import time

import pytest

from medsafetyworld.corpus.build import build_corpus
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.strategies import get_strategy
from medsafetyworld.world.io import load_world


@pytest.mark.parametrize("strategy", ["raw", "reflect"])
def test_benchmark_corpus_rendering_tokens_per_second(benchmark, strategy, micro, micro_world_dir, tmp_path):
    world, splits = load_world(micro_world_dir)
    tokenizer = load_tokenizer(micro_world_dir / "tokenizer")
    preset = micro.replace(corpus=dataclasses.replace(micro.corpus, token_budget=200_000))

    def render():
        start = time.perf_counter()
        manifest = build_corpus(world, splits, tokenizer, get_strategy(strategy), preset, 1, tmp_path / "c",
                                world_hash="0" * 16, progress=False)
        return manifest, time.perf_counter() - start

    manifest, seconds = benchmark.pedantic(render, rounds=1, iterations=1)
    benchmark.extra_info["tokens_per_second"] = round(manifest["tokens"] / seconds)
    assert manifest["tokens"] >= 200_000
