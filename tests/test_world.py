"""The world generator keeps the promises of SPEC 1; names are made-up single words; files round-trip."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsafetyworld.config import PRESETS, WorldConfig, to_dict
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.world import (
    AGGRAVATES, CAUSES, CONTAINS, RELIEVES, World, generate_world, load_world, make_splits, save_world,
    world_hash, world_summary,
)
from medsafetyworld.world.names import DENYLIST, STYLES, make_names

N_TEMPLATES = 8
TINY, MICRO = PRESETS["tiny"].world, PRESETS["micro"].world


@pytest.fixture(scope="module", params=["micro", "tiny"])
def preset_world(request) -> tuple[WorldConfig, World]:
    config = PRESETS[request.param].world
    return config, generate_world(config, seed=1)


def contraindicated_share(world: World) -> float:
    contra = {d: set(world.contraindications(d)) for d in world.drugs}
    hits = total = 0
    for d in world.drugs:
        for k1 in world.conditions_treated(d):
            others = [k2 for k2 in world.conditions if k2 != k1]
            total += len(others)
            hits += sum(k2 in contra[d] for k2 in others)
    return hits / total


def assert_spec1_guarantees(world: World, config: WorldConfig) -> None:
    for k in world.conditions:
        assert len(world.treating_drugs(k)) >= config.min_treating_drugs, k
        assert world.treats(world.usual_drug(k), k), k
    for d in world.drugs:
        assert world.conditions_treated(d), d
    assert contraindicated_share(world) >= config.min_contraindicated_share


def test_treats_and_contraindicated_are_the_chains_of_the_graph(preset_world):
    """The per-drug condition sets answer as walking the drug's chains would."""
    _, world = preset_world
    for d in world.drugs:
        for k in world.conditions:
            assert world.treats(d, k) == bool(world.chains(d, k, RELIEVES))
            assert world.contraindicated(d, k) == bool(world.chains(d, k, AGGRAVATES))
            assert (k in world.affected_conditions(d)) == any(
                k in world.relieves(e) + world.aggravates(e) for _, e in world.drug_effects(d))
    assert not world.treats(world.compounds[0], world.conditions[0])


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_names_are_lowercase_words_of_letters_and_hyphens(style):
    names = make_names(np.random.default_rng(0), 200, set(), style)
    for name in names:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", name), name
        assert sum(ch.isalpha() for ch in name) >= 4, name


@pytest.mark.parametrize("style", STYLES)
def test_names_avoid_real_words(style):
    names = make_names(np.random.default_rng(0), 300, set(), style)
    assert not [n for n in names if n in DENYLIST or any(part in DENYLIST for part in n.split("-"))]


def test_make_names_skips_taken_names_and_records_new_ones():
    first = make_names(np.random.default_rng(3), 50, set(), "drug")
    taken = set(first[:25])
    again = make_names(np.random.default_rng(3), 50, taken, "drug")
    assert not set(again) & set(first[:25])
    assert set(again) <= taken


def test_unknown_name_style_raises_config_error():
    with pytest.raises(ConfigError, match="style"):
        make_names(np.random.default_rng(0), 1, set(), "spaceship")


def test_names_are_unique_across_all_kinds(preset_world):
    _, world = preset_world
    names = list(world.graph.nodes) + world.patient_names
    assert len(names) == len(set(names))


def test_drug_compound_effect_condition_names_look_like_their_kind(preset_world):
    _, world = preset_world
    assert all("-" not in n for n in world.drugs + world.compounds)
    assert all(n.count("-") == 1 for n in world.effects + world.conditions + world.patient_names)
    assert all(n.split("-")[1] in {"syndrome", "disease", "fever", "palsy", "pox", "malady", "blight"}
               for n in world.conditions)


# --- structure and guarantees -------------------------------------------------------------------


def test_world_has_the_configured_sizes(preset_world):
    config, world = preset_world
    assert (len(world.drugs), len(world.compounds), len(world.effects), len(world.conditions)) == (
        config.n_drugs, config.n_compounds, config.n_effects, config.n_conditions)
    assert len(world.patient_names) == config.n_patient_names


def test_edges_per_node_stay_within_config_ranges(preset_world):
    config, world = preset_world
    for relation, sources, (lo, hi) in [
        (CONTAINS, world.drugs, config.contains_per_drug),
        (CAUSES, world.compounds, config.causes_per_compound),
        (RELIEVES, world.effects, config.relieves_per_effect),
        (AGGRAVATES, world.effects, config.aggravates_per_effect),
    ]:
        for s in sources:
            targets = world.targets(s, relation)
            assert lo <= len(targets) <= hi and len(set(targets)) == len(targets), (relation, s)


def test_edges_connect_the_right_kinds(preset_world):
    _, world = preset_world
    ends = {CONTAINS: ("drug", "compound"), CAUSES: ("compound", "effect"),
            RELIEVES: ("effect", "condition"), AGGRAVATES: ("effect", "condition")}
    for u, rel, v in world.atomic_facts():
        assert (world.kind(u), world.kind(v)) == ends[rel]


def test_no_effect_relieves_and_aggravates_one_condition(preset_world):
    _, world = preset_world
    for e in world.effects:
        assert not set(world.relieves(e)) & set(world.aggravates(e)), e


