"""What the trainer feeds the model.

Pretraining: the corpus shards as one token stream, cut into random windows. Batches are a pure
function of (seed, step), as in nanoGPT: a resumed run draws exactly the batches the uninterrupted
run would have drawn, without replaying the ones before.

Finetuning: "User: ...\\nAssistant: ..." texts as padded batches with the loss on the response only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from medsafetyworld.errors import DataError
from medsafetyworld.storage import atomic_file

ASSISTANT = "\nAssistant:"


def shard_paths(corpus_dir: str | os.PathLike) -> list[Path]:
    """The corpus's shards in stream order, each checked against the sha256 its manifest records
    before anything reads it (corpus.shards.verify_corpus: a changed shard, one swapped for another
    corpus's, or a stray shard in the folder is a DataError naming it and the fix).

    A folder of bare shards with no manifest.json (tests, `msw bench-train`, tools) has no hashes to
    check and is read as it is; `msw train` and `msw run` never get there, since make_pretrained
    reads the manifest first. The check costs one sha256 pass over the shards per call: about
    0.01-0.02 s on `tiny` (2 shards, 7 MB)."""
    folder = Path(corpus_dir)
    shards = sorted(folder.glob("shard-*.parquet"))
    if not shards:
        raise DataError(
            f"no corpus shards (shard-*.parquet) in {folder}; render the corpus first "
            "or point at the folder that holds its shards"
        )
    if (folder / "manifest.json").is_file():
        from medsafetyworld.corpus.shards import verify_corpus

        verify_corpus(folder)  # also refuses shards the manifest does not name, so `shards` is its list
    return shards


def load_token_stream(corpus_dir: str | os.PathLike, eos_id: int) -> np.ndarray:
    """All documents' `input_ids` in shard order, `eos_id` after each document; the shards are
    checked against their manifest first (shard_paths).

    uint16 when every id fits (vocabularies under 65536), else int32. Each chunk is narrowed as it
    is read, so building the stream holds it about once in the narrow type, not in int64.
    """
    return _read_stream(shard_paths(corpus_dir), eos_id, corpus_dir)


def _read_stream(shards: list[Path], eos_id: int, corpus_dir: str | os.PathLike) -> np.ndarray:
    parts: list[np.ndarray] = []
    dtype = np.dtype(np.uint16 if eos_id < 65536 else np.int32)
    for shard in shards:
        try:
            column = pq.read_table(shard, columns=["input_ids"]).column("input_ids")
        except (KeyError, ValueError, OSError) as e:
            raise DataError(
                f"{shard} has no readable `input_ids` column ({e}); re-render the corpus "
                "with token ids"
            ) from None
        for chunk in column.chunks:
            offsets = np.asarray(chunk.offsets, dtype=np.int64)
            offsets -= offsets[0]
            values = np.asarray(chunk.flatten(), dtype=np.int64)
            n_docs = len(offsets) - 1
            if len(values) and values.min() < 0:
                raise DataError(f"negative token ids in the shards of {corpus_dir}; the corpus is corrupt")
            if dtype == np.uint16 and len(values) and values.max() >= 65536:
                dtype = np.dtype(np.int32)
                parts = [p.astype(dtype) for p in parts]
            # Document i moves i places right to make room for the eos of every earlier document.
            out = np.empty(len(values) + n_docs, dtype=dtype)
            eos_at = offsets[1:] + np.arange(n_docs)
            keep = np.ones(len(out), dtype=bool)
            keep[eos_at] = False
            out[keep] = values
            out[eos_at] = eos_id
            parts.append(out)
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


CACHE_PREFIX = ".token-stream-"


def cached_token_stream(corpus_dir: str | os.PathLike, eos_id: int) -> np.ndarray:
    """`load_token_stream`, kept beside the shards as `.token-stream-<key>.npy` and memory-mapped.

    The shards are checked against their manifest on every call, cached or not (shard_paths). The
    first call writes the file (atomically; the key hashes eos_id and each shard's name, size
    and mtime, so re-rendered shards get a new file and the stale one is removed); later calls, and
    every data-parallel rank on the machine, map the same file, so the stream sits in memory once,
    in the page cache, however many processes train on it. A folder that cannot be written to
    falls back to the in-memory stream.
    """
    folder = Path(corpus_dir)
    shards = shard_paths(folder)
    key = hashlib.sha256(json.dumps(
        [eos_id, [(p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in shards]]).encode()).hexdigest()[:16]
    path = folder / f"{CACHE_PREFIX}{key}.npy"
    if not path.is_file():
        stream = _read_stream(shards, eos_id, folder)
        try:
            with atomic_file(path) as f:
                np.save(f, stream, allow_pickle=False)
        except OSError:
            return stream
        for stale in folder.glob(f"{CACHE_PREFIX}*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}); delete it and it is rebuilt from the shards") from None


@dataclass(frozen=True)
class Region:
    """Tokens [start, end) of the stream, sampled while training progress is below `until`."""

    start: int
    end: int
    until: float


def schedule_regions(corpus_dir: str | os.PathLike, n_tokens: int) -> list[Region] | None:
    """The regions of a scheduled corpus (a manifest with `schedule` and `phases`, written by
    `curriculum`), or None for an unordered one. A phase absent from the corpus is skipped."""
    from medsafetyworld.corpus.shards import load_manifest

    has_manifest = (Path(corpus_dir) / "manifest.json").is_file()  # bare shards (tests, tools) have none
    manifest = load_manifest(corpus_dir) if has_manifest else {}
    schedule, phases = manifest.get("schedule"), manifest.get("phases", {})
    if not schedule:
        return None
    present = [(name, until) for name, until in schedule if name in phases]
    if not present:
        raise DataError(f"the manifest of {corpus_dir} has a schedule but no documents of its phases; "
                        "re-render the corpus")
    offsets = [phases[name] for name, _ in present] + [n_tokens]
    return [Region(offsets[i], offsets[i + 1], float(until)) for i, (_, until) in enumerate(present)]


class PackedBatches:
    """(batch_size, context + 1) windows of the token stream at random offsets.

    Step i's windows come from np.random.default_rng([seed, i]) only, so `batches[i]` is the same
    in every run; iteration starts at `start_step` and never ends.

    With `regions` (a scheduled corpus) and `steps`, step i samples only inside the first region
    whose `until` exceeds i / steps, and no window crosses a region's end.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, context: int, seed: int,
                 start_step: int = 0, regions: list[Region] | None = None, steps: int | None = None):
        if len(tokens) < context + 1:
            raise DataError(
                f"the corpus has {len(tokens)} tokens, fewer than one training window "
                f"({context + 1}); render a bigger corpus or use a shorter context"
            )
        if regions is not None:
            if steps is None:
                raise ValueError("a scheduled corpus needs the number of training steps")
            for r in regions:
                if r.end - r.start < context + 1:
                    raise DataError(f"a curriculum phase holds {r.end - r.start} tokens, fewer than one training "
                                    f"window ({context + 1}); use a larger fraction or budget")
        self.tokens, self.batch_size, self.context = tokens, batch_size, context
        self.seed, self.start_step, self.regions, self.steps = seed, start_step, regions, steps

    def region(self, step: int) -> tuple[int, int]:
        """The token range step `step` samples from."""
        if self.regions is None:
            return 0, len(self.tokens)
        progress = step / self.steps
        r = next((r for r in self.regions if progress < r.until), self.regions[-1])
        return r.start, r.end

    def __getitem__(self, step: int) -> np.ndarray:
        return self.rows(step, slice(None))

    def rows(self, step: int, which: slice) -> np.ndarray:
        """Rows `which` of step `step`'s batch; a data-parallel rank reads only its own."""
        rng = np.random.default_rng([self.seed, step])
        lo, hi = self.region(step)
        starts = lo + rng.integers(0, hi - lo - self.context, size=self.batch_size)
        return np.stack([self.tokens[s : s + self.context + 1] for s in starts[which]]).astype(np.int64)

    def __iter__(self):
        step = self.start_step
        while True:
            yield self[step]
            step += 1


def sft_example(tok, text: str, context: int) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, truncated): labels are -100 up to and including the first
    "\\nAssistant:"; both are cut to the model's context."""
    cut = text.find(ASSISTANT)
    if cut < 0:
        raise DataError(f"finetuning text has no {ASSISTANT!r}: {text[:80]!r}")
    prompt = tok.encode(text[: cut + len(ASSISTANT)], add_special_tokens=False)
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    if ids[: len(prompt)] != prompt:  # cannot happen with our pre-tokenizer; be exact anyway
        raise DataError(f"the prompt of {text[:80]!r} does not tokenize as a prefix of the text")
    labels = [-100] * len(prompt) + ids[len(prompt):]
    return ids[:context], labels[:context], len(ids) > context


def collate_sft(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded (ids, labels, attention mask); padding is masked out of the loss."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)], labels[row, : len(y)], mask[row, : len(x)] = (
            torch.tensor(x), torch.tensor(y), 1)
    return ids, labels, mask
