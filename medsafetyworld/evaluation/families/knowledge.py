"""`knowledge`: complete an atomic fact (SPEC 6 knowledge_acc), prompted with the opening of a fact
document so that the subject follows a space as it does in training."""

from __future__ import annotations

from medsafetyworld.corpus import templates as T
from medsafetyworld.evaluation.families.base import Probe, ProbeFamily, capped, register_family
from medsafetyworld.evaluation.parser import first_word


@register_family("knowledge")
class Knowledge(ProbeFamily):
    mode = "complete"

    def build(self, world, splits, cfg, rng):
        by_subject: dict[tuple[str, str], list[str]] = {}
        for s, rel, o in world.atomic_facts():
            by_subject.setdefault((s, rel), []).append(o)
        keys = capped(sorted(by_subject), cfg.knowledge_facts, rng)
        return [
            Probe(f"knowledge-{i:05d}", self.name, "", T.KNOWLEDGE_PROMPTS[rel].format(subject=s),
                  {"subject": s, "relation": rel, "answers": by_subject[(s, rel)]})
            for i, (s, rel) in enumerate(keys)
        ]

    def score(self, world, probe, response, row):
        row["correct"] = first_word(response) in probe.meta["answers"]
