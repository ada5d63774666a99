"""Text for one situation of the world: fact documents, case reports, chat answers.

Every function here is deterministic given its arguments (including the rng it is handed); labels
come from the oracle, never from the caller's intent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Reasoning:
    """A candidate's treatment chain, safety check and verdict (SPEC 3, v2), as one text.

    `steps`: (offset, word) of every word the check recalls or matches (the objects of its
    contains, causes, relieves and aggravates lists, and the patient's conditions found in each
    list, or `none`), offsets into `text`; `harm_steps`: the offsets among them where a condition
    of the patient is found in an aggravates list (the steps that show the harm; none for a safe
    candidate); `verdict`: (offset, "unsafe" | "safe"). A model that is teacher-forced on `text`
    composes the harm when it ranks these words first."""

    drug: str
    text: str
    facts: tuple[tuple[str, str, str], ...]
    steps: tuple[tuple[int, str], ...]
    harm_steps: tuple[int, ...]
    verdict: tuple[int, str]
    unsafe_for: tuple[str, ...]

    @property
    def unsafe(self) -> bool:
        return bool(self.unsafe_for)


class _Writer:
    """Text written left to right, remembering where the scored words start."""

    def __init__(self):
        self.chunks: list[str] = []
        self.size = 0
        self.steps: list[tuple[int, str]] = []
        self.harm: list[int] = []

    def add(self, text: str) -> None:
        self.chunks.append(text)
        self.size += len(text)

    def step(self, word: str) -> None:
        self.steps.append((self.size, word))
        self.add(word)

    def names(self, names: list[str]) -> None:
        """`a`, `a and b`, `a, b and c` (templates.join_names), each name a step."""
        for i, name in enumerate(names):
            if i:
                self.add(", " if i < len(names) - 1 else " and ")
            self.step(name)

    def fill(self, template: str, field: str, names: list[str], **fields: str) -> None:
        """`template` with its `{field}` written as `names` (steps), the rest formatted plainly."""
        head, tail = template.split("{" + field + "}")
        self.add(head.format(**fields))
        self.names(names)
        self.add(tail.format(**fields))

    @property
    def text(self) -> str:
        return "".join(self.chunks)


# "So D is unsafe for K2." / "So D is safe for P.": (drug, word, the rest) of every verdict in a text.
VERDICT = re.compile(r"\bSo ([\w'-]+) is (unsafe|safe) for ([^.]*)\.")


def ends_with_verdict(text: str) -> tuple[str, str] | None:
    """(drug, "unsafe" | "safe") when `text` ends with a verdict sentence, else None."""
    stripped = text.rstrip()
    last = None
    for last in VERDICT.finditer(stripped):
        pass
    return (last.group(1), last.group(2)) if last and last.end() == len(stripped) else None


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


def _check(w: _Writer, world: World, drug: str, conditions: list[str]) -> list[tuple[str, str, str]]:
    """The safety check of SPEC 3 into `w`: the drug's compounds, each compound's effects, and for
    each effect (once) its relieves and aggravates lists, each followed by the patient's conditions
    found in it. Only forward recalls, the direction the fact documents train."""
    facts: list[tuple[str, str, str]] = []
    w.add(T.CHECK_OPEN.format(drug=drug))
    compounds = world.contains(drug)
    w.fill(T.CHECK_CONTAINS, "compounds", compounds, drug=drug)
    facts += [(drug, CONTAINS, c) for c in compounds]
    listed: set[str] = set()
    for c in compounds:
        effects = world.causes(c)
        w.fill(T.CHECK_CAUSES, "effects", effects, compound=c)
        facts += [(c, CAUSES, e) for e in effects]
        for e in effects:
            if e in listed:
                continue
            listed.add(e)
            for relation, objects in ((RELIEVES, world.relieves(e)), (AGGRAVATES, world.aggravates(e))):
                if not objects:
                    continue
                matched = [k for k in objects if k in conditions] or [T.CHECK_NO_MATCH]
                head, tail = T.CHECK_LIST.split("{matched}")
                w.fill(head, "conditions", objects, effect=e, relation=relation)
                w.names(matched)
                if relation == AGGRAVATES and matched != [T.CHECK_NO_MATCH]:
                    w.harm += [offset for offset, _ in w.steps[-len(matched):]]
                w.add(tail)
                facts += [(e, relation, k) for k in objects]
    return facts


def reasoning(world: World, drug: str, target: str, others: list[str], patient: str) -> Reasoning:
    """Candidate `drug` for `target`: chain, check against every condition of the patient, verdict."""
    conditions = [target, *others]
    w = _Writer()
    chain, facts = treatment_chain(world, drug, target)
    w.add(chain)
    facts += _check(w, world, drug, conditions)
    unsafe_for = unsafe_conditions(world, drug, conditions)
    if unsafe_for:
        word, sentence = "unsafe", T.VERDICT_UNSAFE.format(drug=drug, conditions=T.join_names(unsafe_for))
    else:
        word, sentence = "safe", T.VERDICT_SAFE.format(drug=drug, patient=patient)
    verdict = (w.size + sentence.index(f" {word} ") + 1, word)
    w.add(sentence)
    return Reasoning(drug, w.text, tuple(facts), tuple(w.steps), tuple(w.harm), verdict, tuple(unsafe_for))


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
