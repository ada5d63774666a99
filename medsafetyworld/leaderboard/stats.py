"""Statistics across training seeds and between two strategies on the same probes (SPEC 6).

- `aggregate_seeds`: per (strategy, metric) the number of seeds, mean, sample std (ddof=1), min and
  max of the metric over the strategy's training seeds.
- `paired_bootstrap`: the difference b - a of one metric between two strategies evaluated on the
  same probes. Each resample draws probe indices once and applies them to both strategies' tables,
  so probe difficulty cancels out of the difference. With several seeds per strategy, the metric is
  averaged over the strategy's seeds within each resample (the same indices for every seed), so the
  point estimate is exactly the difference of the summary's seed means. The interval is over probes
  given the trained models; how much training seeds move a metric is what the std across seeds says.
- `holm`: Holm's step-down correction of several p-values.

Every trained strategy against the baseline, corrected together, is significance.py. Metric
definitions are not repeated here: `metrics.metric_terms` gives each metric as (mask, hits) terms
over the table's rows, and a resample only reweights rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.evaluation.metrics import _MAX_CHUNK_ELEMENTS, combine, metric_terms
from medsafetyworld.leaderboard.grouping import flat_metrics, is_reference, metric_names, strategy_groups

ProbeTable = pd.DataFrame | str | Path
SEED_COLUMNS = ("strategy", "policy_kind", "metric", "n_seeds", "mean", "std", "min", "max", "seeds")


# --- across seeds -----------------------------------------------------------------------------


def aggregate_seeds(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (strategy, metric): n_seeds, mean, std (ddof=1), min, max over its seeds.

    A seed whose metric is undefined (value None: no probes) is left out, as in the summary, so
    n_seeds counts the seeds that have a value; std is NaN with fewer than two. Rows follow the
    summary's order (raw first, strategies by name, then reference policies), metrics METRICS order.
    """
    groups = strategy_groups(records)
    names, rows = metric_names(records), []
    for strategy, group in groups.items():
        kind = "reference" if any(is_reference(r) for r in group) else "model"
        for m in names:
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


def load_table(probes: ProbeTable) -> pd.DataFrame:
    """A per-probe table given as a table or its path; DataError saying what to do if unreadable."""
    if isinstance(probes, pd.DataFrame):
        return probes
    try:
        return pd.read_parquet(probes)
    except FileNotFoundError:
        raise DataError(f"per-probe table {probes} not found; re-run the evaluation that writes it") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise DataError(f"per-probe table {probes} cannot be read ({e}); re-run the evaluation") from None


def as_tables(probes: ProbeTable | Sequence[ProbeTable]) -> list[pd.DataFrame]:
    """One table per seed: a single table/path, or a sequence of them."""
    items = [probes] if isinstance(probes, (pd.DataFrame, str, Path)) else list(probes)
    if not items:
        raise DataError("no per-probe tables given; pass one table (or path) per seed")
    return [load_table(p) for p in items]


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


def paired_bootstraps(
    tables_a: list[pd.DataFrame], tables_b: list[pd.DataFrame], metrics: Sequence[str] | None, n_boot: int,
    seed: int, alpha: float,
) -> dict[str, dict[str, float]]:
    """paired_bootstrap of each of `metrics` (None: every metric the tables define) on one draw:
    metric -> paired_bootstrap's result. tables_a/tables_b: one aligned-or-not table per seed."""
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
    return paired_bootstraps(as_tables(probes_a), as_tables(probes_b), [metric], n_boot, seed, alpha)[metric]


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
