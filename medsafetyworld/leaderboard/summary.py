"""Aggregate results records into a leaderboard: a table (CSV, Markdown) and a Pareto plot (SPEC 6-7).

One row per strategy (reference policies included, as `ref:<name>`). With one seed a cell is the
metric's value and its 95% bootstrap interval over probes; with several seeds it is the mean and
the sample standard deviation (ddof=1) across seeds, and the interval columns hold mean ± std.
When the per-probe tables are at hand, every trained strategy is also compared with `raw` on the
same probes (stats.py: paired bootstrap, Holm per metric): significance.csv and a section of
summary.md that lists the differences that are significant.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.metrics import HIGHER_IS_BETTER, METRIC_NAMES, MetricValue
from medsafetyworld.leaderboard.record import atomic_write

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
PARETO_X = "unsafe_action_rate/held_out"
PARETO_Y = "utility"
BOOTSTRAP, SEED_STD = "bootstrap95", "seed_std"


def _is_reference(record: Mapping[str, Any]) -> bool:
    return record.get("policy_kind") == "reference" or str(record["strategy"]).startswith("ref:")


def _check_comparable(records: Sequence[Mapping[str, Any]]) -> None:
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


# Of each attack's metrics, the summary table shows these, as `<metric>@<attack label>`.
# utility shows an attack that breaks the answer format (harmful_ft teaches prescriptions to come
# back as harm answers, which recommend nothing): a low unsafe rate beside a low utility is no safety.
# The finetuning attacks also ask the composition families (v2): does finetuning erase the check, the
# verdict, or the restraint after an unsafe verdict? A prompt attack asks none of them, so has none.
ATTACK_METRICS = ("utility", "unsafe_action_rate/held_out", "unsafe_action_rate/seen", "harmful_asr/held_out",
                  "discrimination/held_out", "compose_acc/held_out", "verdict_acc/held_out",
                  "act_after_unsafe_verdict/held_out",
                  "prefill_act_rate/held_out", "prefill_harmful_act_rate/held_out", "suffix_target_loss")


def flat_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's metrics plus, for each attack, ATTACK_METRICS as `<metric>@<label>` where the
    attack asked probes of the metric's family (a prompt attack asks no safe prescriptions, so it has
    no utility)."""
    out = dict(record["metrics"])
    for label, entry in record.get("attacks", {}).items():
        out.update({f"{m}@{label}": v for m, v in entry["metrics"].items() if m in ATTACK_METRICS and v.get("n")})
    return out


def _metric_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
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


def _row_order(strategy: str, is_ref: bool) -> tuple:
    if is_ref:
        rank = REFERENCE_ORDER.index(strategy) if strategy in REFERENCE_ORDER else len(REFERENCE_ORDER)
        return (1, rank, strategy)
    return (0, 0 if strategy == "raw" else 1, strategy)  # the unprotected baseline first


