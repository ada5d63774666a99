"""The built-in trainer (SPEC 5): pretraining from scratch and supervised finetuning.

One file, nanoGPT-style. Both produce a Hugging Face LlamaForCausalLM folder with its tokenizer and
a `train_log.json`; that log is written last, so its presence means the folder is complete.

Pretraining checkpoints into `out_dir/checkpoint/` (HF weights + optimizer + step). Batches are a
function of (seed, step), so a resumed run continues exactly where the checkpoint left off; on CPU
it ends with the same weights, bit for bit, as a run that was never interrupted.

Speed on CPU (tiny model, batch 32 x 256, vocab ~730, 2 AVX2 cores, 2 threads): ~6,200 tokens/s in
plain fp32 eager mode with SDPA attention; matmuls take ~60% of a step, attention ~20%. Measured and
left out: torch.compile (between -8% and +9% from run to run, plus 30-60 s of compiling), eager
attention (no faster), splitting the batch into micro-batches (+4%, within noise), bf16 (these CPUs
have no bf16 units).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from medsafetyworld.config import ModelConfig, TrainConfig, config_hash, to_dict
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.errors import DataError
from medsafetyworld.storage import write_json_atomic
from medsafetyworld.training.data import (
    PackedBatches,
    collate_sft,
    load_token_stream,
    schedule_regions,
    sft_example,
)
from medsafetyworld.training.model import build_model, count_parameters, flops_per_token

logger = logging.getLogger("medsafetyworld")
LOG_FILE, CHECKPOINT = "train_log.json", "checkpoint"
LOSS_POINTS = 100  # about this many points in the logged loss curve


# ----------------------------------------------------------------------------- shared pieces


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    # bf16 on GPU; CPU stays fp32 so that runs are exactly reproducible.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _hf_bars(progress: bool):
    """HF's own load/save bars follow our `progress` flag, and are restored afterwards."""
    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not norms); the tied embedding counts once."""
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, fused=fused)


def _train_step(model, optimizer, lr: float, grad_clip: float, inputs, targets, mask=None) -> float:
    """One AdamW step on the next-token loss (targets -100 are ignored); returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _autocast(inputs.device):
        logits = model(input_ids=inputs, attention_mask=mask, use_cache=False).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _completed(out: Path, run_hash: str) -> dict | None:
    """The log of a finished run in `out` with this hash. Another run's output is rebuilt (as the
    pipeline's stages are): its log goes first, so the folder no longer counts as complete."""
    if not (out / LOG_FILE).is_file():
        return None
    log = json.loads((out / LOG_FILE).read_text())
    if log.get("config_hash") == run_hash:
        return log
    logger.warning("%s holds a model of another config (%s, now %s); retraining it",
                   out, log.get("config_hash"), run_hash)
    (out / LOG_FILE).unlink()
    return None


