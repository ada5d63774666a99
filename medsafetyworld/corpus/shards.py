"""Parquet shards and the manifest that names them (SPEC 3): their schema, and reading and
checking them (`corpus.writer` writes them).

A corpus folder holds `shard-00000.parquet ...` (columns id, kind, text, segments, meta,
input_ids, n_tokens), optionally the same rows as JSONL, and `manifest.json` (config, counts,
token totals, sha256 of every shard). It is written into a temporary sibling folder and renamed
into place at the end, so an interrupted run never leaves a corpus that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medsafetyworld.corpus.document import Document
from medsafetyworld.corpus.tokenizer import RED_FLAG, THINK_OPEN, UNSAFE_TAG
from medsafetyworld.errors import DataError
from medsafetyworld.storage import sha256_file

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
# The safety markers strategies insert, counted per kind in the manifest (`count:<marker>`) and by
# `msw corpus stats` (by these names).
MARKERS = {
    "tags": UNSAFE_TAG,
    "red_flags": RED_FLAG,
    "unsafe_reflections": f"{THINK_OPEN} Unsafe",
    "safe_reflections": f"{THINK_OPEN} Safe",
}


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
