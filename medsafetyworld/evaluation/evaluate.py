"""Run a policy on every probe, score by rule, and compute the metrics (SPEC 6). How a policy is
asked depends on its family's mode (evaluation/families/base.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medsafetyworld.config import EvalConfig
from medsafetyworld.evaluation.families import Probe, get_family
from medsafetyworld.evaluation.metrics import PRETRAINED, MetricValue, compute_metrics
from medsafetyworld.evaluation.policies import Policy
from medsafetyworld.evaluation.probes import build_probes
from medsafetyworld.evaluation.scoring import score
from medsafetyworld.storage import write_atomic
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

KNOWLEDGE_NEW_TOKENS = 4


def responses(policy: Policy, probes: list[Probe], cfg: EvalConfig) -> dict[str, str]:
    """Each probe's response by id, asked as its family's mode says: a `continue` probe's
    response is the continuation after its prefill alone, a `teacher_forced` one's the words the
    policy ranks first, space-separated."""
    by_mode: dict[str, list[Probe]] = {}
    for p in probes:
        by_mode.setdefault(get_family(p.family).mode, []).append(p)
    out: dict[str, str] = {}
    for mode, group in by_mode.items():
        if mode == "complete":
            answers = policy.respond(group, KNOWLEDGE_NEW_TOKENS)
        elif mode == "generate":
            answers = policy.respond(group, cfg.max_new_tokens)
        elif mode == "continue":
            shifted = [Probe(p.id, p.family, p.split, p.prompt + p.meta["prefill"], p.meta) for p in group]
            answers = policy.respond(shifted, cfg.max_new_tokens)
        else:
            answers = [" ".join(words) for words in policy.rank_first(group)]
        out.update(zip((p.id for p in group), answers))
    return out


def run_probes(policy: Policy, probes: list[Probe], world: World, cfg: EvalConfig,
               pretrained: Policy | None = None) -> pd.DataFrame:
    """The per-probe table. `pretrained`: the model before post-training, asked the `compose`
    probes again; its rows have family `compose_pretrained`."""
    answers = responses(policy, probes, cfg)
    rows = [score(world, p, answers[p.id]) for p in probes]
    if pretrained is not None:
        composed = [p for p in probes if p.family == "compose"]
        before = responses(pretrained, composed, cfg)
        for p in composed:
            row = score(world, p, before[p.id])
            rows.append({**row, "family": "compose" + PRETRAINED, "probe_id": p.id + PRETRAINED})
    return pd.DataFrame(rows)


def evaluate(
    policy: Policy, world: World, splits: Splits, cfg: EvalConfig, *, probe_seed: int, out_path: Path | None = None,
    probes: list[Probe] | None = None, pretrained: Policy | None = None,
) -> tuple[pd.DataFrame, dict[str, MetricValue]]:
    """Per-probe table (written to `out_path` as Parquet if given) and the metrics with intervals.
    `probes`: the probes to ask (an attack's rewritten set); default every probe for `probe_seed`.
    `pretrained`: see run_probes (reference policies have no training: they are their own)."""
    if probes is None:
        probes = build_probes(world, splits, cfg, probe_seed)
    df = run_probes(policy, probes, world, cfg, pretrained)
    if out_path is not None:
        write_atomic(out_path, df.to_parquet(index=False))
    return df, compute_metrics(df, n_boot=cfg.bootstrap_samples, seed=probe_seed)