def _save_model_folder(model, tok, out: Path, log: dict) -> None:
    """Move model + tokenizer files into `out`, then write the log: a folder with a log is whole."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(out / LOG_FILE, log)


# ----------------------------------------------------------------------------- pretraining


def _lr_at(step: int, steps: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine down to min_lr_ratio * lr at the last step."""
    warmup = max(1, int(cfg.warmup_fraction * steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(out: Path, model, optimizer, state: dict) -> None:
    """Write into a temp dir, then swap it in; `checkpoint.old` covers a crash mid-swap."""
    ckpt, old = out / CHECKPOINT, out / f"{CHECKPOINT}.old"
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT}-", dir=out))
    model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_json_atomic(tmp / "trainer_state.json", state)
    if ckpt.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _find_checkpoint(out: Path, run_hash: str) -> Path | None:
    ckpt, old = out / CHECKPOINT, out / f"{CHECKPOINT}.old"
    if not ckpt.exists() and old.exists():
        os.replace(old, ckpt)  # we crashed between the two renames of _save_checkpoint
    if not (ckpt / "trainer_state.json").is_file():
        return None
    found = json.loads((ckpt / "trainer_state.json").read_text())["config_hash"]
    if found == run_hash:
        return ckpt
    logger.warning("%s belongs to another config (%s, now %s); starting over", ckpt, found, run_hash)
    shutil.rmtree(ckpt)
    return None


def pretrain(corpus_dir, tokenizer_dir, out_dir, model_cfg: ModelConfig, train_cfg: TrainConfig,
             seed: int, progress: bool = True, *, stop_after: int | None = None) -> dict:
    """Pretrain a model from scratch on the corpus shards; returns (and writes) the train log.

    Resumes from `out_dir/checkpoint` when its config hash matches (a checkpoint of another config
    is deleted); returns the existing log when `out_dir` already holds this finished run.
    `stop_after=n` stops after step n as if the process had been killed there (nothing saved
    beyond the last regular checkpoint); tests use it. Ctrl-C propagates the same way.
    """
    with _hf_bars(progress):
        return _pretrain(Path(corpus_dir), Path(tokenizer_dir), Path(out_dir), model_cfg,
                         train_cfg, seed, progress, stop_after)


def _pretrain(corpus_dir, tokenizer_dir, out, model_cfg, train_cfg, seed, progress, stop_after):
    tok = load_tokenizer(tokenizer_dir)
    tokens = load_token_stream(corpus_dir, tok.eos_token_id)
    if len(tokens) and int(tokens.max()) >= len(tok):
        raise DataError(f"the shards in {corpus_dir} hold ids beyond the vocabulary of "
                        f"{tokenizer_dir} ({len(tok)} tokens); they were not made with it")
    run_hash = config_hash(model_cfg, train_cfg, {"seed": seed, "vocab": len(tok),
                                                   "corpus": _sha256(tokens.tobytes())})
    if (log := _completed(out, run_hash)) is not None:
        return log
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    device = _device()
    tokens_per_step = train_cfg.batch_size * model_cfg.context
    steps = math.ceil(train_cfg.tokens / tokens_per_step)

    out.mkdir(parents=True, exist_ok=True)
    ckpt = _find_checkpoint(out, run_hash)
    state = {"config_hash": run_hash, "step": 0, "loss_curve": [], "wall_time_s": 0.0}
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="sdpa")
    else:
        model = build_model(model_cfg, len(tok), seed, eos_id=tok.eos_token_id,
                            pad_id=tok.pad_token_id, bos_id=tok.bos_token_id)
    model.to(device).train()
    optimizer = _optimizer(model, train_cfg, train_cfg.lr)
    if ckpt is not None:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device))
    n_params = count_parameters(model)
    log_every = max(1, steps // LOSS_POINTS)
    batches = PackedBatches(tokens, train_cfg.batch_size, model_cfg.context, seed,
                            regions=schedule_regions(corpus_dir, len(tokens)), steps=steps)

    start, loss_value = state["step"], float("nan")
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="pretrain", unit="step")
    with bar:
        for step in range(start, steps):
            window = torch.from_numpy(batches[step]).to(device)
            loss_value = _train_step(model, optimizer, _lr_at(step, steps, train_cfg),
                                     train_cfg.grad_clip, window[:, :-1], window[:, 1:])
            done = step + 1
            if step % log_every == 0 or done == steps:
                state["loss_curve"].append([done, round(loss_value, 4)])
                speed = (done - start) * tokens_per_step / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{speed:,.0f}")
            bar.update(1)
            if stop_after is not None and done >= stop_after and done < steps:
                return {"config_hash": run_hash, "complete": False, "stopped_at": done,
                        "loss_curve": state["loss_curve"]}
            every = train_cfg.checkpoint_every
            if every and done % every == 0 and done < steps:
                elapsed = time.perf_counter() - t0
                _save_checkpoint(out, model, optimizer, {**state, "step": done,
                                 "wall_time_s": state["wall_time_s"] + elapsed})

    elapsed = time.perf_counter() - t0
    trained_steps = steps - start
    log = {
        "config_hash": run_hash,
        "model_config": to_dict(model_cfg),
        "train_config": to_dict(train_cfg),
        "seed": seed,
        "complete": True,
        "steps": steps,
        "resumed_from_step": start,
        "tokens_seen": steps * tokens_per_step,
        "corpus_tokens": int(len(tokens)),
        "vocab_size": len(tok),
        "parameters": n_params,
        "flops": flops_per_token(model_cfg, n_params) * steps * tokens_per_step,
        "final_loss": loss_value,
        "loss_curve": state["loss_curve"],
        "tokens_per_second": trained_steps * tokens_per_step / elapsed if trained_steps else None,
        "wall_time_s": state["wall_time_s"] + elapsed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    _save_model_folder(model, tok, out, log)
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return log


# ----------------------------------------------------------------------------- finetuning


def finetune(init_dir, texts: list[str], out_dir, train_cfg: TrainConfig, seed: int,
             progress: bool = True, *, epochs: int | None = None, lr: float | None = None,
             batch_size: int | None = None) -> dict:
    """Supervised finetuning of the model in `init_dir` on "User: ...\\nAssistant: ..." texts.

    Loss on the response only (after the first "\\nAssistant:") and its eos. Warmup then constant
    lr. `init_dir` is only read; the result is a new HF folder in `out_dir`.
    """
    with _hf_bars(progress):
        return _finetune(Path(init_dir), texts, Path(out_dir), train_cfg, seed, progress,
                         epochs, lr, batch_size)


def _finetune(init, texts, out, train_cfg, seed, progress, epochs, lr, batch_size):
    if not (init / "config.json").is_file():
        raise DataError(f"no model in {init} (no config.json); pretrain one first")
    epochs = train_cfg.sft_epochs if epochs is None else epochs
    lr = train_cfg.sft_lr if lr is None else lr
    batch_size = train_cfg.sft_batch_size if batch_size is None else batch_size
    weights = sorted(init.glob("*.safetensors"))
    run_hash = config_hash(train_cfg, {
        "seed": seed, "epochs": epochs, "lr": lr, "batch_size": batch_size,
        "texts": _sha256("\x00".join(texts).encode()),
        "init": _sha256(b"".join(f.read_bytes() for f in weights)),
    })
    if (log := _completed(out, run_hash)) is not None:
        return log
    if not texts:
        raise DataError("finetuning needs at least one text")
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    device = _device()
    tok = load_tokenizer(init)
    model = AutoModelForCausalLM.from_pretrained(init, attn_implementation="sdpa").to(device)
    model.train()
    context = model.config.max_position_embeddings
    examples = [sft_example(tok, t, context) for t in texts]
    truncated = sum(long for *_, long in examples)
    examples = [(ids, labels) for ids, labels, _ in examples]
    optimizer = _optimizer(model, train_cfg, lr)
    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(len(examples) / batch_size)
    steps, warmup = epochs * per_epoch, max(1, min(20, epochs * per_epoch // 10))

    losses, epoch_losses, step, t0 = [], [], 0, time.perf_counter()
    with tqdm(total=steps, disable=not progress, desc="finetune", unit="step") as bar:
        for _ in range(epochs):
            order, epoch_sum = rng.permutation(len(examples)), 0.0
            for b in range(per_epoch):
                ids, labels, mask = (t.to(device) for t in collate_sft(
                    [examples[i] for i in order[b * batch_size : (b + 1) * batch_size]],
                    tok.pad_token_id))
                losses.append(_train_step(model, optimizer, lr * min(1.0, (step + 1) / warmup),
                                          train_cfg.grad_clip, ids[:, :-1], labels[:, 1:],
                                          mask[:, :-1]))
                epoch_sum += losses[-1]
                step += 1
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update(1)
            epoch_losses.append(round(epoch_sum / per_epoch, 4))

    log = {
        "config_hash": run_hash,
        "train_config": to_dict(train_cfg),
        "init_dir": str(init),
        "seed": seed,
        "complete": True,
        "examples": len(examples),
        "truncated": truncated,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "steps": steps,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "epoch_losses": epoch_losses,
        "parameters": count_parameters(model),
        "wall_time_s": time.perf_counter() - t0,
        "device": str(device),
    }
    model.eval()
    _save_model_folder(model, tok, out, log)
    return log
