"""Probe families (SPEC 6): each is a list of prompts with the structured facts needed to score them.

Families: `knowledge` (complete an atomic fact), `prescription_safe` (the usual drug is safe for the
patient), `prescription_contra` (the usual drug is contraindicated by the comorbidity; split
`held_out` for held-out condition pairs, `seen` otherwise), `harmful` (a request to make a condition
worse; `held_out` when no training document answers such a request about it), `safety_cls` (safe and unsafe case
reports on held-out condition pairs to be assessed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsafetyworld.config import EvalConfig
from medsafetyworld.corpus import render
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.stream import harm_held_out_conditions
from medsafetyworld.world.graph import World
from medsafetyworld.world.oracle import is_unsafe
from medsafetyworld.world.splits import Splits

FAMILIES = ("knowledge", "prescription_safe", "prescription_contra", "harmful", "safety_cls")
CHAT_FAMILIES = FAMILIES[1:]


@dataclass(frozen=True)
class Probe:
    id: str
    family: str
    split: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


def _capped(items: list, cap: int, rng: np.random.Generator) -> list:
    if len(items) <= cap:
        return items
    keep = sorted(rng.choice(len(items), size=cap, replace=False))
    return [items[i] for i in keep]


def knowledge_probes(world: World, cfg: EvalConfig, rng: np.random.Generator) -> list[Probe]:
    by_subject: dict[tuple[str, str], list[str]] = {}
    for s, rel, o in world.atomic_facts():
        by_subject.setdefault((s, rel), []).append(o)
    keys = _capped(sorted(by_subject), cfg.knowledge_facts, rng)
    return [
        Probe(f"knowledge-{i:05d}", "knowledge", "", T.KNOWLEDGE_PROMPTS[rel].format(subject=s),
              {"subject": s, "relation": rel, "answers": by_subject[(s, rel)]})
        for i, (s, rel) in enumerate(keys)
    ]


def _prescription_probe(world, family, split, idx, k1, k2, rng, template_id, reserved) -> Probe:
    patient = render.pick(rng, world.patient_names)
    prompt = render.chat_prompt(render.request_text(template_id, patient, k1, [k2]))
    meta = {
        "patient": patient, "target": k1, "others": [k2], "usual_drug": world.usual_drug(k1),
        "safe_drugs": world.safe_treating_drugs(k1, [k2]), "template": template_id,
        "reserved_template": template_id in reserved,
    }
    return Probe(f"{family}-{split or 'all'}-{idx:05d}", family, split, prompt, meta)


def prescription_pairs(world: World, splits: Splits) -> dict[str, list[tuple[str, str]]]:
    """(target, comorbidity) pairs per (family, split)."""
    out: dict[str, list[tuple[str, str]]] = {"safe": [], "held_out": [], "seen": []}
    held_out = set(splits.held_out_condition_pairs)
    for k1 in world.conditions:
        usual = world.usual_drug(k1)
        for k2 in world.conditions:
            if k2 == k1 or not world.safe_treating_drugs(k1, [k2]) or world.contraindicated(usual, k1):
                continue
            if (k1, k2) in held_out:
                out["held_out"].append((k1, k2))
            elif splits.is_held_out_condition_pair(k1, k2):
                continue  # its reverse is held out: neither a clean seen probe nor a held-out one
            elif not is_unsafe(world, usual, patient_conditions=[k1, k2]):
                out["safe"].append((k1, k2))
            elif not splits.is_held_out_pair(usual, k2):
                out["seen"].append((k1, k2))
    return out


def prescription_probes(world: World, splits: Splits, cfg: EvalConfig, rng: np.random.Generator) -> list[Probe]:
    pairs = prescription_pairs(world, splits)
    probes = []
    groups = [("prescription_safe", "", pairs["safe"]), ("prescription_contra", "held_out", pairs["held_out"]),
              ("prescription_contra", "seen", pairs["seen"])]
    for family, split, group in groups:
        items = [(k1, k2, j) for k1, k2 in group for j in range(cfg.probes_per_pair)]
        for i, (k1, k2, j) in enumerate(_capped(items, cfg.max_probes_per_family, rng)):
            template_id = (i + j) % len(T.REQUESTS)
            probes.append(_prescription_probe(world, family, split, i, k1, k2, rng, template_id, splits.reserved_templates))
    return probes


def harmful_probes(world: World, splits: Splits, cfg: EvalConfig, rng: np.random.Generator) -> list[Probe]:
    held = set(harm_held_out_conditions(world, splits))
    items = {"held_out": [], "seen": []}
    for k in world.conditions:
        if any(world.contraindicated(d, k) for d in world.drugs):
            split = "held_out" if k in held else "seen"
            items[split] += [(k, split, j) for j in range(cfg.harmful_per_condition)]
    chosen = [it for group in items.values() for it in _capped(group, cfg.max_probes_per_family, rng)]
    probes = []
    for i, (k, split, j) in enumerate(chosen):
        patient = render.pick(rng, world.patient_names)
        tid = (i + j) % len(T.HARMFUL_REQUESTS)
        probes.append(Probe(f"harmful-{split}-{i:05d}", "harmful", split, render.harmful_prompt(tid, patient, k),
                            {"patient": patient, "target": k, "template": tid}))
    return probes


def safety_cls_probes(world: World, splits: Splits, cfg: EvalConfig, rng: np.random.Generator) -> list[Probe]:
    probes = []
    pairs = prescription_pairs(world, splits)["held_out"]
    for i, (k1, k2) in enumerate(_capped(pairs, cfg.max_probes_per_family // 2, rng)):
        patient = render.pick(rng, world.patient_names)
        usual = world.usual_drug(k1)
        alternative = render.pick(rng, world.safe_treating_drugs(k1, [k2]))
        for label, drug in (("unsafe", usual), ("safe", alternative)):
            doc = render.case_report(world, patient, k1, [k2], drug, rng, f"cls-{i}")
            probes.append(Probe(f"safety_cls-{label}-{i:05d}", "safety_cls", "held_out",
                                render.safety_assessment_prompt(doc.text),
                                {"cls_label": label, "target": k1, "others": [k2], "drug": drug}))
    return probes


def build_probes(world: World, splits: Splits, cfg: EvalConfig, seed: int) -> list[Probe]:
    """All probe families, deterministic for (world, splits, cfg, seed)."""
    rng = np.random.default_rng([seed, 0x9B0BE])
    return (
        knowledge_probes(world, cfg, rng)
        + prescription_probes(world, splits, cfg, rng)
        + harmful_probes(world, splits, cfg, rng)
        + safety_cls_probes(world, splits, cfg, rng)
    )
