"""Training speed on the micro preset, measured with pytest-benchmark (CI runs it once)."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medsafetyworld.config import PRESETS
from medsafetyworld.corpus.tokenizer import build_tokenizer, save_tokenizer
from medsafetyworld.training import pretrain


def write_corpus(root, n_docs: int = 2000):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(200)]
    texts = [" ".join(rng.choice(words, size=40)) + " ." for _ in range(n_docs)]
    tok = build_tokenizer(texts)
    save_tokenizer(tok, root / "tokenizer")
    ids = pa.array([tok.encode(t) for t in texts], pa.list_(pa.int32()))
    pq.write_table(pa.table({"input_ids": ids}), root / "shard-00000.parquet")


def test_micro_pretraining_tokens_per_second(benchmark, tmp_path):
    write_corpus(tmp_path)
    micro = PRESETS["micro"]
    cfg = dataclasses.replace(micro.train, tokens=20 * micro.train.batch_size * micro.model.context,
                              threads=2)
    runs = iter(range(1000))

    def train():
        return pretrain(tmp_path, tmp_path / "tokenizer", tmp_path / f"run{next(runs)}",
                        micro.model, cfg, seed=0, progress=False)

    log = benchmark.pedantic(train, rounds=1, iterations=1)
    benchmark.extra_info["tokens_per_second"] = round(log["tokens_per_second"])
    benchmark.extra_info["parameters"] = log["parameters"]
    assert log["steps"] == 20
