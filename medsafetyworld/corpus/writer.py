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


def tokenized(rows: Iterable[CorpusRow], tokenizer: Any,
              token_budget: int) -> Iterator[tuple[CorpusRow, list[int], int]]:
    """(row, token ids, tokens with the eos the trainer appends) until `token_budget` tokens are
    reached: the document that reaches it is the last."""
    rows, encode, total = iter(rows), batch_encoder(tokenizer), 0
    while total < token_budget:
        batch = list(islice(rows, TOKENIZE_BATCH))
        if not batch:
            return
        for row, ids in zip(batch, encode([r.text for r in batch])):
            n = len(ids) + 1
            yield row, ids, n
            total += n
            if total >= token_budget:
                return


class Phases:
    """Where each phase of a scheduled strategy begins in the token stream; its phases must be contiguous."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}

    def add(self, phase: str | None, position: int) -> None:
        if phase is None:
            return
        if phase in self.starts and list(self.starts)[-1] != phase:
            raise DataError(f"phase {phase!r} documents are not contiguous in the stream")
        self.starts.setdefault(phase, position)


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
    stats, shards, total_tokens, total_docs, phases = _Stats(), [], 0, 0, Phases()
    shard = _ShardRows()
    with atomic_dir(out_dir) as tmp, tqdm(total=token_budget, unit="tok", unit_scale=True, desc="corpus",
                                          disable=not progress) as bar:
        for row, ids, n in tokenized(rows, tokenizer, token_budget):
            phases.add(row.phase, total_tokens)
            shard.add(row, ids, n)
            stats.add(row, n)
            total_tokens += n
            total_docs += 1
            bar.update(n)
            if len(shard) >= shard_documents:
                shards.append(write_shard(shard.table(), tmp, len(shards), write_jsonl))
                shard = _ShardRows()
        if shard:
            shards.append(write_shard(shard.table(), tmp, len(shards), write_jsonl))
        manifest = corpus_manifest(stats, shards, phases, total_docs, total_tokens, token_budget=token_budget,
                                   manifest_extra=manifest_extra, atomic_facts=atomic_facts)
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


def corpus_manifest(stats: _Stats, shards: list[dict[str, Any]], phases: Phases, documents: int, tokens: int, *,
                    token_budget: int, manifest_extra: dict[str, Any],
                    atomic_facts: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The manifest of the shards written, with the counts and fact coverage of their rows."""
    # a fact listed twice is one key, as it was when facts were counted by name
    position = {tuple(f): i for i, f in enumerate(atomic_facts)}
    coverage = [stats.facts[position[tuple(f)]] for f in atomic_facts]
    return {
        **manifest_extra,
        "documents": documents,
        "tokens": tokens,
        "token_budget": token_budget,
        "per_kind": {k: dict(sorted(v.items())) for k, v in sorted(stats.per_kind.items())},
        "fact_coverage": {"facts": len(coverage), "min_mentions": min(coverage, default=0),
                          "facts_below_min": sum(c < manifest_extra.get("min_fact_mentions", 0) for c in coverage)},
        "shards": shards,
        **({"phases": phases.starts} if phases.starts else {}),
        "corpus_hash": corpus_hash_of(shards),
    }


def write_shard(table: pa.Table, folder: Path, index: int, write_jsonl: bool) -> dict[str, Any]:
    """Shard `index` of the corpus from a table of SCHEMA (one chunk per column); its manifest entry."""
    name = f"shard-{index:05d}.parquet"
    pq.write_table(table, folder / name, compression="zstd")
    n_tokens = table.column("n_tokens").to_pylist()
    entry = {"file": name, "documents": table.num_rows, "tokens": int(sum(n_tokens)),
             "sha256": sha256_file(folder / name)}
    if write_jsonl:
        columns = [table.column(c).to_pylist() for c in ("id", "kind", "text", "segments", "meta")]
        with open(folder / name.replace(".parquet", ".jsonl"), "w") as f:
            for (id_, kind, text, segments, meta), n in zip(zip(*columns), n_tokens):
                # as Document.to_row writes a row, with n_tokens
                row = {"id": id_, "kind": kind, "text": text, "segments": segments, "meta": meta, "n_tokens": n}
                f.write(json.dumps(row) + "\n")
    return entry
