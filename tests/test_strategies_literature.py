"""The invariants of the strategies from the literature (SPEC 4): rewrite, refusal, moral, tag, redflag."""

from __future__ import annotations

import dataclasses
import math
import re
from itertools import islice

import numpy as np
import pytest

from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.reasoning import VERDICT
from medsafetyworld.corpus.stream import raw_documents
from medsafetyworld.corpus.tokenizer import RED_FLAG, UNSAFE_TAG, build_tokenizer
from medsafetyworld.corpus.vocabulary import vocabulary_texts
from medsafetyworld.errors import ConfigError
from medsafetyworld.evaluation.parser import parse_response
from medsafetyworld.strategies import available_strategies, get_strategy
from medsafetyworld.world.oracle import is_unsafe

MAKE_SAFE = ("rewrite", "refusal", "moral")
NEW = (*MAKE_SAFE, "tag", "redflag")


@pytest.fixture(scope="module")
def world(micro_world):
    return micro_world[0]


@pytest.fixture(scope="module")
def raw(micro_world, micro):
    world, splits = micro_world
    return list(islice(raw_documents(world, splits, micro.world, micro.corpus, seed=5), 3000))


@pytest.fixture(scope="module")
def out(raw, world):
    """Each new strategy's output, paired with its input (every one yields one document per input)."""
    result = {}
    for name in NEW:
        docs = run(get_strategy(name), raw, world)
        assert len(docs) == len(raw)
        result[name] = list(zip(raw, docs))
    return result


def run(strategy, docs, world):
    return list(strategy.setup(world)(docs, np.random.default_rng(0)))


def harmful(doc):
    return doc.meta.get("question") == "harmful"


def answer(doc):
    """The last part: the answer of a qa document."""
    return doc.text[doc.segments[-1].start :]


def texts(doc, label):
    return [doc.text[s.start : s.end] for s in doc.segments if s.label == label]


def unsafe_case_reports(pairs):
    return [(b, a) for b, a in pairs if b.unsafe and b.kind == "case_report"]


def test_the_sample_holds_unsafe_case_reports_and_harmful_answers(raw):
    assert sum(d.unsafe and d.kind == "case_report" for d in raw) >= 50
    assert sum(d.unsafe and harmful(d) for d in raw) >= 20


def test_the_literature_strategies_are_registered():
    assert set(NEW) <= set(available_strategies())


@pytest.mark.parametrize("name", NEW)
def test_documents_without_unsafe_segments_pass_through_unchanged(out, name):
    for before, after in out[name]:
        if not before.unsafe:
            assert after is before


@pytest.mark.parametrize("name", NEW)
def test_output_is_deterministic_given_the_rng(raw, world, out, name):
    again = run(get_strategy(name), raw, world)
    assert [d.text for d in again] == [a.text for _, a in out[name]]


@pytest.mark.parametrize("name", NEW)
def test_output_has_no_unknown_token(out, world, name):
    tok = build_tokenizer(vocabulary_texts(world))
    for _, after in out[name]:
        assert tok.unk_token_id not in tok.encode(after.text, add_special_tokens=False), after.text


@pytest.mark.parametrize("name", MAKE_SAFE)
def test_output_has_no_unsafe_segment(out, name):
    assert not any(after.unsafe for _, after in out[name])


@pytest.mark.parametrize("name", MAKE_SAFE)
def test_no_case_report_prescribes_a_contraindicated_drug(out, world, name):
    for before, after in out[name]:
        if after.kind == "case_report":
            conditions = after.meta["conditions"]
            for drug in (after.meta["drug"], parse_response(after.text, tuple(world.drugs)).drug):
                assert drug is None or not is_unsafe(world, drug, patient_conditions=conditions)


@pytest.mark.parametrize("name", MAKE_SAFE)
def test_no_harmful_request_is_answered_with_an_aggravating_drug(out, world, name):
    for before, after in out[name]:
        if harmful(before):
            drug = parse_response(answer(after), tuple(world.drugs), harm_request=True).drug
            assert drug is None or not world.contraindicated(drug, before.meta["target"])


@pytest.mark.parametrize("name", MAKE_SAFE)
def test_atomic_facts_are_kept(out, name):
    for before, after in out[name]:
        if harmful(before):  # the composed answer that stated its facts is replaced
            assert after.meta["facts"] == []
        else:
            assert after.meta["facts"] == before.meta["facts"]
        for text in texts(before, "safe"):
            if name == "refusal" and harmful(before):  # the prompt gets new role names; the request stays
                text = text.removeprefix("User: ").removesuffix("\nAssistant:")
            assert text in after.text


def test_rewrite_prescribes_a_safe_alternative_or_nothing(out, world):
    for before, after in unsafe_case_reports(out["rewrite"]):
        m = after.meta
        options = world.safe_treating_drugs(m["target"], [k for k in m["conditions"] if k != m["target"]])
        assert m["rewritten"] and m["unsafe_pairs"] == []
        assert m["drug"] in options if options else m["drug"] is None
        assert parse_response(after.text, tuple(world.drugs)).drug == m["drug"]


def test_rewrite_given_the_splits_never_prescribes_an_ood_treats_pair(raw, micro_world):
    world, splits = micro_world
    docs = list(get_strategy("rewrite").setup(world, splits)(raw, np.random.default_rng(0)))
    assert sum(d.meta.get("rewritten", False) for d in docs) >= 50
    assert not any(d.meta.get("rewritten") and d.meta["drug"] and splits.is_ood_treats(d.meta["drug"], d.meta["target"])
                   for d in docs)


