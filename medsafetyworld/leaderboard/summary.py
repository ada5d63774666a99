"""`write_summary`, what `msw summarize` and `msw run` write into a run folder (SPEC 6-7):
summary.csv and summary.md (one row per strategy, reference policies included), pareto.png, and
where the per-probe tables are at hand significance.csv.

The steps are each a file of their own: checks.py (every record checked against its per-probe
tables first; those that fail are left out), grouping.py (records to one row per strategy),
significance.py (every trained strategy against `raw` on the same probes: paired bootstrap, Holm
per metric, stats.py's statistics), render.py (the Markdown and the plot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medsafetyworld.errors import DataError
from medsafetyworld.leaderboard.checks import check_records, checks_markdown
from medsafetyworld.leaderboard.grouping import summarize
from medsafetyworld.leaderboard.render import plot_pareto, significance_markdown, to_markdown
from medsafetyworld.leaderboard.significance import locate_probes, significance
from medsafetyworld.storage import write_atomic

def write_summary(
    records: Sequence[Mapping[str, Any]],
    out_dir: Path | str,
    *,
    probes: Mapping[tuple[str, int], Any] | None = None,
    baseline: str = "raw",
    verify: bool = True,
    rescore: bool = True,
) -> dict[str, Path]:
    """Write summary.csv, summary.md and pareto.png atomically into out_dir; return their paths.

    With `verify` (the default) the records are first checked against their per-probe tables
    (checks.check_records; `rescore=False` skips re-scoring the responses): those that fail are left
    out of every table, with a warning line, and listed in summary.md.

    probes maps (strategy, seed) to a per-probe table or its path; by default they are looked for
    next to the records under out_dir/results (a run folder). Where the baseline and another
    trained strategy both have theirs, significance.csv is written too (compare_to_baseline) and
    summary.md lists the significant differences; otherwise summary.md says why nothing was compared.
    """
    out_dir = Path(out_dir)
    checks = check_records(records, out_dir, rescore=rescore) if verify else None
    if checks is not None:
        records = checks.kept
    table = summarize(records)
    paths = {
        "csv": out_dir / "summary.csv",
        "md": out_dir / "summary.md",
        "png": out_dir / "pareto.png",
    }
    if probes is None:
        probes = checks.probes if checks is not None else locate_probes(records, out_dir)
    try:
        comparison, note = significance(records, probes, baseline)
    except DataError as e:  # the leaderboard stands without the comparison; say why it is missing
        comparison, note = None, str(e).rstrip(".")
    md = to_markdown(table) + "\n" + significance_markdown(comparison, note, baseline)
    if checks is not None:
        md += "\n" + checks_markdown(checks)
    write_atomic(paths["csv"], table.to_csv(index=False))
    write_atomic(paths["md"], md)
    write_atomic(paths["png"], plot_pareto(table))
    if comparison is not None:
        paths["significance"] = out_dir / "significance.csv"
        write_atomic(paths["significance"], comparison.to_csv(index=False))
    return paths
