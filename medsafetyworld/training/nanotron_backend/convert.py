"""A nanotron Qwen2 checkpoint -> our canonical Hugging Face LlamaForCausalLM folder (SPEC 5).

nanotron (pinned commit, serialize/weights.py) saves every parameter of a checkpoint step as its
own safetensors file, tensor "data", at `<step>/model/<module path>/model_<leaf>[_pp-rank-P-of-N
_tp-rank-T-of-M].safetensors`: the rank suffix and a metadata header (`unsharded_shape`,
`local_global_slices_pairs`) mark tensor-parallel shards, which are stitched back here; a tied
parameter is saved once, under the name of the first in its tie (the embedding for tied
embeddings). The model's shape comes from `<step>/model_config.json`.

The Qwen2 model with `rope_interleaved: false` rotates query/key halves (GPT-NeoX style, as HF
Llama does), so weights map over without any row permutation; the fused projections split as
qkv_proj = [q; k; v] rows and gate_up_proj = [gate; up] rows. (Its interleaved rotary does not
match the standard GPT-J rotation and cannot be mapped onto HF Llama; such checkpoints are refused.)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM

from medsafetyworld.config import ModelConfig
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.errors import DataError
from medsafetyworld.storage import atomic_dir
from medsafetyworld.training.model import llama_config

MODEL_CONFIG = "model_config.json"
LATEST = "latest.txt"
_FILE = re.compile(
    r"^model_(?P<leaf>.+?)(?:_pp-rank-\d+-of-\d+_tp-rank-(?P<tp>\d+)-of-(?P<tp_size>\d+))?\.safetensors$"
)
EMBEDDING = "model.token_position_embeddings.pp_block.token_embedding.weight"
LM_HEAD = "model.lm_head.pp_block.weight"
FINAL_NORM = "model.final_layer_norm.pp_block.weight"
LAYER = "model.decoder.{}.pp_block."
LAYER_PARAMS = ("input_layernorm.weight", "post_attention_layernorm.weight", "attn.qkv_proj.weight",
                "attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight")
# Features our HF Llama cannot express, with the value it needs.
_PLAIN_LLAMA = {"is_qwen2_config": True, "attention_bias": False, "hidden_act": "silu",
                "rope_interleaved": False, "rope_scaling": None, "no_rope_layer": None,
                "moe_config": None, "sliding_window_size": None}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The step folder of a checkpoint: `path` itself, or the step its `latest.txt` names."""
    folder = Path(path)
    if (folder / LATEST).is_file():
        folder = folder / (folder / LATEST).read_text().strip()
    if not (folder / MODEL_CONFIG).is_file() or not (folder / "model").is_dir():
        raise DataError(f"no nanotron checkpoint at {folder} (expected {MODEL_CONFIG} and model/ in a step "
                        "folder, or a checkpoints folder with latest.txt); train first or point at one")
    return folder


def _shape(text: str) -> tuple[int, ...]:
    """nanotron's `unsharded_shape` header, e.g. "(640, 256)" or, under numpy 2, "(np.int64(640), 256)"."""
    items = [item.strip() for item in text.strip("()").split(",") if item.strip()]
    return tuple(int(re.search(r"\((\d+)\)", i).group(1)) if "np.int" in i else int(i) for i in items)


def _slices(text: str) -> tuple[slice, ...]:
    """"0,640,None|None,None,None" -> (slice(0, 640, None), slice(None, None, None))."""
    return tuple(slice(*(None if x == "None" else int(x) for x in part.split(","))) for part in text.split("|"))


def _stitch(name: str, shards: list[Path]) -> torch.Tensor:
    """The full tensor from its shard files, placed by their local/global slice pairs."""
    full = covered = None
    for path in shards:
        with safe_open(path, framework="pt") as f:
            header, shard = f.metadata() or {}, f.get_tensor("data")
        if "unsharded_shape" not in header or "local_global_slices_pairs" not in header:
            raise DataError(f"{path} is a tensor-parallel shard without nanotron's slice metadata")
        if full is None:
            shape = _shape(header["unsharded_shape"])
            full, covered = shard.new_zeros(shape), torch.zeros(shape, dtype=torch.bool)
        for pair in header["local_global_slices_pairs"].split(";"):
            local, global_ = (_slices(s) for s in pair.split("#"))
            full[global_] = shard[local]
            covered[global_] = True
    if not covered.all():
        raise DataError(f"the shards of {name} do not cover the whole tensor; the checkpoint is partial")
    return full


