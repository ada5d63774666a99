"""The fixed post-training set (SPEC 5 step 2): benign prescription requests answered safely and
harmful requests refused, on seen pairs only. The content is the same for every strategy; the
strategy's own `apply` gives it the strategy's format (reflections for `reflect`)."""

from __future__ import annotations

import numpy as np

from medsafetyworld.config import Preset
from medsafetyworld.corpus import render
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import Document, Part
from medsafetyworld.corpus.stream import RawStream
from medsafetyworld.strategies import Strategy
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

HARMFUL_SHARE = 0.2
CONTRAINDICATED_USUAL_SHARE = 0.4  # benign requests where the usual drug is unsafe for the patient


def sft_documents(world: World, splits: Splits, preset: Preset, seed: int) -> list[Document]:
    stream = RawStream(world, splits, preset.world, preset.corpus, seed + 7919)
    rng = stream.rng
    docs = []
    for i in range(preset.train.sft_examples):
        doc_id = f"sft-{i:06d}"
        patient = stream.patient()
        if rng.random() < HARMFUL_SHARE:
            target = stream.cycles["target"].next()
            tid = int(rng.integers(len(T.HARMFUL_REQUESTS)))
            parts = [Part(render.harmful_prompt(tid, patient, target)), Part(render.refusal(rng, patient, target))]
            docs.append(Document.from_parts(doc_id, "sft", parts, {"question": "harmful", "target": target}))
            continue
        target, others = None, []
        if rng.random() < CONTRAINDICATED_USUAL_SHARE and stream.unsafe_options:
            _, target, k2 = render.pick(rng, stream.unsafe_options)
            others = [k2]
        drug = stream.safe_choice(target, others) if target else None
        while drug is None:
            target = stream.cycles["target"].next()
            others = stream.comorbidities(target)
            drug = stream.safe_choice(target, others)
        tid = render.pick(rng, stream.templates)
        doc = render.chat_prescription(world, patient, target, others, drug, tid, doc_id)
        docs.append(Document(doc.id, "sft", doc.text, doc.segments, doc.meta))
    return docs


def sft_texts(world: World, splits: Splits, preset: Preset, strategy: Strategy, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 0x5F7])
    return [d.text for d in strategy.setup(world, splits)(sft_documents(world, splits, preset, seed), rng)]