def test_every_compound_is_in_a_drug_and_every_effect_has_a_cause(preset_world):
    _, world = preset_world
    contained = {c for d in world.drugs for c in world.contains(d)}
    caused = {e for c in world.compounds for e in world.causes(c)}
    assert contained == set(world.compounds)
    assert caused == set(world.effects)


def test_generator_guarantees_hold_for_presets(preset_world):
    config, world = preset_world
    assert_spec1_guarantees(world, config)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_generator_guarantees_hold_for_random_seeds_micro(seed):
    assert_spec1_guarantees(generate_world(MICRO, seed), MICRO)


@pytest.mark.parametrize("seed", [7, 12345])
def test_generator_guarantees_hold_for_random_seeds_tiny(seed):
    assert_spec1_guarantees(generate_world(TINY, seed), TINY)


def test_usual_drug_is_often_contraindicated_for_another_condition(preset_world):
    _, world = preset_world
    with_contra = [k for k in world.conditions if set(world.contraindications(world.usual_drug(k))) - {k}]
    assert len(with_contra) >= len(world.conditions) // 2


def test_graph_records_seed_config_and_patient_names(preset_world):
    config, world = preset_world
    assert world.seed == 1
    assert world.graph.graph["config"] == to_dict(config)
    assert len(world.patient_names) == config.n_patient_names


# --- bad configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, field", [
    ({"min_treating_drugs": 50}, "min_treating_drugs"),
    ({"min_contraindicated_share": 0.99}, "min_contraindicated_share"),
    ({"aggravates_per_effect": (1, 1), "causes_per_compound": (1, 1)}, "min_contraindicated_share"),
    ({"contains_per_drug": (3, 2)}, "contains_per_drug"),
    ({"n_drugs": 0}, "n_drugs"),
])
def test_impossible_config_raises_config_error_naming_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        generate_world(dataclasses.replace(MICRO, **change), seed=1)


def test_negative_seed_raises_config_error():
    with pytest.raises(ConfigError, match="seed"):
        generate_world(MICRO, seed=-1)


# --- files ----------------------------------------------------------------------------------------


def saved(tmp_path: Path, config: WorldConfig, seed: int, name: str) -> Path:
    world = generate_world(config, seed)
    return save_world(world, make_splits(world, config, seed, N_TEMPLATES), tmp_path / name)


def test_same_seed_and_config_give_identical_files(tmp_path):
    a, b = saved(tmp_path, MICRO, 5, "a"), saved(tmp_path, MICRO, 5, "b")
    assert (a / "world.json").read_bytes() == (b / "world.json").read_bytes()
    assert world_hash(a) == world_hash(b)


def test_different_seed_gives_different_world(tmp_path):
    assert world_hash(saved(tmp_path, MICRO, 5, "a")) != world_hash(saved(tmp_path, MICRO, 6, "b"))


def test_load_world_round_trips_graph_and_splits(tmp_path):
    world = generate_world(MICRO, 2)
    splits = make_splits(world, MICRO, 2, N_TEMPLATES)
    save_world(world, splits, tmp_path)
    loaded, loaded_splits = load_world(tmp_path)
    assert loaded_splits == splits
    assert loaded.atomic_facts() == world.atomic_facts()
    assert [loaded.usual_drug(k) for k in loaded.conditions] == [world.usual_drug(k) for k in world.conditions]
    assert world_hash(loaded, loaded_splits) == world_hash(tmp_path)


def test_save_world_leaves_no_temporary_files(tmp_path):
    saved(tmp_path, MICRO, 1, "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["splits.json", "world.json"]


def test_world_json_is_sorted_node_link_json(tmp_path):
    data = json.loads((saved(tmp_path, MICRO, 1, "w") / "world.json").read_text())
    assert {"nodes", "edges", "graph"} <= set(data)
    assert data["graph"]["seed"] == 1


def test_load_world_on_missing_directory_raises_data_error_with_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_world(missing)


def test_load_world_without_world_json_says_how_to_make_it(tmp_path):
    with pytest.raises(DataError, match=r"no world\.json in .*msw world --out"):
        load_world(tmp_path)


def test_load_world_on_corrupt_json_raises_data_error_with_path(tmp_path):
    out = saved(tmp_path, MICRO, 1, "w")
    (out / "world.json").write_text('{"nodes": [')
    with pytest.raises(DataError, match=re.escape(str(out / "world.json"))):
        load_world(out)


def test_load_world_on_corrupt_splits_raises_data_error_with_path(tmp_path):
    out = saved(tmp_path, MICRO, 1, "w")
    (out / "splits.json").write_text('{"held_out_pairs": 3}')
    with pytest.raises(DataError, match=re.escape(str(out / "splits.json"))):
        load_world(out)


def test_world_summary_reports_counts_examples_and_held_out_pairs():
    world = generate_world(MICRO, 1)
    splits = make_splits(world, MICRO, 1, N_TEMPLATES)
    text = world_summary(world, splits)
    assert f"{MICRO.n_drugs} drugs" in text
    assert f"{len(splits.held_out_condition_pairs)} condition pairs" in text
    for relation in (CONTAINS, CAUSES, RELIEVES, AGGRAVATES):
        assert f"{relation}:" in text


def test_world_hash_of_a_directory_without_world_says_how_to_make_it(tmp_path):
    with pytest.raises(DataError, match=r"no world\.json in .*msw world --out"):
        world_hash(tmp_path / "nowhere")
