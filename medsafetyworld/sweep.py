"""The size sweep that chooses `tiny` (issue 12, SPEC 8): model shape x tokens seen, per strategy,
pretraining only, each point measured by the teacher-forced composition metrics (compose_acc,
verdict_acc) and its wall time.

Every point is a stage of the run folder, keyed like `msw run`'s, so an interrupted sweep resumes
where it was (pretraining from its last checkpoint) and a finished point is never trained twice:

    OUT/world/                                  the preset's world
    OUT/corpus/<strategy>-s<seed>/              one corpus per strategy (the preset's token budget)
    OUT/models/<shape>-<tokens>/<strategy>-s<seed>/pretrain/
    OUT/sweep/<shape>-<tokens>/<strategy>-s<seed>/probes.parquet + metrics.json
    OUT/sweep.csv                               one row per (point, strategy) measured so far
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from medsafetyworld.config import ModelConfig, Preset, config_hash
from medsafetyworld.errors import ConfigError
from medsafetyworld.evaluation.scoring import SCORING_VERSION
from medsafetyworld.pipeline import folder_name, make_corpus, make_pretrained, make_world, stage, stage_seconds
from medsafetyworld.storage import write_atomic, write_json_atomic
from medsafetyworld.strategies import get_strategy

_SHAPE = re.compile(r"^(\d+)x(\d+)$")
_TOKENS = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")
SWEEP_METRICS = ("compose_acc/held_out", "harm_match_acc/held_out", "verdict_acc/held_out",
                 "compose_acc/seen", "harm_match_acc/seen", "verdict_acc/seen")


def parse_shape(text: str) -> ModelConfig:
    """`LAYERSxWIDTH` (e.g. `4x128`): heads of width 32, as many KV heads, an MLP 4x as wide; the
    context and embedding tying of the default ModelConfig."""
    m = _SHAPE.match(text.strip())
    if not m or int(m.group(2)) % 32 or int(m.group(1)) < 1:
        raise ConfigError(f"model shape {text!r} is not LAYERSxWIDTH with WIDTH a multiple of 32 (e.g. 4x128)")
    layers, width = int(m.group(1)), int(m.group(2))
    return ModelConfig(n_layers=layers, d_model=width, n_heads=width // 32, n_kv_heads=width // 32, d_mlp=4 * width)


def parse_tokens(text: str) -> int:
    """`2.5M`, `500k` or `5000000` as a token count."""
    m = _TOKENS.match(text.strip())
    if not m:
        raise ConfigError(f"token count {text!r} is not a number with an optional k or M (e.g. 2.5M)")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(round(float(m.group(1)) * scale))


def shape_name(model: ModelConfig) -> str:
    return f"{model.n_layers}x{model.d_model}"


def tokens_name(tokens: int) -> str:
    return f"{tokens / 1e6:g}M"


def point_preset(base: Preset, model: ModelConfig, tokens: int, threads: int) -> Preset:
    """The base preset with this point's model shape and tokens seen (context from the base)."""
    model = dataclasses.replace(model, context=base.model.context)
    return base.replace(model=model, train=dataclasses.replace(base.train, tokens=tokens, threads=threads))


def sweep(
    base: Preset, strategies: list[str], shapes: list[str], tokens: list[str], out: Path, *, seed: int = 1,
    world_seed: int = 0, threads: int = 0, progress: bool = True, measure: bool = True,
) -> pd.DataFrame:
    """Train (and with `measure`, evaluate) every (shape, tokens, strategy) point in the order given,
    shapes outermost; returns the table written to OUT/sweep.csv."""
    models = [parse_shape(s) for s in shapes]
    counts = [parse_tokens(t) for t in tokens]
    resolved = [get_strategy(s) for s in strategies]
    if not (models and counts and resolved):
        raise ConfigError("a sweep needs at least one shape, one token count and one strategy")
    out = Path(out)
    world_dir = out / "world"
    make_world(base, world_seed, world_dir)
    rows: list[dict[str, Any]] = []
    for model in models:
        for count in counts:
            preset = point_preset(base, model, count, threads)
            point = f"{shape_name(model)}-{tokens_name(count)}"
            for strategy in resolved:
                tag = folder_name(strategy, seed)
                corpus_dir = out / "corpus" / tag
                make_corpus(world_dir, strategy, base, seed, corpus_dir, progress)
                model_dir = out / "models" / point / tag
                pre_key = make_pretrained(world_dir, corpus_dir, strategy, preset, seed, model_dir, progress)
                log = json.loads((model_dir / "pretrain" / "train_log.json").read_text())
                row = {"point": point, "shape": shape_name(model), "tokens_seen": log["tokens_seen"],
                       "parameters": log["parameters"], "strategy": strategy.label, "seed": seed,
                       "pretrain_minutes": round((stage_seconds(model_dir / "pretrain") or float("nan")) / 60, 1),
                       "threads": threads, "final_loss": log["final_loss"]}
                if measure:
                    row.update(measure_point(model_dir / "pretrain", world_dir, preset, out / "sweep" / point / tag,
                                             key=pre_key, probe_seed=world_seed, progress=progress))
                rows.append(row)
                write_atomic(out / "sweep.csv", pd.DataFrame(rows).to_csv(index=False))
    return pd.DataFrame(rows)


def measure_point(
    model_dir: Path, world_dir: Path, preset: Preset, out: Path, *, key: str, probe_seed: int, progress: bool
) -> dict[str, float | int | None]:
    """The composition families (teacher-forced check and verdict) on a pretrained model, a stage of
    its own; returns {metric: value, metric + "/n": n} for SWEEP_METRICS."""
    from medsafetyworld.evaluation.evaluate import evaluate
    from medsafetyworld.evaluation.families import COMPOSITION_FAMILIES
    from medsafetyworld.evaluation.model_policy import ModelPolicy
    from medsafetyworld.evaluation.probes import build_probes
    from medsafetyworld.world.io import load_world

    def build():
        world, splits = load_world(world_dir)
        probes = build_probes(world, splits, preset.eval, probe_seed, families=COMPOSITION_FAMILIES)
        policy = ModelPolicy(model_dir, batch_size=preset.eval.batch_size, progress=progress)
        _, metrics = evaluate(policy, world, splits, preset.eval, probe_seed=probe_seed,
                              out_path=out / "probes.parquet", probes=probes)
        write_json_atomic(out / "metrics.json", {m: v.to_dict() for m, v in metrics.items()})

    stage(out, config_hash(key, preset.eval, probe_seed, "sweep-measure", SCORING_VERSION, SWEEP_METRICS), build,
          f"measure {out}")
    metrics = json.loads((out / "metrics.json").read_text())
    row: dict[str, float | int | None] = {}
    for m in SWEEP_METRICS:
        row[m] = metrics.get(m, {}).get("value")
        row[f"{m}/n"] = metrics.get(m, {}).get("n")
    return row


def to_markdown(table: pd.DataFrame) -> str:
    """The sweep as a Markdown table: one row per point and strategy, held-out metrics with n."""
    head = ("| shape | parameters | tokens seen | strategy | pretraining minutes (1 thread) | compose_acc/held_out "
            "| harm_match_acc/held_out | verdict_acc/held_out |")
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        cells = [f"{r[m]:.2f}" if pd.notna(r.get(m)) else "n/a" for m in
                 ("compose_acc/held_out", "harm_match_acc/held_out", "verdict_acc/held_out")]
        lines.append(f"| {r['shape']} | {int(r['parameters']):,} | {r['tokens_seen'] / 1e6:.1f}M | {r['strategy']} "
                     f"| {r['pretrain_minutes']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
