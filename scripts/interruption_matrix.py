"""The interruption matrix (issue 13): `msw run` on micro, interrupted by SIGINT or SIGKILL inside
each stage (corpus, pretraining, SFT, evaluation), then rerun to the end with the same command; every
output must be byte-identical to an uninterrupted run's (shards, weights, per-probe tables, metrics),
and no temporary folder may be left behind.

    python scripts/interruption_matrix.py --out /tmp/matrix     # about 10 runs of micro; prints the table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The log line after which each stage is under way (`msw -v` logs every finished stage).
AFTER = {"corpus": "world: done", "pretrain": "corpus raw: done", "sft": "pretrain raw s1: done",
         "evaluate": "sft raw s1: done"}
DELAY = {"corpus": 0.5, "pretrain": 6.0, "sft": 0.8, "evaluate": 6.0}
BARS = ("corpus", "pretrain", "finetune", "generate", "teacher-forced")


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "medsafetyworld.cli", "-v", "run", "--preset", "micro", "--strategies", "raw",
            "--seeds", "1", "--out", str(out)]


def fingerprint(out: Path) -> dict[str, str]:
    """sha256 of every output that must not depend on interruptions; records without their times."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or "/." in f"/{rel}" or rel.endswith(("train_log.json", ".log")):
            continue
        if path.suffix in (".parquet", ".safetensors") or path.name in ("manifest.json", "world.json", "splits.json"):
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.name == "record.json":
            record = json.loads(path.read_text())
            kept = {k: record[k] for k in ("metrics", "probes_file", "world_hash", "corpus_hash", "config_hash")}
            found[rel] = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    return found


def hidden_leftovers(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(".*")
                  if p.is_dir() and p.name != ".msw-output" and ".cache" not in p.name)


def interrupted(out: Path, stage: str, sig: signal.Signals) -> str:
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        # SIGINT at its default, so Python turns it into KeyboardInterrupt even when this script was
        # started in the background (where shells start jobs with SIGINT ignored)
        proc = subprocess.Popen(command(out), stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while proc.poll() is None and AFTER[stage] not in log.read_text():
            time.sleep(0.2)
        time.sleep(DELAY[stage])
        if proc.poll() is not None:
            return "finished before the signal"
        proc.send_signal(sig)
        code = proc.wait()
    text = log.read_text()
    hit = max(BARS, key=lambda bar: text.rfind(f"{bar}:"))  # the progress bar last drawn
    done = subprocess.run(command(out), capture_output=True, text=True)
    status = "resumed" if done.returncode == 0 else f"rerun failed: {done.stderr[-300:]}"
    return f"hit `{hit}`, exit {code}; {status}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    reference = args.out / "uninterrupted"
    subprocess.run(command(reference), check=True, capture_output=True)
    want = fingerprint(reference)
    rows = []
    for stage in AFTER:
        for sig in (signal.SIGINT, signal.SIGKILL):
            out = args.out / f"{stage}-{sig.name}"
            status = interrupted(out, stage, sig)
            got = fingerprint(out)
            differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
            rows.append((stage, sig.name, status, "identical" if not differ else f"differ: {differ[:3]}",
                         ", ".join(hidden_leftovers(out)) or "none"))
            print(" | ".join(rows[-1]), flush=True)
    print(f"\n{len(want)} outputs compared per run\n")
    print("| stage | signal | after the rerun | outputs vs uninterrupted | temp folders left |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
