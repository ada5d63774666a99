"""Who answers the probes: a trained Hugging Face model, or a reference policy that needs no
training (SPEC 6). Reference policies answer in the same text format a model would and go through
the same parser and scorer, so every metric can be tested without training (inspect_ai's mock model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medsafetyworld.corpus import render
from medsafetyworld.corpus import templates as T
from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.probes import Probe
from medsafetyworld.world.graph import World

REFERENCE_POLICIES = ("oracle", "reckless", "refuser", "random")


class Policy:
    name = "policy"

    def respond(self, probes: list[Probe], max_new_tokens: int) -> list[str]:
        raise NotImplementedError


class ReferencePolicy(Policy):
    def __init__(self, world: World, seed: int = 0):
        self.world, self.rng = world, np.random.default_rng([seed, 0xA11CE])

    def respond(self, probes, max_new_tokens):
        return [getattr(self, probe.family)(probe) for probe in probes]

    def refuse(self, probe: Probe) -> str:
        return render.refusal(self.rng, probe.meta.get("patient", "them"), probe.meta.get("target", "it"))


class Oracle(ReferencePolicy):
    """Always right: safe drugs, refusals of harm, correct facts and assessments."""

    name = "oracle"

    def knowledge(self, p):
        return " " + p.meta["answers"][0]

    def prescription_safe(self, p):
        return render.prescription_answer(self.world, p.meta["safe_drugs"][0], p.meta["target"], p.meta["others"])

    prescription_contra = prescription_safe

    def harmful(self, p):
        return self.refuse(p)

    def safety_cls(self, p):
        label = p.meta["cls_label"]
        return " " + T.ASSESSMENT_ANSWERS[label].format(category="contraindicated_prescription")


class Reckless(Oracle):
    """Knows the facts, checks nothing: prescribes the usual drug, answers requests to harm."""

    name = "reckless"

    def prescription_safe(self, p):
        return render.prescription_answer(self.world, p.meta["usual_drug"], p.meta["target"], p.meta["others"])

    prescription_contra = prescription_safe

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


class RandomPolicy(ReferencePolicy):
    """Names a random entity of the right kind."""

    name = "random"

    def _drug(self):
        return render.pick(self.rng, self.world.drugs)

    def knowledge(self, p):
        pool = self.world.drugs + self.world.compounds + self.world.effects + self.world.conditions
        return " " + render.pick(self.rng, pool)

    def prescription_safe(self, p):
        return " " + T.RECOMMEND.format(drug=self._drug())

    prescription_contra = prescription_safe

    def harmful(self, p):
        return " " + T.HARMFUL_ANSWER_END.format(drug=self._drug())

    def safety_cls(self, p):
        return " " + render.pick(self.rng, ("Safe", "Unsafe contraindicated_prescription"))


def reference_policy(name: str, world: World, seed: int = 0) -> ReferencePolicy:
    classes = {c.name: c for c in (Oracle, Reckless, Refuser, RandomPolicy)}
    return classes[name](world, seed)


class ModelPolicy(Policy):
    """Greedy decoding from any Hugging Face causal LM folder with its tokenizer."""

    def __init__(self, model_dir: Path, batch_size: int = 64, device: str | None = None, progress: bool = True):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(model_dir) / "config.json").is_file():
            raise DataError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
        self.name = str(model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(self.device).eval()
        self.batch_size, self.progress = batch_size, progress

    def respond(self, probes, max_new_tokens):
        import torch

        order = sorted(range(len(probes)), key=lambda i: len(probes[i].prompt))
        out: list[str] = [""] * len(probes)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="generate", disable=not self.progress):
            enc = self.tokenizer([probes[i].prompt for i in batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for i, ids in zip(batch, new.tolist()):
                if self.tokenizer.eos_token_id in ids:
                    ids = ids[: ids.index(self.tokenizer.eos_token_id)]
                out[i] = self.tokenizer.decode(ids, skip_special_tokens=False)
        return out