def test_rewrite_names_the_drug_effect_and_aggravated_condition(out, world):
    """v2: the kept check already states the harm (the effect's aggravates list, the patient's
    condition found in it) and its verdict calls the drug unsafe for that condition; the rewritten
    part then switches to a safe drug, checked, or prescribes nothing."""
    for before, after in unsafe_case_reports(out["rewrite"]):
        verdicts = list(VERDICT.finditer(after.text))
        first = verdicts[0]
        check = after.text[: first.start()]
        for drug, k in before.meta["unsafe_pairs"]:
            assert first.group(1) == drug and first.group(2) == "unsafe"
            assert k in first.group(3).replace(" and ", ", ").split(", ")
            effects = [e for _, e in world.chains(drug, k, "aggravates")]
            assert any(re.search(rf"(?<![\w-]){re.escape(e)} aggravates [^;.]*; patient: [^.]*(?<![\w-])"
                                 rf"{re.escape(k)}(?![\w-])", check) for e in effects), check
        rewritten = answer(after)
        assert first.end() <= after.segments[-1].start  # the harm is stated before the rewritten part
        if after.meta["drug"] is None:
            assert len(verdicts) == 1
        else:  # the switch: the new drug's own check and safe verdict, then its prescription
            assert [(m.group(1), m.group(2)) for m in verdicts[1:]] == [(after.meta["drug"], "safe")]
            assert any(t.format(drug=after.meta["drug"]) in rewritten for t in T.CASE_SWITCH)
            assert T.CHECK_OPEN.format(drug=after.meta["drug"]) in rewritten


def test_rewrite_turns_harmful_answers_into_warnings_naming_no_drug(out, world):
    for before, after in out["rewrite"]:
        if harmful(before):
            assert not set(answer(after).replace(".", " ").split()) & set(world.drugs)
            assert after.meta["drug"] is None and after.meta["rewritten"]


def test_refusal_refuses_with_varied_role_names(out):
    askers = set()
    for before, after in out["refusal"]:
        if before.unsafe:
            assert parse_response(answer(after), ()).refused
            askers.add(after.text.split("\n")[-2 if before.kind == "case_report" else 0].split(":")[0])
    assert len(askers) >= 4


def test_refusal_drops_the_prescription_and_gives_the_contraindication_as_reason(out):
    for before, after in unsafe_case_reports(out["refusal"]):
        assert after.text.startswith("".join(texts(before, "safe")) + "\n")
        drug, k = before.meta["unsafe_pairs"][0]
        assert drug in answer(after) and k in answer(after) and after.meta["drug"] is None


def test_moral_explains_why_the_prescription_would_harm(out, world):
    for before, after in unsafe_case_reports(out["moral"]):
        explanation = answer(after)
        for drug, k in before.meta["unsafe_pairs"]:
            c, e = world.chains(drug, k, "aggravates")[0]
            assert all(name in explanation for name in (drug, c, e, k))
        assert parse_response(after.text, tuple(world.drugs)).drug is None


def test_moral_replaces_harmful_answers_by_an_explanation_naming_no_drug(out, world):
    for before, after in out["moral"]:
        if harmful(before):
            assert before.meta["target"] in answer(after)
            assert not set(answer(after).replace(".", " ").split()) & set(world.drugs)


def test_tag_inserts_only_into_unsafe_segments(out):
    for before, after in out["tag"]:
        assert [s.label for s in after.segments] == [s.label for s in before.segments]
        assert texts(after, "safe") == texts(before, "safe")


def test_removing_the_tags_gives_back_the_original_text(out):
    for before, after in out["tag"]:
        assert after.text.replace(UNSAFE_TAG + " ", "") == before.text


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_tag_rate_is_p_within_four_sigma(raw, world, p):
    tag = dataclasses.replace(get_strategy("tag"), p=p)
    words = sum(len(t.split()) for d in raw for t in texts(d, "unsafe"))
    tags = sum(t.count(UNSAFE_TAG) for d in run(tag, raw, world) for t in texts(d, "unsafe"))
    assert words >= 1000
    assert abs(tags - p * words) <= 4 * math.sqrt(words * p * (1 - p))


def test_redflag_sits_right_before_the_contraindicated_drug_in_case_reports(out):
    for before, after in unsafe_case_reports(out["redflag"]):
        assert f"{RED_FLAG} {before.meta['drug']}" in texts(after, "unsafe")[0]


def test_redflag_opens_every_harmful_answer(out):
    for before, after in out["redflag"]:
        if harmful(before):
            assert answer(after).startswith(f" {RED_FLAG} {before.meta['drug']}")


def test_redflag_is_never_in_safe_text(out):
    for _, after in out["redflag"]:
        assert not any(RED_FLAG in t for t in texts(after, "safe"))


def test_exactly_one_redflag_per_unsafe_document(out):
    for before, after in out["redflag"]:
        if before.unsafe:
            assert after.text.count(RED_FLAG) == 1
            assert after.text.replace(RED_FLAG + " ", "") == before.text


def test_refusal_and_warning_phrasings_are_read_by_the_parser():
    assert all(any(m in t for m in T.REFUSAL_MARKERS) for t in T.REFUSE_HARMFUL + T.REFUSE_CASE)



def test_tag_rejects_a_p_that_is_not_a_probability():
    with pytest.raises(ConfigError, match="p=1.5"):
        dataclasses.replace(get_strategy("tag"), p=1.5)
