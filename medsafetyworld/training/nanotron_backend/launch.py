"""Pretraining with nanotron: write its config, run torchrun over entry.py, convert the result.

The output folder ends as the built-in trainer's does: a Hugging Face LlamaForCausalLM with our
tokenizer and a `train_log.json`, written last (its presence means the folder is complete). While
training, `out_dir/nanotron/` holds nanotron's config, checkpoints and logs; a rerun resumes from
its newest checkpoint when the run hash matches (else it starts over), and the folder is removed
once the model is converted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

import torch

from medsafetyworld.config import ModelConfig, TrainConfig, config_hash, to_dict
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.errors import ConfigError, DataError, MSWError
from medsafetyworld.storage import write_json_atomic
from medsafetyworld.training.data import cached_token_stream
from medsafetyworld.training.model import flops_per_token
from medsafetyworld.training.nanotron_backend.config import nanotron_config, train_steps, write_config
from medsafetyworld.training.nanotron_backend.convert import LATEST, convert_checkpoint

logger = logging.getLogger("medsafetyworld")

NANOTRON_COMMIT = "c737f00f01e65bc44e7624695351da7ed756ec31"
INSTALL_HINT = (
    f'pip install --no-deps "nanotron @ git+https://github.com/huggingface/nanotron@{NANOTRON_COMMIT}" '
    "&& pip install dacite datasets psutil triton"
)
LOG_FILE, WORK = "train_log.json", "nanotron"
ENTRY = "medsafetyworld.training.nanotron_backend.entry"
_PROBE = f"from {ENTRY} import import_nanotron; import_nanotron()"


def nanotron_available() -> tuple[bool, str]:
    """(True, "") when nanotron can train here: installed, importable (with the flash_attn shim if
    flash-attn is missing) and with a CUDA GPU; else (False, why and how to fix it)."""
    if importlib.util.find_spec("nanotron") is None:
        return False, f"nanotron is not installed; install it from source: {INSTALL_HINT}"
    if not torch.cuda.is_available():
        return False, "nanotron trains on CUDA GPUs (NCCL) only, and no GPU is visible"
    # In a child process, so that the shim never lands in this one's sys.path.
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=False)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"nanotron does not import ({last}); install the pinned commit: {INSTALL_HINT}"
    return True, ""


def _run(command: list[str], log_path: Path, progress: bool) -> None:
    """Run `command`, its output into log_path (and to stdout with progress); a failure raises."""
    tail: deque[str] = deque(maxlen=20)
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    with open(log_path, "a") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, env=env) as proc:
        for line in proc.stdout:
            log.write(line)
            tail.append(line)
            if progress:
                sys.stdout.write(line)
    if proc.returncode:
        raise MSWError(f"nanotron training failed (exit code {proc.returncode}); full log: {log_path}\n"
                       + "".join(tail))


def _losses(path: Path) -> list[list[float]]:
    """[step, loss] points, the newest value of each step (a resumed run retrains a few steps)."""
    if not path.is_file():
        return []
    points = {}
    for line in path.read_text().splitlines():
        step, loss = json.loads(line)
        points[step] = loss
    return [[step, points[step]] for step in sorted(points)]


def _finished_step(checkpoints: Path) -> int:
    latest = checkpoints / LATEST
    return int(latest.read_text().strip()) if latest.is_file() else 0


def train_nanotron(corpus_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   model_cfg: ModelConfig, train_cfg: TrainConfig, seed: int, *, nproc: int | None = None,
                   micro_batch_size: int | None = None, steps: int | None = None,
                   progress: bool = True) -> dict:
    """Pretrain with nanotron on `nproc` GPUs of this machine (default: all visible) and write a HF
    model folder to `out_dir`; returns (and writes) the train log.

    Same model, data order, optimizer and schedule as `trainer.pretrain` (config.py lists what
    differs). `micro_batch_size` splits each GPU's share of the global batch into micro batches
    (default: none); `steps` trains that many steps instead of the token budget's (benchmarks).
    Returns the existing log when `out_dir` already holds this finished run.
    """
    ok, why = nanotron_available()
    if not ok:
        raise ConfigError(f"the nanotron backend cannot run: {why}")
    corpus_dir, tokenizer_dir, out = Path(corpus_dir), Path(tokenizer_dir), Path(out_dir)
    tok = load_tokenizer(tokenizer_dir)
    tokens = cached_token_stream(corpus_dir, tok.eos_token_id)  # written once here; every rank maps the file
    if len(tokens) and int(tokens.max()) >= len(tok):
        raise DataError(f"the shards in {corpus_dir} hold ids beyond the vocabulary of "
                        f"{tokenizer_dir} ({len(tok)} tokens); they were not made with it")
    corpus_tokens, corpus_hash = len(tokens), hashlib.sha256(memoryview(tokens)).hexdigest()[:16]
    del tokens
    gpus = torch.cuda.device_count()
    nproc = gpus if nproc is None else nproc
    if not 1 <= nproc <= gpus:
        raise ConfigError(f"{nproc} nanotron processes need as many GPUs; {gpus} are visible")
    steps = train_steps(model_cfg, train_cfg) if steps is None else steps
    run_hash = config_hash(model_cfg, train_cfg, {
        "backend": "nanotron", "nanotron": NANOTRON_COMMIT, "seed": seed, "vocab": len(tok),
        "corpus": corpus_hash, "nproc": nproc, "micro_batch_size": micro_batch_size, "steps": steps})
    log_path = out / LOG_FILE
    if log_path.is_file():
        log = json.loads(log_path.read_text())
        if log.get("config_hash") == run_hash:
            return log
        logger.warning("%s holds a model of another config (%s, now %s); retraining it",
                       out, log.get("config_hash"), run_hash)
        log_path.unlink()

    work = out / WORK
    run_file = work / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("config_hash") != run_hash:
        logger.warning("%s belongs to another config; starting over", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, {"config_hash": run_hash})
    checkpoints = work / "checkpoints"
    config = nanotron_config(model_cfg, train_cfg, len(tok), seed=seed, checkpoints_path=checkpoints,
                             tokenizer_path=tokenizer_dir, dp=nproc, micro_batch_size=micro_batch_size,
                             steps=steps, eos_id=tok.eos_token_id, bos_id=tok.bos_token_id)
    config_path = write_config(work / "config.yaml", config)
    metrics_path, losses_path = work / "metrics.json", work / "losses.jsonl"
    if _finished_step(checkpoints) < steps:  # nanotron refuses to resume a finished run
        metrics_path.unlink(missing_ok=True)
        _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
              "-m", ENTRY, str(config_path), "--corpus", str(corpus_dir), "--metrics", str(metrics_path),
              "--losses", str(losses_path)], work / "train.log", progress)
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}

    hf = convert_checkpoint(checkpoints, tokenizer_dir, work / "hf")
    for f in hf.iterdir():
        os.replace(f, out / f.name)
    tokens_per_step = train_cfg.batch_size * model_cfg.context
    n_params = metrics.get("parameters")
    loss_curve = _losses(losses_path)
    log = {
        "config_hash": run_hash,
        "backend": "nanotron",
        "nanotron_commit": NANOTRON_COMMIT,
        "model_config": to_dict(model_cfg),
        "train_config": to_dict(train_cfg),
        "seed": seed,
        "complete": True,
        "steps": steps,
        "resumed_from_step": metrics.get("resumed_from_step"),
        "tokens_seen": steps * tokens_per_step,
        "corpus_tokens": corpus_tokens,
        "vocab_size": len(tok),
        "parameters": n_params,
        "flops": flops_per_token(model_cfg, n_params) * steps * tokens_per_step if n_params else None,
        "final_loss": metrics.get("final_loss", loss_curve[-1][1] if loss_curve else None),
        "loss_curve": loss_curve,
        "tokens_per_second": metrics.get("tokens_per_second"),
        "wall_time_s": metrics.get("wall_time_s"),
        "peak_memory_bytes": metrics.get("peak_memory_bytes"),
        "device": metrics.get("device"),
        "nproc": nproc,
        "micro_batch_size": metrics.get("micro_batch_size"),
        "grad_accumulation": metrics.get("grad_accumulation"),
        "torch_version": torch.__version__,
        "nanotron_config": config,
    }
    write_json_atomic(log_path, log)
    shutil.rmtree(work)
    return log

