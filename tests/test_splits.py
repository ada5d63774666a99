"""Held-out splits follow SPEC 2 and are deterministic."""

from __future__ import annotations

import dataclasses

import pytest

from medsafetyworld.config import PRESETS, WorldConfig
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.world import Splits, World, generate_world, make_splits
from medsafetyworld.world.splits import control_condition_pairs, probe_condition_pairs

N_TEMPLATES = 8
TINY, MICRO = PRESETS["tiny"].world, PRESETS["micro"].world


@pytest.fixture(scope="module", params=["micro", "tiny"])
def split_world(request) -> tuple[WorldConfig, World, Splits]:
    config = PRESETS[request.param].world
    world = generate_world(config, seed=1)
    return config, world, make_splits(world, config, seed=1, n_request_templates=N_TEMPLATES)


def is_probe_situation(world: World, k1: str, k2: str) -> bool:
    """SPEC 2: the usual drug of k1 is contraindicated for k2, not for k1, and k1 has a safe alternative."""
    usual = world.usual_drug(k1)
    return (k1 != k2 and world.contraindicated(usual, k2) and not world.contraindicated(usual, k1)
            and bool(world.safe_treating_drugs(k1, [k2])))


def test_held_out_pairs_are_the_configured_fraction_of_contraindicated_pairs(split_world):
    config, world, splits = split_world
    assert len(splits.held_out_pairs) == round(config.held_out_fraction * len(world.contraindicated_pairs()))


def test_held_out_pairs_are_contraindicated_sorted_and_distinct(split_world):
    _, world, splits = split_world
    assert all(world.contraindicated(d, k) for d, k in splits.held_out_pairs)
    assert list(splits.held_out_pairs) == sorted(set(splits.held_out_pairs))


def test_held_out_condition_pairs_satisfy_their_definition(split_world):
    _, world, splits = split_world
    for k1, k2 in splits.held_out_condition_pairs:
        assert is_probe_situation(world, k1, k2), (k1, k2)
        assert splits.is_held_out_pair(world.usual_drug(k1), k2), (k1, k2)


def test_every_pair_meeting_the_definition_is_listed(split_world):
    _, world, splits = split_world
    expected = sorted(
        (k1, k2) for k1 in world.conditions for k2 in world.conditions
        if is_probe_situation(world, k1, k2) and splits.is_held_out_pair(world.usual_drug(k1), k2)
    )
    assert list(splits.held_out_condition_pairs) == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tiny_has_at_least_30_held_out_condition_pairs(seed):
    world = generate_world(TINY, seed)
    assert len(make_splits(world, TINY, seed, N_TEMPLATES).held_out_condition_pairs) >= 30


def test_micro_has_its_minimum_of_held_out_condition_pairs():
    world = generate_world(MICRO, 1)
    splits = make_splits(world, MICRO, 1, N_TEMPLATES)
    assert len(splits.held_out_condition_pairs) >= MICRO.min_held_out_condition_pairs >= 5


def test_seen_probe_situations_remain_for_seen_pair_probes(split_world):
    _, world, splits = split_world
    situations = probe_condition_pairs(world)
    seen = [(k1, k2) for k1, k2 in situations if not splits.is_held_out_pair(world.usual_drug(k1), k2)]
    assert len(seen) >= len(situations) // 4


def test_held_out_condition_pairs_are_unordered():
    splits = Splits((), (("a-pox", "b-pox"),), (), (), ())
    assert splits.is_held_out_condition_pair("a-pox", "b-pox")
    assert splits.is_held_out_condition_pair("b-pox", "a-pox")
    assert not splits.is_held_out_condition_pair("a-pox", "c-pox")


def test_held_out_control_pairs_are_held_out_condition_pairs_too_in_either_order():
    splits = Splits(held_out_pairs=(), held_out_condition_pairs=(("a-pox", "b-pox"),),
                    held_out_control_pairs=(("c-pox", "d-pox"),), ood_treats=(), reserved_templates=())
    assert splits.is_held_out_condition_pair("c-pox", "d-pox")
    assert splits.is_held_out_condition_pair("d-pox", "c-pox")
    assert splits.is_held_out_condition_pair("b-pox", "a-pox")
    assert not splits.is_held_out_condition_pair("a-pox", "d-pox")


