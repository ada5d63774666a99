"""The attack interface and registry. An attack is asked for by spec, like a strategy:
`prefill`, `harmful_ft(examples=300,epochs=3,lr=1e-3)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from medsafetyworld.config import Preset
from medsafetyworld.evaluation.model_policy import ModelPolicy
from medsafetyworld.evaluation.policies import Policy
from medsafetyworld.evaluation.probes import Probe
from medsafetyworld.strategies.registry import build_named, parse_call
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

_ATTACKS: dict[str, type[Attack]] = {}


@dataclass
class AttackContext:
    """What an attack may use: the world, the clean policy, and for a model, its folder
    (finetuning attacks train a copy and load it with `load_policy`)."""

    world: World
    splits: Splits
    preset: Preset
    policy: Policy
    probe_seed: int
    out_dir: Path
    model_dir: Path | None = None
    seed: int = 0
    progress: bool = True

    def load_policy(self, model_dir: Path) -> Policy:
        """A model folder as a policy, decoding like the clean evaluation."""
        return ModelPolicy(model_dir, batch_size=self.preset.eval.batch_size, progress=self.progress)


class Attack:
    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False  # finetuning needs weights; a reference policy has none

    def params(self) -> dict:
        return {}

    @property
    def label(self) -> str:
        shown = ",".join(f"{k}={v}" for k, v in self.params().items() if type(self)().params().get(k) != v)
        return f"{self.name}({shown})" if shown else self.name

    def attacked(self, ctx: AttackContext, probes: list[Probe]) -> tuple[Policy, list[Probe]]:
        """The policy to evaluate and the probes to ask it, given the clean probe set."""
        raise NotImplementedError

    def details(self) -> dict | None:
        """What the last `attacked` call found that the record entry should keep besides metrics
        (e.g. a searched suffix): a JSON-ready object, or None for nothing."""
        return None

    def extra_metrics(self, df, n_boot: int, seed: int) -> dict:
        """Attack-specific metrics (name -> MetricValue) on the attacked probe table."""
        return {}


def register_attack(name: str):
    def wrap(cls):
        cls.name = name
        _ATTACKS[name] = cls
        return cls

    return wrap


def available_attacks() -> list[str]:
    return sorted(_ATTACKS)


def get_attack(spec: str) -> Attack:
    name, kwargs = parse_call(spec, what="attack")
    return build_named(_ATTACKS, name, kwargs, "attack", available_attacks())
