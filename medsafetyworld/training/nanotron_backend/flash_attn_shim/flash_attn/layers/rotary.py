"""flash-attn 2.6.3's rotary embedding (`apply_rotary_emb`, `RotaryEmbedding`) in plain PyTorch.

Rotation by cos/sin tables of shape (seqlen_rotary, rotary_dim / 2) on the first rotary_dim
features: half-split (GPT-NeoX: feature i pairs with i + rotary_dim / 2) or interleaved (GPT-J:
2i pairs with 2i + 1). Arithmetic is fp32, results in the input's dtype. Unlike the fused kernel,
`inplace=True` does not overwrite the input: the rotated tensor is always returned as a new tensor
(which is what every nanotron call site uses), so autograd never sees an in-place view update.
"""

from __future__ import annotations

import torch


def _positions(x: torch.Tensor, seqlen_offsets: int | torch.Tensor,
               cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """Position of every token: (batch, seqlen), or (total,) when packed with cu_seqlens."""
    if cu_seqlens is None:
        batch, seqlen = x.shape[:2]
        pos = torch.arange(seqlen, device=x.device).expand(batch, seqlen)
        offsets = torch.as_tensor(seqlen_offsets, device=x.device).reshape(-1, 1)
        return pos + offsets
    starts, lengths = cu_seqlens[:-1], cu_seqlens.diff()
    sequence = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths)
    pos = torch.arange(x.shape[0], device=x.device) - starts.repeat_interleave(lengths)
    offsets = torch.as_tensor(seqlen_offsets, device=x.device).reshape(-1)
    return pos + (offsets[sequence] if offsets.numel() > 1 else offsets)


def apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0,
                     cu_seqlens=None, max_seqlen=None):
    """x (batch, seqlen, heads, dim), or (total, heads, dim) with cu_seqlens; token t of sequence
    b is rotated at position t + seqlen_offsets[b] (an int offsets every sequence alike)."""
    pos = _positions(x, seqlen_offsets, cu_seqlens)
    c = cos.float()[pos].unsqueeze(-2)  # (..., 1, rotary_dim / 2): one table row for every head
    s = sin.float()[pos].unsqueeze(-2)
    rotary_dim = 2 * cos.shape[-1]
    head, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    if interleaved:
        a, b = head[..., 0::2], head[..., 1::2]
        rotated = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)
    else:
        a, b = head.chunk(2, dim=-1)
        rotated = torch.cat((a * c - b * s, a * s + b * c), dim=-1)
    return torch.cat((rotated.to(x.dtype), rest), dim=-1)


class RotaryEmbedding(torch.nn.Module):
    """Applies the rotation to q and k of packed qkv (batch, seqlen, 3, heads, dim), or to q
    (batch, seqlen, heads, dim) and the k of kv (batch, seqlen, 2, heads, dim); returns new tensors.
    cos/sin are computed in fp32 from fp32 positions, then cast to the input's dtype."""

    def __init__(self, dim: int, base=10000.0, interleaved=False, scale_base=None,
                 pos_idx_in_fp32=True, device=None):
        super().__init__()
        if scale_base is not None:
            raise NotImplementedError("the PyTorch flash_attn shim does not implement XPos (scale_base)")
        self.dim, self.base, self.interleaved = dim, float(base), interleaved
        inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _cos_sin(self, length: int, device: torch.device, dtype: torch.dtype):
        t = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device=device, dtype=torch.float32))
        return torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype)

    def forward(self, qkv, kv=None, seqlen_offset=0, max_seqlen=None):
        seqlen = qkv.shape[1]
        if max_seqlen is None:
            max_seqlen = seqlen + (seqlen_offset if isinstance(seqlen_offset, int)
                                   else int(seqlen_offset.max()))
        cos, sin = self._cos_sin(max_seqlen, qkv.device, qkv.dtype)

        def rotate(x):
            return apply_rotary_emb(x, cos, sin, self.interleaved, seqlen_offsets=seqlen_offset)

        if kv is None:
            q, k, v = qkv.unbind(2)
            return torch.stack((rotate(q), rotate(k), v), dim=2)
        k, v = kv.unbind(2)
        return rotate(qkv), torch.stack((rotate(k), v), dim=2)
