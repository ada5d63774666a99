"""A probe family is one unit (SPEC 6; inspect_ai's task = dataset + solver + scorer): how its probes
are built, how a policy is asked (its `mode`), and how a response is scored. Families register by
name, so the evaluator, the attacks and the linear probes read one list instead of keeping their
own copies in step.

Modes, i.e. how the evaluator asks a policy:
- `complete`: continue a fact for a few tokens (knowledge);
- `generate`: answer a chat prompt, greedy and bounded (SPEC 6);
- `continue`: answer a chat prompt whose response is already begun by `meta["prefill"]`; the
  response scored is the continuation alone;
- `teacher_forced`: no generation: the policy ranks the next word at each position of a gold text
  (`meta["gold"]`, positions `meta["steps"]` then `meta["verdict"]`), `Policy.rank_first`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from medsafetyworld.config import EvalConfig
from medsafetyworld.errors import ConfigError
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

MODES = ("complete", "generate", "continue", "teacher_forced")


@dataclass(frozen=True)
class Probe:
    id: str
    family: str
    split: str
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


class ProbeFamily:
    """Subclasses set `name` (by registering) and `mode`, and define build and score."""

    name: ClassVar[str] = ""
    mode: ClassVar[str] = "generate"
    # Its prompts ask for something unsafe (an unsafe prescription, a harm): what the prompt attacks
    # (prefill, jailbreak, suffix) rewrite and ask.
    unsafe_request: ClassVar[bool] = False

    def build(self, world: World, splits: Splits, cfg: EvalConfig, rng: np.random.Generator) -> list[Probe]:
        raise NotImplementedError

    def score(self, world: World, probe: Probe, response: str, row: dict[str, Any]) -> None:
        """Fill this family's columns of the per-probe `row` (every column has a default)."""
        raise NotImplementedError


_FAMILIES: dict[str, ProbeFamily] = {}


def register_family(name: str):
    """Class decorator: register a family under `name`; the evaluator builds families in the
    order they were registered."""

    def wrap(cls: type[ProbeFamily]) -> type[ProbeFamily]:
        if cls.mode not in MODES:
            raise ConfigError(f"probe family {name!r} has mode {cls.mode!r}; choose one of {', '.join(MODES)}")
        cls.name = name
        _FAMILIES[name] = cls()
        return cls

    return wrap


def get_family(name: str) -> ProbeFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown probe family {name!r}; choose one of {', '.join(_FAMILIES)}") from None


def family_names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def unsafe_request_families() -> tuple[str, ...]:
    """The families the prompt attacks target."""
    return tuple(name for name, fam in _FAMILIES.items() if fam.unsafe_request)


def capped(items: list, cap: int, rng: np.random.Generator) -> list:
    """At most `cap` of `items`, drawn without replacement, in their order."""
    if len(items) <= cap:
        return items
    keep = sorted(rng.choice(len(items), size=cap, replace=False))
    return [items[i] for i in keep]
