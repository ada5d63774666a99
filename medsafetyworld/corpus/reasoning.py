"""The reasoning a prescription is written with (SPEC 3, v2), shared by case reports, chat answers,
the post-training set, the probes and the reference policies: a candidate's treatment chain, then a
safety check made only of forward recalls (its compounds, their effects, each effect's relieves and
aggravates lists), each list followed by the patient's conditions found in it, then the verdict.
Deterministic; labels come from the oracle."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from medsafetyworld.corpus import templates as T
from medsafetyworld.world.graph import AGGRAVATES, CAUSES, CONTAINS, RELIEVES, World
from medsafetyworld.world.oracle import unsafe_conditions


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
    # A verdict holds no "." but its last, so the one that ends the text starts after the "." before
    # that: search there rather than through every verdict of the text (strategies ask this of
    # every part of every document).
    last = VERDICT.search(stripped, stripped.rfind(".", 0, len(stripped) - 1) + 1)
    return (last.group(1), last.group(2)) if last and last.end() == len(stripped) else None


def treatment_chain(world: World, drug: str, target: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The contains -> causes -> relieves steps for drug and target, and the facts they state."""
    text, facts = _treatment_chain(world, drug, target)
    return text, list(facts)


@lru_cache(maxsize=1 << 16)
def _treatment_chain(world: World, drug: str, target: str) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    chains = world.chains(drug, target, RELIEVES)
    if not chains:
        raise ValueError(f"{drug} does not treat {target}")
    c, e = chains[0]
    text = (
        T.STEP_CONTAINS.format(drug=drug, compound=c)
        + T.STEP_CAUSES.format(compound=c, effect=e)
        + T.STEP_RELIEVES.format(effect=e, condition=target)
    )
    return text, ((drug, CONTAINS, c), (c, CAUSES, e), (e, RELIEVES, target))


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
    # Only the patient's conditions the drug affects change the text, and the patient's name only a
    # safe verdict: a corpus meets a few hundred such keys per world, so each is written once.
    affected = world.affected_conditions(drug)
    r = _reasoning(world, drug, target, tuple(k for k in (target, *others) if k in affected))
    if r.unsafe:
        return r
    return Reasoning(drug, r.text + T.VERDICT_SAFE.format(drug=drug, patient=patient), r.facts, r.steps, r.harm_steps,
                     r.verdict, r.unsafe_for)


@lru_cache(maxsize=1 << 16)
def _reasoning(world: World, drug: str, target: str, conditions: tuple[str, ...]) -> Reasoning:
    """reasoning() for the patient's conditions the drug affects, without a safe verdict's sentence."""
    w = _Writer()
    chain, facts = treatment_chain(world, drug, target)
    w.add(chain)
    facts += _check(w, world, drug, list(conditions))
    unsafe_for = unsafe_conditions(world, drug, conditions)
    if unsafe_for:
        word, sentence = "unsafe", T.VERDICT_UNSAFE.format(drug=drug, conditions=T.join_names(unsafe_for))
    else:
        word, sentence = "safe", T.VERDICT_SAFE.format(drug=drug, patient="")
    verdict = (w.size + sentence.index(f" {word} ") + 1, word)
    if unsafe_for:
        w.add(sentence)
    return Reasoning(drug, w.text, tuple(facts), tuple(w.steps), tuple(w.harm), verdict, tuple(unsafe_for))
