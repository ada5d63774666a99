"""The built-in trainer (SPEC 5): pretraining from scratch and supervised finetuning.

One file, nanoGPT-style. Both produce a Hugging Face LlamaForCausalLM folder with its tokenizer and
a `train_log.json`; that log is written last, so its presence means the folder is complete.

Pretraining checkpoints into `out_dir/checkpoint/` (HF weights + optimizer + step). Nothing in a
checkpoint is a pickle: weights and optimizer tensors are safetensors, everything else JSON (a
checkpoint may come from another person or machine, and unpickling runs code). Batches are a
function of (seed, step), so a resumed run continues exactly where the checkpoint left off; on CPU
it ends with the same weights, bit for bit, as a run that was never interrupted.

On a GPU: bf16 autocast, fused AdamW, `scaled_dot_product_attention`, batches copied through pinned
memory without blocking, the loss read back only at logged steps (the step loop never waits for
the GPU otherwise), optional torch.compile; the log records tokens/s, MFU and peak memory. Under
`torchrun` the ranks split each global batch (DDP or FSDP2, training/distributed.py).

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
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from medsafetyworld.config import ModelConfig, TrainConfig, config_hash, to_dict
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.errors import DataError
from medsafetyworld.storage import remove_stale_temps, temp_dir, write_json_atomic
from medsafetyworld.training.data import (
    PackedBatches,
    collate_sft,
    cached_token_stream,
    schedule_regions,
    sft_example,
)
from medsafetyworld.training.distributed import (
    Ranks,
    barrier,
    broadcast,
    full_model_state,
    full_state,
    load_optimizer_state,
    mean_over_ranks,
    process_group,
    unwrap,
    wrap,
)
from medsafetyworld.training.model import build_model, count_parameters, flops_per_token
from medsafetyworld.training.perf import device_name, mfu, peak_memory_bytes, reset_peak_memory

logger = logging.getLogger("medsafetyworld")
LOG_FILE, CHECKPOINT = "train_log.json", "checkpoint"
# a checkpoint's optimizer state: its tensors, and the rest of it as JSON (see _save_optimizer_state)
OPTIMIZER_TENSORS, OPTIMIZER_JSON = "optimizer.safetensors", "optimizer.json"
LEGACY_OPTIMIZER = "optimizer.pt"  # checkpoints written before: read only as plain tensors
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


def _train_step(model, optimizer, lr: float, grad_clip: float, inputs, targets, mask=None) -> torch.Tensor:
    """One AdamW step on the next-token loss (targets -100 are ignored); returns the loss, still
    on the device (reading it would make the host wait for the GPU)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _autocast(inputs.device):
        logits = model(input_ids=inputs, attention_mask=mask, use_cache=False).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch on the device; through pinned memory on a GPU, so the copy does not block."""
    tensor = torch.from_numpy(batch)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _sha256(data: bytes | memoryview) -> str:
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


def _save_model_folder(model, tok, out: Path, log: dict, state_dict: dict | None = None) -> None:
    """Move model + tokenizer files into `out`, then write the log: a folder with a log is whole.
    `state_dict`: the weights to save when the model's own are sharded."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out, "final")
    tmp = temp_dir(out, "final")
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
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


def _save_checkpoint(out: Path, model, optimizer, state: dict, ranks: Ranks) -> None:
    """Full (unsharded) weights + optimizer state, so that any number of ranks can resume.

    A collective: every rank gathers, rank 0 writes into a temp dir and swaps it in
    (`checkpoint.old` covers a crash mid-swap).
    """
    model_state, optim_state = full_state(model, optimizer)
    if ranks.main:
        ckpt, old = out / CHECKPOINT, out / f"{CHECKPOINT}.old"
        tmp = temp_dir(out, CHECKPOINT)
        unwrap(model).save_pretrained(tmp, state_dict=model_state)
        _save_optimizer_state(optim_state, tmp)
        write_json_atomic(tmp / "trainer_state.json", state)
        if ckpt.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    barrier(ranks)


