"""Which differences between strategies are real: every trained strategy against the baseline
(`raw`), on the same probes, each metric's comparisons Holm-corrected together (SPEC 6).

`compare_to_baseline` takes a run folder, record.json paths or (record, per-probe table) pairs;
`significance` is what `msw summarize` writes (significance.csv, and render.significance_markdown's
section of summary.md): it adds the attacked metrics, compared on the attacks' per-probe tables
(the same probe ids for every strategy, so the pairing holds). The statistics are stats.py's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.metrics import HIGHER_IS_BETTER, is_defined, metric_terms
from medsafetyworld.leaderboard.grouping import ATTACK_METRICS, check_comparable, is_reference, row_order
from medsafetyworld.leaderboard.record import (
    load_record,
    probes_file_path,
    probes_file_problem,
    record_files,
    records_on_disk,
)
from medsafetyworld.leaderboard.stats import ProbeTable, as_tables, holm, load_table, paired_bootstraps

COMPARISON_COLUMNS = (
    "metric", "strategy", "baseline", "n_seeds", "n_seeds_baseline", "n", "value", "value_baseline",
    "diff", "ci_low", "ci_high", "p_value", "p_holm", "significant", "direction", "n_boot",
    "seed_pairs_agreeing", "seed_pairs",
)
# The smallest bootstrap p-value is 2 / (n_boot + 1) and Holm multiplies it by the number of
# strategies, so with the micro preset's 200 resamples five strategies could never reach 0.05.
MIN_COMPARISON_RESAMPLES = 2000


def _probes_next_to(record: Mapping[str, Any], record_path: Path, entry: Mapping[str, Any] | None = None) -> Path:
    """The per-probe file of the record (or of `entry`, one of its attacks), in the record's folder
    (record.probes_file_path) and with the sha256 the record holds, else DataError."""
    probes_file = (record if entry is None else entry)["probes_file"]
    where = "probes_file" if entry is None else "an attack's probes_file"
    path = probes_file_path(record_path, probes_file, where=where)
    if (why := probes_file_problem(path, probes_file["sha256"])) is not None:
        raise DataError(f"per-probe file {path} of record {record_path} {why}; re-run its evaluation")
    return path


def _runs(source: str | Path | Iterable[Any]) -> list[tuple[Mapping[str, Any], ProbeTable]]:
    """(record, per-probe table) pairs from a run folder, record.json paths, or such pairs."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise DataError(f"{root} is not a run folder; pass the --out folder of `msw run`")
        source = record_files(root)
        if not source:
            raise DataError(f"no record.json under {root}; run the evaluation first")
    runs = []
    for item in source:
        if isinstance(item, (str, Path)):
            record = load_record(item)
            runs.append((record, _probes_next_to(record, Path(item))))
        elif isinstance(item, tuple) and len(item) == 2:
            runs.append(item)
        else:
            raise DataError(
                "a record alone does not say where its per-probe table is; pass the run folder, "
                "record.json paths, or (record, probes table or path) pairs"
            )
    return runs


