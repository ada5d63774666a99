"""Parquet shards and the manifest that names them (SPEC 3).

A corpus folder holds `shard-00000.parquet ...` (columns id, kind, text, segments, meta,
input_ids, n_tokens), optionally the same rows as JSONL, and `manifest.json` (config, counts,
token totals, sha256 of every shard). It is written into a temporary sibling folder and renamed
into place at the end, so an interrupted run never leaves a corpus that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from medsafetyworld.corpus.document import UNSAFE, Document
from medsafetyworld.corpus.tokenizer import RED_FLAG, THINK_OPEN, UNSAFE_TAG, batch_encoder
from medsafetyworld.errors import DataError
from medsafetyworld.storage import atomic_dir, sha256_file, write_json_atomic

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("text", pa.string()),
        (
            "segments",
            pa.list_(
                pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string()),
                           ("category", pa.string())])
            ),
        ),
        ("meta", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("n_tokens", pa.int32()),
    ]
)
TOKENIZE_BATCH = 512
# The safety markers strategies insert, counted per kind in the manifest (`count:<marker>`) and by
# `msw corpus stats` (by these names).
MARKERS = {
    "tags": UNSAFE_TAG,
    "red_flags": RED_FLAG,
    "unsafe_reflections": f"{THINK_OPEN} Unsafe",
    "safe_reflections": f"{THINK_OPEN} Safe",
}


class _Stats:
    _MARKER_KEYS = [(f"count:{m}", m) for m in MARKERS.values()]

    def __init__(self) -> None:
        self.per_kind: dict[str, Counter] = defaultdict(Counter)
        self.facts: Counter = Counter()  # by tuple(fact)

    def add(self, doc: Document, n_tokens: int) -> None:
        c = self.per_kind[doc.kind]
        c["documents"] += 1
        c["tokens"] += n_tokens
        unsafe = sum(s.label == UNSAFE for s in doc.segments)
        c["unsafe_segments"] += unsafe
        c["unsafe_documents"] += unsafe > 0
        text = doc.text
        has_marker = "<" in text  # every marker starts with "<"
        for key, marker in self._MARKER_KEYS:
            c[key] += text.count(marker) if has_marker else 0
        self.facts.update(map(tuple, doc.meta.get("facts", ())))


class _ShardRows:
    """The rows of one shard as columns, so that Arrow builds the table without a dict per row."""

    def __init__(self) -> None:
        self.id: list[str] = []
        self.kind: list[str] = []
        self.text: list[str] = []
        self.meta: list[str] = []
        self.n_tokens: list[int] = []
        self.input_ids: list[list[int]] = []
        self.segments: list[list[Any]] = []  # Segment objects

    def add(self, doc: Document, ids: list[int], n_tokens: int) -> None:
        self.id.append(doc.id)
        self.kind.append(doc.kind)
        self.text.append(doc.text)
        self.meta.append(json.dumps(doc.meta, sort_keys=True))  # as Document.to_row stores it
        self.segments.append(doc.segments)
        self.input_ids.append(ids)
        self.n_tokens.append(n_tokens)

    def __len__(self) -> int:
        return len(self.id)

    def table(self) -> pa.Table:
        """The table `pa.Table.from_pylist` makes of the rows (the same Parquet bytes)."""
        segs = [s for doc in self.segments for s in doc]
        seg_type = SCHEMA.field("segments").type
        struct = pa.StructArray.from_arrays(
            [pa.array([s.start for s in segs], pa.int32()), pa.array([s.end for s in segs], pa.int32()),
             pa.array([s.label for s in segs], pa.string()), pa.array([s.category for s in segs], pa.string())],
            fields=list(seg_type.value_type))
        ids = np.fromiter(chain.from_iterable(self.input_ids), np.int32, sum(map(len, self.input_ids)))
        columns = [
            pa.array(self.id, pa.string()), pa.array(self.kind, pa.string()), pa.array(self.text, pa.string()),
            pa.ListArray.from_arrays(_offsets(self.segments), struct, type=seg_type),
            pa.array(self.meta, pa.string()),
            pa.ListArray.from_arrays(_offsets(self.input_ids), pa.array(ids), type=SCHEMA.field("input_ids").type),
            pa.array(self.n_tokens, pa.int32()),
        ]
        return pa.Table.from_arrays(columns, schema=SCHEMA)

    def jsonl_rows(self) -> Iterator[dict[str, Any]]:
        """The rows as Document.to_row writes them, with n_tokens."""
        for i, segments in enumerate(self.segments):
            yield {"id": self.id[i], "kind": self.kind[i], "text": self.text[i],
                   "segments": [vars(s) for s in segments], "meta": self.meta[i], "n_tokens": self.n_tokens[i]}


def _offsets(lists: list[list[Any]]) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int32))


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
    stats, shards, total_tokens, total_docs, phases = _Stats(), [], 0, 0, {}
    rows = _ShardRows()
    docs, encode = iter(docs), batch_encoder(tokenizer)
    with atomic_dir(out_dir) as tmp, tqdm(total=token_budget, unit="tok", unit_scale=True, desc="corpus",
                                          disable=not progress) as bar:
        while total_tokens < token_budget:
            batch = list(islice(docs, TOKENIZE_BATCH))
            if not batch:
                break
            ids = encode([d.text for d in batch])
            for doc, doc_ids in zip(batch, ids):
                n = len(doc_ids) + 1  # the eos the trainer appends
                if (phase := doc.meta.get("phase")) is not None:
                    if phase in phases and list(phases)[-1] != phase:
                        raise DataError(f"phase {phase!r} documents are not contiguous in the stream")
                    phases.setdefault(phase, total_tokens)
                rows.add(doc, doc_ids, n)
                stats.add(doc, n)
                total_tokens += n
                total_docs += 1
                bar.update(n)
                if len(rows) >= shard_documents:
                    shards.append(_write_shard(rows, tmp, len(shards), write_jsonl))
                    rows = _ShardRows()
                if total_tokens >= token_budget:
                    break
        if rows:
            shards.append(_write_shard(rows, tmp, len(shards), write_jsonl))
        coverage = [stats.facts[tuple(f)] for f in atomic_facts]
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


SHARD_NAME = re.compile(r"shard-\d{5,}\.parquet")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What every manifest write_corpus writes must hold, and the type of each (bool is no int here).
_REQUIRED = {"shards": list, "corpus_hash": str, "documents": int, "tokens": int, "token_budget": int}
# Optional fields others read, checked only when present: build_corpus writes them all, except
# `schedule`/`phases` (scheduled strategies only).
_OPTIONAL = {"world_hash": str, "strategy": str, "strategy_label": str, "strategy_params": dict, "seed": int,
             "schedule": list, "phases": dict}


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _shape_problem(manifest: Any) -> str | None:
    """What is wrong with the manifest's shape (the first problem found), or None."""
    want = {dict: "an object", list: "a list", str: "a string", int: "an integer"}
    if not isinstance(manifest, dict):
        return f"it holds {_type_name(manifest)}, not an object"
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in manifest:
            if key in _REQUIRED:
                return f"no `{key}`"
            continue
        value = manifest[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"`{key}` is {_type_name(value)}, not {want[kind]}"
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            return f"`shards[{i}]` is {_type_name(shard)}, not an object"
        name, sha = shard.get("file"), shard.get("sha256")
        if not (isinstance(name, str) and SHARD_NAME.fullmatch(name)):
            return f"`shards[{i}].file` is {name!r}, not a shard file name like shard-00000.parquet"
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            return f"`shards[{i}].sha256` is {sha!r}, not a sha256 in hex"
    if len({s["file"] for s in manifest["shards"]}) != len(manifest["shards"]):
        return "a shard is listed twice"
    phases = manifest.get("phases", {})
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in phases.values()):
        return "`phases` maps a phase to something other than a token offset"
    for step in manifest.get("schedule", []):
        if not (isinstance(step, list) and len(step) == 2 and isinstance(step[0], str)
                and isinstance(step[1], (int, float)) and not isinstance(step[1], bool)):
            return f"`schedule` holds {step!r}, not a [phase, until] pair"
    return None


