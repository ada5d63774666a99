"""Statistics across training seeds and between strategies: which differences are real (SPEC 6).

- `aggregate_seeds`: per (strategy, metric) the number of seeds, mean, sample std (ddof=1), min and
  max of the metric over the strategy's training seeds.
- `paired_bootstrap`: the difference b - a of one metric between two strategies evaluated on the
  same probes. Each resample draws probe indices once and applies them to both strategies' tables,
  so probe difficulty cancels out of the difference. With several seeds per strategy, the metric is
  averaged over the strategy's seeds within each resample (the same indices for every seed), so the
  point estimate is exactly the difference of the summary's seed means. The interval is over probes
  given the trained models; how much training seeds move a metric is what the std across seeds says.
- `compare_to_baseline`: every trained strategy against the baseline (`raw`), each metric's
  comparisons Holm-corrected together; `significance` adds the attacked metrics, compared on the
  attacks' per-probe tables (the same probe ids for every strategy, so the pairing holds).

Metric definitions are not repeated here: `metrics.metric_terms` gives each metric as (mask, hits)
terms over the table's rows, and a resample only reweights rows.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.evaluation.metrics import (
    _MAX_CHUNK_ELEMENTS,
    HIGHER_IS_BETTER,
    combine,
    is_defined,
    metric_terms,
)
from medsafetyworld.leaderboard.record import load_record
from medsafetyworld.leaderboard.summary import (
    _check_comparable,
    _is_reference,
    _metric_names,
    _row_order,
    flat_metrics,
)
from medsafetyworld.storage import sha256_file

ProbeTable = pd.DataFrame | str | Path
SEED_COLUMNS = ("strategy", "policy_kind", "metric", "n_seeds", "mean", "std", "min", "max", "seeds")
COMPARISON_COLUMNS = (
    "metric", "strategy", "baseline", "n_seeds", "n_seeds_baseline", "n", "value", "value_baseline",
    "diff", "ci_low", "ci_high", "p_value", "p_holm", "significant", "direction", "n_boot",
    "seed_pairs_agreeing", "seed_pairs",
)
# The smallest bootstrap p-value is 2 / (n_boot + 1) and Holm multiplies it by the number of
# strategies, so with the micro preset's 200 resamples five strategies could never reach 0.05.
MIN_COMPARISON_RESAMPLES = 2000


# --- across seeds -----------------------------------------------------------------------------


def aggregate_seeds(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (strategy, metric): n_seeds, mean, std (ddof=1), min, max over its seeds.

    A seed whose metric is undefined (value None: no probes) is left out, as in the summary, so
    n_seeds counts the seeds that have a value; std is NaN with fewer than two. Rows follow the
    summary's order (raw first, strategies by name, then reference policies), metrics METRICS order.
    """
    _check_comparable(records)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        groups.setdefault(r["strategy"], []).append(r)
    kinds = {s: "reference" if any(_is_reference(r) for r in g) else "model" for s, g in groups.items()}
    rows = []
    for strategy in sorted(groups, key=lambda s: _row_order(s, kinds[s] == "reference")):
        group, kind = groups[strategy], kinds[strategy]
        for m in _metric_names(records):
            seeds = [r["seed"] for r in group if _value(r, m) is not None]
            x = np.array([_value(r, m) for r in group if _value(r, m) is not None], dtype=float)
            rows.append({
                "strategy": strategy, "policy_kind": kind, "metric": m, "n_seeds": len(x),
                "mean": x.mean() if len(x) else math.nan,
                "std": x.std(ddof=1) if len(x) > 1 else math.nan,
                "min": x.min() if len(x) else math.nan,
                "max": x.max() if len(x) else math.nan,
                "seeds": " ".join(map(str, seeds)),
            })
    return pd.DataFrame(rows, columns=list(SEED_COLUMNS))


def _value(record: Mapping[str, Any], metric: str) -> float | None:
    entry = flat_metrics(record).get(metric)  # attacked metrics too, as the summary names them
    value = None if entry is None else entry.get("value")
    return None if value is None or math.isnan(value) else float(value)


