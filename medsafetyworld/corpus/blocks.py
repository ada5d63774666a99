"""The blocked corpus stream (`CorpusConfig.block_tokens`): a corpus whose parts render apart.

The sequential stream is one seeded sequence: document i depends on every draw before it, so it
renders in one process. A blocked corpus cuts the token budget into blocks of `block_tokens` (Q)
tokens. Block b covers the global token positions [b*Q, min((b+1)*Q, budget)); it renders its own
raw stream, seeded by (seed, b) with fresh cycles and ids that name the block, through the
strategy seeded by (seed, b) with a token budget view that knows the block's global offset (so
that `curriculum` schedules by global position), and stops at its quota as the sequential corpus
stops at its budget: the document that reaches it is the block's last. Blocks depend on nothing
but (seed, b), so they render in any order, in any number of processes or machines
(`corpus.on_datatrove`), each into its own file; `assemble` then writes the shards and the
manifest from the blocks in block order, so the bytes do not depend on who rendered what.

A blocked corpus is another corpus than the sequential one of the same seed (the block size is in
the stage key and the manifest); every corpus of benchmark 2.0's published results is sequential.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from medsafetyworld.config import CorpusConfig, Preset
from medsafetyworld.corpus.stream import raw_documents
from medsafetyworld.corpus.tokenizer import batch_encoder
from medsafetyworld.corpus.writer import (
    Phases,
    _ShardRows,
    _Stats,
    corpus_manifest,
    corpus_rows,
    tokenized,
    write_shard,
)
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.storage import atomic_dir, atomic_file, write_json_atomic
from medsafetyworld.strategies.base import Strategy, TokenBudget
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits


@dataclass(frozen=True)
class BlockPlan:
    """The blocks of a token budget."""

    budget: int
    block_tokens: int

    @classmethod
    def of(cls, cfg: CorpusConfig) -> BlockPlan | None:
        """The plan of a blocked corpus config; None for the sequential stream; ConfigError for a bad block size."""
        q = cfg.block_tokens
        if q is None:
            return None
        if isinstance(q, bool) or not isinstance(q, int) or q <= 0:
            raise ConfigError(f"corpus block_tokens={q!r} must be a positive number of tokens (or None for the "
                              "sequential stream)")
        if q > cfg.token_budget:
            raise ConfigError(f"corpus block_tokens={q} is larger than the token budget {cfg.token_budget}; use "
                              f"at most {cfg.token_budget} (one block) or None for the sequential stream")
        return cls(cfg.token_budget, q)

    @property
    def blocks(self) -> int:
        return math.ceil(self.budget / self.block_tokens)

    def span(self, block: int) -> tuple[int, int]:
        """The global token positions [start, stop) block `block` fills."""
        return block * self.block_tokens, min((block + 1) * self.block_tokens, self.budget)

    def of_task(self, rank: int, tasks: int) -> range:
        """The blocks task `rank` of `tasks` renders: b % tasks == rank."""
        return range(rank, self.blocks, tasks)


def block_file(folder: Path, block: int) -> Path:
    return Path(folder) / f"block-{block:06d}.parquet"


def block_summary_file(folder: Path, block: int) -> Path:
    """Written after the block's rows: its presence says the block is complete."""
    return Path(folder) / f"block-{block:06d}.json"


def render_block(world: World, splits: Splits, tokenizer: Any, strategy: Strategy, preset: Preset, seed: int,
                 block: int, folder: Path) -> dict[str, Any]:
    """Render block `block` into `folder`: its rows as a table of the shards' schema, then a summary
    (counts, fact mentions, phases) that `assemble` adds up. Returns the summary."""
    plan = BlockPlan.of(preset.corpus)
    start, stop = plan.span(block)
    atomic_facts = world.atomic_facts()
    encode = batch_encoder(tokenizer)
    budget = TokenBudget(plan.budget, lambda text: len(encode([text])[0]) + 1, offset=start, quota=stop - start)
    raw = raw_documents(world, splits, preset.world, preset.corpus, seed, block=block)
    docs = strategy.setup(world, splits, budget)(raw, np.random.default_rng([seed, 0x57A7, block]))
    rows, stats, phases, tokens = _ShardRows(), _Stats(), Phases(), 0
    for row, ids, n in tokenized(corpus_rows(docs, atomic_facts), tokenizer, stop - start):
        phases.add(row.phase, tokens)
        rows.add(row, ids, n)
        stats.add(row, n)
        tokens += n
    with atomic_file(block_file(folder, block)) as f:
        pq.write_table(rows.table(), f, compression="zstd")
    facts = [stats.facts[i] for i in range(len(atomic_facts))]
    summary = {"block": block, "documents": len(rows), "tokens": tokens,
               "per_kind": {k: dict(v) for k, v in sorted(stats.per_kind.items())},
               "facts": facts, "phases": list(phases.starts.items())}
    write_json_atomic(block_summary_file(folder, block), summary)
    return summary


