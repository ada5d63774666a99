"""A submission (SPEC 7): one results record as a folder of JSON, Parquet and, with its model,
safetensors only, plus a manifest of every file's sha256 and size. Layout:

    SUB/submission.json   what it is: name, track, benchmark version, preset, world and probe seeds
    SUB/manifest.json     {"files": {relative path: {"sha256", "size"}}} for every other file
    SUB/record.json       the results record (schema.json)
    SUB/config.json       the record's config, for the leaderboard page to link
    SUB/probes.parquet    the per-probe outputs (prompt and raw response of every probe)
    SUB/attacks/<label>/probes.parquet   the same under each attack
    SUB/model/            with --with-model: *.safetensors, config.json, tokenizer files

A submission is untrusted input. `check_files` asks of one, in this order and stopping at the
first failure with one reason: size bounds, path containment, file types, the manifest's hashes,
the record's schema. Nothing in it is executed, unpickled or imported: JSON is parsed strictly,
Parquet and safetensors are recognised by their magic bytes before any reader sees them.
Recomputing the metrics from the raw responses is the next step (leaderboard/recompute.py).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.parquet as pq

import medsafetyworld
from medsafetyworld.errors import DataError
from medsafetyworld.leaderboard.record import bring_metrics_up_to_date, load_record, validate_record
from medsafetyworld.storage import atomic_dir, sha256_file, write_json_atomic

FORMAT = 1
INFO, MANIFEST, RECORD, CONFIG, MODEL_DIR = "submission.json", "manifest.json", "record.json", "config.json", "model"
TRACKS = ("intervention", "model")
SUFFIXES = (".json", ".parquet", ".safetensors")
# Bounds, checked from the file system before any file is opened.
MAX_FILES = 256
MAX_BYTES = {".json": 16 << 20, ".parquet": 64 << 20, ".safetensors": 4 << 30}
MAX_TOTAL_BYTES = 8 << 30
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")


class Rejected(DataError):
    """A submission the leaderboard does not rank; the message is its one reason."""


@dataclass
class Submission:
    """A submission that passed `check_files`: its folder, what it says it is, and its record."""

    folder: Path
    info: dict[str, Any]
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def has_model(self) -> bool:
        return (self.folder / MODEL_DIR).is_dir()

    def probe_files(self) -> dict[str, Path]:
        """'' for the clean per-probe table, else the attack label -> its table."""
        files = {"": self.folder / self.record["probes_file"]["path"]}
        for label, entry in self.record.get("attacks", {}).items():
            files[label] = self.folder / entry["probes_file"]["path"]
        return files


# --- writing ----------------------------------------------------------------------------------


def _world_seed(world_dir: Path) -> int:
    marker = world_dir / "preset.json"
    if not marker.is_file():
        raise DataError(f"no preset.json in {world_dir}; pass --world, the world folder the results were "
                        "evaluated on (`msw run` writes it to OUT/world)")
    return int(json.loads(marker.read_text())["seed"])


def _record_files(record: Mapping[str, Any]) -> list[str]:
    paths = [record["probes_file"]["path"]]
    paths += [entry["probes_file"]["path"] for entry in record.get("attacks", {}).values()]
    return paths


def default_model_dir(results_dir: Path) -> Path:
    """Where `msw run` keeps the post-trained model of OUT/results/<tag>: OUT/models/<tag>/sft."""
    return results_dir.parent.parent / "models" / results_dir.name / "sft"


def bundle(results_dir: Path | str, out: Path | str, *, world_dir: Path | str | None = None,
           name: str | None = None, track: str | None = None, probe_seed: int | None = None,
           model_dir: Path | str | None = None) -> Path:
    """Write the submission of the results folder `results_dir` (record.json and its per-probe
    files) into `out`; with `model_dir`, its weights, config and tokenizer too. `world_dir`
    defaults to the run's OUT/world; the probe seed to the world seed, as `msw run` evaluates."""
    results_dir = Path(results_dir)
    record = load_record(results_dir / RECORD)
    world_dir = Path(world_dir) if world_dir is not None else results_dir.parent.parent / "world"
    world_seed = _world_seed(world_dir)
    track = track or record["track"]
    if track not in TRACKS:
        raise DataError(f"track must be one of {', '.join(TRACKS)}, got {track!r}")
    info = {
        "format": FORMAT, "name": name or results_dir.name, "track": track,
        "benchmark_version": record["benchmark_version"], "preset": record["preset"],
        "world_seed": world_seed, "probe_seed": world_seed if probe_seed is None else int(probe_seed),
        "package_version": medsafetyworld.__version__,
    }
    record = copy.deepcopy({**record, "track": track})
    entries = [record["probes_file"], *(e["probes_file"] for e in record.get("attacks", {}).values())]
    with atomic_dir(out) as tmp:
        for entry in entries:
            rel = _relative(entry["path"], "the record's per-probe file")
            source = results_dir / rel
            if not source.is_file():
                raise DataError(f"{source} is missing; the record names it; re-run the evaluation")
            if sha256_file(source) != entry["sha256"]:
                raise DataError(f"{source} changed after its record was written (sha256); re-run the evaluation")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            # the same table, zstd-compressed (about a third of the evaluation's snappy file)
            pq.write_table(pq.read_table(source), tmp / rel, compression="zstd", compression_level=19)
            entry["sha256"] = sha256_file(tmp / rel)
        if model_dir is not None:
            _copy_model(Path(model_dir), tmp / MODEL_DIR)
        write_json_atomic(tmp / RECORD, record)
        write_json_atomic(tmp / CONFIG, record["config"])
        write_json_atomic(tmp / INFO, info)
        write_json_atomic(tmp / MANIFEST, {"files": manifest_entries(tmp)})
        check_files(tmp)
    return Path(out)


