"""`msw bench-train`: one row per backend, real numbers for the built-in trainer, a reason for
a backend that cannot run here."""

import dataclasses

import pandas as pd
import pytest

from medsafetyworld.cli import main
from medsafetyworld.config import PRESETS, ModelConfig
from medsafetyworld.errors import ConfigError
from medsafetyworld.training import bench
from medsafetyworld.training.bench import bench_train, format_table, synthetic_corpus
from medsafetyworld.training.data import load_token_stream
from medsafetyworld.corpus.tokenizer import load_tokenizer

TINY_SHAPE = dataclasses.replace(
    PRESETS["micro"], model=ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64, context=32),
    train=dataclasses.replace(PRESETS["micro"].train, batch_size=4, threads=1))


def test_synthetic_corpus_has_the_asked_vocabulary_and_length(tmp_path):
    synthetic_corpus(tmp_path, vocab=50, n_tokens=5000)
    tok = load_tokenizer(tmp_path / "tokenizer")
    stream = load_token_stream(tmp_path, tok.eos_token_id)
    assert len(tok) == 50 + 6  # 50 words + the special tokens
    assert len(stream) >= 5000 and stream.max() < len(tok)
    words = set(stream.tolist()) - {tok.eos_token_id}
    assert min(words) >= 6 and len(words) == 50  # only words, every one of them


def test_builtin_row_has_speed_memory_and_loss(monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    table = bench_train(TINY_SHAPE, steps=4, backends=["builtin", "nanotron"], vocab=40, progress=False)
    builtin, nanotron = table.iloc[0], table.iloc[1]
    assert builtin.status == "ok" and builtin.steps == 4
    assert builtin.tokens_per_s > 0 and builtin.peak_memory_gib > 0 and pd.isna(builtin.mfu)  # no MFU on a CPU
    assert 3.0 < builtin.final_loss < 4.5  # about ln(46): random tokens
    assert "cpu" in builtin.device
    try:
        import nanotron  # noqa: F401
    except ImportError:
        assert nanotron.status == "skipped" and "install" in nanotron.note
    text = format_table(table)
    assert text.splitlines()[0].split()[:3] == ["backend", "status", "steps"]


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigError, match="--steps must be at least 2"):
        bench_train(TINY_SHAPE, steps=1)
    with pytest.raises(ConfigError, match="unknown backend"):
        bench_train(TINY_SHAPE, steps=3, backends=["megatron"])


def test_cli_prints_the_table_and_writes_csv(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(PRESETS, "bench-test", TINY_SHAPE)
    rc = main(["-q", "bench-train", "--preset", "bench-test", "--steps", "3", "--backends", "builtin",
               "--vocab", "30", "--csv", str(tmp_path / "bench.csv")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "builtin" in out and "tokens_per_s" in out
    assert list(pd.read_csv(tmp_path / "bench.csv").backend) == ["builtin"]
    assert main(["bench-train", "--preset", "bench-test", "--steps", "0"]) == 2