def load_parameters(step_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every parameter of a checkpoint step, by nanotron name, as whole tensors."""
    root = Path(step_dir) / "model"
    files: dict[str, list[tuple[Path, re.Match]]] = {}
    for path in sorted(root.rglob("*.safetensors")):
        match = _FILE.match(path.name)
        if match is None:
            raise DataError(f"{path} is not a nanotron parameter file (model_<name>[_pp-rank..._tp-rank...]"
                            ".safetensors); is this a nanotron checkpoint?")
        name = ".".join((*path.parent.relative_to(root).parts, match["leaf"]))
        files.setdefault(name, []).append((path, match))
    params = {}
    for name, found in files.items():
        if len(found) == 1 and found[0][1]["tp"] is None:
            with safe_open(found[0][0], framework="pt") as f:
                params[name] = f.get_tensor("data")
            continue
        sizes = {int(m["tp_size"]) for _, m in found if m["tp_size"] is not None}
        ranks = sorted(int(m["tp"]) for _, m in found if m["tp"] is not None)
        if len(sizes) != 1 or len(ranks) != len(found) or ranks != list(range(sizes.pop())):
            raise DataError(f"{name} has shard files {[p.name for p, _ in found]}: some tensor-parallel "
                            "ranks are missing or mixed; the checkpoint is partial")
        params[name] = _stitch(name, [p for p, _ in found])
    return params


def _model_config(step_dir: Path) -> dict:
    config = json.loads((step_dir / MODEL_CONFIG).read_text())
    wrong = {k: config.get(k) for k, want in _PLAIN_LLAMA.items() if config.get(k, want) != want}
    if wrong:
        raise DataError(f"{step_dir / MODEL_CONFIG} describes a model HF Llama cannot hold ({wrong}; "
                        f"needed: {_PLAIN_LLAMA}); only nanotron Qwen2 models written as msw configures "
                        "them convert")
    return config


def _expected_shapes(mc: dict) -> dict[str, tuple[int, ...]]:
    hidden, inter, vocab = mc["hidden_size"], mc["intermediate_size"], mc["vocab_size"]
    head_dim = hidden // mc["num_attention_heads"]
    q, kv = mc["num_attention_heads"] * head_dim, mc["num_key_value_heads"] * head_dim
    shapes = {EMBEDDING: (vocab, hidden), FINAL_NORM: (hidden,)}
    if not mc["tie_word_embeddings"]:
        shapes[LM_HEAD] = (vocab, hidden)
    per_layer = ((hidden,), (hidden,), (q + 2 * kv, hidden), (hidden, q), (2 * inter, hidden), (hidden, inter))
    for i in range(mc["num_hidden_layers"]):
        shapes.update({LAYER.format(i) + p: s for p, s in zip(LAYER_PARAMS, per_layer, strict=True)})
    return shapes


def hf_state_dict(params: dict[str, torch.Tensor], mc: dict) -> dict[str, torch.Tensor]:
    """nanotron Qwen2 parameters -> LlamaForCausalLM state dict (fp32), after checking every name
    and shape against the model config."""
    expected = _expected_shapes(mc)
    missing, extra = sorted(expected.keys() - params.keys()), sorted(params.keys() - expected.keys())
    if missing or extra:
        raise DataError(f"the checkpoint's parameters do not match its {MODEL_CONFIG}: missing {missing[:5]}"
                        f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}; it is partial or "
                        "of another model")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise DataError(f"{name} has shape {tuple(params[name].shape)}, its config says {shape}")
    p = {name: t.float() for name, t in params.items()}
    hidden, inter = mc["hidden_size"], mc["intermediate_size"]
    head_dim = hidden // mc["num_attention_heads"]
    q, kv = mc["num_attention_heads"] * head_dim, mc["num_key_value_heads"] * head_dim
    sd = {"model.embed_tokens.weight": p[EMBEDDING], "model.norm.weight": p[FINAL_NORM],
          "lm_head.weight": p[EMBEDDING] if mc["tie_word_embeddings"] else p[LM_HEAD]}
    for i in range(mc["num_hidden_layers"]):
        src, dst = LAYER.format(i), f"model.layers.{i}."
        wq, wk, wv = p[src + "attn.qkv_proj.weight"].split([q, kv, kv])
        gate, up = p[src + "mlp.gate_up_proj.weight"].split([inter, inter])
        sd.update({
            dst + "input_layernorm.weight": p[src + "input_layernorm.weight"],
            dst + "post_attention_layernorm.weight": p[src + "post_attention_layernorm.weight"],
            dst + "self_attn.q_proj.weight": wq,
            dst + "self_attn.k_proj.weight": wk,
            dst + "self_attn.v_proj.weight": wv,
            dst + "self_attn.o_proj.weight": p[src + "attn.o_proj.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": p[src + "mlp.down_proj.weight"],
        })
    return {k: v.contiguous() for k, v in sd.items()}


def convert_checkpoint(nanotron_checkpoint_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike,
                       out_dir: str | os.PathLike) -> Path:
    """Write the HF LlamaForCausalLM folder (fp32 weights + our tokenizer) of a nanotron checkpoint
    (a step folder or a checkpoints folder with latest.txt) to `out_dir`, atomically; returns it."""
    step_dir = resolve_checkpoint(nanotron_checkpoint_dir)
    mc = _model_config(step_dir)
    tok = load_tokenizer(tokenizer_dir)
    if mc["vocab_size"] < len(tok):
        raise DataError(f"the checkpoint's vocabulary ({mc['vocab_size']}) is smaller than the tokenizer's in "
                        f"{tokenizer_dir} ({len(tok)}); it was not trained with this tokenizer")
    sd = hf_state_dict(load_parameters(step_dir), mc)
    shape = ModelConfig(n_layers=mc["num_hidden_layers"], d_model=mc["hidden_size"],
                        n_heads=mc["num_attention_heads"], n_kv_heads=mc["num_key_value_heads"],
                        d_mlp=mc["intermediate_size"], context=mc["max_position_embeddings"],
                        tie_embeddings=mc["tie_word_embeddings"])
    config = llama_config(shape, mc["vocab_size"], tok.eos_token_id, tok.pad_token_id, tok.bos_token_id)
    config.rms_norm_eps = mc["rms_norm_eps"]
    config.rope_parameters = {"rope_type": "default", "rope_theta": float(mc["rope_theta"])}
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation leaves the caller's RNG alone
        model = LlamaForCausalLM(config)
    model.load_state_dict(sd, strict=True)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out_dir)