def _copy_model(source: Path, dest: Path) -> None:
    weights = sorted(source.glob("*.safetensors"))
    if not weights:
        raise DataError(f"no *.safetensors in {source}; pass --model, a Hugging Face model folder")
    dest.mkdir(parents=True)
    for f in weights + [source / n for n in MODEL_FILES if (source / n).is_file()]:
        shutil.copyfile(f, dest / f.name)


def manifest_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `folder` but the manifest, by POSIX relative path."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            out[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return out


# --- checking ---------------------------------------------------------------------------------


def _relative(rel: Any, what: str) -> str:
    """`rel` if it is a plain relative POSIX path inside its folder, else Rejected."""
    if not isinstance(rel, str) or not rel:
        raise Rejected(f"{what} is not a path: {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or "\\" in rel or ":" in rel or any(part in ("..", ".", "") for part in rel.split("/")):
        raise Rejected(f"{what} {rel!r} leaves the submission folder or is not a plain relative path")
    return rel


def _walk(folder: Path) -> list[tuple[str, os.stat_result]]:
    """Every entry under `folder` (relative POSIX path, lstat), links not followed."""
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            out.append((path.relative_to(folder).as_posix(), path.lstat()))
    return out


def _check_sizes(entries: list[tuple[str, os.stat_result]]) -> None:
    import stat

    files = [(rel, st) for rel, st in entries if stat.S_ISREG(st.st_mode)]
    if len(files) > MAX_FILES:
        raise Rejected(f"{len(files)} files; a submission holds at most {MAX_FILES}")
    total = sum(st.st_size for _, st in files)
    if total > MAX_TOTAL_BYTES:
        raise Rejected(f"{total} bytes in all; a submission holds at most {MAX_TOTAL_BYTES}")
    for rel, st in files:
        limit = MAX_BYTES.get(PurePosixPath(rel).suffix)
        if limit is not None and st.st_size > limit:
            raise Rejected(f"{rel} is {st.st_size} bytes; a {PurePosixPath(rel).suffix} file may have at most {limit}")


def _check_containment(entries: list[tuple[str, os.stat_result]]) -> None:
    import stat

    for rel, st in entries:
        if stat.S_ISLNK(st.st_mode):
            raise Rejected(f"{rel} is a symbolic link; a submission holds plain files only")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise Rejected(f"{rel} is not a plain file or folder")


def _check_type(path: Path, rel: str) -> None:
    suffix = path.suffix
    if suffix not in SUFFIXES:
        raise Rejected(f"{rel}: only {', '.join(SUFFIXES)} files are accepted")
    with open(path, "rb") as f:
        head = f.read(8)
        if suffix == ".parquet":
            f.seek(max(0, path.stat().st_size - 4))
            if head[:4] != b"PAR1" or f.read(4) != b"PAR1":
                raise Rejected(f"{rel} is not a Parquet file (no PAR1 magic bytes)")
        elif suffix == ".safetensors":
            if len(head) < 8:
                raise Rejected(f"{rel} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(path.stat().st_size - 8, 100 << 20):
                raise Rejected(f"{rel} is not a safetensors file (header length {n})")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise Rejected(f"{rel} is not a safetensors file (its header is not JSON)") from None
            if not isinstance(header, dict):
                raise Rejected(f"{rel} is not a safetensors file (its header is not a JSON object)")
    if suffix == ".json":
        read_json(path, rel)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_json(path: Path, rel: str) -> Any:
    """Strict JSON (no NaN or Infinity), or Rejected."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constants)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Rejected(f"{rel} is not valid JSON ({str(e)[:120]})") from None


def _check_manifest(folder: Path, on_disk: set[str]) -> None:
    if MANIFEST not in on_disk:
        raise Rejected(f"no {MANIFEST}")
    manifest = read_json(folder / MANIFEST, MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise Rejected(f'{MANIFEST} is not {{"files": {{path: {{"sha256", "size"}}}}}}')
    for rel in files:
        _relative(rel, f"{MANIFEST} entry")
    listed, present = set(files), on_disk - {MANIFEST}
    if missing := sorted(listed - present):
        raise Rejected(f"{MANIFEST} lists {missing[0]}, which is not in the submission")
    if extra := sorted(present - listed):
        raise Rejected(f"{extra[0]} is not in {MANIFEST}")
    for rel in sorted(files):
        entry = files[rel]
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("size"), int)):
            raise Rejected(f"{MANIFEST} entry {rel} lacks a sha256 string and a size")
        if (folder / rel).stat().st_size != entry["size"] or sha256_file(folder / rel) != entry["sha256"]:
            raise Rejected(f"{rel} does not match its sha256 or size in {MANIFEST}")


def _check_info(folder: Path) -> dict[str, Any]:
    info = read_json(folder / INFO, INFO) if (folder / INFO).is_file() else None
    if not isinstance(info, dict):
        raise Rejected(f"no {INFO} object")
    need = {"format": int, "name": str, "track": str, "benchmark_version": str, "preset": str,
            "world_seed": int, "probe_seed": int}
    for key, kind in need.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise Rejected(f"{INFO}: {key} must be a {kind.__name__}")
    if info["format"] != FORMAT:
        raise Rejected(f"{INFO}: format {info['format']} is not {FORMAT}, the one this version reads")
    if info["track"] not in TRACKS:
        raise Rejected(f"{INFO}: track must be one of {', '.join(TRACKS)}")
    if not 0 <= info["world_seed"] < 2**63 or not 0 <= info["probe_seed"] < 2**63:
        raise Rejected(f"{INFO}: seeds must be between 0 and 2**63 - 1")
    return info


def _check_record(folder: Path, info: Mapping[str, Any], on_disk: set[str]) -> dict[str, Any]:
    if RECORD not in on_disk:
        raise Rejected(f"no {RECORD}")
    record = read_json(folder / RECORD, RECORD)
    try:
        validate_record(record, source=RECORD)
        if isinstance(record.get("metrics"), dict):  # metrics redefined since its metrics_version: recomputed
            bring_metrics_up_to_date(record, folder / RECORD)
    except DataError as e:
        raise Rejected(str(e)) from None
    for field in ("benchmark_version", "preset", "track"):
        if record[field] != info[field]:
            raise Rejected(f"{RECORD} says {field} {record[field]!r}, {INFO} {info[field]!r}")
    if record["benchmark_version"] != medsafetyworld.BENCHMARK_VERSION:
        raise Rejected(f"benchmark version {record['benchmark_version']}; this leaderboard ranks "
                       f"{medsafetyworld.BENCHMARK_VERSION}")
    for rel in _record_files(record):
        _relative(rel, f"{RECORD}'s per-probe file")
        if rel not in on_disk or not rel.endswith(".parquet"):
            raise Rejected(f"{RECORD} names {rel}, which is not a Parquet file of the submission")
    return record


def check_files(folder: Path | str) -> Submission:
    """Size bounds, path containment, file types, the manifest's hashes and the record's schema,
    in that order; raises Rejected with the first failure, else returns the Submission."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise Rejected(f"{folder} is not a folder")
    entries = _walk(folder)
    _check_sizes(entries)
    _check_containment(entries)
    on_disk = {rel for rel, st in entries if (folder / rel).is_file()}
    for rel in sorted(on_disk):
        _check_type(folder / rel, rel)
    _check_manifest(folder, on_disk)
    info = _check_info(folder)
    record = _check_record(folder, info, on_disk)
    return Submission(folder, info, record)
