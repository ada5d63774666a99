"""The post-training set (SPEC 5 step 2) and the stop convention for flagging strategies."""

from __future__ import annotations

import pytest

from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import Document
from medsafetyworld.corpus.reasoning import VERDICT
from medsafetyworld.evaluation.parser import is_flagged, parse_response
from medsafetyworld.strategies import get_strategy
from medsafetyworld.training.sft_data import cut_after_flag, sft_documents, sft_texts
from medsafetyworld.world.oracle import is_unsafe


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


REFUSAL_WORDS = ("I cannot", "I won't", "I will not", "I can't")


def refuses(text):
    return any(w in response(text) for w in REFUSAL_WORDS)


def switches(text):
    return T.SWITCH.split("{drug}")[0] in response(text)


@pytest.mark.parametrize("name,ending", [("reflect", "</think>"), ("redflag", "<rf>"),
                                         ("tag(p=1.0)", "<potentially unsafe content>")])
def test_flagging_strategies_stop_right_after_their_first_flag(texts, name, ending, micro_world):
    flagged = [t for t in texts[name] if is_flagged(response(t))]
    assert flagged, name
    assert all(t.endswith(ending) for t in flagged)
    # v2: flagged examples come from harmful requests and from contraindicated prescriptions, whose
    # complying answer (the usual drug despite its unsafe verdict) is cut right after the flag
    prescriptions = [t for t in flagged if VERDICT.search(response(t))]
    harmful = [t for t in flagged if not VERDICT.search(response(t))]
    assert prescriptions and harmful, name
    for t in prescriptions:  # the flag comes after the unsafe verdict, before any other drug
        verdicts = parse_response(response(t), ()).verdicts
        assert len(verdicts) == 1 and verdicts[0][1] == "unsafe", t
        assert not switches(t) and parse_response(response(t), tuple(micro_world[0].drugs)).drug is None
    if name == "reflect":
        assert all(t.rstrip().endswith("<think> Unsafe harmful_request </think>") for t in harmful)
        assert all(t.rstrip().endswith("<think> Unsafe contraindicated_prescription </think>") for t in prescriptions)
        for t in prescriptions:  # the reflection right after the verdict
            verdict_end = list(VERDICT.finditer(t))[-1].end()
            assert t[verdict_end:].strip() == "<think> Unsafe contraindicated_prescription </think>"
    # the flagged examples replace refusals of harmful requests and switches of contraindicated
    # prescriptions, nothing else
    assert sum(map(refuses, texts[name])) == sum(map(refuses, texts["raw"])) - len(harmful)
    assert sum(map(switches, texts[name])) == sum(map(switches, texts["raw"])) - len(prescriptions)
    assert not any(refuses(t) or switches(t) for t in flagged)


def test_contraindicated_requests_are_answered_by_a_switch_and_every_answer_is_safe(micro_world, micro):
    world, splits = micro_world
    docs = [d for d in sft_documents(world, splits, micro, 1) if d.meta.get("question") == "prescription"]
    switched = [d for d in docs if d.meta.get("switched")]
    assert switched and len(switched) < len(docs)
    for doc in docs:
        m = doc.meta
        parsed = parse_response(response(doc.text), tuple(world.drugs))
        assert parsed.drug == m["drug"]
        assert not is_unsafe(world, m["drug"], patient_conditions=m["conditions"]), doc.id
        if m.get("switched"):
            # the usual drug checked and found unsafe, then a safe drug checked and recommended
            assert m["candidate"] == world.usual_drug(m["target"])
            assert parsed.verdicts == ((m["candidate"], "unsafe"), (m["drug"], "safe")), doc.id
            assert T.SWITCH.format(drug=m["drug"]) in doc.text
            # the answer that acts is kept for the flagging strategies
            complying = Document.from_row(m["complying"])
            assert parse_response(response(complying.text), tuple(world.drugs)).drug == m["candidate"]
            assert complying.unsafe
        else:
            assert parsed.verdicts == ((m["drug"], "safe"),), doc.id
            assert "complying" not in m


def test_cut_after_flag():
    assert cut_after_flag("User: x\nAssistant: a b <think> Unsafe harmful_request </think> c") == \
        "User: x\nAssistant: a b <think> Unsafe harmful_request </think>"
    assert cut_after_flag("User: x\nAssistant: <rf> zorvatil") == "User: x\nAssistant: <rf>"
    assert cut_after_flag("User: x\nAssistant: a <think> Safe </think>") is None
    assert cut_after_flag("User: <rf> in the prompt\nAssistant: fine") is None
