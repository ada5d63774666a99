"""nanotron's YAML config from our preset: the same model, optimizer, schedule and global batch as
the built-in trainer (SPEC 5), so that the two backends train the same thing.

The model is nanotron's `Qwen2Config` with no attention bias, `sdpa` attention and no fused
kernels: at the pinned commit that is exactly HF's LlamaForCausalLM (half-split rotary, RMSNorm,
SwiGLU, grouped-query attention) running on `scaled_dot_product_attention`, the one path that
needs no flash-attn kernel at run time. nanotron's own `LlamaConfig` model calls flash-attn's
varlen kernel and fused rotary in its training forward.

Two differences from the built-in trainer remain, both nanotron's: its linear warmup starts at lr 0
(its step t uses t / W of the peak where ours uses (t + 1) / W; from the end of the warmup on the
schedules are identical), and it keeps bf16 weights with fp32 master weights and gradients where
ours keeps fp32 weights under bf16 autocast.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml

from medsafetyworld.config import ModelConfig, TrainConfig
from medsafetyworld.errors import ConfigError
from medsafetyworld.storage import write_atomic

STAGE = "pretrain"  # the one data stage; the trainer's dataloader dict is keyed by its name
INIT_STD = 0.02  # HF's LlamaConfig.initializer_range, which build_model uses
# Weight decay on matrices only, as in the built-in trainer: the RMSNorm gains are excluded
# (nanotron applies these patterns correctly only with patches.weight_decay_groups in place).
NO_DECAY = [r".*layernorm.*", r".*final_layer_norm.*"]


def train_steps(model_cfg: ModelConfig, train_cfg: TrainConfig) -> int:
    """Optimizer steps for the token budget, as the built-in trainer counts them."""
    return math.ceil(train_cfg.tokens / (train_cfg.batch_size * model_cfg.context))


def _batch_split(batch_size: int, dp: int, micro_batch_size: int | None) -> tuple[int, int]:
    """(micro batch size, micro batches per replica) with dp * micro * accumulation = batch_size."""
    if dp < 1 or batch_size % dp:
        raise ConfigError(f"the global batch of {batch_size} sequences does not split evenly over "
                          f"{dp} processes; use a process count that divides it")
    per_replica = batch_size // dp
    micro = per_replica if micro_batch_size is None else micro_batch_size
    if micro < 1 or per_replica % micro:
        raise ConfigError(f"a micro batch of {micro} does not divide the {per_replica} sequences each "
                          f"of {dp} processes trains on per step; pick a divisor of {per_replica}")
    return micro, per_replica // micro


def nanotron_config(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int, *, seed: int,
                    checkpoints_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                    dp: int = 1, micro_batch_size: int | None = None, steps: int | None = None,
                    eos_id: int = 0, bos_id: int | None = None) -> dict[str, Any]:
    """nanotron's config as a YAML-ready dict (the schema of `nanotron.config.Config`).

    `dp` processes (data parallel; tp = pp = 1) share the global batch of `train_cfg.batch_size`
    sequences; each runs micro batches of `micro_batch_size` (default: its whole share) and
    accumulates gradients over the rest. `steps` overrides the token budget's step count (the
    schedule is then laid over those steps). Training resumes from the newest checkpoint under
    `checkpoints_path` when there is one.
    """
    if model_cfg.d_model % model_cfg.n_heads:
        raise ConfigError(f"d_model {model_cfg.d_model} is not a multiple of n_heads {model_cfg.n_heads}")
    if model_cfg.n_heads % model_cfg.n_kv_heads:
        raise ConfigError(f"n_heads {model_cfg.n_heads} is not a multiple of n_kv_heads {model_cfg.n_kv_heads}")
    micro, accumulation = _batch_split(train_cfg.batch_size, dp, micro_batch_size)
    steps = train_steps(model_cfg, train_cfg) if steps is None else steps
    if steps < 1:
        raise ConfigError(f"training needs at least one step, got {steps}")
    # Our schedule (trainer._lr_at) in nanotron's terms: at 0-based step t nanotron's LambdaLR gives
    # t / W during warmup (t <= W), then cosine over (t - W) / decay from W on, then the floor.
    warmup = max(1, int(train_cfg.warmup_fraction * steps))
    decay = max(1, steps - 1 - warmup)
    checkpoints_path = str(Path(checkpoints_path))
    return {
        # nanotron.config.GeneralArgs
        "general": {
            "project": "medsafetyworld",
            "run": "pretrain",
            "seed": seed,
            "step": None,
            "consumed_train_samples": None,
            "benchmark_csv_path": None,
            "ignore_sanity_checks": True,  # the cross-rank tensor checks cost a collective per batch
        },
        # nanotron.config.ParallelismArgs
        "parallelism": {
            "dp": dp,
            "pp": 1,
            "tp": 1,
            "pp_engine": "1f1b",
            "tp_mode": "ALL_REDUCE",
            "tp_linear_async_communication": False,
            "recompute_layer": False,
            "moe_layer_recompute": False,
            "tp_recompute_allgather": True,
            "expert_parallel_size": 1,
            "context_parallel_size": 1,
        },
        # nanotron.config.ModelArgs; init_method is RandomInit, model_config is Qwen2Config
        "model": {
            "ddp_bucket_cap_mb": 25,
            "dtype": "bfloat16",
            "init_method": {"std": INIT_STD, "scaling_method": "NONE"},
            "make_vocab_size_divisible_by": 1,
            "model_config": {
                "is_qwen2_config": True,
                "vocab_size": vocab_size,
                "hidden_size": model_cfg.d_model,
                "intermediate_size": model_cfg.d_mlp,
                "num_hidden_layers": model_cfg.n_layers,
                "num_attention_heads": model_cfg.n_heads,
                "num_key_value_heads": model_cfg.n_kv_heads,
                "max_position_embeddings": model_cfg.context,
                "tie_word_embeddings": model_cfg.tie_embeddings,
                "hidden_act": "silu",
                "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "rope_interleaved": False,
                "rope_scaling": None,
                "attention_bias": False,
                "initializer_range": INIT_STD,
                "bos_token_id": eos_id if bos_id is None else bos_id,
                "eos_token_id": eos_id,
                # None, not our pad id (= eos): nanotron passes it to the embedding as padding_idx,
                # which would freeze the embedding row of eos, a token every document ends with.
                "pad_token_id": None,
                "pretraining_tp": 1,
                "use_cache": True,
                "_attn_implementation": "sdpa",
                "_fused_rotary_emb": False,
                "_fused_rms_norm": False,
                "_use_qkv_packed": False,
                "_use_doc_masking": False,
                "flex_attention_mask": None,
                "sliding_window_size": None,
                "no_rope_layer": None,
                "moe_config": None,
                "z_loss_enabled": False,
                "z_loss_coefficient": 0.0001,
            },
        },
        # nanotron.config.TokenizerArgs
        "tokenizer": {
            "tokenizer_name_or_path": str(Path(tokenizer_path)),
            "tokenizer_revision": None,
            "tokenizer_max_length": None,
        },
        # nanotron.config.CheckpointsArgs
        "checkpoints": {
            "checkpoints_path": checkpoints_path,
            "checkpoint_interval": train_cfg.checkpoint_every or steps,
            "save_initial_state": False,
            "save_final_state": True,
            "resume_checkpoint_path": checkpoints_path,  # nanotron starts afresh when it holds none
            "load_lr_scheduler": True,
            "load_optimizer": True,
            "checkpoints_path_is_shared_file_system": False,
        },
        # nanotron.config.LoggingArgs
        "logging": {
            "log_level": "info",
            "log_level_replica": "warning",
            "iteration_step_info_interval": max(1, steps // 100),  # the loss curve's points, as ours
        },
        # nanotron.config.TokensArgs
        "tokens": {
            "sequence_length": model_cfg.context,
            "train_steps": steps,
            "micro_batch_size": micro,
            "batch_accumulation_per_replica": accumulation,
            "val_check_interval": -1,
            "limit_val_batches": 0,
            "limit_test_batches": 0,
        },
        # nanotron.config.OptimizerArgs with AdamWOptimizerArgs and LRSchedulerArgs
        "optimizer": {
            "optimizer_factory": {
                "name": "adamW",
                "adam_beta1": train_cfg.betas[0],
                "adam_beta2": train_cfg.betas[1],
                "adam_eps": 1e-8,
                "torch_adam_is_fused": True,
            },
            "zero_stage": 0,
            "weight_decay": train_cfg.weight_decay,
            "weight_decay_exclude_named_params": list(NO_DECAY),
            "clip_grad": train_cfg.grad_clip,
            "accumulate_grad_in_fp32": True,
            "learning_rate_scheduler": {
                "learning_rate": train_cfg.lr,
                "lr_warmup_steps": warmup,
                "lr_warmup_style": "linear",
                "lr_decay_style": "cosine",
                "lr_decay_starting_step": warmup,
                "lr_decay_steps": decay,
                "min_decay_lr": train_cfg.min_lr_ratio * train_cfg.lr,
            },
        },
        # list of nanotron.config.DatasetStageArgs; dataset None: our dataloader is passed to train()
        "data_stages": [
            {
                "name": STAGE,
                "start_training_step": 1,
                "data": {"dataset": None, "seed": seed, "num_loading_workers": 0},
            }
        ],
        "metrics_logging": None,
        "profiler": None,
        "lighteval": None,
        "s3_upload": None,
    }


def write_config(path: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write the config as YAML, atomically; returns the path."""
    path = Path(path)
    write_atomic(path, yaml.safe_dump(config, sort_keys=True))
    return path