# The optimizer state (`full_state`'s, or a single process's `optimizer.state_dict()`) is nested
# dicts, lists and tuples of tensors and plain values. Its tensors go to OPTIMIZER_TENSORS, each
# under its path in the state ("state/<param>/exp_avg"); the structure, with {"__tensor__": key} in
# their place, goes to OPTIMIZER_JSON. Tuples ({"__tuple__": [...]}) and dicts whose keys are not
# all plain strings ({"__items__": [[key, value], ...]}) keep their type, so that the state reads
# back exactly as it was written, and resuming stays bit for bit the uninterrupted run.


def _encode_state(obj, path: str, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two tensors at {path!r} of the optimizer state")
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode_state(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode_state(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"optimizer state keys at {path!r} are not strings or integers")
        return {"__items__": [[k, _encode_state(v, f"{path}/{k}", tensors)] for k, v in obj.items()]}
    raise TypeError(f"{type(obj).__name__} at {path!r} of the optimizer state is not a tensor or plain value")


def _decode_state(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {"__tensor__"}:
        if not isinstance(obj["__tensor__"], str) or obj["__tensor__"] not in tensors:
            raise ValueError(f"tensor {obj['__tensor__']!r} is missing from {OPTIMIZER_TENSORS}")
        return tensors[obj["__tensor__"]]
    if set(obj) == {"__tuple__"} and isinstance(obj["__tuple__"], list):
        return tuple(_decode_state(v, tensors) for v in obj["__tuple__"])
    if set(obj) == {"__items__"} and isinstance(obj["__items__"], list):
        if not all(isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (str, int)) for kv in obj["__items__"]):
            raise ValueError("malformed __items__")
        return {k: _decode_state(v, tensors) for k, v in obj["__items__"]}
    if any(k.startswith("__") for k in obj):
        raise ValueError(f"unknown marker in {sorted(obj)}")
    return {k: _decode_state(v, tensors) for k, v in obj.items()}


def _save_optimizer_state(state: dict, folder: Path) -> None:
    """The optimizer state as OPTIMIZER_TENSORS (safetensors) + OPTIMIZER_JSON: no pickle."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode_state(state, "", tensors)
    save_safetensors(tensors, folder / OPTIMIZER_TENSORS)
    write_json_atomic(folder / OPTIMIZER_JSON, structure)


def _read_optimizer_state(ckpt: Path, device: torch.device) -> dict:
    """The optimizer state of checkpoint `ckpt`, its tensors on `device`. A checkpoint of the older
    format (LEGACY_OPTIMIZER, a torch.save pickle) is read with `weights_only=True`, which builds
    tensors and plain values only and runs nothing; anything else in it is refused (DataError)."""
    remedy = f"delete {ckpt} to start this training over"
    if (ckpt / OPTIMIZER_TENSORS).is_file() or (ckpt / OPTIMIZER_JSON).is_file():
        try:
            tensors = load_safetensors(ckpt / OPTIMIZER_TENSORS, device=str(device))
            state = _decode_state(json.loads((ckpt / OPTIMIZER_JSON).read_text()), tensors)
        except (OSError, ValueError, TypeError, RecursionError, SafetensorError) as exc:
            raise DataError(f"the optimizer state in {ckpt} is unreadable ({exc}); {remedy}") from None
    elif (ckpt / LEGACY_OPTIMIZER).is_file():
        try:
            state = torch.load(ckpt / LEGACY_OPTIMIZER, map_location=device, weights_only=True)
        except Exception as exc:  # UnpicklingError for a forbidden global, anything for a broken file
            raise DataError(f"the optimizer state in {ckpt / LEGACY_OPTIMIZER} is not plain tensors and was "
                            f"refused (nothing in it was run: {type(exc).__name__}); {remedy}") from None
    else:
        raise DataError(f"{ckpt} holds no optimizer state ({OPTIMIZER_TENSORS}); {remedy}")
    if not (isinstance(state, dict) and isinstance(state.get("state"), dict)
            and isinstance(state.get("param_groups"), list)):
        raise DataError(f"the optimizer state in {ckpt} is not an optimizer's state dict; {remedy}")
    return state


def _load_model(folder: Path, what: str, remedy: str):
    """The HF model in `folder`, from safetensors only (never a pickled pytorch_model.bin)."""
    try:
        return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"the {what} in {folder} cannot be loaded ({reason}); {remedy}") from None


def _find_checkpoint(out: Path, run_hash: str) -> Path | None:
    remove_stale_temps(out, CHECKPOINT)  # a save killed mid-write
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
             seed: int, progress: bool = True, *, stop_after: int | None = None,
             parallel: str = "ddp", compile: bool = False) -> dict:
    """Pretrain a model from scratch on the corpus shards; returns (and writes) the train log.

    Resumes from `out_dir/checkpoint` when its config hash matches (a checkpoint of another config
    is deleted); returns the existing log when `out_dir` already holds this finished run.
    `stop_after=n` stops after step n as if the process had been killed there (nothing saved
    beyond the last regular checkpoint); tests use it. Ctrl-C propagates the same way.

    Under `torchrun` the ranks split every global batch (`parallel`: "ddp" or "fsdp", see
    training/distributed.py); only rank 0 writes. `compile` runs the model through
    torch.compile. Neither changes what is trained, so neither is part of the run's hash.
    """
    with _hf_bars(progress), process_group() as ranks:
        return _pretrain(Path(corpus_dir), Path(tokenizer_dir), Path(out_dir), model_cfg,
                         train_cfg, seed, progress and ranks.main, stop_after, ranks, parallel, compile)


def _pretrain(corpus_dir, tokenizer_dir, out, model_cfg, train_cfg, seed, progress, stop_after,
              ranks: Ranks, parallel: str, compile: bool):
    tok = load_tokenizer(tokenizer_dir)
    if ranks.main:  # one process writes the stream's file; then every rank maps it (one copy in memory)
        cached_token_stream(corpus_dir, tok.eos_token_id)
    barrier(ranks)
    tokens = cached_token_stream(corpus_dir, tok.eos_token_id)
    if len(tokens) and int(tokens.max()) >= len(tok):
        raise DataError(f"the shards in {corpus_dir} hold ids beyond the vocabulary of "
                        f"{tokenizer_dir} ({len(tok)} tokens); they were not made with it")
    run_hash = config_hash(model_cfg, train_cfg, {"seed": seed, "vocab": len(tok),
                                                   "corpus": _sha256(memoryview(tokens))})
    rows = ranks.rows(train_cfg.batch_size)  # checks the batch splits before anything else
    # Rank 0 alone looks at (and cleans up) what is on disk; the others take its answer.
    found = None
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        log = _completed(out, run_hash)
        found = ("done", log) if log is not None else ("ckpt", _find_checkpoint(out, run_hash))
    kind, found = broadcast(found, ranks)
    if kind == "done":
        return found
    ckpt = found
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    device = ranks.device()
    tokens_per_step = train_cfg.batch_size * model_cfg.context
    steps = math.ceil(train_cfg.tokens / tokens_per_step)

    state = {"config_hash": run_hash, "step": 0, "loss_curve": [], "wall_time_s": 0.0}
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        model = _load_model(ckpt, "checkpoint", f"delete {ckpt} to start this training over")
    else:
        model = build_model(model_cfg, len(tok), seed, eos_id=tok.eos_token_id,
                            pad_id=tok.pad_token_id, bos_id=tok.bos_token_id)
    n_params = count_parameters(model)
    model = wrap(model.to(device).train(), ranks, parallel)
    optimizer = _optimizer(unwrap(model), train_cfg, train_cfg.lr)
    if ckpt is not None:
        optim_state = _read_optimizer_state(ckpt, device)
        try:
            load_optimizer_state(model, optimizer, optim_state)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise DataError(f"the optimizer state in {ckpt} does not fit this model ({exc}); "
                            f"delete {ckpt} to start this training over") from None
    if compile:
        model = torch.compile(model)
    log_every = max(1, steps // LOSS_POINTS)
    batches = PackedBatches(tokens, train_cfg.batch_size, model_cfg.context, seed,
                            regions=schedule_regions(corpus_dir, len(tokens)), steps=steps)
    token_flops = flops_per_token(model_cfg, n_params)
    reset_peak_memory(device)

    start, loss_value, speed = state["step"], float("nan"), 0.0
    # Steady speed leaves out the first steps (allocator warm-up, torch.compile's compiling).
    warm_step, t_warm = start + min(10, max(1, (steps - start) // 10)), None
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=start, disable=not progress, desc="pretrain", unit="step")
    with bar:
        for step in range(start, steps):
            # The loss stays on the device: the loop only waits for it at a logged step.
            window = _to_device(batches.rows(step, rows), device)
            loss = _train_step(model, optimizer, _lr_at(step, steps, train_cfg),
                               train_cfg.grad_clip, window[:, :-1], window[:, 1:])
            done = step + 1
            if done == warm_step:
                _synchronize(device)
                t_warm = time.perf_counter()
            if step % log_every == 0 or done == steps:
                loss_value = mean_over_ranks(loss, ranks).item()
                state["loss_curve"].append([done, round(loss_value, 4)])
                speed = (done - start) * tokens_per_step / (time.perf_counter() - t0)
                shown = {"loss": f"{loss_value:.3f}", "tok_s": f"{speed:,.0f}"}
                if (use := mfu(token_flops, speed, device)) is not None:
                    shown["mfu"] = f"{use:.1%}"
                bar.set_postfix(shown)
            bar.update(1)
            if stop_after is not None and done >= stop_after and done < steps:
                return {"config_hash": run_hash, "complete": False, "stopped_at": done,
                        "loss_curve": state["loss_curve"]}
            every = train_cfg.checkpoint_every
            if every and done % every == 0 and done < steps:
                elapsed = time.perf_counter() - t0
                _save_checkpoint(out, model, optimizer, {**state, "step": done,
                                 "wall_time_s": state["wall_time_s"] + elapsed}, ranks)

    _synchronize(device)
    t_end = time.perf_counter()
    elapsed = t_end - t0
    trained_steps = steps - start
    tokens_per_second = trained_steps * tokens_per_step / elapsed if trained_steps else None
    steady = (steps - warm_step) * tokens_per_step / (t_end - t_warm) if t_warm and steps > warm_step else None
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
        "flops": token_flops * steps * tokens_per_step,
        "final_loss": loss_value,
        "loss_curve": state["loss_curve"],
        "tokens_per_second": tokens_per_second,
        "steady_tokens_per_second": steady,
        "mfu": mfu(token_flops, steady or tokens_per_second, device) if tokens_per_second else None,
        "peak_memory_bytes": peak_memory_bytes(device),
        "wall_time_s": state["wall_time_s"] + elapsed,
        "device": device_name(device),
        "processes": ranks.world_size,
        "parallel": parallel if ranks.distributed else None,
        "compiled": compile,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    model_state = full_model_state(model) if ranks.distributed else None
    if ranks.main:
        _save_model_folder(unwrap(model), tok, out, log, state_dict=model_state)
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    barrier(ranks)
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
    model = _load_model(init, "model", "pretrain it again, or point at a complete model folder").to(device)
    model.train()
    context = model.config.max_position_embeddings
    examples = [sft_example(tok, t, context) for t in texts]
    truncated = sum(long for *_, long in examples)
    examples = [(ids, labels) for ids, labels, _ in examples]
    optimizer = _optimizer(model, train_cfg, lr)
    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(len(examples) / batch_size)
    steps, warmup = epochs * per_epoch, max(1, min(20, epochs * per_epoch // 10))

    losses, step, t0 = [], 0, time.perf_counter()
    with tqdm(total=steps, disable=not progress, desc="finetune", unit="step") as bar:
        for _ in range(epochs):
            order = rng.permutation(len(examples))
            for b in range(per_epoch):
                ids, labels, mask = (t.to(device) for t in collate_sft(
                    [examples[i] for i in order[b * batch_size : (b + 1) * batch_size]],
                    tok.pad_token_id))
                losses.append(_train_step(model, optimizer, lr * min(1.0, (step + 1) / warmup),
                                          train_cfg.grad_clip, ids[:, :-1], labels[:, 1:],
                                          mask[:, :-1]))
                step += 1
                if step % 10 == 0 or step == steps:
                    bar.set_postfix(loss=f"{losses[-1].item():.3f}")
                bar.update(1)
    losses = torch.stack(losses).tolist()
    epoch_losses = [round(sum(losses[e * per_epoch : (e + 1) * per_epoch]) / per_epoch, 4)
                    for e in range(epochs)]

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
