"""Text for one situation of the world: fact documents, case reports, chat answers.

Every function here is deterministic given its arguments (including the rng it is handed); labels
come from the oracle, never from the caller's intent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import (
    CONTRAINDICATED_PRESCRIPTION,
    HARMFUL_REQUEST,
    SAFE,
    UNSAFE,
    Document,
    Part,
)
from medsafetyworld.corpus.jailbreaks import wrap_request
from medsafetyworld.world.graph import AGGRAVATES, CAUSES, CONTAINS, RELIEVES, World
from medsafetyworld.world.oracle import is_unsafe, unsafe_conditions


def pick(rng: np.random.Generator, options: tuple | list) -> Any:
    return options[int(rng.integers(len(options)))]


# --- reasoning shared by case reports, chat answers, SFT and reference policies --------------


def treatment_chain(world: World, drug: str, target: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The contains -> causes -> relieves steps for drug and target, and the facts they state."""
    chains = world.chains(drug, target, RELIEVES)
    if not chains:
        raise ValueError(f"{drug} does not treat {target}")
    c, e = chains[0]
    text = (
        T.STEP_CONTAINS.format(drug=drug, compound=c)
        + T.STEP_CAUSES.format(compound=c, effect=e)
        + T.STEP_RELIEVES.format(effect=e, condition=target)
    )
    return text, [(drug, CONTAINS, c), (c, CAUSES, e), (e, RELIEVES, target)]


def safety_check(world: World, drug: str, others: list[str]) -> tuple[str, list[tuple[str, str, str]]]:
    """One step per (compound, effect) of the drug for each other condition (SPEC 3)."""
    parts, facts = [], []
    for k in others:
        parts.append(T.CHECK_HEADER.format(condition=k))
        for c, e in world.drug_effects(drug):
            verb = world.effect_on(e, k)
            parts.append(T.CHECK_STEP.format(compound=c, effect=e, verb=T.CHECK_VERBS[verb], condition=k))
            facts.append((c, CAUSES, e))
            if verb != "none":
                facts.append((e, verb, k))
    return "".join(parts), facts


def prescription_answer(world: World, drug: str, target: str, others: list[str]) -> str:
    """An assistant's full answer: reasoning chain, safety check, recommendation."""
    chain, _ = treatment_chain(world, drug, target)
    check, _ = safety_check(world, drug, others)
    return " " + chain + check + T.RECOMMEND.format(drug=drug)


def harmful_chain(world: World, drug: str, target: str) -> list[tuple[str, str, str]]:
    """The facts that make `drug` aggravate `target`: contains, causes, aggravates."""
    c, e = world.chains(drug, target, AGGRAVATES)[0]
    return [(drug, CONTAINS, c), (c, CAUSES, e), (e, AGGRAVATES, target)]


def harmful_answer(world: World, drug: str, target: str) -> str:
    """An answer to 'which drug makes target worse', composed through an aggravating effect."""
    (_, _, c), (_, _, e), _ = harmful_chain(world, drug, target)
    return (
        " "
        + T.STEP_CONTAINS.format(drug=drug, compound=c)
        + T.CHECK_STEP.format(compound=c, effect=e, verb=T.CHECK_VERBS[AGGRAVATES], condition=target)
        + T.HARMFUL_ANSWER_END.format(drug=drug)
    )


def refusal(rng: np.random.Generator, patient: str, target: str) -> str:
    return " " + pick(rng, T.REFUSALS).format(patient=patient, target=target)


def request_text(template_id: int, patient: str, target: str, others: list[str]) -> str:
    if others:
        return T.REQUESTS[template_id].format(patient=patient, target=target, others=T.join_names(others))
    return T.REQUESTS_ALONE[template_id % len(T.REQUESTS_ALONE)].format(patient=patient, target=target)


def chat_prompt(request: str) -> str:
    return T.CHAT.format(request=request)


def harmful_prompt(template_id: int, patient: str, target: str, jailbreak: str | None = None) -> str:
    """The harmful request as a chat prompt, wrapped in the jailbreak template `jailbreak` if named."""
    return chat_prompt(wrap_request(jailbreak, T.HARMFUL_REQUESTS[template_id].format(patient=patient, target=target)))


def prescription_label(world: World, drug: str, conditions: list[str]) -> tuple[str, str | None]:
    if is_unsafe(world, drug, patient_conditions=conditions):
        return UNSAFE, CONTRAINDICATED_PRESCRIPTION
    return SAFE, None


# --- documents ------------------------------------------------------------------------------


def monograph(world: World, drug: str, rng: np.random.Generator, doc_id: str) -> Document:
    compounds = world.contains(drug)
    text = pick(rng, T.MONOGRAPH).format(drug=drug, compounds=T.join_names(compounds))
    facts = [(drug, CONTAINS, c) for c in compounds]
    return Document.from_parts(doc_id, "monograph", [Part(text)], {"facts": facts})


def pharmacology(world: World, compound: str, rng: np.random.Generator, doc_id: str) -> Document:
    effects = world.causes(compound)
    text = pick(rng, T.PHARMACOLOGY).format(compound=compound, effects=T.join_names(effects))
    facts = [(compound, CAUSES, e) for e in effects]
    return Document.from_parts(doc_id, "pharmacology", [Part(text)], {"facts": facts})


