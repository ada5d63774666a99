"""Writing a corpus: documents -> token ids -> Parquet shards and the manifest (`corpus.shards`).

The writer reads `CorpusRow`s, a document reduced to what a shard stores and the manifest counts,
so that the rows can come from this process (`corpus_rows`) or from a child process that renders
the stream beside the writer (`corpus.workers`) with the same bytes written.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from itertools import islice
from json.encoder import c_make_encoder, encode_basestring_ascii
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from medsafetyworld.corpus.document import UNSAFE, Document
from medsafetyworld.corpus.shards import MARKERS, SCHEMA, corpus_hash_of
from medsafetyworld.corpus.tokenizer import batch_encoder
from medsafetyworld.errors import DataError
from medsafetyworld.storage import atomic_dir, sha256_file, write_json_atomic

TOKENIZE_BATCH = 512


class CorpusRow(NamedTuple):
    """A document as the writer needs it."""

    id: str
    kind: str
    text: str
    segments: tuple[tuple[int, int, str, str | None], ...]  # (start, end, label, category)
    meta: str  # JSON, as Document.to_row stores it
    facts: tuple[int, ...]  # the positions of its meta facts among the world's atomic facts
    phase: str | None  # meta["phase"] (scheduled strategies)


_SEGMENT = attrgetter("start", "end", "label", "category")
# json.dumps(meta, sort_keys=True), without building a JSONEncoder per call (a tenth of the writer's
# time): the same encoder json.dumps builds, made once
_META_JSON = json.JSONEncoder(sort_keys=True)
if c_make_encoder is not None:
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys, allow_nan)
    _encode_meta = c_make_encoder(None, _META_JSON.default, encode_basestring_ascii, None, ": ", ", ",
                                  True, False, True)

    def meta_json(meta: dict[str, Any]) -> str:
        return "".join(_encode_meta(meta, 0))
else:  # a Python without the C encoder
    meta_json = _META_JSON.encode


def corpus_rows(docs: Iterable[Document], atomic_facts: list[tuple[str, str, str]]) -> Iterator[CorpusRow]:
    """The documents as rows; a meta fact that is not an atomic fact is not counted (the manifest
    counts mentions of atomic facts only)."""
    position = {tuple(f): i for i, f in enumerate(atomic_facts)}
    for doc in docs:
        facts = tuple(i for i in map(position.get, map(tuple, doc.meta.get("facts", ()))) if i is not None)
        yield CorpusRow(doc.id, doc.kind, doc.text, tuple(map(_SEGMENT, doc.segments)), meta_json(doc.meta), facts,
                        doc.meta.get("phase"))


class _Stats:
    _MARKER_KEYS = [(f"count:{m}", m) for m in MARKERS.values()]

    def __init__(self) -> None:
        self.per_kind: dict[str, Counter] = defaultdict(Counter)
        self.facts: Counter = Counter()  # by position among the atomic facts

    def add(self, row: CorpusRow, n_tokens: int) -> None:
        c = self.per_kind[row.kind]
        c["documents"] += 1
        c["tokens"] += n_tokens
        unsafe = sum(s[2] == UNSAFE for s in row.segments)
        c["unsafe_segments"] += unsafe
        c["unsafe_documents"] += unsafe > 0
        text = row.text
        has_marker = "<" in text  # every marker starts with "<"
        for key, marker in self._MARKER_KEYS:
            c[key] += text.count(marker) if has_marker else 0
        self.facts.update(row.facts)


class _ShardRows:
    """The rows of one shard as flat columns, so that Arrow builds the table without a dict per row
    and the shard being filled holds no Python container per document (the garbage collector
    would walk them all, again and again, while the stream renders)."""

    def __init__(self) -> None:
        self.id: list[str] = []
        self.kind: list[str] = []
        self.text: list[str] = []
        self.meta: list[str] = []
        self.n_tokens: list[int] = []
        self.token_ids, self.token_offsets = array("i"), array("i", [0])
        self.seg_start, self.seg_end, self.seg_offsets = array("i"), array("i"), array("i", [0])
        self.seg_label: list[str] = []
        self.seg_category: list[str | None] = []

    def add(self, row: CorpusRow, ids: list[int], n_tokens: int) -> None:
        self.id.append(row.id)
        self.kind.append(row.kind)
        self.text.append(row.text)
        self.meta.append(row.meta)
        self.n_tokens.append(n_tokens)
        self.token_ids.extend(ids)
        self.token_offsets.append(len(self.token_ids))
        for start, end, label, category in row.segments:
            self.seg_start.append(start)
            self.seg_end.append(end)
            self.seg_label.append(label)
            self.seg_category.append(category)
        self.seg_offsets.append(len(self.seg_label))

    def __len__(self) -> int:
        return len(self.id)

    def table(self) -> pa.Table:
        """The table `pa.Table.from_pylist` makes of the rows (the same Parquet bytes)."""
        def ints(a: array) -> pa.Array:  # without a copy
            return pa.array(np.frombuffer(a, np.int32))

        seg_type = SCHEMA.field("segments").type
        struct = pa.StructArray.from_arrays(
            [ints(self.seg_start), ints(self.seg_end), pa.array(self.seg_label, pa.string()),
             pa.array(self.seg_category, pa.string())], fields=list(seg_type.value_type))
        columns = [
            pa.array(self.id, pa.string()), pa.array(self.kind, pa.string()), pa.array(self.text, pa.string()),
            pa.ListArray.from_arrays(ints(self.seg_offsets), struct, type=seg_type),
            pa.array(self.meta, pa.string()),
            pa.ListArray.from_arrays(ints(self.token_offsets), ints(self.token_ids),
                                     type=SCHEMA.field("input_ids").type),
            pa.array(self.n_tokens, pa.int32()),
        ]
        return pa.Table.from_arrays(columns, schema=SCHEMA)

    def jsonl_rows(self) -> Iterator[dict[str, Any]]:
        """The rows as Document.to_row writes them, with n_tokens."""
        for i in range(len(self)):
            segs = range(self.seg_offsets[i], self.seg_offsets[i + 1])
            yield {"id": self.id[i], "kind": self.kind[i], "text": self.text[i],
                   "segments": [{"start": self.seg_start[j], "end": self.seg_end[j], "label": self.seg_label[j],
                                 "category": self.seg_category[j]} for j in segs],
                   "meta": self.meta[i], "n_tokens": self.n_tokens[i]}


def write_corpus(
    docs: Iterable[Document],
    tokenizer: Any,
    out_dir: Path,
    *,
    token_budget: int,
    shard_documents: int,
    manifest_extra: dict[str, Any],
    atomic_facts: list[tuple[str, str, str]],
    write_jsonl: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize and write documents until `token_budget` tokens (eos included) are reached.

    Documents with `meta["phase"]` (a scheduled strategy such as `curriculum`) give the manifest
    `phases`: the token offset in the stream at which each phase begins."""
    return write_rows(corpus_rows(docs, atomic_facts), tokenizer, out_dir, token_budget=token_budget,
                      shard_documents=shard_documents, manifest_extra=manifest_extra, atomic_facts=atomic_facts,
                      write_jsonl=write_jsonl, progress=progress)


