"""The README's `tiny` result tables, from a run folder: one row per strategy (seed mean ± sample
std and the seeds' range for several seeds; value [95% bootstrap interval] for one), then paired
comparisons against chosen baselines with their seed-pair counts. Regenerate after a run with

    python scripts/readme_results.py runs/tiny_v2 --strategies raw,filter,rewrite,reflect \
        --against filter,rewrite --focus reflect

and paste the printed Markdown into README.md.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from medsafetyworld.leaderboard.grouping import summarize
from medsafetyworld.leaderboard.record import load_records, record_files
from medsafetyworld.leaderboard.significance import compare_to_baseline
from medsafetyworld.storage import path_safe

CLEAN = ("utility", "over_refusal", "unsafe_action_rate/held_out", "discrimination/held_out",
         "compose_acc/held_out", "harm_match_acc/held_out", "verdict_acc/held_out",
         "act_after_unsafe_verdict/held_out", "verdict_acc_pretrained/held_out", "unsafe_action_rate/seen",
         "flag_recall/held_out", "harmful_asr/held_out")
ATTACKED = ("unsafe_action_rate/held_out@prefill", "unsafe_action_rate/held_out@jailbreak",
            "unsafe_action_rate/held_out@suffix", "unsafe_action_rate/held_out@benign_ft",
            "discrimination/held_out@benign_ft", "act_after_unsafe_verdict/held_out@benign_ft",
            "harmful_asr/held_out@suffix", "harmful_asr/held_out@harmful_ft", "utility@harmful_ft")


def cell(row, metric: str) -> str:
    value = row.get(metric, math.nan)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if row["n_seeds"] > 1:
        return f"{value:.2f} ± {row[metric + '_std']:.2f}"
    return f"{value:.2f} [{row[metric + '_lo']:.2f}, {row[metric + '_hi']:.2f}]"


def table(frame, metrics) -> str:
    metrics = [m for m in metrics if m in frame.columns]
    lines = ["| strategy | seeds | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for _, row in frame.iterrows():
        cells = " | ".join(cell(row, m) for m in metrics)
        lines.append(f"| `{row['strategy']}` | {row['n_seeds']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--strategies", required=True, help="comma-separated labels, in table order")
    p.add_argument("--against", default="", help="baselines the focus strategy is compared with")
    p.add_argument("--focus", default="reflect")
    args = p.parse_args()
    wanted = args.strategies.split(",")
    folders = {path_safe(s) for s in wanted}
    paths = [f for f in record_files(args.run) if f.parent.name.rsplit("-s", 1)[0] in folders]
    records = load_records(paths)
    frame = summarize(records).set_index("strategy").loc[[s for s in wanted if s in {r["strategy"] for r in records}]]
    frame = frame.copy().reset_index()  # one block per column after .loc: copy() joins them (no PerformanceWarning)
    print(table(frame, CLEAN), "\n\nUnder attack (held-out pairs unless named):\n")
    print(table(frame, ATTACKED))
    for base in filter(None, args.against.split(",")):
        pair = [f for f in paths if f.parent.name.rsplit("-s", 1)[0] in {path_safe(base), path_safe(args.focus)}]
        diff = compare_to_baseline(pair, baseline=base, metrics=[m for m in CLEAN if m in frame.columns])
        print(f"\n`{args.focus}` − `{base}` (paired bootstrap over probes, seeds averaged in each resample):\n")
        print("| metric | difference [95% interval] | p | seed pairs agreeing |\n|---|---:|---:|---:|")
        for _, d in diff.iterrows():
            if math.isnan(d["diff"]):
                continue
            print(f"| {d['metric']} | {d['diff']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] | "
                  f"{d['p_value']:.3g} | {d['seed_pairs_agreeing']}/{d['seed_pairs']} |")


if __name__ == "__main__":
    main()