def clinical(world: World, effect: str, rng: np.random.Generator, doc_id: str) -> Document:
    relieved, aggravated = world.relieves(effect), world.aggravates(effect)
    sentences, facts = [], []
    if relieved:
        sentences.append(pick(rng, T.CLINICAL_RELIEVES).format(effect=effect, conditions=T.join_names(relieved)))
        facts += [(effect, RELIEVES, k) for k in relieved]
    if aggravated:
        sentences.append(pick(rng, T.CLINICAL_AGGRAVATES).format(effect=effect, conditions=T.join_names(aggravated)))
        facts += [(effect, AGGRAVATES, k) for k in aggravated]
    return Document.from_parts(doc_id, "clinical", [Part(" ".join(sentences))], {"facts": facts})


def patient_record(patient: str, conditions: list[str], rng: np.random.Generator, doc_id: str) -> Document:
    text = pick(rng, T.PATIENT_RECORD).format(patient=patient, conditions=T.join_names(conditions))
    return Document.from_parts(doc_id, "patient_record", [Part(text)], {"patient": patient, "conditions": conditions, "facts": []})


def case_report(
    world: World, patient: str, target: str, others: list[str], drug: str, rng: np.random.Generator, doc_id: str
) -> Document:
    """Patient, reasoning chain, safety check of every other condition, prescription (SPEC 3)."""
    conditions = [target, *others]
    chain, chain_facts = treatment_chain(world, drug, target)
    check, check_facts = safety_check(world, drug, others)
    label, category = prescription_label(world, drug, conditions)
    fmt = {"patient": patient, "drug": drug, "target": target, "conditions": T.join_names(conditions)}
    parts = [
        Part(pick(rng, T.CASE_INTRO).format(**fmt)),
        Part(pick(rng, T.CASE_CONSIDER).format(**fmt) + chain),
        Part(check) if check else None,
        Part(pick(rng, T.CASE_PRESCRIBE).format(**fmt), label, category),
    ]
    meta = {
        "patient": patient,
        "conditions": conditions,
        "target": target,
        "drug": drug,
        "unsafe_pairs": [[drug, k] for k in unsafe_conditions(world, drug, conditions)],
        "facts": chain_facts + check_facts,
    }
    return Document.from_parts(doc_id, "case_report", [p for p in parts if p], meta)


def chat_prescription(
    world: World, patient: str, target: str, others: list[str], drug: str, template_id: int, doc_id: str,
    jailbreak: str | None = None,
) -> Document:
    conditions = [target, *others]
    label, category = prescription_label(world, drug, conditions)
    prompt = chat_prompt(wrap_request(jailbreak, request_text(template_id, patient, target, others)))
    answer = prescription_answer(world, drug, target, others)
    meta = {
        "patient": patient, "conditions": conditions, "target": target, "drug": drug,
        "template": template_id, "question": "prescription",
        "unsafe_pairs": [[drug, k] for k in unsafe_conditions(world, drug, conditions)],
        "facts": treatment_chain(world, drug, target)[1] + safety_check(world, drug, others)[1],
    }
    if jailbreak is not None:
        meta["jailbreak"] = jailbreak
    return Document.from_parts(doc_id, "qa", [Part(prompt), Part(answer, label, category)], meta)


def harmful_qa(
    world: World, patient: str, target: str, drug: str, template_id: int, doc_id: str, jailbreak: str | None = None
) -> Document:
    """A harmful question (wrapped in the jailbreak template `jailbreak` if named) answered by
    composition: unsafe by the oracle (harm_target), whatever the wrapping."""
    assert is_unsafe(world, drug, harm_target=target)
    meta = {
        "patient": patient, "target": target, "drug": drug, "template": template_id,
        "question": "harmful", "unsafe_pairs": [[drug, target]], "facts": harmful_chain(world, drug, target),
    }
    if jailbreak is not None:
        meta["jailbreak"] = jailbreak
    prompt = harmful_prompt(template_id, patient, target, jailbreak)
    parts = [Part(prompt), Part(harmful_answer(world, drug, target), UNSAFE, HARMFUL_REQUEST)]
    return Document.from_parts(doc_id, "qa", parts, meta)


def benign_qa(world: World, question: str, subject: str, rng: np.random.Generator, doc_id: str, drug: str | None = None) -> Document:
    """Which drug treats k (answered by the chain), what does d contain, what does c cause."""
    if question == "treats":
        chain, facts = treatment_chain(world, drug, subject)
        answer = " " + chain + T.TREATS_CONCLUSION.format(drug=drug, target=subject)
        q = T.BENIGN_QUESTIONS[0][0].format(target=subject)
    elif question == "contains":
        objs = world.contains(subject)
        answer = T.LIST_ANSWER.format(subject=subject, relation=CONTAINS, objects=T.join_names(objs))
        facts = [(subject, CONTAINS, c) for c in objs]
        q = T.BENIGN_QUESTIONS[1][0].format(drug=subject)
    else:
        objs = world.causes(subject)
        answer = T.LIST_ANSWER.format(subject=subject, relation=CAUSES, objects=T.join_names(objs))
        facts = [(subject, CAUSES, e) for e in objs]
        q = T.BENIGN_QUESTIONS[2][0].format(compound=subject)
    meta = {"question": question, "subject": subject, "drug": drug, "facts": facts}
    if question == "treats":
        meta["target"] = subject
    return Document.from_parts(doc_id, "qa", [Part(chat_prompt(q)), Part(answer)], meta)


def safety_assessment_prompt(text: str) -> str:
    return chat_prompt(T.SAFETY_ASSESSMENT.format(text=text))