def is_control_situation(world: World, k1: str, k2: str) -> bool:
    """SPEC 6 control probes: the usual drug of k1 treats k1 and is safe for both k1 and k2."""
    usual = world.usual_drug(k1)
    return k1 != k2 and world.treats(usual, k1) and not world.contraindicated(usual, k1) \
        and not world.contraindicated(usual, k2)


def test_held_out_control_pairs_satisfy_their_definition(split_world):
    _, world, splits = split_world
    assert splits.held_out_control_pairs
    assert list(splits.held_out_control_pairs) == sorted(set(splits.held_out_control_pairs))
    for k1, k2 in splits.held_out_control_pairs:
        assert is_control_situation(world, k1, k2), (k1, k2)
    assert set(control_condition_pairs(world)) == {
        (k1, k2) for k1 in world.conditions for k2 in world.conditions if is_control_situation(world, k1, k2)}


def test_as_many_control_pairs_as_contra_pairs_none_sharing_an_unordered_pair(split_world):
    _, _, splits = split_world
    assert len(splits.held_out_control_pairs) == len(splits.held_out_condition_pairs)
    contra = {frozenset(p) for p in splits.held_out_condition_pairs}
    control = [frozenset(p) for p in splits.held_out_control_pairs]
    assert len(set(control)) == len(control) and not contra & set(control)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tiny_has_at_least_30_held_out_control_pairs(seed):
    world = generate_world(TINY, seed)
    assert len(make_splits(world, TINY, seed, N_TEMPLATES).held_out_control_pairs) >= 30


def test_ood_treats_are_treats_pairs_but_never_a_usual_drug(split_world):
    _, world, splits = split_world
    assert splits.ood_treats
    for d, k in splits.ood_treats:
        assert world.treats(d, k)
        assert d != world.usual_drug(k)


def test_ood_treats_leave_every_condition_an_in_distribution_treating_drug(split_world):
    _, world, splits = split_world
    for k in world.conditions:
        assert [d for d in world.treating_drugs(k) if not splits.is_ood_treats(d, k)], k


def test_ood_treats_are_about_the_configured_fraction(split_world):
    config, world, splits = split_world
    n_treats = sum(len(world.treating_drugs(k)) for k in world.conditions)
    assert len(splits.ood_treats) == round(config.ood_treats_fraction * n_treats)


def test_reserved_templates_are_sorted_distinct_ids_in_range(split_world):
    config, _, splits = split_world
    assert len(splits.reserved_templates) == config.n_reserved_templates
    assert list(splits.reserved_templates) == sorted(set(splits.reserved_templates))
    assert all(0 <= t < N_TEMPLATES for t in splits.reserved_templates)


def test_splits_are_deterministic_for_world_config_and_seed(split_world):
    config, world, splits = split_world
    assert make_splits(world, config, 1, N_TEMPLATES) == splits


def test_a_different_seed_gives_different_splits(split_world):
    config, world, splits = split_world
    assert make_splits(world, config, 2, N_TEMPLATES) != splits


def test_splits_round_trip_through_dict(split_world):
    _, _, splits = split_world
    again = Splits.from_dict(splits.to_dict())
    assert again == splits
    assert all(again.is_held_out_pair(d, k) for d, k in splits.held_out_pairs)
    assert again.held_out_control_pairs == splits.held_out_control_pairs
    assert all(again.is_held_out_condition_pair(k2, k1) for k1, k2 in splits.held_out_control_pairs)


def test_a_v1_splits_record_without_control_pairs_raises_data_error(split_world):
    _, _, splits = split_world
    old = splits.to_dict()
    del old["held_out_control_pairs"]
    with pytest.raises(DataError, match="held_out_control_pairs.*regenerate the world"):
        Splits.from_dict(old)


def test_malformed_splits_record_raises_data_error():
    with pytest.raises(DataError):
        Splits.from_dict({"held_out_pairs": []})


def test_unreachable_held_out_requirement_raises_config_error():
    config = dataclasses.replace(MICRO, min_held_out_condition_pairs=10_000)
    with pytest.raises(ConfigError, match="min_held_out_condition_pairs"):
        make_splits(generate_world(config, 1), config, 1, N_TEMPLATES)


def test_reserving_every_template_raises_config_error():
    world = generate_world(MICRO, 1)
    with pytest.raises(ConfigError, match="n_reserved_templates"):
        make_splits(world, MICRO, 1, n_request_templates=MICRO.n_reserved_templates)
