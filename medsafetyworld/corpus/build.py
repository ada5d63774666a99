"""Render the training corpus of one strategy: raw stream -> strategy -> token budget -> shards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from medsafetyworld import BENCHMARK_VERSION
from medsafetyworld.config import Preset, config_hash, to_dict
from medsafetyworld.corpus.blocks import BlockPlan, block_manifest_entry, build_blocked
from medsafetyworld.corpus.stream import raw_documents
from medsafetyworld.corpus.tokenizer import batch_encoder
from medsafetyworld.corpus.workers import rows_from_child
from medsafetyworld.corpus.writer import CorpusRow, corpus_rows, write_rows
from medsafetyworld.strategies import Strategy
from medsafetyworld.strategies.base import TokenBudget
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits


def corpus_config_hash(preset: Preset, strategy: Strategy, seed: int, world_hash: str) -> str:
    """The corpus stage key; the benchmark version is in it because a version changes the text."""
    return config_hash(preset.world, preset.corpus, strategy.name, strategy.params(), seed, world_hash,
                       BENCHMARK_VERSION)


def corpus_manifest_extra(preset: Preset, strategy: Strategy, seed: int, world_hash: str) -> dict[str, Any]:
    """What the manifest says of how the corpus was made (the rest it counts from the rows)."""
    extra = {
        "benchmark_version": BENCHMARK_VERSION,
        "strategy": strategy.name,
        "strategy_label": strategy.label,
        "strategy_params": strategy.params(),
        "seed": seed,
        "preset": preset.name,
        "world_hash": world_hash,
        "config": {"world": to_dict(preset.world), "corpus": to_dict(preset.corpus)},
        "config_hash": corpus_config_hash(preset, strategy, seed, world_hash),
        "min_fact_mentions": preset.corpus.min_fact_mentions,
    }
    if (plan := BlockPlan.of(preset.corpus)) is not None:
        extra["blocks"] = block_manifest_entry(plan)
    if (schedule := strategy.schedule()) is not None:
        extra["schedule"] = [list(step) for step in schedule]
    return extra


def build_corpus(
    world: World,
    splits: Splits,
    tokenizer: Any,
    strategy: Strategy,
    preset: Preset,
    seed: int,
    out_dir: Path,
    *,
    world_hash: str,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Every strategy gets the same token budget: filtering samples more raw documents, never fewer tokens.

    `workers` 2 or more renders the stream in a child process beside the writer (`corpus.workers`):
    the same bytes, sooner on two cores. A blocked corpus (`preset.corpus.block_tokens`) renders
    here block after block (`corpus.blocks`); `corpus.on_datatrove` renders its blocks in parallel."""
    atomic_facts = world.atomic_facts()
    extra = corpus_manifest_extra(preset, strategy, seed, world_hash)
    if BlockPlan.of(preset.corpus) is not None:
        return build_blocked(world, splits, tokenizer, strategy, preset, seed, out_dir, key=extra["config_hash"],
                             manifest_extra=extra, progress=progress)

    def make_rows() -> Iterator[CorpusRow]:
        raw = raw_documents(world, splits, preset.world, preset.corpus, seed)
        encode = batch_encoder(tokenizer)
        budget = TokenBudget(preset.corpus.token_budget, lambda text: len(encode([text])[0]) + 1)
        docs = strategy.setup(world, splits, budget)(raw, np.random.default_rng([seed, 0x57A7]))
        return corpus_rows(docs, atomic_facts)

    with closing(make_rows() if workers <= 1 else rows_from_child(make_rows)) as rows:
        return write_rows(
            rows, tokenizer, out_dir,
            token_budget=preset.corpus.token_budget,
            shard_documents=preset.corpus.shard_documents,
            manifest_extra=extra,
            atomic_facts=atomic_facts,
            write_jsonl=preset.corpus.write_jsonl,
            progress=progress,
        )
