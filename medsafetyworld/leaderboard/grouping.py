"""Group results records into the leaderboard's table: one row per strategy (SPEC 6-7).

Reference policies are rows too, as `ref:<name>`. With one seed a cell is the metric's value and its
95% bootstrap interval over probes; with several seeds it is the mean and the sample standard
deviation (ddof=1) across seeds, and the interval columns hold mean ± std. Only records that can be
ranked together are grouped (check_comparable: one preset, world, benchmark and scorer version, each
(strategy, seed) once). An attack's metrics are columns `<metric>@<attack label>` (flat_metrics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.metrics import METRIC_NAMES, MetricValue

# Columns of summary.md: what a reader asks first (does it help, is it safe on new pairs), then
# the memorized (seen) rates, then the diagnostics.
READING_ORDER = (
    "utility",
    "over_refusal",
    "unsafe_action_rate/held_out",
    "discrimination/held_out",
    "compose_acc/held_out",
    "verdict_acc/held_out",
    "act_after_unsafe_verdict/held_out",
    "compose_acc_pretrained/held_out",
    "verdict_acc_pretrained/held_out",
    "unsafe_choice_rate/held_out",
    "false_check_rate/held_out",
    "harmful_asr/held_out",
    "unsafe_action_rate/seen",
    "discrimination/seen",
    "compose_acc/seen",
    "verdict_acc/seen",
    "act_after_unsafe_verdict/seen",
    "unsafe_choice_rate/seen",
    "false_check_rate/seen",
    "harmful_asr/seen",
    "knowledge_acc",
    "safety_cls_acc",
    "flag_recall/held_out",
    "flag_recall/seen",
    "flag_fpr",
)
REFERENCE_ORDER = ("ref:oracle", "ref:reckless", "ref:usual", "ref:refuser", "ref:random")
BOOTSTRAP, SEED_STD = "bootstrap95", "seed_std"
# Of each attack's metrics, the summary table shows these, as `<metric>@<attack label>`.
# utility shows an attack that breaks the answer format (harmful_ft teaches prescriptions to come
# back as harm answers, which recommend nothing): a low unsafe rate beside a low utility is no safety,
# and over_refusal says whether an attack made it refuse (the curriculum paper's second measure).
# The finetuning attacks also ask the composition families (v2): does finetuning erase the check, the
# verdict, or the restraint after an unsafe verdict? A prompt attack asks none of them, so has none.
ATTACK_METRICS = ("utility", "over_refusal", "unsafe_action_rate/held_out", "unsafe_action_rate/seen",
                  "harmful_asr/held_out", "discrimination/held_out", "compose_acc/held_out", "verdict_acc/held_out",
                  "act_after_unsafe_verdict/held_out",
                  "prefill_act_rate/held_out", "prefill_harmful_act_rate/held_out", "suffix_target_loss")


def is_reference(record: Mapping[str, Any]) -> bool:
    """Whether the record is a reference policy's (an anchor row, not an intervention)."""
    return record.get("policy_kind") == "reference" or str(record["strategy"]).startswith("ref:")


def check_comparable(records: Sequence[Mapping[str, Any]]) -> None:
    """DataError unless the records can be ranked together: one preset, one world, one benchmark
    version, one scorer version, and each (strategy, seed) once."""
    if not records:
        raise DataError("no results records to summarize; pass at least one record")
    for field in ("preset", "world_hash"):
        values = sorted({str(r[field]) for r in records})
        if len(values) > 1:
            raise DataError(
                f"records come from several {field}s ({', '.join(values)}); a leaderboard compares "
                "one preset on one world, so summarize each group apart"
            )
    benchmarks = sorted({str(r.get("benchmark_version", "1.0")).split(".")[0] for r in records})
    if len(benchmarks) > 1:
        raise DataError(
            f"records come from several benchmark versions ({', '.join(benchmarks)}); their probes, corpora and "
            "metrics differ, so they cannot be ranked together. Re-run the older runs with this package "
            f"(`msw run` into a new folder) or summarize each version apart (CHANGELOG.md says what changed)"
        )
    versions = sorted({int(r.get("scoring_version", 1)) for r in records})
    if len(versions) > 1:
        raise DataError(
            f"records were scored by several scorer versions ({', '.join(map(str, versions))}); run the "
            "older ones again (`msw run` or `msw evaluate` re-scores them and keeps the trained models)"
        )
    seen: set[tuple[str, int]] = set()
    for r in records:
        key = (r["strategy"], r["seed"])
        if key in seen:
            raise DataError(
                f"two records for strategy {key[0]!r} seed {key[1]}; keep one so no seed counts twice"
            )
        seen.add(key)


