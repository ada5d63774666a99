"""The canonical model: a Hugging Face LlamaForCausalLM shaped by a ModelConfig (SPEC 5, 8)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from medsafetyworld.config import ModelConfig


def llama_config(cfg: ModelConfig, vocab_size: int, eos_id: int = 0, pad_id: int | None = None,
                 bos_id: int | None = None) -> LlamaConfig:
    """The LlamaConfig of cfg. Our tokenizer uses `<|endoftext|>` (id 0) as eos, bos and pad."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.context,
        tie_word_embeddings=cfg.tie_embeddings,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=eos_id if bos_id is None else bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id if pad_id is None else pad_id,
    )
    config._attn_implementation = "sdpa"
    return config


def build_model(cfg: ModelConfig, vocab_size: int, seed: int, *, eos_id: int = 0,
                pad_id: int | None = None, bos_id: int | None = None) -> LlamaForCausalLM:
    """A freshly initialised model; the same (cfg, vocab_size, seed) give the same weights.

    HF initialises from torch's global generator, so we seed it inside fork_rng and leave the
    caller's random state untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(cfg, vocab_size, eos_id, pad_id, bos_id))
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters: tied embeddings are counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(cfg: ModelConfig, n_params: int) -> int:
    """Training FLOPs per token: 6N for the weights plus attention scores (PaLM, appendix B)."""
    return 6 * n_params + 12 * cfg.n_layers * cfg.d_model * cfg.context
