"""Check a results record of a run folder against the per-probe tables it names, before anything
ranks it (SPEC 7).

A record's numbers are only as good as the table behind them. `check_record` (and its short form
`verify_record`, the list of problems) checks, for the record's own table and for each attack's:

1. the per-probe file lies in the record's folder (record.probes_file_path: no absolute path, no
   `..`, no symlink out) and has the sha256 the record holds;
2. where the world is at hand (a run folder's OUT/world, or `world_dir`), everything rescore.py's
   `check_part` checks: the table asks the probes rebuilt from the world, the record's eval config
   and the probe seed (`msw run` uses the world seed, `msw evaluate` the record's seed: both are
   tried), a prompt attack's as the attack rewrites them; every response is scored again and every
   scored column must be what the scorer gives; every metric (an attack's own too) is recomputed and
   must be the record's. A table edited together with the record's metrics and hash is caught here.
3. without the world, the benchmark metrics are still recomputed from the table as it stands and
   compared (an attack's own metrics need its probes, so they are not).

Problems are collected per part: a record whose own table fails is rejected; one whose attack entry
fails has that attack rejected (`Verification.attack_problems`). What no check can catch: responses
themselves replaced and the whole chain recomputed; only re-running the model can tell.

`msw summarize` (checks.check_records) runs this on every record and leaves out those that fail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medsafetyworld.config import EvalConfig
from medsafetyworld.errors import MSWError
from medsafetyworld.evaluation.families import Probe
from medsafetyworld.leaderboard.record import load_record, probes_file_path, probes_file_problem, record_files
from medsafetyworld.leaderboard.rescore import (
    Disagrees,
    Part,
    attack_part,
    check_part,
    clean_part,
    compare_metrics,
    read_table,
    recompute_metrics,
)


@dataclass
class Verification:
    """What check_record found. `problems`: reasons to reject the record as a whole; attack_problems:
    label -> reasons to reject that attack's entry alone; `notes`: checks that could not be made and
    why; `rescored`: rows scored again; `probes`: the record's per-probe file once checked."""

    path: Path
    record: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    attack_problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rescored: int = 0
    probes: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and not self.attack_problems

    def all_problems(self) -> list[str]:
        return [*self.problems, *(f"attack {label}: {p}" for label, ps in self.attack_problems.items() for p in ps)]


def verify_record(record_path: Path | str, *, world_dir: Path | str | None = None, rescore: bool = True) -> list[str]:
    """The problems check_record finds in the record at `record_path` (its attacks' prefixed
    `attack <label>: `); empty when it checks out."""
    return check_record(record_path, world_dir=world_dir, rescore=rescore).all_problems()


def check_record(
    record_path: Path | str, record: Mapping[str, Any] | None = None, *, world_dir: Path | str | None = None,
    rescore: bool = True, cache: Rescorer | None = None,
) -> Verification:
    """Check the record at `record_path` (or `record`, the same record already loaded, which is
    what gets checked; `record_path` then only says where its files are) against its per-probe
    tables; see the module docstring. `world_dir`: the world to re-score with; default the run
    folder's (`<record>/../../world`, as `msw run` lays it out), if there. `cache`: a Rescorer
    shared between calls, so the world and probes are built once for many records."""
    path = Path(record_path)
    out = Verification(path)
    if record is None:
        try:
            record = load_record(path)
        except MSWError as e:
            out.problems.append(str(e))
            return out
    out.record = dict(record)
    cache = cache or Rescorer()
    world = _world_for(record, path, world_dir, cache, out.notes) if rescore else None
    parts = [("", record), *(record.get("attacks") or {}).items()]
    for label, entry in parts:
        try:
            _check_part(path, record, label, entry, world, cache, out)
        except MSWError as e:  # rescore.Disagrees, a path out of the folder, an attack that cannot be built
            (out.attack_problems.setdefault(label, []) if label else out.problems).append(str(e))
    return out


def _check_part(path: Path, record: Mapping[str, Any], label: str, entry: Mapping[str, Any], world: Path | None,
                cache: Rescorer, out: Verification) -> None:
    """One part of check_record; raises at its first problem."""
    where = f"attacks.{label}.probes_file" if label else "probes_file"
    probes_file = entry.get("probes_file")
    file = probes_file_path(path, probes_file, where=where)
    if (why := probes_file_problem(file, probes_file.get("sha256"))) is not None:
        raise Disagrees(f"its per-probe file {file} ({where}) {why}; re-run the evaluation that wrote it")
    table = read_table(file)
    if not label:
        out.probes = file
    part = _part_for(table, record, label, entry, world, cache, out.notes) if world is not None else None
    if part is None:
        compare_metrics(entry.get("metrics"), recompute_metrics(table))
        return
    _, not_recomputed = check_part(cache.world(world)[1], part, table, entry.get("metrics"))
    out.rescored += len(table)
    if not_recomputed:
        names = ", ".join(f"{m}@{label}" if label else m for m in sorted(not_recomputed))
        _note(out.notes, f"{names} not recomputed ({'; '.join(sorted(set(not_recomputed.values())))})")


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