def write_rows(
    rows: Iterable[CorpusRow],
    tokenizer: Any,
    out_dir: Path,
    *,
    token_budget: int,
    shard_documents: int,
    manifest_extra: dict[str, Any],
    atomic_facts: list[tuple[str, str, str]],
    write_jsonl: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """write_corpus for rows made by `corpus_rows` with the same atomic facts."""
    stats, shards, total_tokens, total_docs, phases = _Stats(), [], 0, 0, {}
    shard = _ShardRows()
    rows, encode = iter(rows), batch_encoder(tokenizer)
    with atomic_dir(out_dir) as tmp, tqdm(total=token_budget, unit="tok", unit_scale=True, desc="corpus",
                                          disable=not progress) as bar:
        while total_tokens < token_budget:
            batch = list(islice(rows, TOKENIZE_BATCH))
            if not batch:
                break
            for row, ids in zip(batch, encode([r.text for r in batch])):
                n = len(ids) + 1  # the eos the trainer appends
                if (phase := row.phase) is not None:
                    if phase in phases and list(phases)[-1] != phase:
                        raise DataError(f"phase {phase!r} documents are not contiguous in the stream")
                    phases.setdefault(phase, total_tokens)
                shard.add(row, ids, n)
                stats.add(row, n)
                total_tokens += n
                total_docs += 1
                bar.update(n)
                if len(shard) >= shard_documents:
                    shards.append(_write_shard(shard, tmp, len(shards), write_jsonl))
                    shard = _ShardRows()
                if total_tokens >= token_budget:
                    break
        if shard:
            shards.append(_write_shard(shard, tmp, len(shards), write_jsonl))
        # a fact listed twice is one key, as it was when facts were counted by name
        position = {tuple(f): i for i, f in enumerate(atomic_facts)}
        coverage = [stats.facts[position[tuple(f)]] for f in atomic_facts]
        manifest = {
            **manifest_extra,
            "documents": total_docs,
            "tokens": total_tokens,
            "token_budget": token_budget,
            "per_kind": {k: dict(sorted(v.items())) for k, v in sorted(stats.per_kind.items())},
            "fact_coverage": {"facts": len(coverage), "min_mentions": min(coverage, default=0),
                              "facts_below_min": sum(c < manifest_extra.get("min_fact_mentions", 0) for c in coverage)},
            "shards": shards,
            **({"phases": phases} if phases else {}),
            "corpus_hash": corpus_hash_of(shards),
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


def _write_shard(rows: _ShardRows, folder: Path, index: int, write_jsonl: bool) -> dict[str, Any]:
    name = f"shard-{index:05d}.parquet"
    pq.write_table(rows.table(), folder / name, compression="zstd")
    entry = {"file": name, "documents": len(rows), "tokens": int(sum(rows.n_tokens)),
             "sha256": sha256_file(folder / name)}
    if write_jsonl:
        with open(folder / name.replace(".parquet", ".jsonl"), "w") as f:
            for r in rows.jsonl_rows():
                f.write(json.dumps(r) + "\n")
    return entry
