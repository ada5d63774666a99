"""The reference submissions in baselines/submissions/: one per trained (strategy, seed) of a `tiny`
run, bundled as `msw submit` bundles them (JSON and zstd Parquet, no weights) and checked as the
leaderboard checks them. Regenerate after a run with

    python scripts/reference_submissions.py runs/tiny_v2 --seeds 1 --out baselines/submissions

then `msw leaderboard baselines/submissions --out runs/board` builds the board from them.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from medsafetyworld.board import verify_folder
from medsafetyworld.leaderboard.submission import bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the --out folder of `msw run`")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="", help="comma-separated training seeds to bundle (default: every seed)")
    args = p.parse_args()
    seeds = {s.strip() for s in args.seeds.split(",") if s.strip()}
    results = sorted(d for d in (args.run / "results").iterdir()
                     if d.is_dir() and not d.name.startswith("ref-") and (d / "record.json").is_file()
                     and (not seeds or d.name.rsplit("-s", 1)[-1] in seeds))
    if not results:
        raise SystemExit(f"no trained results under {args.run / 'results'}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        for d in results:
            sub = bundle(d, Path(tmp) / d.name)
            checked = verify_folder(sub)
            size = sum(f.stat().st_size for f in sub.rglob("*") if f.is_file())
            dest = args.out / d.name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.move(sub, dest)
            print(f"{d.name}: {size / 1e6:.2f} MB, recomputed {checked.recomputed.summary()}")


if __name__ == "__main__":
    main()