# --- the world and the probes ------------------------------------------------------------------


class Rescorer:
    """The world, its hash and the probes, built once per (world folder, eval config, probe seed)
    and shared by the records checked with it."""

    def __init__(self) -> None:
        self._worlds: dict[Path, tuple[str, Any, Any, int | None]] = {}
        self._probes: dict[tuple[Path, str, int], list[Probe]] = {}

    def world(self, world_dir: Path) -> tuple[str, Any, Any, int | None]:
        """(world hash, world, splits, world seed or None) of a world folder."""
        world_dir = Path(world_dir).resolve()
        if world_dir not in self._worlds:
            from medsafetyworld.world.io import load_world, world_hash

            world, splits = load_world(world_dir)
            seed = None
            try:
                seed = json.loads((world_dir / "preset.json").read_text()).get("seed")
            except (OSError, ValueError, AttributeError):
                pass
            self._worlds[world_dir] = (world_hash(world_dir), world, splits, seed if isinstance(seed, int) else None)
        return self._worlds[world_dir]

    def probes(self, world_dir: Path, eval_config: Mapping[str, Any], seed: int) -> list[Probe]:
        """The clean probes, as build_probes gives them for the record's eval config and `seed`."""
        from medsafetyworld.evaluation.probes import build_probes

        world_dir = Path(world_dir).resolve()
        key = (world_dir, json.dumps(eval_config, sort_keys=True), seed)
        if key not in self._probes:
            _, world, splits, _ = self.world(world_dir)
            self._probes[key] = build_probes(world, splits, EvalConfig(**eval_config), seed)
        return self._probes[key]


def _world_for(record: Mapping[str, Any], path: Path, world_dir: Path | str | None, cache: Rescorer,
               notes: list[str]) -> Path | None:
    """The world folder to re-score with, or None (and a note saying why not)."""
    folder = Path(world_dir) if world_dir is not None else path.parent.parent.parent / "world"
    if not (folder / "world.json").is_file():
        notes.append(f"responses not re-scored: no world at {folder}")
        return None
    try:
        whash = cache.world(folder)[0]
    except MSWError as e:
        notes.append(f"responses not re-scored: the world at {folder} cannot be loaded ({e})")
        return None
    if whash != record.get("world_hash"):
        notes.append(f"responses not re-scored: the world at {folder} is not the record's (world hash "
                     f"{whash[:16]}, the record's {str(record.get('world_hash'))[:16]})")
        return None
    return folder


def _part_for(table: pd.DataFrame, record: Mapping[str, Any], label: str, entry: Mapping[str, Any], world_dir: Path,
              cache: Rescorer, notes: list[str]) -> Part | None:
    """The part whose probes the table asks, trying the world's seed (`msw run`) then the record's
    (`msw evaluate`) as probe seed; Disagrees when neither fits; None (and a note) when the record
    holds no eval config the probes can be rebuilt from."""
    eval_config = (record.get("config") or {}).get("eval")
    if not isinstance(eval_config, Mapping):
        _note(notes, "responses not re-scored: the record holds no eval config to rebuild the probes")
        return None
    seeds = [cache.world(world_dir)[3], record.get("seed")]
    seeds = [s for s in dict.fromkeys(seeds) if isinstance(s, int) and not isinstance(s, bool) and s >= 0]
    _, world, splits, _ = cache.world(world_dir)
    for seed in seeds:
        try:
            clean = cache.probes(world_dir, eval_config, seed)
        except (TypeError, ValueError, MSWError) as e:  # an eval config this package cannot build probes from
            _note(notes, f"responses not re-scored: the probes of the record's eval config cannot be rebuilt ({e})")
            return None
        part = attack_part(label, entry, world, splits, EvalConfig(**eval_config), seed, clean) if label \
            else clean_part(clean)
        if part.fits(table):
            return part
    raise Disagrees(f"its per-probe table asks probes that are not this world's for probe seed "
                    f"{' or '.join(map(str, seeds)) or '?'} (ids or prompts differ)")


def verify_run(root: Path | str, *, rescore: bool = True) -> list[Verification]:
    """check_record on every record of a run folder, sharing one Rescorer."""
    cache = Rescorer()
    return [check_record(p, rescore=rescore, cache=cache) for p in record_files(root)]
