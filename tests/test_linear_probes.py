"""probe_auroc: the probe finds a planted direction and not noise; seen pairs train it, held-out pairs
test it; hidden states are per-text, whatever the batch; it runs end to end on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medsafetyworld.config import ModelConfig
from medsafetyworld.corpus import render
from medsafetyworld.corpus.stream import harm_held_out_conditions
from medsafetyworld.corpus.tokenizer import build_tokenizer
from medsafetyworld.corpus.vocabulary import vocabulary_texts
from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.linear_probes import (
    auroc_ci,
    evaluate_probes,
    hidden_states,
    layer_probe_auroc,
    probe_auroc,
    probe_contexts,
)
from medsafetyworld.training.model import build_model
from medsafetyworld.world.io import save_world
from medsafetyworld.world.oracle import is_unsafe

TINY = ModelConfig(n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64, context=128)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors and fits: one thread is fastest and leaves the other cores alone."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(before)


def gaussian_task(rng, n, d, shift, direction):
    y = np.repeat([0, 1], n // 2)
    return rng.normal(size=(n, d)) + shift * y[:, None] * direction, y


# --- the probe on synthetic features ------------------------------------------------------------


def test_probe_finds_a_planted_linear_direction():
    rng = np.random.default_rng(0)
    d = 32
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    # Along u the classes are 4 standard deviations apart: the Bayes AUROC is Phi(4/sqrt(2)) = 0.998.
    X_train, y_train = gaussian_task(rng, 200, d, 4.0, u)
    X_test, y_test = gaussian_task(rng, 400, d, 4.0, u)
    assert probe_auroc(X_train, y_train, X_test, y_test) > 0.95


def test_probe_on_pure_noise_is_chance():
    rng = np.random.default_rng(1)
    X_train, y_train = gaussian_task(rng, 400, 16, 0.0, np.zeros(16))
    X_test, y_test = gaussian_task(rng, 2000, 16, 0.0, np.zeros(16))
    # Under the null, AUROC has SD sqrt((n1 + n0 + 1) / (12 n1 n0)) = 0.0129 with 1000 per class;
    # 0.06 is 4.6 SD, so a correct probe fails this with probability below 1e-5.
    sd = math.sqrt((1000 + 1000 + 1) / (12 * 1000 * 1000))
    assert abs(probe_auroc(X_train, y_train, X_test, y_test) - 0.5) < 0.06
    assert 0.06 > 4.5 * sd


def test_probe_needs_both_classes():
    X = np.zeros((4, 2))
    with pytest.raises(DataError, match="both classes"):
        probe_auroc(X, [1, 1, 1, 1], X, [0, 1, 0, 1])


def test_auroc_interval_brackets_hand_computed_value():
    y = np.array([1, 1, 0, 0])
    scores = np.array([3.0, 1.0, 2.0, 0.0])  # 3 of the 4 (pos, neg) pairs ordered right: AUROC 0.75
    assert roc_auc_score(y, scores) == 0.75
    lo, hi = auroc_ci(y, scores, n_boot=2000, seed=0)
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0 and lo < hi
    assert auroc_ci(y, np.array([3.0, 2.0, 1.0, 0.0]), n_boot=200) == (1.0, 1.0)  # always separated
    assert auroc_ci(y, np.zeros(4), n_boot=200) == (0.5, 0.5)  # all ties


# --- contexts and splits ------------------------------------------------------------------------


def test_prescription_contexts_train_on_seen_pairs_and_test_on_held_out(micro_world):
    world, splits = micro_world
    contexts = probe_contexts(world, splits, n=400, seed=0)
    assert {c.split for c in contexts} == {"train", "test"}
    for c in contexts:
        m = c.meta
        drug, k2 = m["unsafe_pair"]
        conditions = [m["target"], m["comorbidity"]]
        assert c.label == int(is_unsafe(world, m["drug"], patient_conditions=conditions))  # the oracle's label
        assert world.treats(m["drug"], m["target"]) and not world.contraindicated(drug, m["target"])
        assert world.contraindicated(drug, k2) and k2 == m["comorbidity"]
        if c.split == "train":
            assert not splits.is_held_out_pair(drug, k2)
            assert not splits.is_held_out_condition_pair(*conditions)
        else:
            assert splits.is_held_out_pair(drug, k2)
        assert c.text.endswith(f"Assistant: I recommend {m['drug']}.")
    for split in ("train", "test"):
        labels = [c.label for c in contexts if c.split == split]
        assert labels.count(0) == labels.count(1) > 0  # balanced
    by_group = {}
    for c in contexts:
        by_group.setdefault(c.group, []).append(c)
    for couple in by_group.values():  # matched couples: same prompt, only the drug differs
        assert sorted(c.label for c in couple) == [0, 1] and len({c.split for c in couple}) == 1
        assert len({c.text.rsplit("I recommend", 1)[0] for c in couple}) == 1


def test_contexts_are_capped_deterministic_and_in_vocabulary(micro_world):
    world, splits = micro_world
    small = probe_contexts(world, splits, n=10, seed=3)
    assert all(sum(c.split == s for c in small) == 10 for s in ("train", "test"))
    assert small == probe_contexts(world, splits, n=10, seed=3)
    tok = build_tokenizer(vocabulary_texts(world))
    for family in ("prescription", "request"):
        for c in probe_contexts(world, splits, n=400, family=family):
            assert tok.unk_token_id not in tok.encode(c.text)


def test_request_contexts_split_by_harm_held_out_conditions(micro_world):
    world, splits = micro_world
    held = set(harm_held_out_conditions(world, splits))
    contexts = probe_contexts(world, splits, n=400, family="request")
    for c in contexts:
        assert (c.meta["target"] in held) == (c.split == "test")
        harmful = render.harmful_prompt(c.meta["template"], c.meta["patient"], c.meta["target"])
        assert (c.text == harmful) == (c.label == 1)
    for split in ("train", "test"):
        labels = [c.label for c in contexts if c.split == split]
        assert labels.count(0) == labels.count(1) > 0


# --- hidden states on a tiny random model -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(micro_world):
    world, _ = micro_world
    tok = build_tokenizer(vocabulary_texts(world))
    model = build_model(TINY, len(tok), seed=0, eos_id=tok.eos_token_id)
    return model.eval(), tok


def test_hidden_states_shape_and_padding_invariance(tiny_model, micro_world):
    model, tok = tiny_model
    world, splits = micro_world
    texts = [c.text for c in probe_contexts(world, splits, n=6, seed=0)]
    texts.append(texts[0].split("\n")[0])  # a much shorter text, so the others are padded
    lengths = [len(tok.encode(t)) for t in texts]
    assert len(set(lengths)) > 1
    for side in ("left", "right"):  # the tokenizer's padding side must not matter
        tok.padding_side = side
        batched = hidden_states(model, tok, texts, batch_size=len(texts))
        assert batched.shape == (TINY.n_layers + 1, len(texts), TINY.d_model)
        assert batched.dtype == np.float32
        for i, text in enumerate(texts):
            alone = hidden_states(model, tok, [text])
            np.testing.assert_allclose(batched[:, i], alone[:, 0], atol=1e-5, rtol=0)
    # features are the last token's: the same as a plain unpadded forward pass
    ids = torch.tensor([tok.encode(texts[-1])])
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(batched[:, -1], torch.stack([h[0, -1] for h in ref]).numpy(), atol=1e-5, rtol=0)
    assert model.training is False


def test_layer_probe_auroc_end_to_end(tiny_model, micro_world, tmp_path):
    model, tok = tiny_model
    world, splits = micro_world
    n_test = sum(c.split == "test" for c in probe_contexts(world, splits, n=400))
    result = layer_probe_auroc(model, world, splits, tokenizer=tok, n=400, n_boot=200)
    assert sorted(result) == list(range(TINY.n_layers + 1))
    for v in result.values():
        assert 0.0 <= v.value <= 1.0 and v.n == n_test
        assert 0.0 <= v.ci_low <= v.value <= v.ci_high <= 1.0
    # layer 0 is the embedding of the last token, "." in every prescription context: no signal
    assert result[0].value == 0.5

    model_dir, world_dir = tmp_path / "model", tmp_path / "world"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    save_world(world, splits, world_dir)
    out = tmp_path / "probes" / "probe_auroc.json"
    record = evaluate_probes(model_dir, world_dir, out, n=60, n_boot=100, device="cpu")
    assert json.loads(out.read_text()) == record
    assert set(record["families"]) == {"prescription", "request"}
    for family, r in record["families"].items():
        assert len(r["layers"]) == TINY.n_layers + 1 and r["n_test"] > 0
        assert record["metrics"][f"probe_auroc/{family}"] == r["layers"][str(r["selected_layer"])]
        assert all(0.0 <= v["value"] <= 1.0 for v in r["layers"].values())
    assert 0.0 <= record["families"]["prescription"]["control_auroc"] <= 1.0
    assert record["families"]["request"]["control_auroc"] is None  # requests name no drug
