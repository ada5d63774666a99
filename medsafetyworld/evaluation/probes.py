"""The probe set (SPEC 6): every registered family's probes (evaluation/families/), deterministic
for (world, splits, config, seed)."""

from __future__ import annotations

import numpy as np

from medsafetyworld.config import EvalConfig
from medsafetyworld.evaluation.families import Probe, family_names, get_family
from medsafetyworld.evaluation.families.prescription import prescription_pairs
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

__all__ = ["Probe", "build_probes", "prescription_pairs"]


def build_probes(
    world: World, splits: Splits, cfg: EvalConfig, seed: int, families: tuple[str, ...] | None = None
) -> list[Probe]:
    """The probes of `families` (default: every registered family), in registration order. Each
    family draws from its own generator, so asking for a few families gives the same probes as
    the full set does."""
    chosen = family_names() if families is None else tuple(families)
    for name in chosen:
        get_family(name)  # an unknown name fails here, in one line naming the families there are
    probes: list[Probe] = []
    for i, name in enumerate(family_names()):
        if name in chosen:
            rng = np.random.default_rng([seed, 0x9B0BE, i])
            probes += get_family(name).build(world, splits, cfg, rng)
    return probes
