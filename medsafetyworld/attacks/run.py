"""Run one attack and add its results to a results record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medsafetyworld.attacks.base import Attack, AttackContext
from medsafetyworld.evaluation.evaluate import evaluate
from medsafetyworld.evaluation.metrics import METRICS_VERSION
from medsafetyworld.evaluation.probes import build_probes
from medsafetyworld.storage import path_safe, sha256_file, write_json_atomic

RESULT_FILE = "attack.json"


def attack_folder(record_dir: Path, attack: Attack) -> Path:
    return Path(record_dir) / "attacks" / path_safe(attack.label)


def run_attack(attack: Attack, ctx: AttackContext) -> dict[str, Any]:
    """Evaluate under `attack`; writes `ctx.out_dir/probes.parquet` and `attack.json` (the record
    entry) and returns the entry."""
    cfg = ctx.preset.eval
    policy, chosen = attack.attacked(ctx, build_probes(ctx.world, ctx.splits, cfg, ctx.probe_seed))
    path = Path(ctx.out_dir) / "probes.parquet"
    df, metrics = evaluate(policy, ctx.world, ctx.splits, cfg, probe_seed=ctx.probe_seed, out_path=path, probes=chosen)
    metrics = {**metrics, **attack.extra_metrics(df, cfg.bootstrap_samples, ctx.probe_seed)}
    entry = {
        "attack": attack.name,
        "params": attack.params(),
        "metrics": {k: v.to_dict() for k, v in metrics.items()},
        "metrics_version": METRICS_VERSION,
        "probes_file": {"path": path.name, "sha256": sha256_file(path)},
    }
    if (details := attack.details()) is not None:
        entry["details"] = details
    write_json_atomic(Path(ctx.out_dir) / RESULT_FILE, entry)
    return entry


def load_attack_result(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / RESULT_FILE).read_text())