def compare_to_baseline(
    source: str | Path | Iterable[Any],
    baseline: str = "raw",
    metrics: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Every trained strategy against the baseline, per metric: paired bootstrap and Holm.

    source: a run folder (its results/*/record.json with the probes.parquet next to each), an
    iterable of record.json paths, or of (record, probes table or path) pairs; metrics: None for
    every metric the per-probe tables define (metrics.metric_terms). Reference policies
    are anchors, not interventions, and are not compared. Rows (metric, strategy) in METRICS then
    summary order, with value/value_baseline (seed means), diff = strategy - baseline, its
    interval, p_value, p_holm (Holm over the strategies compared on that metric; metrics are
    separate questions and are not corrected against each other), significant (the 1 - alpha
    interval excludes 0 and p_holm < alpha), direction ("better"/"worse" given whether higher
    is better, "" when the difference is 0 or undefined), n_boot (resamples where the metric was
    defined on both sides) and seed_pairs_agreeing of seed_pairs (`seed_pairs`: whether the
    difference shows between every seed of one side and every seed of the other).
    """
    runs = _runs(source)
    check_comparable([r for r, _ in runs])
    groups: dict[str, list[tuple[Mapping[str, Any], ProbeTable]]] = {}
    for record, probes in sorted(runs, key=lambda run: run[0]["seed"]):
        groups.setdefault(record["strategy"], []).append((record, probes))
    if baseline not in groups:
        raise DataError(f"baseline {baseline!r} has no records; strategies: {', '.join(sorted(groups))}")
    others = sorted(
        (s for s, g in groups.items() if s != baseline and not any(is_reference(r) for r, _ in g)),
        key=lambda s: row_order(s, False),
    )
    base_tables = as_tables([p for _, p in groups[baseline]])
    results = {
        s: paired_bootstraps(base_tables, as_tables([p for _, p in groups[s]]), metrics, n_boot, seed, alpha)
        for s in others
    }
    rows = []
    for m in next(iter(results.values()), {}) if metrics is None else metrics:
        for strategy in others:
            r = results[strategy][m]
            rows.append({
                "metric": m, "strategy": strategy, "baseline": baseline, "n_seeds": len(groups[strategy]),
                "n_seeds_baseline": len(groups[baseline]), "n": r["n"], "value": r["value_b"],
                "value_baseline": r["value_a"], "diff": r["diff"], "ci_low": r["ci_low"],
                "ci_high": r["ci_high"], "p_value": r["p_value"], "n_boot": r["n_boot"],
                "seed_pairs_agreeing": r["seed_pairs_agreeing"], "seed_pairs": r["seed_pairs"],
            })
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    table["p_holm"] = table.groupby("metric")["p_value"].transform(lambda p: holm(p.to_numpy()))
    excludes_zero = (table["ci_low"] > 0) | (table["ci_high"] < 0)
    table["significant"] = (excludes_zero & (table["p_holm"] < alpha)).astype(bool)
    table["direction"] = [_direction(m, d) for m, d in zip(table["metric"], table["diff"])]
    return table


def _direction(metric: str, diff: float) -> str:
    if math.isnan(diff) or diff == 0 or metric not in HIGHER_IS_BETTER:
        return ""
    return "better" if (diff > 0) == HIGHER_IS_BETTER[metric] else "worse"


# --- what the summary writes ------------------------------------------------------------------


def locate_probes(records: Sequence[Mapping[str, Any]], root: Path | str) -> dict[tuple[str, int], Path]:
    """(strategy, seed) -> per-probe file, for each record whose record.json sits under `root` (a
    run folder; record.records_on_disk) next to a per-probe file in its folder with the sha256 the
    record holds; others are left out."""
    on_disk, found = records_on_disk(root), {}
    for r in records:
        path = on_disk.get((r["strategy"], r["seed"], r["probes_file"]["sha256"]))
        try:
            if path is not None:
                found[(r["strategy"], r["seed"])] = _probes_next_to(r, path)
        except DataError:  # not a file the comparison can use; the rest of the summary does not need it
            continue
    return found


def significance(
    records: Sequence[Mapping[str, Any]], probes: Mapping[tuple[str, int], ProbeTable], baseline: str = "raw",
    seed: int = 0,
) -> tuple[pd.DataFrame | None, str]:
    """compare_to_baseline for the summary: (table, note) or (None, why there is nothing to compare).

    A strategy with a seed whose per-probe table is not in `probes` is left out and named in the
    note. Attacked metrics (`<metric>@<attack label>`) are compared too, on each attack's own
    per-probe tables (`_attacked_comparisons`), and Holm-corrected within each of those names.
    Resamples: the baseline's eval.bootstrap_samples (1000 if not recorded), at least
    MIN_COMPARISON_RESAMPLES.
    """
    base = [r for r in records if r["strategy"] == baseline]
    if not base:
        return None, f"there is no `{baseline}` record"
    if any((r["strategy"], r["seed"]) not in probes for r in base):
        return None, f"the per-probe tables of `{baseline}` were not found next to its records"
    others: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if r["strategy"] != baseline and not is_reference(r):
            others.setdefault(r["strategy"], []).append(r)
    missing = sorted(s for s, g in others.items() if any((r["strategy"], r["seed"]) not in probes for r in g))
    compared = [r for s, g in others.items() if s not in missing for r in g]
    note = f"not compared (per-probe tables not found): {', '.join(f'`{s}`' for s in missing)}" if missing else ""
    if not compared:
        return None, note or f"no strategy besides `{baseline}` was trained"
    recorded = int(base[0].get("config", {}).get("eval", {}).get("bootstrap_samples", 1000))
    n_boot = max(recorded, MIN_COMPARISON_RESAMPLES)
    pairs = [(r, probes[(r["strategy"], r["seed"])]) for r in [*base, *compared]]
    table = compare_to_baseline(pairs, baseline, n_boot=n_boot, seed=seed)
    attacked, skipped = _attacked_comparisons(pairs, baseline, n_boot, seed)
    if skipped:
        missing = f"attacks not compared (per-probe tables missing or changed): {skipped}"
        note = "; ".join(x for x in (note, missing) if x)
    return pd.concat([table, *attacked], ignore_index=True), note


def _attacked_comparisons(
    pairs: Sequence[tuple[Mapping[str, Any], ProbeTable]], baseline: str, n_boot: int, seed: int,
) -> tuple[list[pd.DataFrame], str]:
    """compare_to_baseline on each attack's per-probe tables, for the metrics the summary shows of
    an attack that the tables define; rows named `<metric>@<attack label>`. An attack is compared
    where every seed of the baseline and of at least one other strategy holds it; the tables are
    found where the record's `attacks.<label>.probes_file` says, relative to the clean table's
    folder (the record's), and must have the sha256 it holds. Also returns the labels left out,
    for the note."""
    def table_of(record, clean, label):
        entry = record.get("attacks", {}).get(label)
        if entry is None or not isinstance(clean, (str, Path)):  # an in-memory table has nothing beside it
            return None
        try:  # the clean table sits in the record's folder
            return _probes_next_to(record, Path(clean), entry)
        except DataError:
            return None

    labels = sorted({label for r, _ in pairs for label in r.get("attacks", {})})
    out, skipped = [], []
    for label in labels:
        by_strategy: dict[str, list] = {}
        for r, p in pairs:
            by_strategy.setdefault(r["strategy"], []).append((r, table_of(r, p, label)))
        usable = {s: g for s, g in by_strategy.items() if all(t is not None for _, t in g)}
        if baseline not in usable or len(usable) < 2:
            skipped.append(f"`{label}`")
            continue
        use = [x for g in usable.values() for x in g]
        terms = metric_terms(load_table(use[0][1]))  # a metric the attack asked no probes of is left out
        defined = {m for m, parts in terms.items() if is_defined(m, parts)}
        metrics = [m for m in ATTACK_METRICS if m in defined]
        if not metrics:
            continue
        part = compare_to_baseline(use, baseline, metrics=metrics, n_boot=n_boot, seed=seed)
        part["metric"] = part["metric"] + f"@{label}"
        out.append(part)
    return out, ", ".join(skipped)
