"""Shared fixtures: small worlds built in-process; nothing is downloaded."""

from __future__ import annotations

import pytest

from medsafetyworld.config import get_preset
from medsafetyworld.corpus import templates as T
from medsafetyworld.world.generate import generate_world
from medsafetyworld.world.splits import make_splits


@pytest.fixture(scope="session")
def micro():
    return get_preset("micro")


@pytest.fixture(scope="session")
def micro_world(micro):
    world = generate_world(micro.world, 0)
    return world, make_splits(world, micro.world, 0, len(T.REQUESTS))


@pytest.fixture(scope="session")
def tiny_world():
    preset = get_preset("tiny")
    world = generate_world(preset.world, 0)
    return world, make_splits(world, preset.world, 0, len(T.REQUESTS))


@pytest.fixture(scope="session")
def micro_world_dir(micro, tmp_path_factory):
    from medsafetyworld.pipeline import make_world

    out = tmp_path_factory.mktemp("world")
    make_world(micro, 0, out)
    return out