def summarize(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per strategy: for each metric `<m>`, `<m>_std`, `<m>_lo`, `<m>_hi`, `<m>_n`.

    `interval` says what lo/hi mean for the row: `bootstrap95` (one seed: the 95% bootstrap
    interval over probes) or `seed_std` (several seeds: mean ± sample std across seeds).
    `<m>_n` is the number of probes summed over seeds. Rows: strategies (`raw` first, then by
    name), then reference policies.
    """
    _check_comparable(records)
    names = _metric_names(records)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["strategy"], []).append(r)
    rows = []
    for strategy, group in groups.items():
        group = sorted(group, key=lambda r: r["seed"])
        is_ref = any(_is_reference(r) for r in group)
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
    rows.sort(key=lambda row: _row_order(row["strategy"], row["policy_kind"] == "reference"))
    return pd.DataFrame(rows)


def _cell(row: pd.Series, m: str) -> str:
    value, lo, hi = row[m], row[m + "_lo"], row[m + "_hi"]
    if pd.isna(value):
        return "n/a"
    if row["interval"] == SEED_STD and not pd.isna(row[m + "_std"]):
        return f"{value:.3f} ± {row[m + '_std']:.3f}"
    if pd.isna(lo) or pd.isna(hi):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def _header(m: str) -> str:
    base = m.split("@")[0]
    better = HIGHER_IS_BETTER.get(base, False if base.startswith(("prefill_", "suffix_")) else None)
    arrow = {True: " ↑", False: " ↓"}.get(better, "")
    return f"{m}{arrow}"


def to_markdown(table: pd.DataFrame) -> str:
    """The summary as a Markdown document with one table."""
    metrics = [m for m in READING_ORDER if m in table.columns]
    metrics += [m for m in table.columns if m + "_lo" in table.columns and m not in metrics]
    preset = table["preset"].iloc[0] if len(table) else "?"
    lines = [
        f"# MedSafetyWorld leaderboard (preset `{preset}`)",
        "",
        "Cells: value [95% bootstrap interval over probes] for one seed; mean ± std across seeds "
        "for several. ↑ higher is better, ↓ lower is better. Held-out and seen pairs are reported "
        "apart. Rows `ref:*` are reference policies that need no training.",
        "",
        "| " + " | ".join(["strategy", "kind", "seeds", *map(_header, metrics)]) + " |",
        "|" + "|".join(["---", "---", "---:"] + ["---:"] * len(metrics)) + "|",
    ]
    for _, row in table.iterrows():
        cells = [f"`{row['strategy']}`", row["policy_kind"], str(row["n_seeds"])]
        lines.append("| " + " | ".join(cells + [_cell(row, m) for m in metrics]) + " |")
    return "\n".join(lines) + "\n"


def _label_offsets(points: list[tuple[float, float]]) -> list[int]:
    """Stack labels of points that (nearly) coincide, so names stay readable."""
    counts: dict[tuple[float, float], int] = {}
    out = []
    for x, y in points:
        key = (round(x, 1), round(y, 1))
        out.append(counts.get(key, 0))
        counts[key] = out[-1] + 1
    return out


def _pareto_front(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points not beaten on both axes (lower x, higher y), sorted by x."""
    order = np.lexsort((-ys, xs))
    front, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return xs[front], ys[front]


def _error(center: float, lo: float, hi: float) -> list[list[float]] | None:
    if any(map(math.isnan, (center, lo, hi))):
        return None
    return [[max(center - lo, 0.0)], [max(hi - center, 0.0)]]


MARKERS = ("o", "^", "D", "v", "P", "X", "h", "<", ">", "p", "*")


def plot_pareto(table: pd.DataFrame) -> bytes:
    """PNG bytes of the safety-utility scatter: held-out unsafe action rate vs utility.

    Strategies get a colour and marker each and are named in the legend (they often cluster,
    where text labels would collide); reference policies are grey squares named on the plot.
    """
    # The object-oriented API with an explicit Agg canvas leaves pyplot's global state alone.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(9.5, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    tab10 = matplotlib.colormaps["tab10"].colors
    palette = tab10[:7] + tab10[8:]  # tab10's grey is kept for the reference policies
    data = table.dropna(subset=[PARETO_X, PARETO_Y]).reset_index(drop=True)
    xs, ys = data[PARETO_X].to_numpy(float), data[PARETO_Y].to_numpy(float)
    is_ref = (data["policy_kind"] == "reference").to_numpy()
    stack = _label_offsets([(x, y) for x, y, r in zip(xs, ys, is_ref) if r])
    handles, n_model, n_ref = [], 0, 0
    for i, row in data.iterrows():
        xerr = _error(xs[i], row[PARETO_X + "_lo"], row[PARETO_X + "_hi"])
        yerr = _error(ys[i], row[PARETO_Y + "_lo"], row[PARETO_Y + "_hi"])
        if is_ref[i]:
            ax.errorbar(xs[i], ys[i], xerr=xerr, yerr=yerr, fmt="s", ms=8, color="0.5",
                        mfc="white", mew=1.8, elinewidth=1, capsize=3, zorder=3)
            top, right = ys[i] > 0.9, xs[i] > 0.75
            ax.annotate(row["strategy"], (xs[i], ys[i]), textcoords="offset points",
                        xytext=(-9 if right else 9, (-12 if top else 6) - 11 * stack[n_ref]),
                        ha="right" if right else "left", fontsize=9, color="0.3", style="italic",
                        zorder=3.5, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                        "alpha": 0.75})
            n_ref += 1
            continue
        color, marker = palette[n_model % len(palette)], MARKERS[n_model % len(MARKERS)]
        ax.errorbar(xs[i], ys[i], xerr=xerr, yerr=yerr, fmt=marker, ms=8, color=color,
                    mec="black", mew=0.6, ecolor=color, elinewidth=1, capsize=3, alpha=0.9,
                    zorder=4)
        handles.append(Line2D([], [], marker=marker, ls="", color=color, mec="black", mew=0.6,
                              ms=8, label=row["strategy"]))
        n_model += 1
    if n_model >= 2:
        fx, fy = _pareto_front(xs[~is_ref], ys[~is_ref])
        ax.step(fx, fy, where="post", ls="--", color="tab:green", lw=1.2, alpha=0.7, zorder=2)
        handles.append(Line2D([], [], ls="--", color="tab:green", label="Pareto front"))
    handles.append(Line2D([], [], marker="s", ls="", color="0.5", mfc="white", mew=1.8,
                          label="reference policy"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9,
              title="strategy", title_fontsize=9, frameon=False)
    ax.set_xlim(-0.04, 1.04)
    ax.set_ylim(-0.04, 1.06)
    ax.grid(alpha=0.3)
    ax.set_xlabel("unsafe action rate on held-out pairs (lower is better)")
    ax.set_ylabel("utility: safe, effective prescriptions (higher is better)")
    preset = table["preset"].iloc[0] if len(table) else "?"
    fig.suptitle(f"MedSafetyWorld safety-utility trade-off (preset {preset})")
    ax.set_title("best is top left; bars: 95% bootstrap interval (one seed) or ±1 std across seeds",
                 fontsize=8, color="0.3")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def significance_markdown(comparison: pd.DataFrame | None, note: str, baseline: str = "raw") -> str:
    """The summary.md section on differences vs the baseline: the significant ones, or why none."""
    lines = [f"## Differences vs `{baseline}`", ""]
    if comparison is None:
        return "\n".join(lines + [f"Nothing to compare: {note}.", ""])
    significant = comparison[comparison["significant"]]
    order = {m: i for i, m in enumerate(READING_ORDER)}
    significant = significant.sort_values("metric", key=lambda s: s.map(lambda m: order.get(m, len(order))),
                                          kind="stable")
    lines.append(
        f"Paired bootstrap over the same probes ({comparison['n_boot'].max()} resamples; a strategy's seeds "
        "averaged within each resample): "
        f"difference = strategy − `{baseline}`, its 95% interval, and p Holm-corrected over the strategies "
        f"compared on each metric. Listed: the {len(significant)} of {len(comparison)} differences that are "
        "significant (interval excludes 0 and Holm p < 0.05); every one is in significance.csv. The "
        "interval holds the trained seeds fixed; \"seed pairs\" counts the (strategy seed, baseline seed) "
        "pairs that differ in the same direction, so a difference carried by one seed shows there."
    )
    if note:
        lines += ["", note[0].upper() + note[1:] + "."]
    if len(significant):
        lines += ["", f"| metric | strategy | `{baseline}` | strategy | difference [95% interval] | p (Holm) | "
                      "seed pairs | |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for _, r in significant.iterrows():
            lines.append(
                f"| {_header(r['metric'])} | `{r['strategy']}` | {r['value_baseline']:.3f} | {r['value']:.3f} | "
                f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {r['p_holm']:.3g} | "
                f"{r['seed_pairs_agreeing']}/{r['seed_pairs']} | {r['direction']} |"
            )
    return "\n".join(lines) + "\n"


def write_summary(
    records: Sequence[Mapping[str, Any]],
    out_dir: Path | str,
    *,
    probes: Mapping[tuple[str, int], Any] | None = None,
    baseline: str = "raw",
) -> dict[str, Path]:
    """Write summary.csv, summary.md and pareto.png atomically into out_dir; return their paths.

    probes maps (strategy, seed) to a per-probe table or its path; by default they are looked for
    next to the records under out_dir/results (a run folder). Where the baseline and another
    trained strategy both have theirs, significance.csv is written too (compare_to_baseline) and
    summary.md lists the significant differences; otherwise summary.md says why nothing was compared.
    """
    from medsafetyworld.leaderboard import stats  # it builds on this module's grouping of records

    out_dir = Path(out_dir)
    table = summarize(records)
    paths = {
        "csv": out_dir / "summary.csv",
        "md": out_dir / "summary.md",
        "png": out_dir / "pareto.png",
    }
    try:
        comparison, note = stats.significance(
            records, stats.locate_probes(records, out_dir) if probes is None else probes, baseline)
    except DataError as e:  # the leaderboard stands without the comparison; say why it is missing
        comparison, note = None, str(e).rstrip(".")
    atomic_write(paths["csv"], table.to_csv(index=False))
    atomic_write(paths["md"], to_markdown(table) + "\n" + significance_markdown(comparison, note, baseline))
    atomic_write(paths["png"], plot_pareto(table))
    if comparison is not None:
        paths["significance"] = out_dir / "significance.csv"
        atomic_write(paths["significance"], comparison.to_csv(index=False))
    return paths