def load_manifest(corpus_dir: Path) -> dict[str, Any]:
    """The corpus's manifest.json, checked to have the shape write_corpus writes (DataError in one
    line naming the first problem otherwise). Shard hashes are checked by verify_corpus."""
    path = Path(corpus_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"no corpus at {corpus_dir} (manifest.json missing); run `msw corpus --out {corpus_dir}` first")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"corrupt manifest {path}: {exc}; rebuild the corpus with `msw corpus --out {corpus_dir}`") \
            from None
    except OSError as exc:
        raise DataError(f"cannot read manifest {path}: {exc}") from None
    if (problem := _shape_problem(manifest)) is not None:
        raise DataError(f"{path} is not a corpus manifest ({problem}); rebuild it with "
                        f"`msw corpus --out {corpus_dir}` into an empty folder")
    return manifest


def corpus_hash_of(shards: list[dict[str, Any]]) -> str:
    """The corpus hash write_corpus records: sha256 of its shards' sha256s in order."""
    return hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()


def verify_corpus(corpus_dir: Path) -> dict[str, Any]:
    """The manifest, after checking it against the shards: every shard it names is there with the
    sha256 it records, no other shard-*.parquet lies in the folder (the trainer reads them all),
    and its corpus hash is that of the shard hashes. DataError naming the shard and the fix
    otherwise. Costs one sha256 pass over the shards (about 0.01 s per 7 MB, `tiny`'s corpus)."""
    folder = Path(corpus_dir)
    manifest = load_manifest(folder)
    rebuild = (f"delete {folder} and render it again (`msw corpus --out {folder}`, or `msw run`, which "
               "re-renders a missing corpus)")
    listed = {s["file"] for s in manifest["shards"]}
    if extra := sorted(p.name for p in folder.glob("shard-*.parquet") if p.name not in listed):
        raise DataError(f"shard {folder / extra[0]} is not in the manifest of {folder} (copied in from another "
                        f"corpus?); training reads every shard in the folder, so {rebuild}")
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        if not path.is_file():
            raise DataError(f"shard {path} named by the manifest is missing; {rebuild}")
        if sha256_file(path) != shard["sha256"]:
            raise DataError(f"shard {path} does not match the sha256 its manifest records (changed, or replaced "
                            f"by another corpus's shard); {rebuild}")
    if corpus_hash_of(manifest["shards"]) != manifest["corpus_hash"]:
        raise DataError(f"the corpus hash in {folder / 'manifest.json'} is not that of its shards (the manifest "
                        f"was edited); {rebuild}")
    return manifest


def iter_documents(corpus_dir: Path) -> Iterator[Document]:
    manifest = load_manifest(corpus_dir)
    for shard in manifest["shards"]:
        table = pq.read_table(Path(corpus_dir) / shard["file"], columns=["id", "kind", "text", "segments", "meta"])
        for row in table.to_pylist():
            yield Document.from_row(row)
