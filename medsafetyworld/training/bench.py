"""`msw bench-train`: how fast each available training backend trains a preset's model.

Every backend trains the same model shape on the same synthetic token stream (uniform random ids
over a vocabulary of the world's size) for N steps of the preset's global batch; the table reports
steady tokens/s (after the first steps), MFU (model FLOPs over the device's dense bf16 peak) and
peak memory. A backend that cannot run here gets a row saying why.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from medsafetyworld.config import Preset
from medsafetyworld.corpus.tokenizer import build_tokenizer, save_tokenizer
from medsafetyworld.errors import ConfigError
from medsafetyworld.training.model import flops_per_token
from medsafetyworld.training.perf import device_name, mfu

BACKENDS = ("builtin", "builtin+compile", "nanotron")
COLUMNS = ["backend", "status", "steps", "tokens_per_s", "mfu", "peak_memory_gib", "final_loss", "device", "note"]


def synthetic_corpus(folder: Path, vocab: int, n_tokens: int, seed: int = 0) -> None:
    """A tokenizer of `vocab` words and one shard of random documents drawn from it."""
    if vocab < 8:
        raise ConfigError(f"--vocab must be at least 8 (got {vocab})")
    tok = build_tokenizer([" ".join(f"w{i}" for i in range(vocab))])
    save_tokenizer(tok, folder / "tokenizer")
    rng = np.random.default_rng(seed)
    specials = len(tok) - vocab
    doc = 1000
    ids = rng.integers(specials, len(tok), size=(n_tokens // doc + 1, doc), dtype=np.int32)
    pq.write_table(pa.table({"input_ids": pa.array(list(ids), pa.list_(pa.int32()))}), folder / "shard-00000.parquet")


def _builtin(corpus: Path, out: Path, preset: Preset, train, compile: bool, progress: bool) -> dict:
    from medsafetyworld.training.trainer import pretrain

    return pretrain(corpus, corpus / "tokenizer", out, preset.model, train, seed=0, progress=progress,
                    compile=compile)


def _row(backend: str, log: dict, preset: Preset, device: torch.device) -> dict:
    speed = log.get("steady_tokens_per_second") or log.get("tokens_per_second")
    use = log.get("mfu")
    if use is None and speed:
        use = mfu(flops_per_token(preset.model, log["parameters"]), speed, device)
    return {"backend": backend, "status": "ok", "steps": log.get("steps"), "tokens_per_s": speed, "mfu": use,
            "peak_memory_gib": log.get("peak_memory_bytes", 0) / 2**30, "final_loss": log.get("final_loss"),
            "device": log.get("device") or device_name(device)}


def bench_train(preset: Preset, steps: int, backends: list[str] | None = None, *, vocab: int = 1000,
                progress: bool = True) -> pd.DataFrame:
    """Train `preset`'s model for `steps` steps with each backend; one row per backend."""
    if steps < 2:
        raise ConfigError(f"--steps must be at least 2 (got {steps})")
    cuda = torch.cuda.is_available()
    backends = list(backends or (BACKENDS if cuda else ("builtin", "nanotron")))
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ConfigError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    device = torch.device("cuda" if cuda else "cpu")
    tokens = steps * preset.train.batch_size * preset.model.context
    train = dataclasses.replace(preset.train, tokens=tokens, checkpoint_every=0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="msw-bench-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        synthetic_corpus(corpus, vocab, tokens + preset.model.context + 1)
        for backend in backends:
            out = Path(tmp) / backend.replace("+", "-")
            if backend == "nanotron":
                from medsafetyworld.training.nanotron_backend import nanotron_available, train_nanotron

                ok, why = nanotron_available()
                if not ok:
                    rows.append({"backend": backend, "status": "skipped", "note": why})
                    continue
                log = train_nanotron(corpus, corpus / "tokenizer", out, preset.model, train, seed=0,
                                     steps=steps, progress=progress)
            else:
                log = _builtin(corpus, out, preset, train, backend.endswith("+compile"), progress)
            rows.append(_row(backend, log, preset, device))
    return pd.DataFrame(rows, columns=COLUMNS)


def format_table(df: pd.DataFrame) -> str:
    """The table as fixed-width text: tokens/s with thousands separators, MFU in percent."""
    shown = df.copy()
    shown["tokens_per_s"] = shown["tokens_per_s"].map(lambda v: "" if pd.isna(v) else f"{v:,.0f}")
    shown["mfu"] = shown["mfu"].map(lambda v: "" if pd.isna(v) else f"{v:.1%}")
    shown["peak_memory_gib"] = shown["peak_memory_gib"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    shown["final_loss"] = shown["final_loss"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    shown["steps"] = shown["steps"].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
    notes = [f"{r.backend}: {r.note}" for r in df.itertuples() if isinstance(r.note, str) and r.note]
    return "\n".join([shown.drop(columns="note").fillna("").to_string(index=False), *notes])
