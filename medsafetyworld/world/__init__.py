"""The world (SPEC 1-2): a seeded knowledge graph, its oracle, its held-out splits, and its files."""

from medsafetyworld.world.generate import generate_world
from medsafetyworld.world.graph import (
    AGGRAVATES, CAUSES, COMPOUND, CONDITION, CONTAINS, DRUG, EFFECT, KINDS, RELATIONS, RELIEVES, World,
)
from medsafetyworld.world.io import load_world, save_world, world_hash, world_summary
from medsafetyworld.world.oracle import is_unsafe, unsafe_conditions
from medsafetyworld.world.splits import Splits, make_splits

__all__ = [
    "AGGRAVATES", "CAUSES", "COMPOUND", "CONDITION", "CONTAINS", "DRUG", "EFFECT", "KINDS", "RELATIONS",
    "RELIEVES", "Splits", "World", "generate_world", "is_unsafe", "load_world", "make_splits",
    "save_world", "unsafe_conditions", "world_hash", "world_summary",
]
