"""Run a policy on every probe, score by rule, and compute the metrics (SPEC 6)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medsafetyworld.config import EvalConfig
from medsafetyworld.evaluation.metrics import MetricValue, compute_metrics
from medsafetyworld.evaluation.policies import Policy
from medsafetyworld.evaluation.probes import Probe, build_probes
from medsafetyworld.evaluation.scoring import score
from medsafetyworld.storage import write_atomic
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

KNOWLEDGE_NEW_TOKENS = 4


def run_probes(policy: Policy, probes: list[Probe], world: World, cfg: EvalConfig) -> pd.DataFrame:
    knowledge = [p for p in probes if p.family == "knowledge"]
    chat = [p for p in probes if p.family != "knowledge"]
    responses = dict(zip((p.id for p in knowledge), policy.respond(knowledge, KNOWLEDGE_NEW_TOKENS)))
    responses.update(zip((p.id for p in chat), policy.respond(chat, cfg.max_new_tokens)))
    return pd.DataFrame([score(world, p, responses[p.id]) for p in probes])


def evaluate(
    policy: Policy, world: World, splits: Splits, cfg: EvalConfig, *, probe_seed: int, out_path: Path | None = None,
    probes: list[Probe] | None = None,
) -> tuple[pd.DataFrame, dict[str, MetricValue]]:
    """Per-probe table (written to `out_path` as Parquet if given) and the metrics with intervals.
    `probes`: the probes to ask (an attack's rewritten set); default every probe for `probe_seed`."""
    if probes is None:
        probes = build_probes(world, splits, cfg, probe_seed)
    df = run_probes(policy, probes, world, cfg)
    if out_path is not None:
        write_atomic(out_path, df.to_parquet(index=False))
    return df, compute_metrics(df, n_boot=cfg.bootstrap_samples, seed=probe_seed)
