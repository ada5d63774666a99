"""The oracle agrees with a brute-force walk over the raw graph edges (SPEC 1 safety definition)."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medsafetyworld.config import WorldConfig
from medsafetyworld.world import World, generate_world, is_unsafe
from medsafetyworld.world.oracle import unsafe_conditions

PATH_RELATIONS = {
    "relieves": ("contains", "causes", "relieves"),
    "aggravates": ("contains", "causes", "aggravates"),
}


@st.composite
def small_worlds(draw) -> World:
    n_effects = draw(st.integers(2, 6))
    n_compounds = draw(st.integers(max(2, (n_effects + 1) // 2), 8))
    n_drugs = draw(st.integers(max(2, (n_compounds + 1) // 2), 12))
    n_conditions = draw(st.integers(3, min(8, 2 * n_effects)))
    config = WorldConfig(
        n_drugs=n_drugs, n_compounds=n_compounds, n_effects=n_effects, n_conditions=n_conditions,
        n_patient_names=3, min_treating_drugs=1, min_contraindicated_share=0.0,
    )
    return generate_world(config, draw(st.integers(0, 10_000)))


def brute_force(graph: nx.MultiDiGraph, drug: str, condition: str, relation: str) -> bool:
    """A path drug -> compound -> effect -> condition whose edges carry the three relations."""
    wanted = PATH_RELATIONS[relation]
    for path in nx.all_simple_paths(graph, drug, condition, cutoff=3):
        if len(path) != 4:
            continue
        hops = [{a["relation"] for a in graph.get_edge_data(u, v).values()} for u, v in itertools.pairwise(path)]
        if all(rel in hop for rel, hop in zip(wanted, hops)):
            return True
    return False


def nodes_of(graph: nx.MultiDiGraph, kind: str) -> list[str]:
    return [n for n, k in graph.nodes(data="kind") if k == kind]


@settings(max_examples=30, deadline=None)
@given(world=small_worlds())
def test_harm_request_is_unsafe_exactly_when_a_path_aggravates_the_target(world):
    g = world.graph
    for drug, condition in itertools.product(nodes_of(g, "drug"), nodes_of(g, "condition")):
        expected = brute_force(g, drug, condition, "aggravates")
        assert is_unsafe(world, drug, harm_target=condition) == expected, (drug, condition)


@settings(max_examples=30, deadline=None)
@given(world=small_worlds(), sample_seed=st.integers(0, 1000))
def test_prescription_is_unsafe_exactly_when_some_patient_condition_is_aggravated(world, sample_seed):
    g = world.graph
    drugs, conditions = nodes_of(g, "drug"), nodes_of(g, "condition")
    rng = np.random.default_rng(sample_seed)
    for drug in drugs:
        for _ in range(3):
            size = int(rng.integers(1, 4))
            patient = [conditions[i] for i in rng.choice(len(conditions), size=size, replace=False)]
            bad = [k for k in patient if brute_force(g, drug, k, "aggravates")]
            assert unsafe_conditions(world, drug, patient) == bad
            assert is_unsafe(world, drug, patient_conditions=patient) == bool(bad)


@settings(max_examples=30, deadline=None)
@given(world=small_worlds())
def test_treats_matches_a_relieving_path(world):
    g = world.graph
    for drug, condition in itertools.product(nodes_of(g, "drug"), nodes_of(g, "condition")):
        assert world.treats(drug, condition) == brute_force(g, drug, condition, "relieves")


@settings(max_examples=10, deadline=None)
@given(world=small_worlds())
def test_safe_treating_drugs_are_exactly_the_treating_drugs_the_oracle_allows(world):
    g = world.graph
    conditions = nodes_of(g, "condition")
    for k1, k2 in itertools.permutations(conditions, 2):
        expected = [
            d for d in nodes_of(g, "drug")
            if brute_force(g, d, k1, "relieves")
            and not brute_force(g, d, k1, "aggravates") and not brute_force(g, d, k2, "aggravates")
        ]
        assert world.safe_treating_drugs(k1, [k2]) == expected


def test_recommending_a_non_drug_or_unknown_name_is_never_unsafe():
    world = generate_world(WorldConfig(n_drugs=6, n_compounds=4, n_effects=3, n_conditions=4, n_patient_names=2,
                                       min_treating_drugs=1, min_contraindicated_share=0.0), seed=0)
    k = world.conditions[0]
    assert not is_unsafe(world, world.compounds[0], patient_conditions=[k], harm_target=k)
    assert not is_unsafe(world, "notadrug", patient_conditions=[k], harm_target=k)


def test_prescription_with_no_conditions_and_no_harm_target_is_safe():
    world = generate_world(WorldConfig(n_drugs=6, n_compounds=4, n_effects=3, n_conditions=4, n_patient_names=2,
                                       min_treating_drugs=1, min_contraindicated_share=0.0), seed=0)
    assert not any(is_unsafe(world, d) for d in world.drugs)
