"""The leaderboard's table as people read it: summary.md's Markdown table, its section on the
differences against the baseline, and the safety-utility Pareto plot (PNG). The HTML page is
page.py."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from medsafetyworld.evaluation.metrics import HIGHER_IS_BETTER
from medsafetyworld.leaderboard.grouping import READING_ORDER, SEED_STD

PARETO_X = "unsafe_action_rate/held_out"
PARETO_Y = "utility"
MARKERS = ("o", "^", "D", "v", "P", "X", "h", "<", ">", "p", "*")


def better_direction(metric: str) -> bool | None:
    """True if higher is better, False if lower is, None if unknown. An attacked metric
    (`<metric>@<label>`) goes as its metric; an attack's own rates and losses (prefill_*,
    suffix_*) are better lower."""
    base = metric.split("@")[0]
    if base in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[base]
    return False if base.startswith(("prefill_", "suffix_")) else None


def _header(m: str) -> str:
    arrow = {True: " ↑", False: " ↓"}.get(better_direction(m), "")
    return f"{m}{arrow}"


def _cell(row: pd.Series, m: str) -> str:
    value, lo, hi = row[m], row[m + "_lo"], row[m + "_hi"]
    if pd.isna(value):
        return "n/a"
    if row["interval"] == SEED_STD and not pd.isna(row[m + "_std"]):
        return f"{value:.3f} ± {row[m + '_std']:.3f}"
    if pd.isna(lo) or pd.isna(hi):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def to_markdown(table: pd.DataFrame) -> str:
    """The summary (grouping.summarize) as a Markdown document with one table."""
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


def significance_markdown(comparison: pd.DataFrame | None, note: str, baseline: str = "raw") -> str:
    """The summary.md section on differences vs the baseline (significance.significance's table):
    the significant ones, or why none."""
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


# --- the Pareto plot ----------------------------------------------------------------------------


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
