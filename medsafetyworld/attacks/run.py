"""Run one attack and add its results to a results record."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medsafetyworld.attacks.base import Attack, AttackContext
from medsafetyworld.evaluation.evaluate import run_probes
from medsafetyworld.evaluation.metrics import compute_metrics
from medsafetyworld.evaluation.probes import build_probes
from medsafetyworld.storage import sha256_file, write_atomic, write_json_atomic

RESULT_FILE = "attack.json"


def attack_folder(record_dir: Path, attack: Attack) -> Path:
    slug = re.sub(r"[(),]+", "_", attack.label.replace("=", "-")).strip("_")
    return Path(record_dir) / "attacks" / slug


def run_attack(attack: Attack, ctx: AttackContext) -> dict[str, Any]:
    """Evaluate under `attack`; writes `ctx.out_dir/probes.parquet` and `attack.json` (the record
    entry) and returns the entry."""
    cfg = ctx.preset.eval
    probes = build_probes(ctx.world, ctx.splits, cfg, ctx.probe_seed)
    policy, chosen = attack.attacked(ctx, probes)
    df = run_probes(policy, chosen, ctx.world, cfg)
    path = Path(ctx.out_dir) / "probes.parquet"
    write_atomic(path, df.to_parquet(index=False))
    metrics = {**compute_metrics(df, n_boot=cfg.bootstrap_samples, seed=ctx.probe_seed),
               **attack.extra_metrics(df, cfg.bootstrap_samples, ctx.probe_seed)}
    entry = {
        "attack": attack.name,
        "params": attack.params(),
        "metrics": {k: v.to_dict() for k, v in metrics.items()},
        "probes_file": {"path": path.name, "sha256": sha256_file(path)},
    }
    if (details := attack.details()) is not None:
        entry["details"] = details
    write_json_atomic(Path(ctx.out_dir) / RESULT_FILE, entry)
    return entry


def load_attack_result(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / RESULT_FILE).read_text())
