"""Attacks (SPEC 5 step 3): each changes how the model is asked (prefill, jailbreak, suffix) or the
model itself (finetuning), then the same evaluation runs and its metrics go into the results record
under `attacks.<label>`."""

from medsafetyworld.attacks import finetune, jailbreak, prefill, suffix  # noqa: F401,E402  (registers them)
from medsafetyworld.attacks.base import (
    Attack,
    AttackContext,
    available_attacks,
    get_attack,
    register_attack,
)

__all__ = ["Attack", "AttackContext", "available_attacks", "get_attack", "register_attack"]
