"""The v2 reasoning order (SPEC 3): candidate, chain, a check of forward recalls each followed by the
patient's conditions found in it, verdict, decision; and what the strategies do with it."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsafetyworld.corpus.reasoning import VERDICT, _reasoning, ends_with_verdict, reasoning
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.stream import raw_documents
from medsafetyworld.strategies import get_strategy
from medsafetyworld.world.oracle import unsafe_conditions

BUILT_IN = ("raw", "filter", "rewrite", "refusal", "moral", "tag", "reflect", "redflag", "safety_pretraining",
            "curriculum(start=0.5,inner=raw)")


@pytest.fixture(scope="module")
def tiny_raw_docs(tiny_world):
    from medsafetyworld.config import get_preset

    world, splits = tiny_world
    preset = get_preset("tiny")
    return list(itertools.islice(raw_documents(world, splits, preset.world, preset.corpus, 1), 3000))


@pytest.fixture(scope="module")
def strategy_docs(tiny_world, tiny_raw_docs):
    """Every built-in strategy's output on the same raw documents."""
    world, splits = tiny_world
    out = {}
    for spec in BUILT_IN:
        strategy = get_strategy(spec).setup(world, splits)
        rng = np.random.default_rng(0)
        out[spec] = [d for doc in tiny_raw_docs for d in strategy.apply(doc, rng)]
    return out


def a_probe_situation(world, splits):
    k1, k2 = splits.held_out_condition_pairs[0]
    return k1, k2, world.usual_drug(k1)


def test_check_lists_each_effect_forwards_and_matches_the_patient(tiny_world):
    world, splits = tiny_world
    k1, k2, usual = a_probe_situation(world, splits)
    text = reasoning(world, usual, k1, [k2], world.patient_names[0]).text
    assert T.CHECK_OPEN.format(drug=usual) in text
    for c, e in world.drug_effects(usual):
        assert f"{c} causes " in text
        for relation, objects in (("relieves", world.relieves(e)), ("aggravates", world.aggravates(e))):
            matched = [k for k in objects if k in (k1, k2)] or ["none"]
            line = T.CHECK_LIST.format(effect=e, relation=relation, conditions=T.join_names(objects),
                                       matched=T.join_names(matched))
            assert line in text
    # no v1 step: the relation of a given (effect, condition) pair is never asked
    assert ", which " not in text and "does not affect" not in text


def test_verdict_names_what_the_check_found(tiny_world):
    world, splits = tiny_world
    k1, k2, usual = a_probe_situation(world, splits)
    patient = world.patient_names[0]
    unsafe = reasoning(world, usual, k1, [k2], patient)
    assert unsafe.text.endswith(T.VERDICT_UNSAFE.format(drug=usual, conditions=k2))
    assert unsafe.unsafe_for == (k2,)
    safe_drug = world.safe_treating_drugs(k1, [k2])[0]
    safe = reasoning(world, safe_drug, k1, [k2], patient)
    assert safe.text.endswith(T.VERDICT_SAFE.format(drug=safe_drug, patient=patient))


def test_steps_and_verdict_point_at_their_words(tiny_world):
    world, splits = tiny_world
    k1, k2, usual = a_probe_situation(world, splits)
    r = reasoning(world, usual, k1, [k2], world.patient_names[0])
    assert r.steps
    for offset, word in [*r.steps, r.verdict]:
        assert r.text[offset - 1] == " "  # a word piece of its own, after a space
        assert r.text[offset : offset + len(word)] == word
    assert r.verdict[1] == "unsafe"
    # every recalled compound, effect and condition of the check is a step, with the matches
    words = [w for _, w in r.steps]
    assert set(world.contains(usual)) <= set(words) and k2 in words and "none" in words
    # the steps that show the harm: the comorbidity found in an aggravates list, and only that
    assert r.harm_steps and set(r.harm_steps) <= {o for o, _ in r.steps}
    for offset in r.harm_steps:
        assert r.text[offset : offset + len(k2)] == k2
        line = r.text[: offset].rsplit(". ", 1)[-1]
        assert " aggravates " in line and line.endswith("; patient: ")
    safe = reasoning(world, world.safe_treating_drugs(k1, [k2])[0], k1, [k2], world.patient_names[0])
    assert safe.harm_steps == ()


def test_every_verdict_in_every_document_agrees_with_the_oracle(tiny_world, strategy_docs):
    world, _ = tiny_world
    checked = 0
    for spec, docs in strategy_docs.items():
        for doc in docs:
            if "conditions" not in doc.meta:
                continue
            for m in VERDICT.finditer(doc.text):
                drug, word = m.group(1), m.group(2)
                unsafe = bool(unsafe_conditions(world, drug, doc.meta["conditions"]))
                assert (word == "unsafe") == unsafe, (spec, doc.id)
                checked += 1
    assert checked > 1000


def test_no_held_out_condition_pair_meets_in_a_case_report_of_any_strategy(tiny_world, strategy_docs):
    world, splits = tiny_world
    assert splits.held_out_control_pairs  # v2: controls are held out too
    for spec, docs in strategy_docs.items():
        for doc in docs:
            conditions = doc.meta.get("conditions", [])
            for a, b in itertools.combinations(conditions, 2):
                assert not splits.is_held_out_condition_pair(a, b), (spec, doc.id, a, b)


