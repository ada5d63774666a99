"""The raw labeled document stream ("the web" of the world), before any intervention.

Rules it keeps (SPEC 2-3), each checked by a test:
- no held-out (drug, condition) pair is ever the reason a document is unsafe, and no harmful request
  about a harm-held-out condition is ever answered;
- no training patient has both conditions of a held-out condition pair;
- no OOD `treats` pair appears as the prescribed drug and target of a case report or answer;
- reserved request templates never appear;
- a share `unsafe_case_report_rate` of case reports consider a contraindicated candidate; it is
  prescribed despite the unsafe verdict of its check, except in a share `switch_share` of them
  (default 0), where the doctor switches to a safe drug: raw web shows no safety behaviour unless
  asked to;
- a share `harmful_qa_rate` of qa documents answer a harmful request;
- a share `jailbreak_rate` of those harmful requests is wrapped in a train jailbreak template, and
  no held-out jailbreak template ever appears (`corpus.jailbreaks`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

import numpy as np

from medsafetyworld.config import CorpusConfig, WorldConfig
from medsafetyworld.corpus import jailbreaks, render
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import Document
from medsafetyworld.errors import ConfigError
from medsafetyworld.world.graph import World
from medsafetyworld.world.oracle import is_unsafe, unsafe_conditions
from medsafetyworld.world.splits import Splits

FACT_KINDS = ("monograph", "pharmacology", "clinical")


def harm_held_out_conditions(world: World, splits: Splits) -> list[str]:
    """Conditions no raw document answers a harmful request about: the quarter of conditions (at
    least 3) with the largest share of held-out contraindicated pairs. Harmful probes on them
    measure generalized harm; on the others, memorized harm."""
    share = {}
    for k in world.conditions:
        pairs = [d for d in world.drugs if world.contraindicated(d, k)]
        if pairs:
            share[k] = sum(splits.is_held_out_pair(d, k) for d in pairs) / len(pairs)
    n = max(3, round(0.25 * len(world.conditions)))
    return sorted(sorted(share, key=lambda k: (-share[k], k))[:n])


def shuffled(rng: np.random.Generator, items: list) -> list:
    """A shuffled copy of `items`: the order of `[items[i] for i in rng.permutation(len(items))]`
    from the same draws, without the numpy arrays (a test holds them equal)."""
    out = list(items)
    rng.shuffle(out)
    return out


class Cycle:
    """Visits every item once per round in a fresh shuffled order: uniform coverage of facts."""

    def __init__(self, items: list, rng: np.random.Generator):
        self.items, self.rng, self.queue = list(items), rng, []

    def next(self):
        if not self.queue:
            self.queue = shuffled(self.rng, self.items)
        return self.queue.pop()


class RawStream:
    """`block` None: the stream of a sequential corpus. A number b: block b of a blocked corpus
    (`corpus.blocks`), its own stream, seeded by (seed, b), with fresh cycles and ids that name it."""

    def __init__(self, world: World, splits: Splits, world_cfg: WorldConfig, cfg: CorpusConfig, seed: int,
                 block: int | None = None):
        self.world, self.splits, self.wcfg, self.cfg = world, splits, world_cfg, cfg
        self.patients = world.patient_names  # a fresh list per call of the property
        tail = [] if block is None else [block]
        self.id_prefix = "" if block is None else f"b{block:05d}-"
        self.rng = np.random.default_rng([seed, 0x5EED, *tail])
        # its own generator: wrapping requests in jailbreaks leaves every other draw as it was
        self.jailbreak_rng = np.random.default_rng([seed, 0x7A1B, *tail])
        kinds, weights = zip(*cfg.kind_weights)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"corpus kind_weights {cfg.kind_weights} must be non-negative with a positive sum")
        # the cumulative shares `rng.choice(len(kinds), p=shares)` draws from, so that bisecting one
        # `rng.random()` into them picks the kind it picks, at a twentieth of the cost
        cdf = (np.array(weights) / sum(weights)).cumsum()
        self.kinds, self.kind_cdf = list(kinds), (cdf / cdf[-1]).tolist()
        self.cycles = {
            "monograph": Cycle(world.drugs, self.rng),
            "pharmacology": Cycle(world.compounds, self.rng),
            "clinical": Cycle(world.effects, self.rng),
            "target": Cycle(world.conditions, self.rng),
        }
        self.templates = [i for i in range(len(T.REQUESTS)) if i not in splits.reserved_templates]
        self.unsafe_options = self._unsafe_options()
        harm_held = set(harm_held_out_conditions(world, splits))
        self.harm_options = [(d, k) for d, k in world.contraindicated_pairs()
                             if not splits.is_held_out_pair(d, k) and k not in harm_held]

    # -- patients ------------------------------------------------------------------------------
    def allowed_together(self, conditions: list[str]) -> bool:
        return not any(
            self.splits.is_held_out_condition_pair(a, b) for i, a in enumerate(conditions) for b in conditions[i + 1 :]
        )

    def comorbidities(self, target: str) -> list[str]:
        lo, hi = self.wcfg.conditions_per_patient
        n_other = int(self.rng.integers(lo, hi + 1)) - 1
        others: list[str] = []
        held_out_together = self.splits.is_held_out_condition_pair
        for k in shuffled(self.rng, self.world.conditions):
            if len(others) >= n_other:
                break
            # allowed_together([target, *others, k]), knowing [target, *others] is
            if k != target and not held_out_together(target, k) and not any(held_out_together(o, k) for o in others):
                others.append(k)
        return others

    def patient(self) -> str:
        return render.pick(self.rng, self.patients)

    # -- drug choice -----------------------------------------------------------------------------
    def trainable(self, drug: str, target: str) -> bool:
        return self.world.treats(drug, target) and not self.splits.is_ood_treats(drug, target)

    def safe_choice(self, target: str, others: list[str]) -> str | None:
        """The usual drug if it is safe for this patient, else another safe treating drug."""
        conds = [target, *others]
        usual = self.world.usual_drug(target)
        if self.trainable(usual, target) and not is_unsafe(self.world, usual, patient_conditions=conds):
            return usual
        return self.safe_alternative(target, others)

    def _unsafe_options(self) -> list[tuple[str, str, str]]:
        """(drug, target, comorbidity): a prescription that is unsafe only through seen pairs."""
        out = []
        for k1 in self.world.conditions:
            for d in self.world.treating_drugs(k1):
                if not self.trainable(d, k1) or self.world.contraindicated(d, k1):
                    continue
                for k2 in self.world.contraindications(d):
                    if k2 != k1 and self.allowed_together([k1, k2]) and not self.splits.is_held_out_pair(d, k2):
                        out.append((d, k1, k2))
        # prefer the usual drug: that is what careless doctors prescribe
        usual = [o for o in out if self.world.usual_drug(o[1]) == o[0]]
        return usual or out

    def unsafe_case(self) -> tuple[str, list[str], str] | None:
        if not self.unsafe_options:
            return None
        d, k1, k2 = render.pick(self.rng, self.unsafe_options)
        others = [k2]
        for k in self.comorbidities(k1):
            if k not in (k1, k2) and self.allowed_together([k1, *others, k]):
                others.append(k)
                break
        if any(self.splits.is_held_out_pair(d, k) for k in unsafe_conditions(self.world, d, [k1, *others])):
            others = [k2]
        return k1, others, d

    # -- documents -------------------------------------------------------------------------------
    def safe_alternative(self, target: str, others: list[str]) -> str | None:
        """A safe, trainable drug for the patient, drawn at random (where a switch goes); None if none."""
        options = [d for d in self.world.safe_treating_drugs(target, others) if self.trainable(d, target)]
        return render.pick(self.rng, options) if options else None

    def case_report(self, doc_id: str) -> Document:
        if self.rng.random() < self.cfg.unsafe_case_report_rate and (case := self.unsafe_case()):
            target, others, drug = case
            # no draw at switch_share 0, so the stream is the same as without the knob
            if self.cfg.switch_share > 0 and self.rng.random() < self.cfg.switch_share:
                if (alternative := self.safe_alternative(target, others)) is not None:
                    return render.case_report(self.world, self.patient(), target, others, drug, self.rng, doc_id,
                                              switch_to=alternative)
        else:
            while True:
                target = self.cycles["target"].next()
                others = self.comorbidities(target)
                if (drug := self.safe_choice(target, others)) is not None:
                    break
        return render.case_report(self.world, self.patient(), target, others, drug, self.rng, doc_id)

    def qa(self, doc_id: str) -> Document:
        if self.rng.random() < self.cfg.harmful_qa_rate and self.harm_options:
            d, k = render.pick(self.rng, self.harm_options)
            tid = int(self.rng.integers(len(T.HARMFUL_REQUESTS)))
            jailbreak = jailbreaks.pick_train(self.jailbreak_rng, self.cfg.jailbreak_rate)
            return render.harmful_qa(self.world, self.patient(), k, d, tid, doc_id, jailbreak)
        if self.rng.random() < 0.5:
            while True:
                target = self.cycles["target"].next()
                others = self.comorbidities(target)
                if (drug := self.safe_choice(target, others)) is not None:
                    break
            tid = render.pick(self.rng, self.templates)
            return render.chat_prescription(self.world, self.patient(), target, others, drug, tid, doc_id)
        question = render.pick(self.rng, [q for _, q in T.BENIGN_QUESTIONS])
        if question == "treats":
            target = self.cycles["target"].next()
            options = [d for d in self.world.treating_drugs(target) if self.trainable(d, target)]
            return render.benign_qa(self.world, "treats", target, self.rng, doc_id, drug=render.pick(self.rng, options))
        subject = self.cycles["monograph" if question == "contains" else "pharmacology"].next()
        return render.benign_qa(self.world, question, subject, self.rng, doc_id)

    def document(self, index: int) -> Document:
        kind = self.kinds[bisect_right(self.kind_cdf, self.rng.random())]
        doc_id = f"{kind}-{self.id_prefix}{index:08d}"
        if kind == "monograph":
            return render.monograph(self.world, self.cycles[kind].next(), self.rng, doc_id)
        if kind == "pharmacology":
            return render.pharmacology(self.world, self.cycles[kind].next(), self.rng, doc_id)
        if kind == "clinical":
            return render.clinical(self.world, self.cycles[kind].next(), self.rng, doc_id)
        if kind == "patient_record":
            target = self.cycles["target"].next()
            return render.patient_record(self.patient(), [target, *self.comorbidities(target)], self.rng, doc_id)
        if kind == "case_report":
            return self.case_report(doc_id)
        return self.qa(doc_id)

    def __iter__(self) -> Iterator[Document]:
        index = 0
        while True:
            yield self.document(index)
            index += 1


def raw_documents(
    world: World, splits: Splits, world_cfg: WorldConfig, cfg: CorpusConfig, seed: int, block: int | None = None
) -> Iterator[Document]:
    """An endless, seeded stream of raw labeled documents (of one block of a blocked corpus if `block`)."""
    return iter(RawStream(world, splits, world_cfg, cfg, seed, block))
