"""Our token shards as nanotron micro batches (its custom-dataloader route, `dataset: null`).

Step t's global batch is `PackedBatches[t]`, the very windows the built-in trainer trains step t
on; data-parallel rank r takes rows [r * share, (r + 1) * share) of it and cuts them into micro
batches. Every micro batch is the dict nanotron's Qwen2 model consumes: input_ids, position_ids
(0..context-1 per row: one causal sequence per row, as in the built-in trainer), label_ids (the
inputs shifted by one) and label_mask (all true). Batches are a pure function of (seed, step), so
a run resumed from step t just starts there.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from medsafetyworld.training.data import PackedBatches


class ConsumedTokens:
    """The `dataset` nanotron's trainer asks for consumption statistics after every step."""

    def __init__(self, name: str, tokens: int = 0):
        self.name, self.tokens = name, tokens

    def update_consumption_metrics(self, start_idx: int, end_idx: int, sequence_length: int) -> None:
        """Count the sequences [start_idx, end_idx) of the run as consumed."""
        self.tokens += (end_idx - start_idx) * sequence_length

    def get_consumption_stats(self) -> dict[str, dict[str, int]]:
        return {self.name: {"tokens": self.tokens}}


class MicroBatches:
    """Endless micro-batch dicts of one data-parallel rank, from `start_step` on."""

    def __init__(self, batches: PackedBatches, dp_rank: int, dp_size: int, micro_batch_size: int,
                 accumulation: int, start_step: int = 0, name: str = "corpus"):
        if dp_size * micro_batch_size * accumulation != batches.batch_size:
            raise ValueError(f"{dp_size} ranks x {accumulation} micro batches x {micro_batch_size} "
                             f"sequences != the global batch of {batches.batch_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"data-parallel rank {dp_rank} is outside 0..{dp_size - 1}")
        self.batches, self.dp_rank, self.micro, self.accumulation = batches, dp_rank, micro_batch_size, accumulation
        self.start_step = start_step
        self.dataset = ConsumedTokens(name, start_step * batches.batch_size * batches.context)

    def step(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro batches of global step `step` (0-based)."""
        share = self.micro * self.accumulation
        windows = torch.from_numpy(self.batches.rows(step, slice(self.dp_rank * share, (self.dp_rank + 1) * share)))
        context = self.batches.context
        positions = torch.arange(context).expand(self.micro, context).contiguous()
        return [
            {
                "input_ids": rows[:, :-1].contiguous(),
                "position_ids": positions,
                "label_ids": rows[:, 1:].contiguous(),
                "label_mask": torch.ones(self.micro, context, dtype=torch.bool),
            }
            for rows in windows.split(self.micro)
        ]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        step = self.start_step
        while True:
            yield from self.step(step)
            step += 1
