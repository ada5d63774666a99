"""Held-out splits (SPEC 2): what the training corpus must never show.

- held-out (drug, condition) contraindicated pairs: no raw document shows an unsafe action or a
  harmful answer on them;
- held-out condition pairs (target k1, comorbidity k2): never together in a training patient, and
  the usual drug of k1 is contraindicated for k2 through a held-out pair, with a safe alternative;
- held-out control pairs (v2): never together in a training patient either, and the usual drug of
  k1 is safe for k2, so a model that ignores which comorbidity is present cannot score well on both;
- OOD treats pairs: never inside a training case report (composition split);
- reserved request templates: used only by probes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsafetyworld.config import WorldConfig
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.world.graph import World

_SPLITS_STREAM = 2
Pair = tuple[str, str]


@dataclass(frozen=True)
class Splits:
    held_out_pairs: tuple[Pair, ...]  # (drug, condition) contraindicated pairs, sorted
    held_out_condition_pairs: tuple[Pair, ...]  # (target k1, comorbidity k2), sorted
    held_out_control_pairs: tuple[Pair, ...]  # (k1, k2) whose usual drug of k1 is safe for k2, sorted
    ood_treats: tuple[Pair, ...]  # (drug, condition) treats pairs never inside a case report
    reserved_templates: tuple[int, ...]  # request-template ids used only by probes

    def __post_init__(self) -> None:
        # Lookup sets as a plain attribute, not a field: fast membership, and asdict/eq ignore it.
        condition_pairs = frozenset(self.held_out_condition_pairs) | frozenset(self.held_out_control_pairs)
        object.__setattr__(self, "_lookup", {
            "pairs": frozenset(self.held_out_pairs),
            "condition_pairs": condition_pairs | frozenset((b, a) for a, b in condition_pairs),
            "ood": frozenset(self.ood_treats),
        })

    def is_held_out_pair(self, drug: str, condition: str) -> bool:
        return (drug, condition) in self._lookup["pairs"]

    def is_held_out_condition_pair(self, k1: str, k2: str) -> bool:
        """Unordered, contraindicated and control pairs alike: the two conditions never share a
        training patient in either role."""
        return (k1, k2) in self._lookup["condition_pairs"]

    def is_ood_treats(self, drug: str, condition: str) -> bool:
        return (drug, condition) in self._lookup["ood"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "held_out_pairs": [list(p) for p in self.held_out_pairs],
            "held_out_condition_pairs": [list(p) for p in self.held_out_condition_pairs],
            "held_out_control_pairs": [list(p) for p in self.held_out_control_pairs],
            "ood_treats": [list(p) for p in self.ood_treats],
            "reserved_templates": list(self.reserved_templates),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Splits:
        try:
            return cls(
                held_out_pairs=_pairs(d["held_out_pairs"]),
                held_out_condition_pairs=_pairs(d["held_out_condition_pairs"]),
                held_out_control_pairs=_pairs(d["held_out_control_pairs"]),
                ood_treats=_pairs(d["ood_treats"]),
                reserved_templates=tuple(int(t) for t in d["reserved_templates"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed splits record ({exc!r}); regenerate the world") from None


def _pairs(rows: list[list[str]]) -> tuple[Pair, ...]:
    out = []
    for row in rows:
        a, b = row
        out.append((str(a), str(b)))
    return tuple(out)


def make_splits(world: World, config: WorldConfig, seed: int, n_request_templates: int) -> Splits:
    """Draw the splits of SPEC 2 for a world; deterministic for (world, config, seed)."""
    rng = np.random.default_rng([int(seed), _SPLITS_STREAM])
    held_out = _draw_held_out_pairs(rng, world, config)
    condition_pairs = held_out_condition_pairs(world, held_out)
    if len(condition_pairs) < config.min_held_out_condition_pairs:
        raise ConfigError(
            f"only {len(condition_pairs)} held-out condition pairs are possible, fewer than "
            f"min_held_out_condition_pairs={config.min_held_out_condition_pairs}; raise held_out_fraction or "
            f"n_conditions, or lower min_held_out_condition_pairs"
        )
    ood_treats = _draw_ood_treats(rng, world, config)
    reserved = _draw_reserved_templates(rng, config, n_request_templates)
    return Splits(
        held_out_pairs=tuple(sorted(held_out)),
        held_out_condition_pairs=tuple(sorted(condition_pairs)),
        held_out_control_pairs=_draw_control_pairs(rng, world, condition_pairs),
        ood_treats=ood_treats,
        reserved_templates=reserved,
    )


def control_condition_pairs(world: World) -> list[Pair]:
    """Every ordered (k1, k2) where the usual drug of k1 treats k1 and is safe for both: the
    'usual drug is right' probe situations (SPEC 6 control probes)."""
    out = []
    for k1 in world.conditions:
        usual = world.usual_drug(k1)
        if world.contraindicated(usual, k1):
            continue
        out += [(k1, k2) for k2 in world.conditions if k2 != k1 and not world.contraindicated(usual, k2)]
    return out


def _draw_control_pairs(rng: np.random.Generator, world: World, contra: list[Pair]) -> tuple[Pair, ...]:
    """As many control pairs as contraindicated held-out condition pairs, drawn at random among
    those that share no unordered pair with a contraindicated one; the rest stay seen."""
    taken = {frozenset(p) for p in contra}
    options = [p for p in control_condition_pairs(world) if frozenset(p) not in taken]
    chosen: list[Pair] = []
    for i in rng.permutation(len(options)):
        if len(chosen) >= len(contra):
            break
        if frozenset(options[i]) not in taken:
            chosen.append(options[i])
            taken.add(frozenset(options[i]))
    return tuple(sorted(chosen))


def probe_condition_pairs(world: World) -> list[Pair]:
    """Every ordered (k1, k2) where the usual drug of k1 is contraindicated for k2 (not for k1
    itself) and a safe alternative for k1 exists: the 'usual drug is wrong' probe situations.

    Same as asking world.safe_treating_drugs(k1, [k2]), with each drug's contraindications
    computed once."""
    contra = {d: set(world.contraindications(d)) for d in world.drugs}
    out = []
    for k1 in world.conditions:
        usual = world.usual_drug(k1)
        if k1 in contra[usual]:
            continue
        for k2 in world.conditions:
            if k2 == k1 or k2 not in contra[usual]:
                continue
            if any(k1 not in contra[d] and k2 not in contra[d] for d in world.treating_drugs(k1)):
                out.append((k1, k2))
    return out


def held_out_condition_pairs(world: World, held_out: set[Pair] | frozenset[Pair]) -> list[Pair]:
    """The probe condition pairs whose (usual drug, comorbidity) pair is held out."""
    return [(k1, k2) for k1, k2 in probe_condition_pairs(world) if (world.usual_drug(k1), k2) in held_out]


def _draw_held_out_pairs(rng: np.random.Generator, world: World, config: WorldConfig) -> set[Pair]:
    """Hold out held_out_fraction of contraindicated pairs. Probe pairs (usual(k1), k2) come first,
    until about half of the probe condition pairs are held out (at least the required number), so
    that seen-pair probes keep about as many."""
    contraindicated = world.contraindicated_pairs()
    n_hold = round(config.held_out_fraction * len(contraindicated))
    situations = probe_condition_pairs(world)
    per_pair: dict[Pair, int] = {}
    for k1, k2 in situations:
        key = (world.usual_drug(k1), k2)
        per_pair[key] = per_pair.get(key, 0) + 1
    probe_pairs = list(per_pair)  # insertion order: deterministic
    target = max(config.min_held_out_condition_pairs, math.ceil(len(situations) / 2))
    held: list[Pair] = []
    covered = 0
    for i in rng.permutation(len(probe_pairs)):
        if covered >= target or len(held) >= n_hold:
            break
        held.append(probe_pairs[i])
        covered += per_pair[probe_pairs[i]]
    chosen = set(held)
    rest = [p for p in contraindicated if p not in per_pair]
    rest_order = [rest[i] for i in rng.permutation(len(rest))]
    spare_probe_pairs = [p for p in probe_pairs if p not in chosen]
    for pair in rest_order + spare_probe_pairs:
        if len(held) >= n_hold:
            break
        held.append(pair)
        chosen.add(pair)
    return chosen


def _draw_ood_treats(rng: np.random.Generator, world: World, config: WorldConfig) -> tuple[Pair, ...]:
    """ood_treats_fraction of treats pairs; never a usual drug's pair, never a condition's last
    in-distribution treating drug."""
    treats = [(d, k) for k in world.conditions for d in world.treating_drugs(k)]
    n_ood = round(config.ood_treats_fraction * len(treats))
    in_dist = {k: len(world.treating_drugs(k)) for k in world.conditions}
    chosen: list[Pair] = []
    for i in rng.permutation(len(treats)):
        if len(chosen) >= n_ood:
            break
        d, k = treats[i]
        if d == world.usual_drug(k) or in_dist[k] <= 1:
            continue
        chosen.append((d, k))
        in_dist[k] -= 1
    return tuple(sorted(chosen))


def _draw_reserved_templates(rng: np.random.Generator, config: WorldConfig, n_templates: int) -> tuple[int, ...]:
    if not 0 <= config.n_reserved_templates < n_templates:
        raise ConfigError(
            f"n_reserved_templates={config.n_reserved_templates} must be below the {n_templates} request "
            f"templates, so that training keeps at least one; lower n_reserved_templates"
        )
    return tuple(sorted(int(t) for t in rng.choice(n_templates, size=config.n_reserved_templates, replace=False)))
