"""The per-GPU training process of the nanotron backend, started by torchrun (launch.py does it):

    torchrun --nproc-per-node N -m medsafetyworld.training.nanotron_backend.entry CONFIG \\
        --corpus CORPUS_DIR --metrics METRICS_JSON --losses LOSSES_JSONL

Each process puts the flash_attn shim in place if flash-attn is missing, fixes nanotron's
weight-decay grouping (patches.py), builds nanotron's DistributedTrainer from CONFIG, and trains
on our token shards through our dataloader (nanotron's `dataset: null` route). World rank 0 appends
each logged loss to LOSSES_JSONL as it goes (so a resumed run keeps the curve of the run before)
and writes METRICS_JSON, atomically, when training ends: speed, peak memory, parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from medsafetyworld.storage import write_json_atomic
from medsafetyworld.training.data import PackedBatches, cached_token_stream, schedule_regions
from medsafetyworld.training.nanotron_backend.config import STAGE
from medsafetyworld.training.nanotron_backend.dataloader import MicroBatches
from medsafetyworld.training.nanotron_backend.flash_attn_shim import install_flash_attn_shim
from medsafetyworld.training.nanotron_backend.patches import apply_patches

WARMUP_STEPS = 2  # steps left out of the speed measurement (CUDA and allocator warm-up)


def import_nanotron():
    """nanotron's DistributedTrainer, importable without flash-attn; with our patch applied."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    install_flash_attn_shim()
    apply_patches()
    from nanotron.trainer import DistributedTrainer

    return DistributedTrainer


def _trainer_class():
    import torch

    class Trainer(import_nanotron()):
        """nanotron's trainer, recording the loss curve and the speed of the timed steps."""

        def configure_records(self, losses: Path, is_main: bool) -> None:
            self.losses_path, self.is_main = losses, is_main
            self.final_loss, self.t0, self.t1 = None, None, None
            remaining = self.config.tokens.train_steps - self.metadata.last_train_step
            self.timed_from = self.metadata.last_train_step + 1 + min(WARMUP_STEPS, max(0, remaining - 1))

        def _record(self, step: int, loss: float) -> None:
            if self.is_main:
                with open(self.losses_path, "a") as f:
                    f.write(json.dumps([step, round(loss, 4)]) + "\n")

        def training_step(self, dataloader):
            if self.iteration_step == self.timed_from:
                torch.cuda.synchronize()
                self.t0 = time.perf_counter()
            outputs, loss_avg, z_loss_avg = super().training_step(dataloader)
            if self.iteration_step == self.config.tokens.train_steps:
                torch.cuda.synchronize()
                self.t1 = time.perf_counter()
                self.final_loss = loss_avg.item()
                if (self.iteration_step - 1) % self.config.logging.iteration_step_info_interval:
                    self._record(self.iteration_step, self.final_loss)  # the last point, if not logged
            return outputs, loss_avg, z_loss_avg

        def train_step_logs(self, outputs, loss_avg, z_loss_avg) -> None:
            super().train_step_logs(outputs, loss_avg, z_loss_avg)
            self._record(self.iteration_step, loss_avg.item())

    return Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="nanotron YAML config written by config.write_config")
    parser.add_argument("--corpus", required=True, help="folder of our corpus shards")
    parser.add_argument("--metrics", required=True, help="JSON file world rank 0 writes at the end")
    parser.add_argument("--losses", required=True, help="JSON-lines file of [step, loss] world rank 0 appends to")
    args = parser.parse_args(argv)

    import torch
    from nanotron import distributed as dist

    trainer = _trainer_class()(args.config)
    config, context = trainer.config, trainer.parallel_context
    if config.parallelism.tp != 1 or config.parallelism.pp != 1:
        raise SystemExit("this entry feeds data-parallel runs only (tp = pp = 1)")
    is_main = dist.get_rank(context.world_pg) == 0
    trainer.configure_records(Path(args.losses), is_main)
    started = trainer.metadata.last_train_step

    tokens = cached_token_stream(args.corpus, config.model.model_config.eos_token_id)
    steps = config.tokens.train_steps
    batches = PackedBatches(tokens, trainer.global_batch_size, trainer.sequence_length,
                            config.data_stages[0].data.seed,
                            regions=schedule_regions(args.corpus, len(tokens)), steps=steps)
    loader = MicroBatches(batches, dist.get_rank(context.dp_pg), context.dp_pg.size(), trainer.micro_batch_size,
                          trainer.n_micro_batches_per_batch, start_step=started, name=Path(args.corpus).name)
    wall = time.perf_counter()
    trainer.train({STAGE: loader})
    if not is_main:
        return
    timed = steps - trainer.timed_from + 1
    seconds = trainer.t1 - trainer.t0 if trainer.t0 is not None else None
    write_json_atomic(args.metrics, {
        "steps": steps,
        "resumed_from_step": started,
        "final_loss": trainer.final_loss,
        "parameters": int(trainer.num_params["total"]),
        "timed_steps": timed,
        "timed_seconds": seconds,
        "tokens_per_second": timed * trainer.global_batch_size * trainer.sequence_length / seconds if seconds else None,
        "wall_time_s": time.perf_counter() - wall,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(),
        "device": torch.cuda.get_device_name(),
        "world_size": context.world_pg.size(),
        "micro_batch_size": trainer.micro_batch_size,
        "grad_accumulation": trainer.n_micro_batches_per_batch,
    })


if __name__ == "__main__":
    main()
