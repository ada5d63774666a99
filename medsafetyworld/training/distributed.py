"""Data parallelism for the built-in trainer: one process per device, launched by `torchrun`.

`torchrun --nproc-per-node N -m medsafetyworld.cli train ...` starts N copies of the trainer;
each finds its rank in the environment torchrun sets, joins the process group (NCCL on GPUs,
gloo on CPUs) and trains one slice of every global batch:

- `ddp`: every rank holds the whole model, gradients are averaged (DistributedDataParallel);
- `fsdp`: parameters, gradients and optimizer state are sharded over the ranks (FSDP2's
  `fully_shard`, one unit per decoder layer), for models that do not fit one device.

The global batch stays `TrainConfig.batch_size` whatever the number of ranks: rank r of W takes
rows [r*B/W, (r+1)*B/W) of step i's batch, which is a pure function of (seed, step). So a run on W
ranks computes the same loss as a run on one process (up to the order of floating-point sums),
and a checkpoint, which holds the full (unsharded) weights and optimizer state, resumes on any
number of ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from medsafetyworld.errors import ConfigError

PARALLEL_MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank, world size, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch."""
        if batch_size % self.world_size:
            raise ConfigError(f"the global batch ({batch_size} sequences) does not split evenly over "
                              f"{self.world_size} processes; use a number of processes that divides it")
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group():
    """Join torchrun's process group for the duration of the block (no-op outside torchrun).

    Yields the Ranks. A group opened here is closed here, so the caller continues as a plain
    single process afterwards (rank 0 goes on to post-training alone).
    """
    if not launched_by_torchrun():
        yield Ranks()
        return
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():  # somebody else owns the group; use it and leave it open
        yield ranks
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                            device_id=ranks.device() if cuda else None)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, mode: str) -> torch.nn.Module:
    """The model as this rank trains it: itself on one process, else DDP or FSDP2."""
    if mode not in PARALLEL_MODES:
        raise ConfigError(f"unknown parallel mode {mode!r}; choose one of {', '.join(PARALLEL_MODES)}")
    if not ranks.distributed:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ranks.local_rank] if ranks.device().type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError(f"--parallel fsdp needs torch >= 2.6 (FSDP2); this is {torch.__version__}") from None
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)  # the rest: embeddings (tied to the head), final norm
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself under torch.compile's and DDP's wrappers (FSDP2 wraps in place)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict:
    """The unsharded weights, on CPU. A collective: every rank calls it; with FSDP only rank 0
    receives the tensors."""
    return get_model_state_dict(unwrap(model), options=_FULL)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The unsharded model and optimizer state (keyed by parameter name), on CPU; a collective."""
    return full_model_state(model), get_optimizer_state_dict(unwrap(model), optimizer, options=_FULL)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state written by `full_state` (any number of ranks), or a single-process
    `optimizer.state_dict()` (keyed by parameter index, as older checkpoints were)."""
    if all(isinstance(k, int) for k in state.get("state", {})):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(unwrap(model), optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


def broadcast(obj, ranks: Ranks):
    """Rank 0's `obj` on every rank."""
    if not ranks.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    if ranks.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
        value /= ranks.world_size
    return value


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()
