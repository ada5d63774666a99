"""Strategy specs, composition, the Safety Pretraining recipe, curriculum and classifier labels (SPEC 4)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from medsafetyworld.config import get_preset
from medsafetyworld.corpus.shards import iter_documents, load_manifest
from medsafetyworld.corpus.stream import raw_documents
from medsafetyworld.corpus.tokenizer import UNSAFE_TAG
from medsafetyworld.errors import ConfigError
from medsafetyworld.pipeline import folder_name, make_corpus
from medsafetyworld.strategies import available_strategies, get_strategy
from medsafetyworld.training.data import PackedBatches, load_token_stream, schedule_regions

DATA_BUDGET = 60_000


@pytest.fixture(scope="module")
def raw(micro_world, micro):
    world, splits = micro_world
    return list(islice(raw_documents(world, splits, micro.world, micro.corpus, seed=5), 3000))


def run(spec, docs, world):
    return list(get_strategy(spec).setup(*world)(docs, np.random.default_rng(0)))


@pytest.mark.parametrize("spec", [
    "raw", "tag(p=0.1)", "rewrite+refusal+moral+tag", "safety_pretraining", "curriculum(start=0.2,inner=filter)",
    "curriculum(start=0.6,inner=rewrite+tag(p=0.2))", "noisy(recall=0.8,precision=0.7)+filter", "rewrite(share=0.5)",
])
def test_a_label_parses_back_to_the_same_strategy(spec):
    s = get_strategy(spec)
    again = get_strategy(s.label)
    assert (again.label, again.name, again.params()) == (s.label, s.name, s.params())


def test_default_parameters_keep_the_plain_name_and_hash():
    assert get_strategy("tag(p=0.05)").label == "tag"
    assert get_strategy("rewrite(share=1.0)").params() == get_strategy("rewrite").params() == {}
    assert folder_name(get_strategy("curriculum(start=0.2,inner=filter)"), 1) == "curriculum_start-0.2_inner-filter-s1"


@pytest.mark.parametrize("spec,message", [
    ("tag(p=2)", "probability"), ("nope", "unknown strategy"), ("tag(q=1)", "does not take"),
    ("tag(p=0.1", "unbalanced"), ("tag(p)", "key=value"), ("", "empty"), ("rewrite(share=-1)", "fraction"),
    ("curriculum(start=1.5)", "fraction"), ("curriculum(inner=curriculum(start=0.1,inner=raw))", "do not nest"),
    ("safety_pretraining(p=1)", "takes no parameters"), ("noisy(recall=0)", "recall"),
])
def test_bad_specs_are_config_errors_that_say_why(spec, message):
    with pytest.raises(ConfigError, match=message):
        get_strategy(spec)


def test_recipes_are_listed_with_the_strategies():
    assert {"safety_pretraining", "curriculum", "noisy", "rewrite", "tag"} <= set(available_strategies())


def test_a_chain_applies_its_steps_in_order(raw, micro_world):
    """tag then reflect: reflections are appended around tagged text; reflect then tag: the tag
    can land on the words of an Unsafe reflection segment, never the other way round."""
    tag_first = run("tag(p=1.0)+reflect", raw, micro_world)
    step = run("reflect", run("tag(p=1.0)", raw, micro_world), micro_world)
    assert [d.text for d in tag_first] == [d.text for d in step]
    reflect_first = run("reflect+tag(p=1.0)", raw, micro_world)
    assert any(f"{UNSAFE_TAG} <think>" in d.text for d in reflect_first)
    assert not any(f"{UNSAFE_TAG} <think>" in d.text for d in tag_first)


def test_a_full_rewrite_first_leaves_nothing_for_tag(raw, micro_world):
    out = run("rewrite+tag", raw, micro_world)
    assert [d.text for d in out] == [d.text for d in run("rewrite", raw, micro_world)]


def test_the_safety_pretraining_recipe_splits_unsafe_documents_about_evenly(raw, micro_world):
    out = run("safety_pretraining", raw, micro_world)
    unsafe = sum(d.unsafe for d in raw)
    counts = {key: sum(bool(d.meta.get(key)) for d in out) for key in ("rewritten", "refused", "moral")}
    counts["tagged"] = sum(d.unsafe for d in out)
    assert sum(counts.values()) == unsafe
    for key, n in counts.items():  # each about a quarter: binomial sd < sqrt(unsafe)/4
        assert abs(n - unsafe / 4) < 4 * (unsafe * 3 / 16) ** 0.5, (key, counts)
    assert all(UNSAFE_TAG in d.text or not d.unsafe for d in out if len(d.text.split()) > 200)


def test_share_rewrites_that_fraction_of_unsafe_documents(raw, micro_world):
    out = run("rewrite(share=0.5)", raw, micro_world)
    unsafe = sum(d.unsafe for d in raw)
    rewritten = sum(bool(d.meta.get("rewritten")) for d in out)
    assert abs(rewritten - unsafe / 2) < 4 * (unsafe / 4) ** 0.5
    assert rewritten + sum(d.unsafe for d in out) == unsafe


# --- noisy classifier -----------------------------------------------------------------------


def test_noisy_labels_have_the_set_recall_and_precision(raw, micro_world):
    out = run("noisy(recall=0.8,precision=0.6,warmup=3000)", raw, micro_world)
    truth = np.array([d.unsafe for d in raw])
    said = np.array([d.unsafe for d in out])
    assert [d.text for d in out] == [d.text for d in raw]
    tp = (truth & said).sum()
    recall, precision = tp / truth.sum(), tp / said.sum()
    assert abs(recall - 0.8) < 4 * (0.16 / truth.sum()) ** 0.5
    assert abs(precision - 0.6) < 0.1
    relabelled = [d for d, t, s in zip(out, truth, said) if t != s]
    assert relabelled and all(d.meta["oracle_unsafe"] != d.unsafe for d in relabelled)


def test_filtering_with_a_noisy_classifier_lets_missed_documents_through(raw, micro_world):
    perfect = run("filter", raw, micro_world)
    noisy = run("noisy(recall=0.7,precision=0.9)+filter", raw, micro_world)
    assert not any(d.unsafe for d in perfect)
    leaked = [d for d in noisy if d.meta.get("oracle_unsafe")]
    assert leaked and not any(d.unsafe for d in noisy)  # the labels say safe, the truth does not
    assert len(noisy) < len(raw)


def test_rewriters_leave_a_false_positive_as_it_is(raw, micro_world):
    out = run("noisy(recall=1.0,precision=0.5)+rewrite", raw, micro_world)
    false_pos = [d for d in out if d.meta.get("oracle_unsafe") is False]
    assert false_pos and all(not d.meta.get("rewritten") for d in false_pos)


# --- curriculum -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def budget_preset():
    from dataclasses import replace

    micro = get_preset("micro")
    return replace(micro, corpus=replace(micro.corpus, token_budget=DATA_BUDGET))


@pytest.mark.parametrize("start", [0.0, 0.2, 0.6, 1.0])
def test_curriculum_has_no_unsafe_token_before_its_fraction(start, budget_preset, micro_world_dir, tmp_path):
    strategy = get_strategy(f"curriculum(start={start},inner=raw)")
    make_corpus(micro_world_dir, strategy, budget_preset, 1, tmp_path, progress=False)
    manifest = load_manifest(tmp_path)
    docs = list(iter_documents(tmp_path))
    phases = [d.meta["phase"] for d in docs]
    n_safe = phases.count("safe")
    assert phases == ["safe"] * n_safe + ["inner"] * (len(docs) - n_safe)  # safe phase is a prefix
    assert not any(d.unsafe for d in docs[:n_safe])
    offset = manifest["phases"].get("inner", manifest["tokens"])
    assert offset >= start * DATA_BUDGET
    assert manifest["schedule"] == [["safe", start], ["inner", 1.0]]
    if 0 < start < 1:
        assert any(d.unsafe for d in docs[n_safe:])  # inner=raw keeps unsafe documents after f
    if start == 1.0:
        assert n_safe == len(docs)

    # the trainer: every window of a step before fraction `start` lies in the safe prefix
    tokens = load_token_stream(tmp_path, eos_id=0)
    assert len(tokens) == manifest["tokens"]
    steps, context = 50, 64
    batches = PackedBatches(tokens, 4, context, seed=3, regions=schedule_regions(tmp_path, len(tokens)), steps=steps)
    for step in range(steps):
        lo, hi = batches.region(step)
        if step / steps < start:
            assert (lo, hi) == (0, offset)
        else:
            assert lo == offset or start == 1.0
        window = batches[step]
        assert window.shape == (4, context + 1)


def test_windows_never_cross_the_phase_boundary():
    tokens = np.arange(1000) % 50000
    from medsafetyworld.training.data import Region

    regions = [Region(0, 300, 0.5), Region(300, 1000, 1.0)]
    b = PackedBatches(tokens, 64, 31, seed=0, regions=regions, steps=10)
    for step in range(10):
        w = b[step]
        if step < 5:
            assert w.max() < 300
        else:
            assert w.min() >= 300


def test_an_unscheduled_corpus_samples_as_before():
    tokens = np.arange(5000)
    a = PackedBatches(tokens, 8, 16, seed=1)
    b = PackedBatches(tokens, 8, 16, seed=1, regions=None, steps=100)
    assert all((a[i] == b[i]).all() for i in range(5))


def test_curriculum_posttraining_data_has_the_inner_format(micro_world, micro):
    from medsafetyworld.training.sft_data import sft_texts

    world, splits = micro_world
    a = sft_texts(world, splits, micro, get_strategy("curriculum(start=0.6,inner=reflect)"), 1)
    b = sft_texts(world, splits, micro, get_strategy("reflect"), 1)
    assert a == b and any("<think>" in t for t in a)
