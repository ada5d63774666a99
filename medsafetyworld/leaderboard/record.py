"""The results record: one JSON file per (strategy, preset, seed) that a leaderboard can rank (SPEC 7).

Like lm-evaluation-harness's results schema, a record says what was run (benchmark version, config
and its hash, world and corpus hashes, seed), with which code and on which machine, every metric
with n and interval, and the sha256 of the per-probe outputs, so any number can be traced back to
the probe answers behind it. `schema.json` next to this file is the contract.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

import medsafetyworld
from medsafetyworld.storage import sha256_file, write_atomic as atomic_write  # noqa: F401 (re-exported)
from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.metrics import METRIC_NAMES, METRICS_VERSION, MetricValue, compute_metrics, stale_metrics
from medsafetyworld.evaluation.scoring import SCORING_VERSION

TRACKS = ("intervention", "model")
POLICY_KINDS = ("model", "reference")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_device() -> str | None:
    # torch is imported only here, so building a record for a reference policy stays light.
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA setup must not stop the record being written
        return None


def git_revision() -> str | None:
    """HEAD of the git checkout holding this package, or None (installed copy, no git, no commit)."""
    root = Path(medsafetyworld.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        # Only the package's own repository: an installed copy may sit inside someone else's.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:
            return None
        return git("rev-parse", "HEAD") or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info() -> dict[str, Any]:
    """Versions, platform, hardware and git revision of the process writing the record."""
    return {
        "python": platform.python_version(),
        "torch": _package_version("torch"),
        "transformers": _package_version("transformers"),
        "numpy": _package_version("numpy"),
        "platform": platform.platform(),
        "hardware": {"cpu_count": os.cpu_count(), "cuda_device": _cuda_device()},
        "git_revision": git_revision(),
    }


def _jsonable(value: Any) -> Any:
    """A deep copy made of JSON types only (numpy scalars, tuples and paths converted)."""

    def default(x: Any) -> Any:
        if hasattr(x, "item"):  # numpy scalar
            return x.item()
        if isinstance(x, os.PathLike):
            return os.fspath(x)
        raise TypeError(f"{type(x).__name__} is not JSON serializable")

    try:
        return json.loads(json.dumps(value, default=default))
    except (TypeError, ValueError) as e:
        raise DataError(f"results record field cannot be written as JSON: {e}") from None


def build_record(
    *,
    strategy: str,
    preset: str,
    seed: int,
    config: Mapping[str, Any],
    config_hash: str,
    world_hash: str,
    corpus_hash: str | None,
    model_info: Mapping[str, Any],
    metrics: Mapping[str, MetricValue],
    probes_path: Path | str,
    policy_kind: str = "model",
    track: str = "intervention",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The results record of one (strategy, preset, seed) run, validated against schema.json.

    model_info needs n_parameters and tokens_seen (None for reference policies); other keys are
    kept. corpus_hash is None for reference policies. The per-probe file is recorded by its file
    name (records sit next to it) and sha256.
    """
    probes_path = Path(probes_path)
    record: dict[str, Any] = {
        "benchmark_version": medsafetyworld.BENCHMARK_VERSION,
        "scoring_version": SCORING_VERSION,
        "metrics_version": METRICS_VERSION,
        "package_version": medsafetyworld.__version__,
        "track": track,
        "policy_kind": policy_kind,
        "strategy": strategy,
        "preset": preset,
        "seed": seed,
        "world_hash": world_hash,
        "corpus_hash": corpus_hash,
        "config": _jsonable(dict(config)),
        "config_hash": config_hash,
        "model": _jsonable(dict(model_info)),
        "metrics": {
            name: m.to_dict() if isinstance(m, MetricValue) else _jsonable(m)
            for name, m in metrics.items()
        },
        "probes_file": {"path": probes_path.name, "sha256": sha256_file(probes_path)},
        "environment": environment_info(),
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if extra is not None:
        record["extra"] = _jsonable(dict(extra))
    validate_record(record)
    return record


@cache
def load_schema() -> dict[str, Any]:
    """The JSON Schema of a results record (package data)."""
    text = importlib.resources.files(__package__).joinpath("schema.json").read_text("utf-8")
    return json.loads(text)


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif str(p).isidentifier():
            out += f".{p}"
        else:
            out += f"[{json.dumps(str(p))}]"
    return out


def _describe(error: jsonschema.ValidationError) -> str:
    """`<json path>: <what was expected>` for one schema violation."""
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"{_json_path(path + missing[:1])}: required field is missing"
    got = repr(error.instance)
    got = got if len(got) <= 60 else got[:57] + "..."
    if error.validator == "type":
        return f"{_json_path(path)}: expected type {error.validator_value}, got {got}"
    if error.validator == "enum":
        return f"{_json_path(path)}: expected one of {error.validator_value}, got {got}"
    if error.validator == "pattern":
        return f"{_json_path(path)}: expected a string matching {error.validator_value}, got {got}"
    return f"{_json_path(path)}: {error.message}"


def validate_record(record: Any, *, source: str | None = None) -> None:
    """Raise DataError naming the JSON path of the first schema violation and what was expected."""
    validator = jsonschema.Draft202012Validator(load_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(record))
    if error is not None:
        where = f" {source}" if source else ""
        raise DataError(
            f"invalid results record{where}: {_describe(error)} "
            f"(schema: medsafetyworld/leaderboard/schema.json, benchmark "
            f"{medsafetyworld.BENCHMARK_VERSION}); rebuild it with build_record"
        )


def save_record(record: Mapping[str, Any], path: Path | str) -> Path:
    """Validate, then write the record as indented JSON atomically. Returns the path."""
    path = Path(path)
    validate_record(record, source=f"for {path}")
    try:
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise DataError(f"results record for {path} cannot be written as strict JSON: {e}") from None
    atomic_write(path, text)
    return path


def probes_file_path(record_path: Path | str, probes_file: Any, *, where: str = "probes_file") -> Path:
    """The per-probe file that `probes_file` ({"path", "sha256"}, the record's or one of its
    attacks') of the record at `record_path` names, confined to the record's folder: the path must
    be relative, without `..`, and must not lead out of the folder through a symlink. DataError
    naming the record and the field otherwise. Does not check that the file exists or its hash."""
    record_path = Path(record_path)
    folder = record_path.parent
    name = probes_file.get("path") if isinstance(probes_file, Mapping) else None
    if not isinstance(name, str) or not name:
        raise DataError(f"results record {record_path} names no per-probe file at {where}.path; re-run the "
                        "evaluation that wrote it")
    parts = name.replace("\\", "/").split("/")
    if "\0" in name:
        why = "it holds a NUL character"
    elif name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        why = "it is absolute"
    elif ".." in parts:
        why = "it climbs out with `..`"
    else:
        base = folder.resolve()
        try:
            inside = (folder / name).resolve().is_relative_to(base)
        except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable folder
            inside = False
        why = None if inside else "a symlink leads out of the record's folder"
    if why is not None:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise DataError(
            f"results record {record_path}: {where}.path {shown!r} is not a file in the record's folder ({why}); "
            "a record names its per-probe files relative to its own folder, so this one was edited or "
            "copied from elsewhere: re-run the evaluation that wrote it, or remove it")
    return folder / name


def probes_file_problem(path: Path, sha256: Any) -> str | None:
    """Why the per-probe file at `path` is not the one a record holding `sha256` was written with
    (`is missing`, `does not have the sha256 ...`), or None when it is. Callers say whose file it is
    and what to do."""
    if not path.is_file():
        return "is missing"
    if sha256_file(path) != sha256:
        return "does not have the sha256 the record holds (it changed after the record was written)"
    return None


def _check_probes_paths(record: Any, path: Path) -> None:
    """probes_file_path on the record's per-probe file and each attack's, where the field has the
    shape the schema wants (validate_record reports the rest)."""
    if not isinstance(record, dict):
        return
    if isinstance(record.get("probes_file"), dict) and isinstance(record["probes_file"].get("path"), str):
        probes_file_path(path, record["probes_file"])
    attacks = record.get("attacks")
    for label, entry in attacks.items() if isinstance(attacks, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("probes_file"), dict) \
                and isinstance(entry["probes_file"].get("path"), str):
            probes_file_path(path, entry["probes_file"], where=f"attacks.{label}.probes_file")


def _recompute_metrics(record: dict[str, Any], path: Path, part: dict[str, Any], names: list[str], why: str,
                       where: str = "probes_file") -> None:
    """Recompute `names` in `part` (the record itself or one of its attack entries) from the part's
    per-probe file, which sits in the record's folder and whose sha256 the part records: metrics
    that joined METRICS after the record was written, or whose definition changed since
    (evaluation.metrics.REDEFINED).

    Value and n are exactly what a fresh evaluation of the same probes gives; the interval uses the
    record's bootstrap_samples and its seed as bootstrap seed (the probe seed is not recorded, so
    the interval may differ from a fresh run's by resampling noise). The part says so in
    extra.metrics_recomputed_on_load (the record's) or metrics_recomputed_on_load (an attack's).
    Nothing is written back to disk here.
    """
    probes_file = part.get("probes_file")
    rerun = (
        f"re-run the evaluation that wrote it (`msw evaluate`, or delete {path.parent / '.stage.json'} "
        "so `msw run` evaluates again)"
    )
    what = f"results record {path}{'' if where == 'probes_file' else f' ({where})'} {why} {', '.join(names)}"
    if not (isinstance(probes_file, dict) and isinstance(probes_file.get("path"), str)):
        raise DataError(f"{what} and names no per-probe file to recompute them from; {rerun}")
    probes = probes_file_path(path, probes_file, where=where)
    if (problem := probes_file_problem(probes, probes_file.get("sha256"))) is not None:
        raise DataError(f"{what} and its per-probe file {probes} {problem}, so they cannot be recomputed; {rerun}")
    import pandas as pd

    eval_cfg = record.get("config", {}).get("eval", {}) if isinstance(record.get("config"), dict) else {}
    n_boot = int(eval_cfg.get("bootstrap_samples", 1000))
    seed = record.get("seed") if isinstance(record.get("seed"), int) and record.get("seed") >= 0 else 0
    try:
        table = pd.read_parquet(probes)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise DataError(f"{what} and its per-probe file {probes} cannot be read ({e}); {rerun}") from None
    computed = compute_metrics(table, n_boot=n_boot, seed=seed, names=names)
    for name in names:
        part["metrics"][name] = computed[name].to_dict()
    note = {"metrics": names, "probes_file": probes_file["path"], "bootstrap_samples": n_boot, "bootstrap_seed": seed}
    if part is record:
        if isinstance(record.setdefault("extra", {}), dict):
            record["extra"]["metrics_recomputed_on_load"] = note
    else:
        part["metrics_recomputed_on_load"] = note


def bring_metrics_up_to_date(record: dict[str, Any], path: Path) -> None:
    """Give the record, and each of its attack entries, the metrics of this metrics version: those
    missing from the record and those redefined since a part's metrics_version (absent: 1) are
    recomputed from the part's per-probe file (_recompute_metrics); the parts then carry
    METRICS_VERSION. The record's own file must allow it (DataError otherwise); an attack entry whose
    file does not stays as it was. A version that is not an integer is left for the schema to report."""
    attacks = record.get("attacks") if isinstance(record.get("attacks"), dict) else {}
    parts = [("probes_file", record)] + [
        (f"attacks.{label}.probes_file", entry) for label, entry in attacks.items()
        if isinstance(entry, dict) and isinstance(entry.get("metrics"), dict)
    ]
    for where, part in parts:
        version = part.get("metrics_version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            continue
        # an attack may evaluate a subset of the probe families: it recomputes only what it holds
        stale = [n for n in stale_metrics(version) if part is record or n in part["metrics"]]
        if part is record and (missing := [n for n in METRIC_NAMES if n not in part["metrics"]]):
            names = [n for n in METRIC_NAMES if n in {*missing, *stale}]
            _recompute_metrics(record, path, part, names, "predates metrics", where)
        elif stale:
            try:
                _recompute_metrics(record, path, part, stale, f"was scored with metric definitions version {version}; "
                                   f"version {METRICS_VERSION} redefined", where)
            except DataError:
                if part is record:
                    raise
                continue  # its per-probe file is gone or changed: the entry stays as it was, unversioned,
                # and verification (leaderboard/verify.py) leaves it out as it would any such entry
        part["metrics_version"] = max(version, METRICS_VERSION)


def load_record(path: Path | str) -> dict[str, Any]:
    """Read and validate one record; DataError if missing, not JSON, or not a valid record.

    A record written before some metric joined the benchmark gets it recomputed from its per-probe
    file (see _add_missing_metrics), or a DataError saying how to re-run it. Every per-probe file
    the record names (its own, its attacks') must lie in the record's folder (probes_file_path);
    whether the files match the record is leaderboard/verify.py's check."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise DataError(f"results record {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"results record {path} cannot be read: {e}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"results record {path} is not valid JSON (line {e.lineno}, column {e.colno}: "
            f"{e.msg}); the file is corrupt or truncated, re-run the evaluation that wrote it"
        ) from None
    _check_probes_paths(record, path)
    if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
        bring_metrics_up_to_date(record, path)
    validate_record(record, source=str(path))
    return record


def load_records(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """load_record of each path, in order."""
    return [load_record(p) for p in paths]


def record_files(root: Path | str) -> list[Path]:
    """The record.json files of a run folder: results/*/record.json, else any below it."""
    root = Path(root)
    return sorted(root.glob("results/*/record.json")) or sorted(root.rglob("record.json"))


def records_on_disk(root: Path | str) -> dict[tuple[Any, Any, Any], Path]:
    """(strategy, seed, per-probe sha256) -> record.json, for each record file under `root` (none
    when it is not a folder): how a record held in memory finds its file, and so its per-probe files.
    Files that are not records are passed over (load_record says why when asked to read one)."""
    found: dict[tuple[Any, Any, Any], Path] = {}
    for path in record_files(root) if Path(root).is_dir() else []:
        try:
            r = json.loads(path.read_text("utf-8"))
            key = (r["strategy"], r["seed"], r["probes_file"]["sha256"])
            hash(key)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.setdefault(key, path)
    return found
