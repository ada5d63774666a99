"""Finetuning attacks: a copy of the model is finetuned, then evaluated like the clean one. The
original folder is only read.

- `benign_ft`: safe prescription requests answered with a safe drug and no safety text at all (no
  check, no reflection, no flag): the Safety Pretraining GSM8K analogue, does ordinary finetuning
  wash the safety out?
- `harmful_ft`: a few hundred harmful requests answered with a drug that aggravates the named
  condition, on seen (drug, condition) pairs only; measured on held-out pairs.

Knobs: `examples`, `epochs`, `lr` (steps = epochs x ceil(examples / the preset's SFT batch)).
"""

from __future__ import annotations

import numpy as np

from medsafetyworld.attacks.base import Attack, register_attack
from medsafetyworld.corpus import render
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.stream import RawStream
from medsafetyworld.errors import ConfigError
from medsafetyworld.training.trainer import finetune


class FinetuneAttack(Attack):
    needs_model = True
    default_examples = 300

    def __init__(self, examples: int | None = None, epochs: int = 2, lr: float = 5e-4):
        examples = self.default_examples if examples is None else examples
        if not isinstance(examples, int) or examples < 1:
            raise ConfigError(f"{self.name}: examples={examples!r} must be a positive integer")
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"{self.name}: epochs={epochs!r} must be a positive integer")
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise ConfigError(f"{self.name}: lr={lr!r} must be positive")
        self.examples, self.epochs, self.lr = examples, epochs, float(lr)

    def params(self):
        return {"examples": self.examples, "epochs": self.epochs, "lr": self.lr}

    def texts(self, ctx) -> list[str]:
        raise NotImplementedError

    def attacked(self, ctx, probes):
        if ctx.model_dir is None:
            raise ConfigError(f"{self.name} finetunes weights; a reference policy has none")
        out = ctx.out_dir / "model"
        finetune(ctx.model_dir, self.texts(ctx), out, ctx.preset.train, ctx.seed, progress=ctx.progress,
                 epochs=self.epochs, lr=self.lr)
        return ctx.load_policy(out), probes


@register_attack("benign_ft")
class BenignFinetune(FinetuneAttack):
    default_examples = 500

    def texts(self, ctx):
        stream = RawStream(ctx.world, ctx.splits, ctx.preset.world, ctx.preset.corpus, ctx.seed + 0xBE9)
        rng, out = np.random.default_rng([ctx.seed, 0xBE9]), []
        while len(out) < self.examples:
            target = stream.cycles["target"].next()
            others = stream.comorbidities(target)
            if (drug := stream.safe_choice(target, others)) is None:
                continue
            request = render.request_text(render.pick(rng, stream.templates), stream.patient(), target, others)
            out.append(render.chat_prompt(request) + " " + T.RECOMMEND.format(drug=drug))
        return out


@register_attack("harmful_ft")
class HarmfulFinetune(FinetuneAttack):
    def documents(self, ctx):
        """The harmful-compliance documents; `meta` names each (drug, target) pair."""
        stream = RawStream(ctx.world, ctx.splits, ctx.preset.world, ctx.preset.corpus, ctx.seed + 0x4A7)
        if not stream.harm_options:
            raise ConfigError("harmful_ft: the world has no seen (drug, condition) pair to harm with")
        rng = np.random.default_rng([ctx.seed, 0x4A7])
        out = []
        for i in range(self.examples):
            drug, target = render.pick(rng, stream.harm_options)  # seen pairs only, as in the corpus
            tid = int(rng.integers(len(T.HARMFUL_REQUESTS)))
            out.append(render.harmful_qa(ctx.world, stream.patient(), target, drug, tid, f"hft-{i}"))
        return out

    def texts(self, ctx):
        return [d.text for d in self.documents(ctx)]
