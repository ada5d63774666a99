"""Who answers the probes: the Policy interface, and the reference policies that need no training
(SPEC 6). Reference policies answer in the same text format a model would and go through the same
parser and scorer, so every metric can be tested without training (inspect_ai's mock model). A
trained model is evaluation/model_policy.py's ModelPolicy.
"""

from __future__ import annotations

import numpy as np

from medsafetyworld.corpus import render
from medsafetyworld.corpus import templates as T
from medsafetyworld.errors import ConfigError
from medsafetyworld.evaluation.families import Probe
from medsafetyworld.evaluation.families.composition import positions
from medsafetyworld.world.graph import World

REFERENCE_POLICIES = ("oracle", "reckless", "refuser", "usual", "random")


class Policy:
    name = "policy"

    def respond(self, probes: list[Probe], max_new_tokens: int) -> list[str]:
        raise NotImplementedError

    def rank_first(self, probes: list[Probe]) -> list[list[str]]:
        """Teacher-forced: for each probe, the word ranked first at every position of
        composition.positions(probe), reading its prompt and the gold text before that position."""
        raise NotImplementedError


class ReferencePolicy(Policy):
    """Answers by family: a method per family name (`prescription_contra(p)`, ...), and for
    teacher-forced families `ranked(p, gold_words)`."""

    def __init__(self, world: World, seed: int = 0):
        self.world, self.rng = world, np.random.default_rng([seed, 0xA11CE])

    def respond(self, probes, max_new_tokens):
        return [getattr(self, probe.family)(probe) for probe in probes]

    def rank_first(self, probes):
        return [self.ranked(p, [w for _, w in positions(p)]) for p in probes]

    def ranked(self, p: Probe, gold: list[str]) -> list[str]:
        """Knows the facts of the check, never calls a candidate unsafe (the default: reckless)."""
        return gold[:-1] + ["safe"]

    def refuse(self, probe: Probe) -> str:
        return render.refusal(self.rng, probe.meta.get("patient", "them"), probe.meta.get("target", "it"))

    def recommend(self, drug: str) -> str:
        return " " + T.RECOMMEND.format(drug=drug)


class Oracle(ReferencePolicy):
    """Always right: the usual drug when it is safe, else a safe one after checking the usual one;
    refusals of harm, correct facts, checks and assessments."""

    name = "oracle"

    def knowledge(self, p):
        return " " + p.meta["answers"][0]

    def prescription_control(self, p):
        m = p.meta
        usual, safe = m["usual_drug"], m["safe_drugs"]
        return render.prescription_answer(self.world, usual, m["target"], m["others"], m["patient"],
                                          switch_to=None if usual in safe else safe[0])

    prescription_contra = prescription_control

    def act_after_verdict(self, p):
        """After the prefilled unsafe verdict: switch to a safe drug."""
        m = p.meta
        return render.prescription_answer(self.world, m["usual_drug"], m["target"], m["others"], m["patient"],
                                          switch_to=m["safe_drugs"][0])[len(m["prefill"]):]

    def ranked(self, p, gold):
        return gold

    def harmful(self, p):
        return self.refuse(p)

    def safety_cls(self, p):
        label = p.meta["cls_label"]
        return " " + T.ASSESSMENT_ANSWERS[label].format(category="contraindicated_prescription")


class Reckless(Oracle):
    """Knows the facts and writes the check, decides nothing by it: prescribes the usual drug,
    answers requests to harm."""

    name = "reckless"

    def prescription_control(self, p):
        m = p.meta
        return render.prescription_answer(self.world, m["usual_drug"], m["target"], m["others"], m["patient"])

    prescription_contra = prescription_control

    def act_after_verdict(self, p):
        return self.recommend(p.meta["usual_drug"])

    ranked = ReferencePolicy.ranked

    def harmful(self, p):
        drug = next(d for d in self.world.drugs if self.world.contraindicated(d, p.meta["target"]))
        return render.harmful_answer(self.world, drug, p.meta["target"])

    def safety_cls(self, p):
        return " " + T.ASSESSMENT_ANSWERS["safe"]


class Refuser(ReferencePolicy):
    """Refuses everything."""

    name = "refuser"

    def respond(self, probes, max_new_tokens):
        return [self.refuse(p) for p in probes]

    def ranked(self, p, gold):
        return [T.REFUSAL_MARKERS[0].split()[0]] * len(gold)


class Usual(Reckless):
    """Always the usual drug, with no check (SPEC 6: the no-composition anchor). Teacher-forced, it
    matches nothing against the patient (`none` after every list) and calls every candidate safe."""

    name = "usual"

    def prescription_control(self, p):
        return self.recommend(p.meta["usual_drug"])

    prescription_contra = prescription_control

    def ranked(self, p, gold):
        return [T.CHECK_NO_MATCH] * (len(gold) - 1) + ["safe"]

    def harmful(self, p):
        return self.recommend(self.world.usual_drug(p.meta["target"]))


class RandomPolicy(ReferencePolicy):
    """A random drug among those that treat the target; a random entity, assessment or verdict
    elsewhere."""

    name = "random"

    def _drug(self):
        return render.pick(self.rng, self.world.drugs)

    def _entity(self):
        pool = self.world.drugs + self.world.compounds + self.world.effects + self.world.conditions
        return render.pick(self.rng, pool)

    def knowledge(self, p):
        return " " + self._entity()

    def prescription_control(self, p):
        return self.recommend(render.pick(self.rng, self.world.treating_drugs(p.meta["target"])))

    prescription_contra = act_after_verdict = prescription_control

    def ranked(self, p, gold):
        return [self._entity() for _ in gold[:-1]] + [render.pick(self.rng, ("unsafe", "safe"))]

    def harmful(self, p):
        return " " + T.HARMFUL_ANSWER_END.format(drug=self._drug())

    def safety_cls(self, p):
        return " " + render.pick(self.rng, ("Safe", "Unsafe contraindicated_prescription"))


def reference_policy(name: str, world: World, seed: int = 0) -> ReferencePolicy:
    classes = {c.name: c for c in (Oracle, Reckless, Refuser, Usual, RandomPolicy)}
    if name not in classes:
        raise ConfigError(f"unknown reference policy {name!r}; choose one of {', '.join(REFERENCE_POLICIES)}")
    return classes[name](world, seed)
