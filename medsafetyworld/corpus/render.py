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
from medsafetyworld.corpus.reasoning import reasoning, treatment_chain
from medsafetyworld.world.graph import AGGRAVATES, CAUSES, CONTAINS, RELIEVES, World
from medsafetyworld.world.oracle import is_unsafe, unsafe_conditions


def pick(rng: np.random.Generator, options: tuple | list) -> Any:
    return options[int(rng.integers(len(options)))]


# --- answers --------------------------------------------------------------------------------


def answer_parts(
    world: World, drug: str, target: str, others: list[str], patient: str, *, switch_to: str | None = None
) -> list[Part]:
    """An assistant's answer to a prescription request, part by part: the candidate's chain, check
    and verdict; with `switch_to`, that drug considered instead, with its own chain, check and
    verdict; then the recommendation of the last drug considered, labelled by the oracle. Without
    `switch_to` the candidate is recommended whatever its verdict (the answer that acts)."""
    conditions = [target, *others]
    parts = [Part(" " + reasoning(world, drug, target, others, patient).text)]
    if switch_to is not None:
        parts.append(Part(T.SWITCH.format(drug=switch_to) + reasoning(world, switch_to, target, others, patient).text))
    final = switch_to or drug
    label, category = prescription_label(world, final, conditions)
    return parts + [Part(T.RECOMMEND.format(drug=final), label, category)]


def prescription_answer(
    world: World, drug: str, target: str, others: list[str], patient: str, *, switch_to: str | None = None
) -> str:
    """answer_parts as one text."""
    return "".join(p.text for p in answer_parts(world, drug, target, others, patient, switch_to=switch_to))


def harmful_chain(world: World, drug: str, target: str) -> list[tuple[str, str, str]]:
    """The facts that make `drug` aggravate `target`: contains, causes, aggravates."""
    c, e = world.chains(drug, target, AGGRAVATES)[0]
    return [(drug, CONTAINS, c), (c, CAUSES, e), (e, AGGRAVATES, target)]


def harmful_answer(world: World, drug: str, target: str) -> str:
    """An answer to 'which drug makes target worse', composed forwards through an aggravating effect."""
    (_, _, c), (_, _, e), _ = harmful_chain(world, drug, target)
    return (
        " "
        + T.STEP_CONTAINS.format(drug=drug, compound=c)
        + T.STEP_CAUSES.format(compound=c, effect=e)
        + T.STEP_AGGRAVATES.format(effect=e, condition=target)
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
    meta = {"patient": patient, "conditions": conditions, "facts": []}
    return Document.from_parts(doc_id, "patient_record", [Part(text)], meta)


def case_report(
    world: World, patient: str, target: str, others: list[str], drug: str, rng: np.random.Generator, doc_id: str,
    *, switch_to: str | None = None,
) -> Document:
    """Patient, candidate, chain, check against every condition, verdict, decision (SPEC 3, v2).

    The decision prescribes the candidate, whatever its verdict (an unsafe report when the verdict
    is unsafe), unless `switch_to` names a safe drug: then the doctor considers that one instead
    and prescribes it after its own check (a safety behaviour; the document is safe). The check
    and verdict end a part of their own, so a strategy can act right after the verdict."""
    conditions = [target, *others]
    first = reasoning(world, drug, target, others, patient)
    final = drug
    fmt = {"patient": patient, "drug": drug, "target": target, "conditions": T.join_names(conditions)}
    chain_end = len(treatment_chain(world, drug, target)[0])
    parts = [
        Part(pick(rng, T.CASE_INTRO).format(**fmt)),
        Part(pick(rng, T.CASE_CONSIDER).format(**fmt) + first.text[:chain_end]),
        Part(first.text[chain_end:]),
    ]
    facts = list(first.facts)
    if switch_to is not None:
        if not first.unsafe or is_unsafe(world, switch_to, patient_conditions=conditions):
            raise ValueError(f"a switch goes from an unsafe candidate to a safe drug, not {drug} -> {switch_to}")
        second = reasoning(world, switch_to, target, others, patient)
        parts.append(Part(pick(rng, T.CASE_SWITCH).format(drug=switch_to) + second.text))
        facts += second.facts
        final = switch_to
    label, category = prescription_label(world, final, conditions)
    parts.append(Part(pick(rng, T.CASE_PRESCRIBE).format(**{**fmt, "drug": final}), label, category))
    meta = {
        "patient": patient,
        "conditions": conditions,
        "target": target,
        "drug": final,
        "candidate": drug,
        "unsafe_pairs": [[final, k] for k in unsafe_conditions(world, final, conditions)],
        "facts": facts,
    }
    if switch_to is not None:
        meta["switched"] = True
    return Document.from_parts(doc_id, "case_report", parts, meta)


def chat_prescription(
    world: World, patient: str, target: str, others: list[str], drug: str, template_id: int, doc_id: str,
    jailbreak: str | None = None, *, switch_to: str | None = None,
) -> Document:
    """A prescription request answered by prescription_answer: candidate `drug`, its check and
    verdict, then `drug` recommended, or `switch_to` after its own check."""
    conditions = [target, *others]
    final = switch_to or drug
    prompt = chat_prompt(wrap_request(jailbreak, request_text(template_id, patient, target, others)))
    answer = answer_parts(world, drug, target, others, patient, switch_to=switch_to)
    facts = list(reasoning(world, drug, target, others, patient).facts)
    if switch_to is not None:
        facts += reasoning(world, switch_to, target, others, patient).facts
    meta = {
        "patient": patient, "conditions": conditions, "target": target, "drug": final, "candidate": drug,
        "template": template_id, "question": "prescription",
        "unsafe_pairs": [[final, k] for k in unsafe_conditions(world, final, conditions)],
        "facts": facts,
    }
    if jailbreak is not None:
        meta["jailbreak"] = jailbreak
    if switch_to is not None:
        meta["switched"] = True
    return Document.from_parts(doc_id, "qa", [Part(prompt), *answer], meta)


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


def benign_qa(
    world: World, question: str, subject: str, rng: np.random.Generator, doc_id: str, drug: str | None = None
) -> Document:
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