# --- paired bootstrap -------------------------------------------------------------------------


def _read_table(probes: ProbeTable) -> pd.DataFrame:
    if isinstance(probes, pd.DataFrame):
        return probes
    try:
        return pd.read_parquet(probes)
    except FileNotFoundError:
        raise DataError(f"per-probe table {probes} not found; re-run the evaluation that writes it") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise DataError(f"per-probe table {probes} cannot be read ({e}); re-run the evaluation") from None


def _as_tables(probes: ProbeTable | Sequence[ProbeTable]) -> list[pd.DataFrame]:
    """One table per seed: a single table/path, or a sequence of them."""
    items = [probes] if isinstance(probes, (pd.DataFrame, str, Path)) else list(probes)
    if not items:
        raise DataError("no per-probe tables given; pass one table (or path) per seed")
    return [_read_table(p) for p in items]


def _aligned(tables_a: list[pd.DataFrame], tables_b: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """All tables with their rows in the first table's probe order; DataError unless every table has
    the same probe ids, each once (the pairing is by probe_id, not by row position)."""
    tables = [*tables_a, *tables_b]
    ids = []
    for t in tables:
        if "probe_id" not in t.columns:
            raise DataError("per-probe table lacks the probe_id column; it must come from the evaluator")
        dup = t["probe_id"][t["probe_id"].duplicated()]
        if len(dup):
            raise DataError(f"per-probe table lists probe {dup.iloc[0]!r} twice; each probe must appear once")
        ids.append(pd.Index(t["probe_id"]))
    for i, other in enumerate(ids[1:], start=1):
        if len(other) != len(ids[0]) or not other.isin(ids[0]).all():
            side, k = ("a", i) if i < len(tables_a) else ("b", i - len(tables_a))
            only_a, only_b = ids[0].difference(other), other.difference(ids[0])
            raise DataError(
                f"the strategies were not evaluated on the same probes: table {k} of {side} differs from "
                f"table 0 of a ({len(only_a)} probes missing, e.g. {list(only_a[:3])}; {len(only_b)} extra, "
                f"e.g. {list(only_b[:3])}); evaluate both with the same world, preset and probe seed"
            )
    return [t.set_index("probe_id").loc[ids[0]].reset_index() for t in tables]


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # an all-NaN slice is an undefined metric, NaN on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


class _Design:
    """Every metric's terms over the aligned tables of both sides, stacked as columns, so one
    matrix product with a (resamples x probes) count matrix rates them all."""

    def __init__(self, terms_a: list[dict], terms_b: list[dict], metrics: Sequence[str]):
        masks, hits = [], []
        self.columns: dict[str, list[list[list[int]]]] = {m: [[], []] for m in metrics}
        self.n: dict[str, int] = {}
        for side, tables in enumerate((terms_a, terms_b)):
            for terms in tables:
                for m in metrics:
                    cols = []
                    for weight, hit in terms[m]:
                        cols.append(len(masks))
                        weight = np.asarray(weight, dtype=float)
                        masks.append(weight)
                        hits.append(np.where(weight > 0, np.asarray(hit, dtype=float), 0.0))
                    self.columns[m][side].append(cols)
        self.masks = np.array(masks, dtype=float).T  # probes x columns
        self.hits = np.array(hits, dtype=float).T
        for m in metrics:
            used = [c for side in self.columns[m] for cols in side for c in cols]
            self.n[m] = int(self.masks[:, used].any(axis=1).sum())

    def table_values(self, counts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per metric, (side a, side b) as (resamples x tables) arrays: a term's rate is its weighted
        hit share, a table's metric its terms' rates combined as metrics.combine says."""
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = (counts @ self.hits) / (counts @ self.masks)
        return {
            m: tuple(np.stack([combine(m, rates[:, cols]) for cols in tables], axis=1) for tables in sides)
            for m, sides in self.columns.items()
        }

    def values(self, counts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per metric, (side a, side b) values of every resample row of `counts`."""
        return _seed_means(self.table_values(counts))


def _seed_means(table_values: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A side's value from its tables' (`_Design.table_values`): the mean over its seeds of the
    defined ones (as the summary leaves undefined seeds out)."""
    return {m: (_nanmean(a, axis=1), _nanmean(b, axis=1)) for m, (a, b) in table_values.items()}


def seed_pairs(values_a: Sequence[float], values_b: Sequence[float], diff: float) -> tuple[int, int]:
    """(agreeing, pairs): of every (seed of b, seed of a) pair where both are defined, how many
    differ in the direction of `diff`, strictly. The probe bootstrap's interval holds the trained
    seeds fixed; this says whether the difference shows seed by seed or is carried by one seed."""
    a = np.asarray(values_a, dtype=float)
    b = np.asarray(values_b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if math.isnan(diff) or diff == 0:
        return 0, a.size * b.size
    return int((np.sign(b[:, None] - a[None, :]) == np.sign(diff)).sum()), a.size * b.size


def _resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    """How often each probe is drawn in each resample, in chunks of rows of (resamples x n)."""
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        yield np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def bootstrap_p_value(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'no difference': twice the smaller share of resampled
    differences on either side of 0 (ties count on both sides), with the +1 of a Monte Carlo
    p-value so it is never 0; the smallest level at which the percentile interval reaches 0."""
    diffs = diffs[~np.isnan(diffs)]
    if diffs.size == 0:
        return math.nan
    k = min(int((diffs <= 0).sum()), int((diffs >= 0).sum()))
    return min(1.0, 2 * (k + 1) / (diffs.size + 1))


def _paired(
    tables_a: list[pd.DataFrame], tables_b: list[pd.DataFrame], metrics: Sequence[str] | None, n_boot: int,
    seed: int, alpha: float,
) -> dict[str, dict[str, float]]:
    """paired_bootstrap of each of `metrics` (None: every metric the tables define) on one draw."""
    if n_boot < 1:
        raise ConfigError(f"n_boot must be at least 1, got {n_boot}")
    tables = _aligned(tables_a, tables_b)
    n_probes = len(tables[0])
    if n_probes == 0:
        raise DataError("the per-probe tables have no rows; re-run the evaluation that wrote them")
    terms = [metric_terms(t) for t in tables]
    metrics = list(terms[0]) if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in terms[0]]
    if unknown:
        raise ConfigError(
            f"metrics {unknown} cannot be recomputed from per-probe tables; choose from {', '.join(terms[0])}"
        )
    design = _Design(terms[: len(tables_a)], terms[len(tables_a):], metrics)
    per_seed = design.table_values(np.ones((1, n_probes)))
    point = _seed_means(per_seed)
    boot: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for counts in _resample_counts(n_probes, n_boot, np.random.default_rng(seed)):
        for m, (a, b) in design.values(counts).items():
            boot[m].append(b - a)
    out = {}
    for m in metrics:
        a, b = float(point[m][0][0]), float(point[m][1][0])
        diffs = np.concatenate(boot[m]) if boot[m] else np.array([])
        diffs = diffs[~np.isnan(diffs)] if not math.isnan(b - a) else np.array([])
        lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2]) if diffs.size else (math.nan, math.nan)
        agreeing, pairs = seed_pairs(per_seed[m][0][0], per_seed[m][1][0], b - a)
        out[m] = {
            "diff": b - a, "ci_low": float(lo), "ci_high": float(hi), "p_value": bootstrap_p_value(diffs),
            "n": design.n[m], "value_a": a, "value_b": b, "n_boot": int(diffs.size),
            "seed_pairs_agreeing": agreeing, "seed_pairs": pairs,
        }
    return out


