"""The nanotron backend: what runs without nanotron (config, converter, dataloader, flash_attn shim,
weight-decay fix) is tested here on a CPU; training itself needs nanotron and a GPU and is skipped
otherwise. The checkpoint layout written below is nanotron's at the pinned commit
(serialize/weights.py, sharded_parameters.py), as a real nanotron Qwen2 model saved it on a CPU."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from medsafetyworld.config import PRESETS, ModelConfig
from medsafetyworld.corpus.tokenizer import build_tokenizer, save_tokenizer
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.training.data import PackedBatches
from medsafetyworld.training.model import build_model
from medsafetyworld.training.nanotron_backend import (
    INSTALL_HINT,
    NANOTRON_COMMIT,
    convert_checkpoint,
    nanotron_available,
    nanotron_config,
    train_nanotron,
    write_config,
)
from medsafetyworld.training.nanotron_backend.dataloader import MicroBatches
from medsafetyworld.training.nanotron_backend.launch import _losses
from medsafetyworld.training.nanotron_backend.patches import weight_decay_groups
from medsafetyworld.training.trainer import _lr_at

SHIM = "medsafetyworld.training.nanotron_backend.flash_attn_shim"
fa = importlib.import_module(f"{SHIM}.flash_attn.flash_attn_interface")
rotary = importlib.import_module(f"{SHIM}.flash_attn.layers.rotary")
padding = importlib.import_module(f"{SHIM}.flash_attn.bert_padding")
norms = importlib.import_module(f"{SHIM}.flash_attn.ops.triton.layer_norm")
DATA = Path(__file__).parent / "data" / "nanotron"
WORDS = ["zorvatil", "contains", "mexacine", "causes", "tarsic-flux", "relieves", "kelvar-syndrome", "."]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    save_tokenizer(build_tokenizer([" ".join(WORDS)]), root)
    return root


# ----------------------------------------------------------------------------- config

# tests/data/nanotron/tiny_config.json, reviewed by hand against nanotron's dataclasses
# (config/config.py, config/models_config.py, config/parallelism_config.py): general ->
# GeneralArgs, parallelism -> ParallelismArgs, model -> ModelArgs (init_method -> RandomInit,
# model_config -> Qwen2Config), tokenizer -> TokenizerArgs, checkpoints -> CheckpointsArgs,
# logging -> LoggingArgs, tokens -> TokensArgs, optimizer -> OptimizerArgs (optimizer_factory ->
# AdamWOptimizerArgs, learning_rate_scheduler -> LRSchedulerArgs), data_stages -> [DatasetStageArgs]
# (data -> DataArgs); metrics_logging, profiler, lighteval and s3_upload are left unset.
def test_tiny_config_matches_the_frozen_copy():
    tiny = PRESETS["tiny"]
    config = nanotron_config(tiny.model, tiny.train, 731, seed=0,
                             checkpoints_path="/runs/tiny/nanotron/checkpoints", tokenizer_path="/runs/tiny/tokenizer")
    assert config == json.loads((DATA / "tiny_config.json").read_text())


def test_config_keeps_the_global_batch_and_the_schedule():
    tiny = PRESETS["tiny"]
    config = nanotron_config(tiny.model, tiny.train, 731, seed=0, checkpoints_path="c", tokenizer_path="t",
                             dp=4, micro_batch_size=2)
    tokens = config["tokens"]
    assert 4 * tokens["micro_batch_size"] * tokens["batch_accumulation_per_replica"] == tiny.train.batch_size
    # nanotron's LambdaLR (helpers.lr_scheduler_builder) at 0-based step t: t/W of the peak while
    # t <= W, then cosine from W over `lr_decay_steps`, then the floor. Past the warmup it must be ours.
    s, steps = config["optimizer"]["learning_rate_scheduler"], tokens["train_steps"]
    peak, floor, warmup, decay = s["learning_rate"], s["min_decay_lr"], s["lr_warmup_steps"], s["lr_decay_steps"]
    for t in range(warmup, steps):
        if t < warmup + decay:
            theirs = floor + (peak - floor) * (1 + math.cos(math.pi * (t - warmup) / decay)) / 2
        else:
            theirs = floor
        assert theirs == pytest.approx(_lr_at(t, steps, tiny.train), rel=1e-12)
    for dp, micro in [(3, None), (4, 3), (0, None)]:
        with pytest.raises(ConfigError):
            nanotron_config(tiny.model, tiny.train, 731, seed=0, checkpoints_path="c", tokenizer_path="t",
                            dp=dp, micro_batch_size=micro)


def test_write_config_is_yaml_of_the_dict(tmp_path):
    yaml = pytest.importorskip("yaml")
    config = nanotron_config(PRESETS["micro"].model, PRESETS["micro"].train, 100, seed=3,
                             checkpoints_path=tmp_path / "c", tokenizer_path=tmp_path / "t")
    path = write_config(tmp_path / "sub" / "config.yaml", config)
    assert yaml.safe_load(path.read_text()) == config
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary left behind


# ----------------------------------------------------------------------------- checkpoint converter

SHARDED = "model_{leaf}_pp-rank-0-of-1_tp-rank-{rank}-of-{size}.safetensors"


def _pairs(pairs) -> str:
    def sl(s: slice) -> str:
        return ",".join("None" if x is None else str(x) for x in (s.start, s.stop, s.step))
    return ";".join("|".join(map(sl, local)) + "#" + "|".join(map(sl, glob)) for local, glob in pairs)


def _shards(t: torch.Tensor, dim: int, chunks: tuple[int, ...] | None, tp: int):
    """nanotron's TP shards of t along dim (sharded_parameters.create_sharded_parameter_from_config):
    [(shard, metadata)] for ranks 0..tp-1. Contiguous chunks (qkv, gate_up) are split one by one;
    their unsharded_shape then holds numpy ints, printed as numpy 2 prints them."""
    out = []
    for rank in range(tp):
        full = [slice(None)] * t.dim()
        if chunks is None:
            n = t.shape[dim] // tp
            glob = list(full)
            glob[dim] = slice(rank * n, (rank + 1) * n)
            pairs = [(tuple(full), tuple(glob))]
            shape = str(tuple(t.shape))
        else:
            pairs, start = [], 0
            for c in chunks:
                local, glob = list(full), list(full)
                local[dim] = slice(start // tp, (start + c) // tp)
                glob[dim] = slice(start + rank * c // tp, start + (rank + 1) * c // tp)
                pairs.append((tuple(local), tuple(glob)))
                start += c
            shape = "(" + ", ".join(f"np.int64({n})" if d == dim else str(n) for d, n in enumerate(t.shape)) + ")"
        shard = torch.cat([t[g] for _, g in pairs], dim=dim) if chunks else t[pairs[0][1]]
        out.append((shard.contiguous(), {"version": "1.4", "local_global_slices_pairs": _pairs(pairs),
                                         "unsharded_shape": shape}))
    return out


def write_nanotron_checkpoint(model, step_dir: Path, tp: int = 1, dtype=torch.float32) -> None:
    """Lay out a HF Llama's weights as nanotron's Qwen2ForTraining saves them at step `step_dir`."""
    cfg = model.config
    sd = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    root = step_dir / "model" / "model"

    def sharded(path: str, t: torch.Tensor, dim: int, chunks=None):
        folder, leaf = (root / path).parent, (root / path).name
        folder.mkdir(parents=True, exist_ok=True)
        for rank, (shard, meta) in enumerate(_shards(t, dim, chunks, tp)):
            save_file({"data": shard}, folder / SHARDED.format(leaf=leaf, rank=rank, size=tp), metadata=meta)

    def whole(path: str, t: torch.Tensor):  # tied across TP ranks, saved once without rank suffix
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        save_file({"data": t.contiguous()}, (root / path).parent / f"model_{(root / path).name}.safetensors")

    sharded("token_position_embeddings/pp_block/token_embedding/weight", sd["model.embed_tokens.weight"], 0)
    if not cfg.tie_word_embeddings:
        sharded("lm_head/pp_block/weight", sd["lm_head.weight"], 0)
    whole("final_layer_norm/pp_block/weight", sd["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        hf, nt = f"model.layers.{i}.", f"decoder/{i}/pp_block/"
        whole(nt + "input_layernorm/weight", sd[hf + "input_layernorm.weight"])
        whole(nt + "post_attention_layernorm/weight", sd[hf + "post_attention_layernorm.weight"])
        qkv = torch.cat([sd[hf + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        sharded(nt + "attn/qkv_proj/weight", qkv, 0, (q, kv, kv))
        sharded(nt + "attn/o_proj/weight", sd[hf + "self_attn.o_proj.weight"], 1)
        gate_up = torch.cat([sd[hf + "mlp.gate_proj.weight"], sd[hf + "mlp.up_proj.weight"]])
        sharded(nt + "mlp/gate_up_proj/weight", gate_up, 0, (cfg.intermediate_size,) * 2)
        sharded(nt + "mlp/down_proj/weight", sd[hf + "mlp.down_proj.weight"], 1)
    shape = ModelConfig(n_layers=cfg.num_hidden_layers, d_model=cfg.hidden_size, n_heads=cfg.num_attention_heads,
                        n_kv_heads=cfg.num_key_value_heads, d_mlp=cfg.intermediate_size,
                        context=cfg.max_position_embeddings, tie_embeddings=cfg.tie_word_embeddings)
    model_config = nanotron_config(shape, PRESETS["micro"].train, cfg.vocab_size, seed=0, checkpoints_path="c",
                                   tokenizer_path="t")["model"]["model_config"]
    (step_dir / "model_config.json").write_text(json.dumps(model_config))  # trainer.save_checkpoint: asdict


def small_llama(tie: bool, vocab: int = 16, seed: int = 0):
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=48, context=24, tie_embeddings=tie)
    model = build_model(cfg, vocab, seed).eval()
    with torch.no_grad():  # norm gains start at 1; make them differ so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    return model


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5]])


@pytest.mark.parametrize("tie,tp", [(True, 1), (False, 1), (True, 2)])
def test_converted_checkpoint_gives_identical_logits(tmp_path, tokenizer_dir, tie, tp):
    model = small_llama(tie)
    ckpts = tmp_path / "checkpoints"
    write_nanotron_checkpoint(model, ckpts / "7", tp=tp)
    (ckpts / "latest.txt").write_text("7")  # trainer.save_checkpoint writes it
    out = convert_checkpoint(ckpts, tokenizer_dir, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))
    assert loaded.config.tie_word_embeddings == tie
    assert (out / "tokenizer.json").is_file()


def test_bf16_checkpoint_converts_to_the_rounded_weights(tmp_path, tokenizer_dir):
    model = small_llama(True)
    write_nanotron_checkpoint(model, tmp_path / "3", dtype=torch.bfloat16)  # nanotron trains and saves bf16
    loaded = AutoModelForCausalLM.from_pretrained(convert_checkpoint(tmp_path / "3", tokenizer_dir, tmp_path / "hf"))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    assert loaded.dtype == torch.float32
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))


def test_converter_errors(tmp_path, tokenizer_dir):
    with pytest.raises(DataError, match="no nanotron checkpoint"):
        convert_checkpoint(tmp_path / "nothing", tokenizer_dir, tmp_path / "hf")
    step = tmp_path / "5"
    write_nanotron_checkpoint(small_llama(True), step, tp=2)
    down = step / "model/model/decoder/1/pp_block/mlp/down_proj"
    (down / SHARDED.format(leaf="weight", rank=1, size=2)).unlink()
    with pytest.raises(DataError, match="partial"):
        convert_checkpoint(step, tokenizer_dir, tmp_path / "hf")
    for f in down.iterdir():
        f.unlink()
    with pytest.raises(DataError, match="missing.*down_proj"):
        convert_checkpoint(step, tokenizer_dir, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # nothing half-written

    other = tmp_path / "6"
    write_nanotron_checkpoint(small_llama(True), other)
    config = json.loads((other / "model_config.json").read_text())
    (other / "model_config.json").write_text(json.dumps({**config, "rope_interleaved": True}))
    with pytest.raises(DataError, match="rope_interleaved"):
        convert_checkpoint(other, tokenizer_dir, tmp_path / "hf")
    (other / "model_config.json").write_text(json.dumps({**config, "vocab_size": 4}))
    with pytest.raises(DataError, match="vocabulary"):
        convert_checkpoint(other, tokenizer_dir, tmp_path / "hf")


# ----------------------------------------------------------------------------- dataloader


def test_micro_batches_cut_the_builtin_trainers_global_batch():
    tokens = np.random.default_rng(0).integers(0, 50, 3000).astype(np.uint16)
    batches = PackedBatches(tokens, batch_size=12, context=16, seed=4)
    step = 5
    ranks = [MicroBatches(batches, r, 3, micro_batch_size=2, accumulation=2, start_step=step) for r in range(3)]
    micro = [m for loader in ranks for m in loader.step(step)]
    rows = torch.cat([torch.cat([m["input_ids"], m["label_ids"][:, -1:]], dim=1) for m in micro])
    assert torch.equal(rows, torch.from_numpy(batches[step]))
    for m in micro:
        assert torch.equal(m["label_ids"][:, :-1], m["input_ids"][:, 1:])
        assert m["label_mask"].dtype == torch.bool and m["label_mask"].all()
        assert torch.equal(m["position_ids"], torch.arange(16).expand(2, 16))
    first = next(iter(ranks[1]))
    assert torch.equal(first["input_ids"], ranks[1].step(step)[0]["input_ids"])  # iteration starts at start_step
    stats = ranks[0].dataset
    stats.update_consumption_metrics(start_idx=60, end_idx=72, sequence_length=16)
    assert stats.get_consumption_stats() == {"corpus": {"tokens": (5 * 12 + 12) * 16}}
    with pytest.raises(ValueError):
        MicroBatches(batches, 0, 3, micro_batch_size=3, accumulation=2)


# ----------------------------------------------------------------------------- weight-decay fix


class FakeParam:
    def __init__(self, tied: str | None = None):
        self.is_tied, self.tied = tied is not None, tied

    def get_tied_info(self):
        tied = self.tied

        class Info:
            def get_full_name_from_module_id_to_prefix(self, module_id_to_prefix):
                return tied
        return Info()


def test_weight_decay_groups_exclude_only_what_matches():
    named = [("model.embed.weight", FakeParam()),  # untied first parameter: nanotron's helper crashes here
             ("model.decoder.0.pp_block.input_layernorm.weight",
              FakeParam("model.decoder.0.pp_block.input_layernorm.weight")),
             ("model.decoder.0.pp_block.attn.qkv_proj.weight", FakeParam()),  # nanotron's helper excluded it
             ("model.final_layer_norm.pp_block.weight", FakeParam("model.final_layer_norm.pp_block.weight"))]
    groups = weight_decay_groups(named, None, {}, 0.1, [r".*layernorm.*", r".*final_layer_norm.*"])
    assert [(g["named_params"][0][0], g["weight_decay"]) for g in groups] == [
        ("model.embed.weight", 0.1), ("model.decoder.0.pp_block.input_layernorm.weight", 0.0),
        ("model.decoder.0.pp_block.attn.qkv_proj.weight", 0.1), ("model.final_layer_norm.pp_block.weight", 0.0)]


# ----------------------------------------------------------------------------- flash_attn shim


def naive_attention(q, k, v, scale, causal=False, window=(-1, -1)):
    """One sequence: q (sq, h, d), k and v (sk, hk, d); explicit softmax over masked scores."""
    sq, h, _ = q.shape
    sk, hk, _ = k.shape
    out = torch.zeros(sq, h, v.shape[-1], dtype=torch.float64)
    for head in range(h):
        kh, vh = k[:, head // (h // hk)].double(), v[:, head // (h // hk)].double()
        for i in range(sq):
            scores = (q[i, head].double() @ kh.T) * scale
            j = torch.arange(sk)
            seen = torch.ones(sk, dtype=torch.bool)
            diag = i + sk - sq
            if causal:
                seen &= j <= diag
            if window[0] >= 0:
                seen &= j >= diag - window[0]
            if window[1] >= 0 and not causal:
                seen &= j <= diag + window[1]
            if seen.any():
                out[i, head] = torch.softmax(scores.masked_fill(~seen, -math.inf), 0) @ vh
    return out


def packed(seed: int, lengths, heads=4, kv_heads=2, dim=8):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, dim, generator=g) for h in (heads, kv_heads, kv_heads))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    return q, k, v, cu


@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (-1, -1)), (False, (2, 1)), (True, (3, -1))])
def test_varlen_attention_matches_naive_per_sequence(causal, window):
    lengths = [5, 1, 9]
    q, k, v, cu = packed(0, lengths)
    out = fa.flash_attn_varlen_func(q, k, v, cu, cu, 9, 9, softmax_scale=0.3, causal=causal, window_size=window)
    ref = torch.cat([naive_attention(q[a:b], k[a:b], v[a:b], 0.3, causal, window)
                     for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    kv = torch.stack([k, v], dim=1)
    torch.testing.assert_close(fa.flash_attn_varlen_kvpacked_func(q, kv, cu, cu, 9, 9, softmax_scale=0.3,
                                                                   causal=causal, window_size=window), out)


def test_varlen_attention_gradients_match_autograd_of_naive():
    q, k, v, cu = packed(1, [4, 6])
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    fa.flash_attn_varlen_func(*leaves, cu, cu, 6, 6, causal=True).square().sum().backward()
    ref = [t.double().clone().requires_grad_() for t in (q, k, v)]
    torch.cat([naive_attention(ref[0][a:b], ref[1][a:b], ref[2][a:b], 8 ** -0.5, True)
               for a, b in [(0, 4), (4, 10)]]).square().sum().backward()
    for mine, theirs in zip(leaves, ref):
        torch.testing.assert_close(mine.grad.double(), theirs.grad, atol=1e-5, rtol=1e-5)


def test_flash_attn_func_aligns_causal_masks_bottom_right_and_zeroes_empty_rows():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 5, 4, 8, generator=g)
    k, v = torch.randn(2, 3, 4, 8, generator=g), torch.randn(2, 3, 4, 8, generator=g)
    out = fa.flash_attn_func(q, k, v, causal=True)
    for b in range(2):
        torch.testing.assert_close(out[b].double(), naive_attention(q[b], k[b], v[b], 8 ** -0.5, True),
                                   atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:, :2], torch.zeros_like(out[:, :2]))  # queries 0 and 1 see no key
    bf = fa.flash_attn_func(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True)
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), out, atol=3e-2, rtol=3e-2)


def test_raw_varlen_forward_and_backward_compose_like_ring_attention():
    """Keys in two blocks: forward per block, merge by log-sum-exp, backward per block against the
    merged output and lse; the summed gradients are those of attention over all keys."""
    q, k, v, _ = packed(3, [6])
    cu = torch.tensor([0, 6], dtype=torch.int32)
    blocks = [(0, 3), (3, 6)]
    outs, lses = [], []
    for a, b in blocks:
        res = fa._flash_attn_varlen_forward(q, k[a:b], v[a:b], cu, torch.tensor([0, b - a], dtype=torch.int32),
                                            6, b - a, 0.0, None, False)
        assert len(res) == 8
        outs.append(res[0].float())
        lses.append(res[5])
    lse = torch.logsumexp(torch.stack(lses), dim=0)  # (h, total_q)
    out = sum(o * torch.exp(part - lse).T[..., None] for o, part in zip(outs, lses))
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, 8 ** -0.5), atol=1e-5, rtol=1e-5)

    dout = torch.randn_like(out)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for a, b in blocks:
        bq, bk, bv = torch.empty_like(q), torch.empty_like(k[a:b]), torch.empty_like(v[a:b])
        fa._flash_attn_varlen_backward(dout, q, k[a:b], v[a:b], out, lse, bq, bk, bv, cu,
                                       torch.tensor([0, b - a], dtype=torch.int32), 6, b - a, 0.0, None, False,
                                       (-1, -1), 0.0, None, False)
        dq += bq
        dk[a:b], dv[a:b] = bk, bv
    ref = [t.double().clone().requires_grad_() for t in (q, k, v)]
    (naive_attention(*ref, 8 ** -0.5) * dout.double()).sum().backward()
    for mine, theirs in zip((dq, dk, dv), ref):
        torch.testing.assert_close(mine.double(), theirs.grad, atol=1e-5, rtol=1e-5)
    # nanotron's ring attention reads the defaults of these signatures (get_default_args)
    assert "window_size" in inspect.signature(fa._flash_attn_varlen_forward).parameters


def rope_reference(x, positions, base=10000.0, interleaved=False, rotary_dim=None):
    """Rotation of each (i, partner) feature pair by angle position / base^(2i / rotary_dim)."""
    d = rotary_dim or x.shape[-1]
    out = x.double().clone()
    for n, pos in enumerate(positions):
        for i in range(d // 2):
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
            theta = pos * base ** (-2 * i / d)
            xa, xb = x[n, ..., a].double(), x[n, ..., b].double()
            out[n, ..., a] = xa * math.cos(theta) - xb * math.sin(theta)
            out[n, ..., b] = xa * math.sin(theta) + xb * math.cos(theta)
    return out


def cos_sin(length, dim, base=10000.0):
    freqs = torch.outer(torch.arange(length, dtype=torch.float32),
                        1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return freqs.cos(), freqs.sin()


@pytest.mark.parametrize("interleaved", [False, True])
def test_apply_rotary_emb_matches_the_formula(interleaved):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, 8, generator=g)
    cos, sin = cos_sin(16, 6)  # rotary_dim 6 < head dim 8: the last 2 features pass through
    out = rotary.apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=torch.tensor([0, 4]))
    for b, offset in enumerate([0, 4]):
        ref = rope_reference(x[b], range(offset, offset + 5), interleaved=interleaved, rotary_dim=6)
        torch.testing.assert_close(out[b].double(), ref, atol=1e-5, rtol=1e-5)
    cu = torch.tensor([0, 5, 10], dtype=torch.int32)
    packed_out = rotary.apply_rotary_emb(x.flatten(0, 1), cos, sin, interleaved=interleaved,
                                         seqlen_offsets=torch.tensor([0, 4]), cu_seqlens=cu, max_seqlen=5)
    torch.testing.assert_close(packed_out, out.flatten(0, 1))


def test_half_split_rotary_is_hf_llamas():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(1, 7, 2, 8, generator=g), torch.randn(1, 7, 2, 8, generator=g)
    cos, sin = cos_sin(7, 8)
    hq, hk = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), torch.cat([cos, cos], -1)[None],
                                  torch.cat([sin, sin], -1)[None])
    torch.testing.assert_close(rotary.apply_rotary_emb(q, cos, sin), hq.transpose(1, 2))
    torch.testing.assert_close(rotary.apply_rotary_emb(k, cos, sin), hk.transpose(1, 2))


def test_rotary_embedding_module_rotates_q_and_k_only():
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(2, 6, 3, 4, 8, generator=g)
    module = rotary.RotaryEmbedding(8)
    cos, sin = cos_sin(6, 8)
    out = module(qkv)
    for i in (0, 1):
        torch.testing.assert_close(out[:, :, i], rotary.apply_rotary_emb(qkv[:, :, i], cos, sin))
    assert torch.equal(out[:, :, 2], qkv[:, :, 2])
    q, kv = module(qkv[:, :, 0], kv=qkv[:, :, 1:])
    torch.testing.assert_close(q, out[:, :, 0])
    torch.testing.assert_close(kv, out[:, :, 1:])


def test_kvcache_attention_appends_rotates_and_attends():
    g = torch.Generator().manual_seed(7)
    batch, cached, new, heads, kv_heads, dim = 2, [3, 5], 2, 4, 2, 8
    k_cache, v_cache = torch.zeros(batch, 10, kv_heads, dim), torch.zeros(batch, 10, kv_heads, dim)
    old_k, old_v = torch.randn(batch, 5, kv_heads, dim, generator=g), torch.randn(batch, 5, kv_heads, dim, generator=g)
    for b, n in enumerate(cached):
        k_cache[b, :n], v_cache[b, :n] = old_k[b, :n], old_v[b, :n]
    q = torch.randn(batch, new, heads, dim, generator=g)
    k, v = torch.randn(batch, new, kv_heads, dim, generator=g), torch.randn(batch, new, kv_heads, dim, generator=g)
    cos, sin = cos_sin(10, dim)
    lengths = torch.tensor(cached, dtype=torch.int32)
    out = fa.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, rotary_cos=cos, rotary_sin=sin,
                                     cache_seqlens=lengths, causal=True, rotary_interleaved=False)
    for b, n in enumerate(cached):
        positions = range(n, n + new)
        rk = rope_reference(k[b], positions).float()
        torch.testing.assert_close(k_cache[b, n : n + new], rk, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v_cache[b, n : n + new], v[b])
        keys = torch.cat([old_k[b, :n], rk])
        ref = naive_attention(rope_reference(q[b], positions).float(), keys, torch.cat([old_v[b, :n], v[b]]),
                              dim ** -0.5, causal=True)
        torch.testing.assert_close(out[b].double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rms", [True, False])
def test_layer_norm_fn_matches_torch(rms):
    g = torch.Generator().manual_seed(8)
    x, residual = torch.randn(3, 5, 16, generator=g).bfloat16(), torch.randn(3, 5, 16, generator=g).bfloat16()
    weight, bias = torch.randn(16, generator=g), None if rms else torch.randn(16, generator=g)
    h = x.float() + residual.float()
    ref = (F.rms_norm(h, (16,), weight, 1e-5) if rms else F.layer_norm(h, (16,), weight, bias, 1e-5)).bfloat16()
    y = norms.layer_norm_fn(x, weight, bias, residual=residual, eps=1e-5, is_rms_norm=rms)
    torch.testing.assert_close(y, ref)
    y, res = norms.layer_norm_fn(x, weight, bias, residual=None, eps=1e-5, prenorm=True, residual_in_fp32=True,
                                 is_rms_norm=rms)
    assert y.dtype == torch.bfloat16 and res.dtype == torch.float32 and torch.equal(res, x.float())
    y, res, mask, mask1 = norms.layer_norm_fn(x, weight, bias, residual=residual, eps=1e-5, dropout_p=0.5,
                                              prenorm=True, is_rms_norm=rms, return_dropout_mask=True)
    assert mask1 is None and mask.dtype == torch.bool and 0 < mask.float().mean() < 1
    torch.testing.assert_close(res.float(), (x.float() * mask / 0.5 + residual.float()).bfloat16().float())


def test_unpad_and_pad_input_round_trip():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    flat, indices, cu, longest = padding.unpad_input(x, mask)
    assert torch.equal(flat, x[mask]) and cu.tolist() == [0, 2, 5] and cu.dtype == torch.int32 and longest == 3
    assert torch.equal(padding.pad_input(flat, indices, 2, 4), x * mask[..., None])


# Every flash_attn name nanotron imports at the pinned commit (grep "flash_attn" src/nanotron).
NANOTRON_IMPORTS = {
    "flash_attn": ["__version__"],
    "flash_attn.bert_padding": ["unpad_input", "pad_input"],
    "flash_attn.flash_attn_interface": ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache",
                                        "_flash_attn_varlen_forward", "_flash_attn_varlen_backward"],
    "flash_attn.layers.rotary": ["apply_rotary_emb", "RotaryEmbedding"],
    "flash_attn.modules.mha": ["flash_attn_varlen_kvpacked_func"],
    "flash_attn.ops.triton.layer_norm": ["layer_norm_fn"],
}


def test_shim_installs_only_without_flash_attn(tmp_path):
    """In child processes, so that this one's sys.path stays as it is; the installer is loaded from
    its file, without the packages above it (and their imports of transformers)."""
    installer = Path(importlib.util.find_spec(SHIM).origin)
    check = ("import importlib, importlib.util, json\n"
             f"spec = importlib.util.spec_from_file_location('shim', {str(installer)!r})\n"
             "shim = importlib.util.module_from_spec(spec); spec.loader.exec_module(shim)\n"
             "first, second = shim.install_flash_attn_shim(), shim.install_flash_attn_shim()\n"
             "import flash_attn\n"
             "names = first and {m: [hasattr(importlib.import_module(m), n) for n in ns]"
             f" for m, ns in {NANOTRON_IMPORTS!r}.items()}}\n"
             "print(json.dumps([first, second, flash_attn.__version__, names]))")
    fake = tmp_path / "site" / "flash_attn"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("__version__ = 'real'\n")
    runs = {}
    for name, path in [("missing", ""), ("present", str(tmp_path / "site"))]:
        if name == "missing" and importlib.util.find_spec("flash_attn") is not None:
            continue  # a machine with real flash-attn cannot show the missing case
        done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": path}, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        runs[name] = json.loads(done.stdout)
    if "missing" in runs:
        first, second, version, names = runs["missing"]
        assert (first, second, version) == (True, False, "2.6.3+pytorch.shim")
        assert all(all(found) for found in names.values()), names
    assert runs["present"][:3] == [False, False, "real"]


# ----------------------------------------------------------------------------- launching


def test_losses_keep_the_newest_value_of_each_step(tmp_path):
    path = tmp_path / "losses.jsonl"
    path.write_text("[1, 5.0]\n[7, 4.0]\n[13, 3.5]\n[7, 3.9]\n[13, 3.4]\n[19, 3.0]\n")  # resumed at step 7
    assert _losses(path) == [[1, 5.0], [7, 3.9], [13, 3.4], [19, 3.0]]
    assert _losses(tmp_path / "none.jsonl") == []


@pytest.mark.skipif(nanotron_available()[0], reason="nanotron can train here")
def test_without_nanotron_training_says_how_to_install(tmp_path):
    ok, why = nanotron_available()
    assert not ok and why
    if importlib.util.find_spec("nanotron") is None:
        assert NANOTRON_COMMIT in why and "pip install" in why
    with pytest.raises(ConfigError, match="nanotron"):
        train_nanotron(tmp_path, tmp_path, tmp_path / "out", PRESETS["micro"].model, PRESETS["micro"].train, 0)
    assert NANOTRON_COMMIT in INSTALL_HINT


@pytest.mark.slow
@pytest.mark.skipif(not nanotron_available()[0], reason=f"needs nanotron and a CUDA GPU: {nanotron_available()[1]}")
def test_nanotron_trains_and_converts(tmp_path):
    texts = [" ".join(WORDS[i % 3 :] + WORDS[: i % 3]) for i in range(3000)]
    tok = build_tokenizer(texts)
    save_tokenizer(tok, tmp_path / "tokenizer")
    ids = [tok.encode(t) for t in texts]
    pq.write_table(pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32()))}), tmp_path / "shard-00000.parquet")
    micro = PRESETS["micro"]
    train = dataclasses.replace(micro.train, tokens=40 * micro.train.batch_size * 64, checkpoint_every=20)
    model_cfg = dataclasses.replace(micro.model, context=64)
    log = train_nanotron(tmp_path, tmp_path / "tokenizer", tmp_path / "out", model_cfg, train, 0, nproc=1,
                         progress=False)
    assert log["complete"] and log["steps"] == 40 and log["loss_curve"][-1][1] < log["loss_curve"][0][1] - 1
    assert not (tmp_path / "out" / "nanotron").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    window = torch.tensor([tok.encode(" ".join(WORDS))])
    loss = F.cross_entropy(logits(model, window[:, :-1])[0], window[0, 1:])
    assert loss.item() < log["loss_curve"][0][1] - 1
    assert train_nanotron(tmp_path, tmp_path / "tokenizer", tmp_path / "out", model_cfg, train, 0, nproc=1,
                          progress=False) == log
