"""What a training run reports about its speed: model FLOPs utilisation and peak memory.

MFU = (training FLOPs per token x tokens per second) / the device's dense bf16 peak, as in PaLM
(appendix B). Peaks are the vendors' dense (no sparsity) bf16 tensor-core figures; a device not
in the table (and any CPU) has no MFU rather than a made-up one.
"""

from __future__ import annotations

import resource
import sys

import torch

# Substring of torch.cuda.get_device_name() -> dense bf16 FLOP/s.
BF16_PEAK = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM
    ("GH200", 989.4e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 4090", 165.2e12),
)


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of `device`, or None where it is unknown (CPUs included)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def mfu(flops_per_token: float, tokens_per_second: float, device: torch.device) -> float | None:
    peak = peak_flops(device)
    return None if peak is None else flops_per_token * tokens_per_second / peak


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory allocated by torch on a GPU; on a CPU, the process's peak resident set."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