def paired_bootstrap(
    probes_a: ProbeTable | Sequence[ProbeTable],
    probes_b: ProbeTable | Sequence[ProbeTable],
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Paired bootstrap of metric(b) - metric(a) over the probes both were evaluated on.

    probes_a/probes_b: a per-probe table (probes.parquet, or its path) or one per seed. Tables are
    joined on probe_id (DataError if any table's probe set differs). Each resample draws probe
    indices once for every table of both sides; a side's value is its metric averaged over its seeds.
    Returns diff (point estimate), ci_low/ci_high (percentile interval at 1 - alpha), p_value
    (two-sided, bootstrap_p_value), n (probes counting toward the metric in any table), value_a,
    value_b, n_boot (resamples where the metric was defined on both sides) and seed_pairs_agreeing
    of seed_pairs (`seed_pairs`). Deterministic for a seed; the resamples do not depend on which
    metric is asked for.
    """
    return _paired(_as_tables(probes_a), _as_tables(probes_b), [metric], n_boot, seed, alpha)[metric]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN stays NaN and does not count as a test): the i-th
    smallest of m is multiplied by m - i + 1, then made non-decreasing and capped at 1. Rejecting
    where the adjusted p < alpha keeps the family-wise error rate at alpha."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


# --- every strategy against the baseline ------------------------------------------------------


def _record_files(root: Path) -> list[Path]:
    return sorted(root.glob("results/*/record.json")) or sorted(root.rglob("record.json"))


def _probes_next_to(record: Mapping[str, Any], record_path: Path, entry: Mapping[str, Any] | None = None) -> Path:
    """The per-probe file of the record (or of `entry`, one of its attacks), checked against the
    sha256 the record holds; paths are relative to the record's folder."""
    probes_file = (record if entry is None else entry)["probes_file"]
    path = record_path.parent / probes_file["path"]
    if not path.is_file():
        raise DataError(f"per-probe file {path} of record {record_path} is missing; re-run its evaluation")
    if sha256_file(path) != probes_file["sha256"]:
        raise DataError(f"per-probe file {path} changed since record {record_path} was written; re-run its evaluation")
    return path


def _runs(source: str | Path | Iterable[Any]) -> list[tuple[Mapping[str, Any], ProbeTable]]:
    """(record, per-probe table) pairs from a run folder, record.json paths, or such pairs."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise DataError(f"{root} is not a run folder; pass the --out folder of `msw run`")
        source = _record_files(root)
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
    _check_comparable([r for r, _ in runs])
    groups: dict[str, list[tuple[Mapping[str, Any], ProbeTable]]] = {}
    for record, probes in sorted(runs, key=lambda run: run[0]["seed"]):
        groups.setdefault(record["strategy"], []).append((record, probes))
    if baseline not in groups:
        raise DataError(f"baseline {baseline!r} has no records; strategies: {', '.join(sorted(groups))}")
    others = sorted(
        (s for s, g in groups.items() if s != baseline and not any(_is_reference(r) for r, _ in g)),
        key=lambda s: _row_order(s, False),
    )
    base_tables = _as_tables([p for _, p in groups[baseline]])
    results = {
        s: _paired(base_tables, _as_tables([p for _, p in groups[s]]), metrics, n_boot, seed, alpha) for s in others
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
    run folder) next to a per-probe file with the sha256 the record holds; others are left out."""
    wanted = {(r["strategy"], r["seed"]): r["probes_file"]["sha256"] for r in records}
    found = {}
    for path in _record_files(Path(root)) if Path(root).is_dir() else []:
        try:
            on_disk = json.loads(path.read_text("utf-8"))
            key, probes = (on_disk["strategy"], on_disk["seed"]), path.parent / on_disk["probes_file"]["path"]
            usable = key in wanted and key not in found and probes.is_file()
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a record the comparison can use; the rest of the summary does not need it
        if usable and sha256_file(probes) == wanted[key]:
            found[key] = probes
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
        if r["strategy"] != baseline and not _is_reference(r):
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
    from medsafetyworld.leaderboard.summary import ATTACK_METRICS

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
        terms = metric_terms(_read_table(use[0][1]))  # a metric the attack asked no probes of is left out
        defined = {m for m, parts in terms.items() if is_defined(m, parts)}
        metrics = [m for m in ATTACK_METRICS if m in defined]
        if not metrics:
            continue
        part = compare_to_baseline(use, baseline, metrics=metrics, n_boot=n_boot, seed=seed)
        part["metric"] = part["metric"] + f"@{label}"
        out.append(part)
    return out, ", ".join(skipped)
