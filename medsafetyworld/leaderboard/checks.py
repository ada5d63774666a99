"""The record checks `msw summarize` makes before it ranks anything (issue 13): every record whose
record.json lies under the output folder is checked against its per-probe tables (verify.py). A
record that fails is left out, an attack entry that fails is dropped from its record; each gets a
warning line, and summary.md's "Checks" section (checks_markdown) lists them."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsafetyworld.errors import DataError
from medsafetyworld.leaderboard.record import records_on_disk
from medsafetyworld.leaderboard.verify import Rescorer, Verification, check_record

log = logging.getLogger("medsafetyworld")


@dataclass
class Checks:
    """What check_records did: the records to summarize, those left out (their Verification), the
    records kept without some attack (Verification with attack_problems), and the records that
    could not be checked (no record.json of theirs under the folder), as `strategy seed N`."""

    kept: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    left_out: list[Verification] = dataclasses.field(default_factory=list)
    attacks_dropped: list[Verification] = dataclasses.field(default_factory=list)
    unchecked: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    probes: dict[tuple[str, int], Path] = dataclasses.field(default_factory=dict)
    checked: int = 0
    rescored: int = 0
    seconds: float = 0.0


def _where(v: Verification) -> str:
    r = v.record or {}
    return f"{v.path} (`{r.get('strategy', '?')}` seed {r.get('seed', '?')})"


def check_records(records: Sequence[Mapping[str, Any]], root: Path | str, *, rescore: bool = True) -> Checks:
    """verify.check_record on each record whose record.json lies under `root` (matched by strategy,
    seed and per-probe sha256): the ones that fail are left out, attacks that fail are dropped from
    a copy of their record, each with a warning line. Records not found under `root` are kept
    unchecked (and listed)."""
    start, root = time.perf_counter(), Path(root)
    out, files, cache = Checks(), records_on_disk(root), Rescorer()
    for record in records:
        probes_file = record.get("probes_file")
        sha = probes_file.get("sha256") if isinstance(probes_file, Mapping) else None
        path = files.get((record.get("strategy"), record.get("seed"), sha))
        if path is None:
            out.unchecked.append(f"`{record.get('strategy')}` seed {record.get('seed')}")
            out.kept.append(dict(record))
            continue
        v = check_record(path, record, rescore=rescore, cache=cache)
        out.checked += 1
        out.rescored += v.rescored
        out.notes += [n for n in v.notes if n not in out.notes]
        if v.problems:
            out.left_out.append(v)
            log.warning("summarize: left out %s: %s", _where(v), "; ".join(v.problems))
            continue
        kept = dict(record)
        if v.attack_problems:
            out.attacks_dropped.append(v)
            kept["attacks"] = {k: e for k, e in record.get("attacks", {}).items() if k not in v.attack_problems}
            for label, problems in v.attack_problems.items():
                log.warning("summarize: left out attack %s of %s: %s", label, _where(v), "; ".join(problems))
        out.kept.append(kept)
        if v.probes is not None:
            out.probes[(record["strategy"], record["seed"])] = v.probes
    out.seconds = time.perf_counter() - start
    if not out.kept and out.left_out:
        raise DataError(f"every record failed its check against its per-probe tables, so there is nothing to "
                        f"summarize; the first: {_where(out.left_out[0])}: {out.left_out[0].problems[0]}")
    return out


def checks_markdown(checks: Checks) -> str:
    """The summary.md section on the record checks: what was checked, what was left out and why."""
    n = checks.checked + len(checks.unchecked)
    lines = [
        "## Checks", "",
        f"{checks.checked} of {n} records were checked against their per-probe tables before this summary: each "
        "per-probe file lies in its record's folder and has the sha256 the record holds, every metric's value and "
        "n are those its table gives (intervals are bootstrap draws and are not recomputed), and where the run "
        "folder holds the world, each response is scored again by the rule-based scorer against the probes "
        f"rebuilt from it, an attack's as the attack rewrites them ({checks.rescored} rows re-scored; "
        f"{checks.seconds:.1f} s).",
    ]
    if checks.unchecked:
        lines += ["", f"Not checked (no record.json of theirs in this folder): {', '.join(checks.unchecked)}."]
    if checks.notes:
        lines += ["", "Not checked: " + "; ".join(checks.notes) + "."]
    if checks.left_out:
        lines += ["", f"**Left out** ({len(checks.left_out)} records that fail the check; rows above exclude them):"]
        lines += [f"- {_where(v)}: {'; '.join(v.problems)}" for v in checks.left_out]
    if checks.attacks_dropped:
        lines += ["", "**Attacks left out** (their entries fail the check; the records' other results are shown):"]
        lines += [f"- {_where(v)}, attack `{label}`: {'; '.join(ps)}"
                  for v in checks.attacks_dropped for label, ps in v.attack_problems.items()]
    if not checks.left_out and not checks.attacks_dropped and checks.checked:
        lines += ["", "Every record checked agrees with its per-probe tables."]
    return "\n".join(lines) + "\n"