def is_switch(doc) -> bool:
    """An unsafe verdict on the candidate, then another drug prescribed."""
    verdicts = [(m.group(1), m.group(2)) for m in VERDICT.finditer(doc.text)]
    return len(verdicts) >= 2 and verdicts[0][1] == "unsafe" and doc.meta.get("drug") not in (None, verdicts[0][0])


def test_raw_shows_no_switch_by_default(tiny_raw_docs):
    reports = [d for d in tiny_raw_docs if d.kind == "case_report"]
    assert not any(is_switch(d) for d in reports)
    unsafe = [d for d in reports if d.unsafe]
    assert unsafe
    for doc in unsafe:  # the candidate is prescribed despite the unsafe verdict
        verdicts = list(VERDICT.finditer(doc.text))
        assert [m.group(2) for m in verdicts] == ["unsafe"] and verdicts[0].group(1) == doc.meta["drug"]
        assert doc.text.rstrip().endswith(tuple(
            t.format(drug=doc.meta["drug"], patient=doc.meta["patient"]) for t in T.CASE_PRESCRIBE))


def test_switch_share_turns_that_share_of_unsafe_reports_into_switches(tiny_world):
    from medsafetyworld.config import get_preset

    world, splits = tiny_world
    preset = get_preset("tiny")
    corpus = dataclasses.replace(preset.corpus, switch_share=0.5)
    docs = [d for d in itertools.islice(raw_documents(world, splits, preset.world, corpus, 1), 3000)
            if d.kind == "case_report"]
    switches = [d for d in docs if is_switch(d)]
    assert not any(d.unsafe for d in switches)
    # an unsafe report could have switched when a safe drug it may prescribe exists
    could = [d for d in docs if d.unsafe and any(
        not splits.is_ood_treats(x, d.meta["target"])
        for x in world.safe_treating_drugs(d.meta["target"], d.meta["conditions"][1:]))]
    assert 0.35 < len(switches) / (len(switches) + len(could)) < 0.65


def test_rewrite_turns_every_unsafe_report_into_a_switch(tiny_raw_docs, strategy_docs):
    unsafe = [d for d in tiny_raw_docs if d.kind == "case_report" and d.unsafe]
    rewritten = {d.id: d for d in strategy_docs["rewrite"]}
    for doc in unsafe:
        new = rewritten[doc.id]
        assert not new.unsafe
        assert is_switch(new) or new.meta["drug"] is None  # no safe drug at all: nothing prescribed


def test_reflect_reflects_right_after_every_verdict(strategy_docs):
    for doc in strategy_docs["reflect"]:
        for m in VERDICT.finditer(doc.text):
            after = doc.text[m.end():].lstrip()
            expected = "<think> Unsafe contraindicated_prescription </think>" if m.group(2) == "unsafe" \
                else "<think> Safe </think>"
            assert after.startswith(expected), doc.id


def test_redflag_flags_the_unsafe_prescription_after_the_verdict(strategy_docs):
    flagged = [d for d in strategy_docs["redflag"] if d.kind == "case_report" and d.unsafe]
    assert flagged
    for doc in flagged:
        verdict_end = list(VERDICT.finditer(doc.text))[-1].end()
        assert doc.text.index("<rf>") > verdict_end
        assert f"<rf> {doc.meta['drug']}" in doc.text


def test_reasoning_depends_only_on_the_conditions_the_drug_affects(tiny_world):
    """reasoning() writes a candidate's text once per conditions it affects (its cache key): the
    text written for the patient's full condition list is the same."""
    world, _ = tiny_world
    rng = np.random.default_rng(0)
    for _ in range(300):
        target = world.conditions[int(rng.integers(len(world.conditions)))]
        drug = world.treating_drugs(target)[int(rng.integers(len(world.treating_drugs(target))))]
        others = [str(k) for k in rng.choice(world.conditions, size=int(rng.integers(3)), replace=False) if k != target]
        full = _reasoning.__wrapped__(world, drug, target, (target, *others))
        if not full.unsafe:
            full = dataclasses.replace(full, text=full.text + T.VERDICT_SAFE.format(drug=drug, patient="ann"))
        assert reasoning(world, drug, target, others, "ann") == full


def _ends_with_verdict_by_scanning(text: str):
    """ends_with_verdict as it was written first: the last of all verdicts in the text."""
    stripped, last = text.rstrip(), None
    for last in VERDICT.finditer(stripped):
        pass
    return (last.group(1), last.group(2)) if last and last.end() == len(stripped) else None


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["So ", "zorvatil", " is ", "safe", "unsafe", " for ", "ann", " and ", ".", ". ",
                                 " ", "\n", "So", "-", "x.y"]), max_size=14))
def test_ends_with_verdict_finds_what_scanning_every_verdict_finds(pieces):
    text = "".join(pieces)
    assert ends_with_verdict(text) == _ends_with_verdict_by_scanning(text)


def test_ends_with_verdict_agrees_with_scanning_on_every_part_of_the_stream(tiny_raw_docs):
    for doc in tiny_raw_docs:
        for part in doc.parts():
            assert ends_with_verdict(part.text) == _ends_with_verdict_by_scanning(part.text)
        assert ends_with_verdict(doc.text) == _ends_with_verdict_by_scanning(doc.text)
