"""Corpus rendering speed (raw stream -> strategy -> tokenizer -> Parquet), measured with
pytest-benchmark: `python -m pytest tests/test_benchmarks_corpus.py --benchmark-enable`.

With --benchmark-enable each case renders the `tiny` preset's corpus (2M tokens of the tiny world),
one warm-up round then three measured, and `extra_info["tokens_per_second"]` is the budget over
the fastest round (a machine shared with other jobs slows some rounds, never speeds one up).
Without it (the default) each case renders 200k tokens once: a test that the path runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import pytest

from medsafetyworld.config import get_preset
from medsafetyworld.corpus.build import build_corpus
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.strategies import get_strategy
from medsafetyworld.world.io import load_world


@pytest.fixture(scope="module")
def tiny_world_dir(tmp_path_factory):
    from medsafetyworld.pipeline import make_world

    out = tmp_path_factory.mktemp("tiny-world")
    make_world(get_preset("tiny"), 0, out)
    return out


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("strategy", ["raw", "reflect"])
def test_benchmark_corpus_rendering_tokens_per_second(benchmark, strategy, workers, tiny_world_dir, tmp_path):
    world, splits = load_world(tiny_world_dir)
    tokenizer = load_tokenizer(tiny_world_dir / "tokenizer")
    tiny = get_preset("tiny")
    budget = tiny.corpus.token_budget if benchmark.enabled else 200_000
    preset = tiny.replace(corpus=dataclasses.replace(tiny.corpus, token_budget=budget))
    seconds: list[float] = []

    def render():
        out = tmp_path / f"c{len(seconds)}"
        start = time.perf_counter()
        manifest = build_corpus(world, splits, tokenizer, get_strategy(strategy), preset, 1, out,
                                world_hash="0" * 16, progress=False, workers=workers)
        seconds.append(time.perf_counter() - start)
        shutil.rmtree(out)
        return manifest

    manifest = benchmark.pedantic(render, rounds=3, warmup_rounds=1, iterations=1)
    measured = seconds[1:] or seconds  # without the warm-up round
    benchmark.extra_info["tokens"] = manifest["tokens"]
    benchmark.extra_info["tokens_per_second"] = round(manifest["tokens"] / min(measured))
    assert manifest["tokens"] >= budget


@pytest.mark.parametrize("engine, workers", [("builtin", 1), ("datatrove", 1), ("datatrove", 2)])
def test_benchmark_blocked_corpus_tokens_per_second(benchmark, engine, workers, tiny_world_dir, tmp_path):
    """The raw tiny corpus in eight blocks, in this process or on datatrove's local executor; the
    sequential cases above are the baseline."""
    from medsafetyworld.pipeline import make_corpus

    if engine == "datatrove":
        pytest.importorskip("datatrove")
    tiny = get_preset("tiny")
    budget = tiny.corpus.token_budget if benchmark.enabled else 200_000
    preset = tiny.replace(corpus=dataclasses.replace(tiny.corpus, token_budget=budget, block_tokens=budget // 8))
    seconds: list[float] = []

    def render():
        out = tmp_path / f"c{len(seconds)}"
        start = time.perf_counter()
        make_corpus(tiny_world_dir, get_strategy("raw"), preset, 1, out, progress=False, engine=engine,
                    workers=workers)
        seconds.append(time.perf_counter() - start)
        manifest = json.loads((out / "manifest.json").read_text())
        shutil.rmtree(out)
        return manifest

    manifest = benchmark.pedantic(render, rounds=3, warmup_rounds=1, iterations=1)
    measured = seconds[1:] or seconds
    benchmark.extra_info["tokens"] = manifest["tokens"]
    benchmark.extra_info["tokens_per_second"] = round(manifest["tokens"] / min(measured))
    assert manifest["tokens"] >= budget and manifest["blocks"]["blocks"] == 8
