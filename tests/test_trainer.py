"""The built-in trainer: it learns, resumes exactly, saves loadable HF folders, finetunes safely."""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medsafetyworld.config import PRESETS, ModelConfig
from medsafetyworld.corpus.tokenizer import build_tokenizer, save_tokenizer
from medsafetyworld.errors import DataError
from medsafetyworld.training import (
    PackedBatches,
    build_model,
    count_parameters,
    finetune,
    load_token_stream,
    pretrain,
)
from medsafetyworld.training import data as data_module
from medsafetyworld.training.data import cached_token_stream, sft_example

MICRO = PRESETS["micro"]
SMALL = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64, context=64)
DRUGS = ["zorvatil", "quenamet", "brisolan", "tavorex", "melquin", "druvane"]
COMPOUNDS = ["mexacine", "lorapine", "sivadol", "cretonix", "paluvine", "odrazin"]
EFFECTS = ["tarsic-flux", "venal-drift", "osmic-lag"]
CONDITIONS = ["kelvar-syndrome", "morran-palsy", "tessic-fever"]


def world_texts(n: int, seed: int = 0) -> list[str]:
    """A repetitive little world: each drug has one compound, one effect, one relieved condition."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        d = int(rng.integers(len(DRUGS)))
        c, e, k = COMPOUNDS[d], EFFECTS[d % 3], CONDITIONS[(d + 1) % 3]
        texts.append(
            f"{DRUGS[d]} contains {c} . {c} causes {e} .\n{e} relieves {k} ."
            if rng.random() < 0.8
            else f"User: what does {DRUGS[d]} contain?\nAssistant: {DRUGS[d]} contains {c} ."
        )
    return texts


def write_corpus(root, n_docs: int = 4000):
    texts = world_texts(n_docs)
    tok = build_tokenizer(texts)
    save_tokenizer(tok, root / "tokenizer")
    ids = [tok.encode(t) for t in texts]
    half = len(texts) // 2
    for i, sl in enumerate([slice(0, half), slice(half, None)]):
        table = pa.table({"text": texts[sl], "input_ids": pa.array(ids[sl], pa.list_(pa.int32()))})
        pq.write_table(table, root / f"shard-{i:05d}.parquet")
    return tok, ids


def train_config(tokens: int, **kw):
    return dataclasses.replace(MICRO.train, tokens=tokens, threads=2, **kw)


def folder_digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    tok, ids = write_corpus(root)
    return root, tok, ids


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
    root, _, _ = corpus
    out = tmp_path_factory.mktemp("model")
    log = pretrain(root, root / "tokenizer", out, MICRO.model, train_config(200_000), seed=0,
                   progress=False)
    return out, log


# ----------------------------------------------------------------------------- data


def test_token_stream_puts_eos_after_every_document_in_shard_order(corpus):
    root, tok, ids = corpus
    stream = load_token_stream(root, tok.eos_token_id)
    expected = [t for doc in ids for t in (*doc, tok.eos_token_id)]
    assert stream.dtype == np.uint16
    assert stream.tolist() == expected


def test_batches_are_a_function_of_seed_and_step(corpus):
    root, tok, _ = corpus
    stream = load_token_stream(root, tok.eos_token_id)
    a, b = PackedBatches(stream, 4, 32, seed=1), PackedBatches(stream, 4, 32, seed=1, start_step=7)
    assert a[7].shape == (4, 33)
    assert np.array_equal(a[7], next(iter(b)))
    assert not np.array_equal(a[7], a[8])
    assert not np.array_equal(a[7], PackedBatches(stream, 4, 32, seed=2)[7])


def copy_shards(root, to):
    for shard in root.glob("shard-*.parquet"):
        shutil.copy2(shard, to / shard.name)
    return to


def cache_files(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".stage.json")


def test_the_cached_stream_is_the_stream_memory_mapped_from_one_file(corpus, tmp_path):
    root, tok, _ = corpus
    folder = copy_shards(root, tmp_path)
    first = cached_token_stream(folder, tok.eos_token_id)
    assert isinstance(first, np.memmap) and first.dtype == np.uint16
    assert np.array_equal(first, load_token_stream(folder, tok.eos_token_id))
    (name,) = cache_files(folder)
    written = (folder / name).stat().st_mtime_ns
    again = cached_token_stream(folder, tok.eos_token_id)
    assert np.array_equal(again, first) and (folder / name).stat().st_mtime_ns == written
    other_eos = cached_token_stream(folder, tok.eos_token_id + 1)  # another key: a new file, the old one goes
    assert int(other_eos[len(other_eos) - 1]) == tok.eos_token_id + 1 and cache_files(folder) != [name]
    assert len(cache_files(folder)) == 1


def test_re_rendered_shards_get_a_new_cached_stream(corpus, tmp_path):
    root, tok, ids = corpus
    folder = copy_shards(root, tmp_path)
    before = cached_token_stream(folder, tok.eos_token_id)
    n_before = len(before)
    del before  # release the map before the folder changes
    table = pa.table({"text": ["x"], "input_ids": pa.array([ids[0]], pa.list_(pa.int32()))})
    pq.write_table(table, folder / "shard-00001.parquet")
    after = cached_token_stream(folder, tok.eos_token_id)
    assert np.array_equal(after, load_token_stream(folder, tok.eos_token_id))
    assert len(after) < n_before and len(cache_files(folder)) == 1


def test_an_unwritable_corpus_folder_falls_back_to_memory(corpus, tmp_path, monkeypatch):
    root, tok, _ = corpus
    folder = copy_shards(root, tmp_path)

    def refuse(path):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr(data_module, "atomic_file", refuse)
    stream = cached_token_stream(folder, tok.eos_token_id)
    assert not isinstance(stream, np.memmap)
    assert np.array_equal(stream, load_token_stream(folder, tok.eos_token_id)) and cache_files(folder) == []


def test_an_interrupted_cache_write_leaves_nothing_behind(corpus, tmp_path, monkeypatch):
    root, tok, _ = corpus
    folder = copy_shards(root, tmp_path)

    def interrupted(f, array, allow_pickle):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(data_module.np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_token_stream(folder, tok.eos_token_id)
    assert cache_files(folder) == []


def test_ids_beyond_uint16_widen_the_whole_stream(tmp_path):
    for i, docs in enumerate([[[1, 2], [3]], [[70_000, 4]]]):
        table = pa.table({"input_ids": pa.array(docs, pa.list_(pa.int32()))})
        pq.write_table(table, tmp_path / f"shard-{i:05d}.parquet")
    stream = load_token_stream(tmp_path, eos_id=0)
    assert stream.dtype == np.int32 and stream.tolist() == [1, 2, 0, 3, 0, 70_000, 4, 0]
    pq.write_table(pa.table({"input_ids": pa.array([[5, -1]], pa.list_(pa.int32()))}), tmp_path / "shard-00002.parquet")
    with pytest.raises(DataError, match="negative"):
        load_token_stream(tmp_path, eos_id=0)


def test_a_folder_without_shards_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no corpus shards"):
        load_token_stream(tmp_path, eos_id=0)


def test_a_shard_without_input_ids_is_a_data_error(tmp_path):
    pq.write_table(pa.table({"text": ["a b"]}), tmp_path / "shard-00000.parquet")
    with pytest.raises(DataError, match="input_ids"):
        load_token_stream(tmp_path, eos_id=0)


def test_pretrain_on_a_missing_corpus_is_a_data_error(corpus, tmp_path):
    root, _, _ = corpus
    with pytest.raises(DataError):
        pretrain(tmp_path / "nowhere", root / "tokenizer", tmp_path / "out", MICRO.model,
                 train_config(10_000), seed=0, progress=False)


# ----------------------------------------------------------------------------- model


def test_same_seed_gives_same_initial_weights():
    a, b = build_model(MICRO.model, 50, seed=3), build_model(MICRO.model, 50, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, build_model(MICRO.model, 50, seed=4).lm_head.weight)


def test_tied_embedding_is_counted_once():
    tied = build_model(MICRO.model, 50, seed=0)
    untied = build_model(dataclasses.replace(MICRO.model, tie_embeddings=False), 50, seed=0)
    assert count_parameters(untied) - count_parameters(tied) == 50 * MICRO.model.d_model


# ----------------------------------------------------------------------------- pretraining


def test_pretraining_halves_the_loss(pretrained):
    _, log = pretrained
    first_loss = log["loss_curve"][0][1]
    assert log["final_loss"] < 0.5 * first_loss
    assert log["steps"] == log["loss_curve"][-1][0]
    assert log["tokens_seen"] >= 200_000


def test_pretrained_folder_loads_with_auto_classes_and_leaves_no_checkpoint(pretrained):
    out, log = pretrained
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert count_parameters(model) == log["parameters"]
    ids = torch.tensor([tok.encode("zorvatil contains")])
    assert model(input_ids=ids).logits.shape == (1, 2, len(tok))
    assert not (out / "checkpoint").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_rerunning_a_finished_run_returns_its_log(corpus, pretrained):
    root, _, _ = corpus
    out, log = pretrained
    again = pretrain(root, root / "tokenizer", out, MICRO.model, train_config(200_000), seed=0,
                     progress=False)
    assert again == log


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(corpus, tmp_path):
    root, _, _ = corpus
    cfg = train_config(30 * 8 * 64, batch_size=8, checkpoint_every=10)  # 30 steps
    args = (root, root / "tokenizer")
    full = pretrain(*args, tmp_path / "full", SMALL, cfg, seed=5, progress=False)

    killed = pretrain(*args, tmp_path / "resumed", SMALL, cfg, seed=5, progress=False, stop_after=25)
    assert killed["complete"] is False and (tmp_path / "resumed" / "checkpoint").is_dir()
    assert not (tmp_path / "resumed" / "train_log.json").exists()
    resumed = pretrain(*args, tmp_path / "resumed", SMALL, cfg, seed=5, progress=False)

    assert resumed["resumed_from_step"] == 20
    assert resumed["loss_curve"] == full["loss_curve"]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_of_another_config_is_retrained(corpus, tmp_path):
    root, _, _ = corpus
    cfg = train_config(6 * 8 * 64, batch_size=8)
    first = pretrain(root, root / "tokenizer", tmp_path, SMALL, cfg, seed=5, progress=False)
    second = pretrain(root, root / "tokenizer", tmp_path, SMALL, dataclasses.replace(cfg, lr=1e-3),
                      seed=5, progress=False)
    assert second["config_hash"] != first["config_hash"]
    assert json.loads((tmp_path / "train_log.json").read_text()) == second


def test_a_checkpoint_of_another_config_is_not_resumed(corpus, tmp_path):
    root, _, _ = corpus
    cfg = train_config(12 * 8 * 64, batch_size=8, checkpoint_every=5)
    pretrain(root, root / "tokenizer", tmp_path, SMALL, cfg, seed=5, progress=False, stop_after=6)
    log = pretrain(root, root / "tokenizer", tmp_path, SMALL, dataclasses.replace(cfg, lr=1e-3),
                   seed=5, progress=False)
    assert log["resumed_from_step"] == 0 and log["steps"] == 12


# ----------------------------------------------------------------------------- finetuning


def sft_texts() -> list[str]:
    # Answers in a format the corpus never shows, so the pretrained model starts out wrong.
    return [f"User: what does {d} contain?\nAssistant: {c} ." for d, c in zip(DRUGS, COMPOUNDS)]


def response_loss(folder, texts) -> float:
    """Mean loss on response tokens, computed independently of the trainer (HF's own shift)."""
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    total = 0.0
    for text in texts:
        prompt = tok.encode(text[: text.index("\nAssistant:") + len("\nAssistant:")])
        ids = tok.encode(text) + [tok.eos_token_id]
        labels = [-100] * len(prompt) + ids[len(prompt):]
        with torch.no_grad():
            total += model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    return total / len(texts)


def test_sft_labels_cover_the_response_and_eos_only(corpus):
    _, tok, _ = corpus
    text = sft_texts()[0]
    ids, labels, truncated = sft_example(tok, text, context=256)
    assert not truncated
    n_prompt = len(tok.encode("User: what does zorvatil contain?\nAssistant:"))
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] == tok.encode(" mexacine .") + [tok.eos_token_id]


def test_finetune_lowers_the_response_loss_and_leaves_init_untouched(pretrained, tmp_path):
    init, _ = pretrained
    before = folder_digest(init)
    texts = sft_texts()
    log = finetune(init, texts, tmp_path / "sft", train_config(0), seed=0, progress=False,
                   epochs=10, lr=3e-3, batch_size=4)
    assert folder_digest(init) == before
    assert log["steps"] == 20
    assert response_loss(tmp_path / "sft", texts) < 0.5 * response_loss(init, texts)


def test_finetune_needs_an_assistant_turn(pretrained, tmp_path):
    init, _ = pretrained
    with pytest.raises(DataError, match="Assistant"):
        finetune(init, ["zorvatil contains mexacine ."], tmp_path / "sft", train_config(0), seed=0,
                 progress=False)