def block_done(folder: Path, block: int) -> bool:
    return block_summary_file(folder, block).is_file() and block_file(folder, block).is_file()


def assemble(folder: Path, plan: BlockPlan, out_dir: Path, *, shard_documents: int, manifest_extra: dict[str, Any],
             atomic_facts: list[tuple[str, str, str]], write_jsonl: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """The corpus from the blocks in `folder`, in block order: shards of `shard_documents` rows and
    the manifest, as `writer.write_rows` writes them. DataError if a block is missing."""
    missing = [b for b in range(plan.blocks) if not block_done(folder, b)]
    if missing:
        raise DataError(f"{folder}: blocks {missing[:5]}{' ...' if len(missing) > 5 else ''} of {plan.blocks} are "
                        "not rendered; render them first (rerun the same command: rendered blocks are kept)")
    stats, phases, shards, documents, tokens = _Stats(), Phases(), [], 0, 0
    pending: list[pa.Table] = []
    with atomic_dir(out_dir) as tmp, tqdm(total=plan.blocks, unit="block", desc="assemble",
                                          disable=not progress) as bar:
        for b in range(plan.blocks):
            summary = json.loads(block_summary_file(folder, b).read_text())
            table = pq.read_table(block_file(folder, b))
            if table.num_rows != summary["documents"]:
                raise DataError(f"{block_file(folder, b)} holds {table.num_rows} rows, its summary "
                                f"{summary['documents']}; remove both and render the block again")
            for phase, start in summary["phases"]:
                phases.add(phase, tokens + start)
            for kind, counts in summary["per_kind"].items():
                stats.per_kind[kind].update(counts)
            stats.facts.update(Counter({i: c for i, c in enumerate(summary["facts"]) if c}))
            documents, tokens = documents + summary["documents"], tokens + summary["tokens"]
            pending.append(table)
            while sum(t.num_rows for t in pending) >= shard_documents:
                rows = pa.concat_tables(pending)
                shards.append(write_shard(rows.slice(0, shard_documents).combine_chunks(), tmp, len(shards),
                                          write_jsonl))
                pending = [rows.slice(shard_documents)]
            bar.update(1)
        if (rest := pa.concat_tables(pending) if pending else None) is not None and rest.num_rows:
            shards.append(write_shard(rest.combine_chunks(), tmp, len(shards), write_jsonl))
        manifest = corpus_manifest(stats, shards, phases, documents, tokens, token_budget=plan.budget,
                                   manifest_extra=manifest_extra, atomic_facts=atomic_facts)
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


def work_folder(out_dir: Path, key: str) -> Path:
    """Where the blocks of `out_dir` render: a hidden sibling named by the corpus stage key, kept
    until the corpus is assembled so that a killed render resumes from the blocks it finished
    (another config renders into another folder)."""
    out = Path(os.path.abspath(out_dir))
    return out.parent / f".{out.name}.blocks-{key}"


def remove_work_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def block_manifest_entry(plan: BlockPlan) -> dict[str, int]:
    """What the manifest says of the stream's blocks."""
    return {"block_tokens": plan.block_tokens, "blocks": plan.blocks}


def build_blocked(world: World, splits: Splits, tokenizer: Any, strategy: Strategy, preset: Preset, seed: int,
                  out_dir: Path, *, key: str, manifest_extra: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """A blocked corpus rendered here, block after block (the blocks a killed run finished are kept
    and not rendered again), then assembled."""
    plan = BlockPlan.of(preset.corpus)
    folder = work_folder(out_dir, key)
    folder.mkdir(parents=True, exist_ok=True)
    for b in tqdm(range(plan.blocks), unit="block", desc="corpus blocks", disable=not progress):
        if not block_done(folder, b):
            render_block(world, splits, tokenizer, strategy, preset, seed, b, folder)
    manifest = assemble(folder, plan, out_dir, shard_documents=preset.corpus.shard_documents,
                        manifest_extra=manifest_extra, atomic_facts=world.atomic_facts(),
                        write_jsonl=preset.corpus.write_jsonl, progress=progress)
    remove_work_folder(folder)
    return manifest