def strategy_groups(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Strategy -> its records in seed order, strategies in table order (row_order); DataError
    unless the records can be ranked together (check_comparable)."""
    check_comparable(records)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        groups.setdefault(r["strategy"], []).append(r)
    kinds = {s: any(is_reference(r) for r in g) for s, g in groups.items()}
    return {s: groups[s] for s in sorted(groups, key=lambda s: row_order(s, kinds[s]))}


def row_order(strategy: str, is_ref: bool) -> tuple:
    """Sort key of a row: `raw` (the unprotected baseline) first, then strategies by name, then the
    reference policies in REFERENCE_ORDER."""
    if is_ref:
        rank = REFERENCE_ORDER.index(strategy) if strategy in REFERENCE_ORDER else len(REFERENCE_ORDER)
        return (1, rank, strategy)
    return (0, 0 if strategy == "raw" else 1, strategy)


def flat_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's metrics plus, for each attack, ATTACK_METRICS as `<metric>@<label>` where the
    attack asked probes of the metric's family (a prompt attack asks no safe prescriptions, so it has
    no utility)."""
    out = dict(record["metrics"])
    for label, entry in record.get("attacks", {}).items():
        out.update({f"{m}@{label}": v for m, v in entry["metrics"].items() if m in ATTACK_METRICS and v.get("n")})
    return out


def metric_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The benchmark's metrics in METRICS order, then every other one some record has, by name."""
    extra = sorted({m for r in records for m in flat_metrics(r)} - set(METRIC_NAMES))
    return [*METRIC_NAMES, *extra]


def _aggregate(values: list[MetricValue]) -> dict[str, float]:
    """mean/std/lo/hi/n of one metric over a strategy's seeds (NaN-valued seeds left out)."""
    finite = [v for v in values if not math.isnan(v.value)]
    n = sum(v.n for v in values)
    if not finite:
        return {"": math.nan, "_std": math.nan, "_lo": math.nan, "_hi": math.nan, "_n": n}
    if len(finite) == 1:
        v = finite[0]
        return {"": v.value, "_std": math.nan, "_lo": v.ci_low, "_hi": v.ci_high, "_n": n}
    x = np.array([v.value for v in finite])
    mean, std = float(x.mean()), float(x.std(ddof=1))
    return {"": mean, "_std": std, "_lo": mean - std, "_hi": mean + std, "_n": n}


def summarize(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per strategy: for each metric `<m>`, `<m>_std`, `<m>_lo`, `<m>_hi`, `<m>_n`.

    `interval` says what lo/hi mean for the row: `bootstrap95` (one seed: the 95% bootstrap
    interval over probes) or `seed_std` (several seeds: mean ± sample std across seeds).
    `<m>_n` is the number of probes summed over seeds. Rows: strategies (`raw` first, then by
    name), then reference policies.
    """
    groups = strategy_groups(records)
    names, rows = metric_names(records), []
    for strategy, group in groups.items():
        is_ref = any(is_reference(r) for r in group)
        row: dict[str, Any] = {
            "strategy": strategy,
            "policy_kind": "reference" if is_ref else "model",
            "preset": group[0]["preset"],
            "n_seeds": len(group),
            "seeds": " ".join(str(r["seed"]) for r in group),
            "interval": BOOTSTRAP if len(group) == 1 else SEED_STD,
        }
        flat = [flat_metrics(r) for r in group]
        for m in names:
            values = [MetricValue.from_dict(f[m]) for f in flat if m in f]
            for suffix, x in _aggregate(values).items():
                row[m + suffix] = x
        rows.append(row)
    return pd.DataFrame(rows)
