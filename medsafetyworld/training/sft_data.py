"""The fixed post-training set (SPEC 5 step 2), the same requests for every strategy, seen pairs only:
- benign prescription requests answered by the candidate's chain, check and safe verdict, then the
  prescription;
- requests whose usual drug is contraindicated by the patient's other condition (a share
  CONTRAINDICATED_USUAL_SHARE), answered by checking the usual drug, finding it unsafe, and switching
  to a safe drug after its own check;
- harmful requests, refused.
The strategy's own `apply` gives each the strategy's format (reflections for `reflect`).

Flagging strategies learn the stop convention (SPEC 5): the contraindicated and harmful requests
also come with the answer that complies (the usual drug recommended despite its unsafe verdict; a
drug that aggravates the named condition); when the strategy's own format puts a flag in that answer
(an Unsafe reflection right after the unsafe verdict, `<rf>`, the tag), the example is the answer cut
right after its first flag, and a response that raises a flag is withheld at evaluation. When it
does not (every strategy that does not flag, or a tag that happened to land nowhere), the switch or
the refusal is the example. Without this every post-training response carries only Safe
reflections and post-training teaches a reflect model never to say Unsafe.

A share JAILBREAK_SHARE of the requests, harmful and benign alike, is wrapped in a train jailbreak
template and answered as it would be unwrapped (refused, or a safe drug after the check): safety
training has seen those templates, never the held-out ones (`corpus.jailbreaks`). The draw has its
own generator per example, so every other example is the same as without it.
"""

from __future__ import annotations

import numpy as np

from medsafetyworld.config import Preset
from medsafetyworld.corpus import jailbreaks, render
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.document import Document, Part
from medsafetyworld.corpus.stream import RawStream
from medsafetyworld.corpus.tokenizer import THINK_CLOSE, THINK_OPEN
from medsafetyworld.evaluation.parser import FLAG_PATTERN as FLAG
from medsafetyworld.strategies import Strategy
from medsafetyworld.training.data import ASSISTANT
from medsafetyworld.world.graph import World
from medsafetyworld.world.splits import Splits

SFT_VERSION = 4  # part of the SFT stage key: bump when the set or its format changes (4: v2 checks, switches)
HARMFUL_SHARE = 0.2
JAILBREAK_SHARE = 0.15
CONTRAINDICATED_USUAL_SHARE = 0.4  # benign requests where the usual drug is unsafe for the patient


def sft_documents(world: World, splits: Splits, preset: Preset, seed: int) -> list[Document]:
    stream = RawStream(world, splits, preset.world, preset.corpus, seed + 7919)
    rng = stream.rng
    docs = []
    for i in range(preset.train.sft_examples):
        doc_id = f"sft-{i:06d}"
        patient = stream.patient()
        jailbreak = jailbreaks.pick_train(np.random.default_rng([seed, i, 0x7B]), JAILBREAK_SHARE)
        if rng.random() < HARMFUL_SHARE:
            target = stream.cycles["target"].next()
            tid = int(rng.integers(len(T.HARMFUL_REQUESTS)))
            prompt = render.harmful_prompt(tid, patient, target, jailbreak)
            parts = [Part(prompt), Part(render.refusal(rng, patient, target))]
            meta = {"question": "harmful", "target": target, "patient": patient}
            if jailbreak is not None:
                meta["jailbreak"] = jailbreak
            harm = [d for d, k in stream.harm_options if k == target]
            if harm:  # its own rng, so the refusal set is the same as without complying answers
                drug = render.pick(np.random.default_rng([seed, i, 0xC0]), harm)
                meta["complying"] = render.harmful_qa(world, patient, target, drug, tid, doc_id, jailbreak).to_row()
            docs.append(Document.from_parts(doc_id, "sft", parts, meta))
            continue
        target, others, candidate = None, [], None
        if rng.random() < CONTRAINDICATED_USUAL_SHARE and stream.unsafe_options:
            candidate, target, k2 = render.pick(rng, stream.unsafe_options)
            others = [k2]
        drug = stream.safe_choice(target, others) if target else None
        while drug is None:
            target, candidate = stream.cycles["target"].next(), None
            others = stream.comorbidities(target)
            drug = stream.safe_choice(target, others)
        tid = render.pick(rng, stream.templates)
        if candidate is None:
            doc = render.chat_prescription(world, patient, target, others, drug, tid, doc_id, jailbreak)
        else:
            doc = render.chat_prescription(world, patient, target, others, candidate, tid, doc_id, jailbreak,
                                           switch_to=drug)
            doc.meta["complying"] = render.chat_prescription(
                world, patient, target, others, candidate, tid, doc_id, jailbreak).to_row()
        docs.append(Document(doc.id, "sft", doc.text, doc.segments, doc.meta))
    return docs


def cut_after_flag(text: str) -> str | None:
    """`text` up to and including the first flag in its response (after "\nAssistant:"), an
    Unsafe reflection through its `</think>`; None when the response raises no flag."""
    head, sep, response = text.partition(ASSISTANT)
    flag = FLAG.search(response)
    if not sep or flag is None:
        return None
    start, end = flag.span()
    if response.startswith(THINK_OPEN, start):
        end = response.index(THINK_CLOSE, start) + len(THINK_CLOSE)
    return head + sep + response[:end]


def sft_texts(world: World, splits: Splits, preset: Preset, strategy: Strategy, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 0x5F7])
    strategy.setup(world, splits)
    texts = []
    for doc in sft_documents(world, splits, preset, seed):
        if (row := doc.meta.get("complying")) is not None:
            complying = [d.text for d in strategy.apply(Document.from_row(row), rng)]
            if complying and (cut := cut_after_flag(complying[0])) is not None:
                texts.append(cut)
                continue
        texts += [d.text for d in strategy.apply(doc, rng)]
    return texts
