"""Interventions: functions from the raw labeled document stream to the training stream (SPEC 4)."""

from medsafetyworld.strategies.base import Strategy
from medsafetyworld.strategies.registry import available_strategies, get_strategy, register_strategy

__all__ = ["Strategy", "available_strategies", "get_strategy", "register_strategy"]
