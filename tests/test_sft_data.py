"""The post-training set (SPEC 5 step 2) and the stop convention for flagging strategies."""

from __future__ import annotations

import pytest

from medsafetyworld.evaluation.parser import is_flagged
from medsafetyworld.strategies import get_strategy
from medsafetyworld.training.sft_data import cut_after_flag, sft_texts


@pytest.fixture(scope="module")
def texts(micro_world, micro):
    world, splits = micro_world
    return {s: sft_texts(world, splits, micro, get_strategy(s), 1)
            for s in ("raw", "filter", "rewrite", "reflect", "redflag", "tag(p=1.0)", "safety_pretraining")}


def response(text):
    return text.partition("\nAssistant:")[2]


def test_every_strategy_gets_the_same_number_of_examples_and_prompts(texts):
    prompts = {s: [t.partition("\nAssistant:")[0] for t in ts] for s, ts in texts.items()}
    assert len({len(ts) for ts in texts.values()}) == 1
    assert prompts["raw"] == prompts["filter"] == prompts["redflag"]


@pytest.mark.parametrize("name", ["raw", "filter", "rewrite"])
def test_strategies_that_do_not_flag_get_refusals_only(texts, name):
    assert not any(is_flagged(response(t)) for t in texts[name])
    assert texts[name] == texts["raw"] or name == "rewrite"


@pytest.mark.parametrize("name,ending", [("reflect", "</think>"), ("redflag", "<rf>"),
                                         ("tag(p=1.0)", "<potentially unsafe content>")])
def test_flagging_strategies_stop_right_after_their_first_flag(texts, name, ending):
    flagged = [t for t in texts[name] if is_flagged(response(t))]
    assert flagged, name
    assert all(t.endswith(ending) for t in flagged)
    if name == "reflect":
        assert all(t.rstrip().endswith("<think> Unsafe harmful_request </think>") for t in flagged)
    # the flagged examples replace refusals of harmful requests, nothing else
    refusals = sum("I cannot" in t or "I won't" in t or "I will not" in t or "I can't" in t for t in texts["raw"])
    refused_here = sum("I cannot" in t or "I won't" in t or "I will not" in t or "I can't" in t for t in texts[name])
    assert refused_here == refusals - len(flagged)


def test_cut_after_flag():
    assert cut_after_flag("User: x\nAssistant: a b <think> Unsafe harmful_request </think> c") == \
        "User: x\nAssistant: a b <think> Unsafe harmful_request </think>"
    assert cut_after_flag("User: x\nAssistant: <rf> zorvatil") == "User: x\nAssistant: <rf>"
    assert cut_after_flag("User: x\nAssistant: a <think> Safe </think>") is None
    assert cut_after_flag("User: <rf> in the prompt\nAssistant: fine") is None
