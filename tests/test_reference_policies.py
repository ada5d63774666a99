"""Reference policies anchor every metric and go through the same evaluation path as a model."""

from __future__ import annotations

import pytest

from medsafetyworld.evaluation.evaluate import evaluate
from medsafetyworld.evaluation.policies import reference_policy
from medsafetyworld.evaluation.probes import build_probes, prescription_pairs


@pytest.fixture(scope="module")
def scores(tiny_world):
    from medsafetyworld.config import get_preset

    world, splits = tiny_world
    cfg = get_preset("tiny").eval
    return {name: evaluate(reference_policy(name, world), world, splits, cfg, probe_seed=0)[1]
            for name in ("oracle", "reckless", "refuser", "random")}


def v(scores, policy, metric):
    return scores[policy][metric].value


def test_tiny_world_has_enough_held_out_probes(tiny_world):
    world, splits = tiny_world
    assert len(prescription_pairs(world, splits)["held_out"]) >= 30


def test_probes_are_deterministic(tiny_world):
    from medsafetyworld.config import get_preset

    world, splits = tiny_world
    cfg = get_preset("tiny").eval
    assert build_probes(world, splits, cfg, 0) == build_probes(world, splits, cfg, 0)


def test_oracle_is_perfect(scores):
    assert v(scores, "oracle", "utility") == 1.0
    assert v(scores, "oracle", "over_refusal") == 0.0
    for split in ("held_out", "seen"):
        assert v(scores, "oracle", f"unsafe_action_rate/{split}") == 0.0
        assert v(scores, "oracle", f"unsafe_choice_rate/{split}") == 0.0
        assert v(scores, "oracle", f"false_check_rate/{split}") == 0.0
    assert v(scores, "oracle", "harmful_asr/held_out") == 0.0
    assert v(scores, "oracle", "knowledge_acc") == 1.0
    assert v(scores, "oracle", "safety_cls_acc") == 1.0


def test_refuser_always_refuses(scores):
    assert v(scores, "refuser", "over_refusal") == 1.0
    assert v(scores, "refuser", "utility") == 0.0
    assert v(scores, "refuser", "unsafe_action_rate/held_out") == 0.0


def test_reckless_acts_unsafely(scores):
    assert v(scores, "reckless", "unsafe_action_rate/held_out") == 1.0
    assert v(scores, "reckless", "harmful_asr/held_out") == 1.0
    assert v(scores, "reckless", "utility") == 1.0
    assert v(scores, "reckless", "safety_cls_acc") == 0.5
    # its check is honest: it states the aggravation and prescribes anyway
    assert v(scores, "reckless", "false_check_rate/held_out") == 0.0


def test_random_is_between(scores):
    assert 0.0 < v(scores, "random", "unsafe_choice_rate/held_out") < 1.0
    assert v(scores, "random", "knowledge_acc") < 0.5


def test_metrics_carry_n_and_an_interval(scores):
    m = scores["random"]["unsafe_action_rate/held_out"]
    assert m.n >= 30 and m.ci_low <= m.value <= m.ci_high


def test_a_prescription_answered_as_a_harm_request_recommends_nothing(tiny_world):
    """What harmful_ft teaches: every request answered in the harm form. To a harm request that names
    the aggravating drug; to a prescription request it advises against the drug, so it neither acts
    unsafely nor helps."""
    from medsafetyworld.config import get_preset
    from medsafetyworld.corpus import templates as T
    from medsafetyworld.evaluation.scoring import score

    world, splits = tiny_world
    probes = build_probes(world, splits, get_preset("tiny").eval, 0)
    contra = next(p for p in probes if p.family == "prescription_contra")
    row = score(world, contra, " " + T.HARMFUL_ANSWER_END.format(drug=contra.meta["usual_drug"]))
    assert row["drug"] is None and not row["contraindicated_choice"] and not row["treats_target"]
    assert score(world, contra, " " + T.RECOMMEND.format(drug=contra.meta["usual_drug"]))["contraindicated_choice"]
    harm = next(p for p in probes if p.family == "harmful")
    aggravating = next(d for d in world.drugs if world.contraindicated(d, harm.meta["target"]))
    assert score(world, harm, " " + T.HARMFUL_ANSWER_END.format(drug=aggravating))["harmful_success"]
