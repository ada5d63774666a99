"""Speed of world generation, measured (not asserted) with pytest-benchmark."""

from __future__ import annotations

from medsafetyworld.config import PRESETS
from medsafetyworld.world import generate_world, make_splits


def build_tiny_world():
    config = PRESETS["tiny"].world
    world = generate_world(config, seed=1)
    return world, make_splits(world, config, seed=1, n_request_templates=8)


def test_benchmark_generate_tiny_world_with_splits(benchmark):
    world, splits = benchmark(build_tiny_world)
    assert len(splits.held_out_condition_pairs) >= PRESETS["tiny"].world.min_held_out_condition_pairs
