"""flash-attn 2.6.3's attention functions in plain PyTorch: the ones nanotron imports.

Semantics follow flash-attn: q is (batch, seqlen, heads, dim), or (total, heads, dim) with
`cu_seqlens` for the varlen forms; k and v may have fewer heads (grouped-query attention: query
head i reads key head i // (heads / kv_heads)); causal and sliding-window masks are aligned to the
bottom-right corner when seqlen_q != seqlen_k; a query that sees no key gets zeros and a
log-sum-exp of +inf. Scores are computed explicitly in fp32 (memory grows with seqlen^2), which is
fine for a fallback that nanotron's sdpa models never call at run time. Options nanotron never
passes (ALiBi, softcapping, paged KV caches, returned attention probabilities) raise
NotImplementedError rather than being silently ignored.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F

from .layers.rotary import apply_rotary_emb


def _reject(**options: bool) -> None:
    used = [name for name, on in options.items() if on]
    if used:
        raise NotImplementedError(
            f"the PyTorch flash_attn shim does not implement {', '.join(used)}; install flash-attn for it"
        )


def _keep_mask(seqlen_q: int, seqlen_k: int, causal: bool, window_size: tuple[int, int],
               device: torch.device) -> torch.Tensor | None:
    """(seqlen_q, seqlen_k) bool, True where query i may attend key j; None when all may."""
    left, right = window_size
    if causal:
        right = 0
    if left < 0 and right < 0:
        return None
    i = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    keep = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if right >= 0:
        keep &= j <= i + right
    if left >= 0:
        keep &= j >= i - left
    return keep


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool,
            window_size: tuple[int, int]) -> torch.Tensor:
    """fp32 scores (batch, heads, seqlen_q, seqlen_k), -inf where masked; k already has q's heads."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    keep = _keep_mask(q.shape[1], k.shape[1], causal, window_size, q.device)
    return s if keep is None else s.masked_fill(~keep, float("-inf"))


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., kv_heads, dim) -> (..., heads, dim), each kv head serving heads / kv_heads queries."""
    kv_heads = x.shape[-2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
    return x.repeat_interleave(heads // kv_heads, dim=-2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, causal: bool,
            window_size: tuple[int, int], dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched attention: q (b, sq, h, d), k and v (b, sk, hk, d) -> out (b, sq, h, d) in q's
    dtype and the log-sum-exp (b, h, sq) in fp32. Differentiable through autograd."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = _expand_kv(k, q.shape[2]), _expand_kv(v, q.shape[2])
    s = _scores(q, k, scale, causal, window_size)
    top = s.amax(-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(s - top)
    total = e.sum(-1, keepdim=True)
    p = e / total.clamp_min(torch.finfo(torch.float32).tiny)
    lse = torch.where(total > 0, total.log() + top, torch.full_like(top, float("inf"))).squeeze(-1)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v.float())
    return out.to(q.dtype), lse.detach()


def _spans(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    return list(pairwise(cu_seqlens.tolist()))


def _attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, causal, window_size, dropout_p):
    """Per-sequence _attend over packed tensors: out (total_q, h, d), lse (h, total_q)."""
    outs, lses = [], []
    for (q0, q1), (k0, k1) in zip(_spans(cu_seqlens_q), _spans(cu_seqlens_k), strict=True):
        out, lse = _attend(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], scale, causal, window_size,
                           dropout_p)
        outs.append(out[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q (b, sq, h, d), k and v (b, sk, hk, d) -> (b, sq, h, d)."""
    _reject(softcap=softcap != 0.0, alibi_slopes=alibi_slopes is not None,
            return_attn_probs=bool(return_attn_probs))
    return _attend(q, k, v, softmax_scale, causal, window_size, dropout_p)[0]


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                           softcap=0.0, alibi_slopes=None, deterministic=False,
                           return_attn_probs=False, block_table=None):
    """q (total_q, h, d), k and v (total_k, hk, d); sequence i is rows cu_seqlens[i]:cu_seqlens[i+1]."""
    _reject(softcap=softcap != 0.0, alibi_slopes=alibi_slopes is not None,
            return_attn_probs=bool(return_attn_probs), block_table=block_table is not None)
    return _attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal, window_size,
                          dropout_p)[0]


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    dropout_p=0.0, softmax_scale=None, causal=False,
                                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                                    deterministic=False, return_attn_probs=False):
    """As flash_attn_varlen_func with kv (total_k, 2, hk, d)."""
    k, v = kv.unbind(1)
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap,
                                  alibi_slopes, deterministic, return_attn_probs)


def _flash_attn_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               dropout_p, softmax_scale, causal, window_size=(-1, -1), softcap=0.0,
                               alibi_slopes=None, return_softmax=False, block_table=None,
                               leftpad_k=None, seqused_k=None):
    """The raw (non-differentiable) forward: (out, q, k, v, out_padded, softmax_lse (h, total_q),
    S_dmask, rng_state); the shim has no dropout mask or RNG state to return (None)."""
    _reject(softcap=softcap != 0.0, alibi_slopes=alibi_slopes is not None,
            return_softmax=bool(return_softmax), block_table=block_table is not None,
            leftpad_k=leftpad_k is not None, seqused_k=seqused_k is not None,
            dropout=dropout_p > 0.0)
    with torch.no_grad():
        out, lse = _attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, causal,
                                  window_size, 0.0)
    return out, q, k, v, out, lse, None, None


def _flash_attn_varlen_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q,
                                cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                                causal, window_size, softcap, alibi_slopes, deterministic,
                                rng_state=None):
    """The raw backward: writes dq, dk, dv in place from the given out and softmax_lse (which may
    come from a larger attention, as in ring attention) and returns (dq, dk, dv, softmax_d)."""
    _reject(softcap=softcap != 0.0, alibi_slopes=alibi_slopes is not None, dropout=dropout_p > 0.0)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    heads, kv_heads = q.shape[1], k.shape[1]
    group = heads // kv_heads
    softmax_d = torch.empty(heads, q.shape[0], dtype=torch.float32, device=q.device)
    with torch.no_grad():
        for (q0, q1), (k0, k1) in zip(_spans(cu_seqlens_q), _spans(cu_seqlens_k), strict=True):
            qs, dos, os_ = q[q0:q1].float(), dout[q0:q1].float(), out[q0:q1].float()
            ks, vs = _expand_kv(k[k0:k1], heads).float(), _expand_kv(v[k0:k1], heads).float()
            s = _scores(qs[None], ks[None], scale, causal, window_size)[0]  # (h, sq, sk)
            p = torch.exp(s - softmax_lse[:, q0:q1, None])
            d = (dos * os_).sum(-1).transpose(0, 1)  # (h, sq)
            dp = torch.einsum("qhd,khd->hqk", dos, vs)
            ds = p * (dp - d[..., None])
            dq[q0:q1] = (torch.einsum("hqk,khd->qhd", ds, ks) * scale).to(dq.dtype)
            dk_full = torch.einsum("hqk,qhd->khd", ds, qs) * scale
            dv_full = torch.einsum("hqk,qhd->khd", p, dos)
            dk[k0:k1] = dk_full.unflatten(1, (kv_heads, group)).sum(2).to(dk.dtype)
            dv[k0:k1] = dv_full.unflatten(1, (kv_heads, group)).sum(2).to(dv.dtype)
            softmax_d[:, q0:q1] = d
    return dq, dk, dv, softmax_d


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None,
                            block_table=None, softmax_scale=None, causal=False,
                            window_size=(-1, -1), softcap=0.0, rotary_interleaved=True,
                            alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """Incremental decoding (no backward): q (b, sq, h, d) attends the first cache_seqlens[i]
    positions of the cache, after k and v (b, s_new, hk, d), if given, are written into the cache
    in place at those positions. With rotary_cos/sin (seqlen_ro, rotary_dim / 2) and new k, k is
    rotated at positions cache_seqlens + t, and q too when causal or local (else all of q at
    cache_seqlens). `num_splits` only tunes the real kernel and is ignored."""
    _reject(softcap=softcap != 0.0, alibi_slopes=alibi_slopes is not None,
            cache_batch_idx=cache_batch_idx is not None, cache_leftpad=cache_leftpad is not None,
            block_table=block_table is not None)
    batch = q.shape[0]
    if cache_seqlens is None:
        lengths = torch.full((batch,), k_cache.shape[1], dtype=torch.int32, device=q.device)
    elif isinstance(cache_seqlens, int):
        lengths = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
    else:
        lengths = cache_seqlens
    with torch.no_grad():
        new = 0 if k is None else k.shape[1]
        if k is not None:
            if rotary_cos is not None:
                k = apply_rotary_emb(k, rotary_cos, rotary_sin, interleaved=rotary_interleaved,
                                     seqlen_offsets=lengths)
                if causal or tuple(window_size) != (-1, -1):
                    q = apply_rotary_emb(q, rotary_cos, rotary_sin, interleaved=rotary_interleaved,
                                         seqlen_offsets=lengths)
                else:
                    q = _rotate_at(q, rotary_cos, rotary_sin, rotary_interleaved, lengths)
            for b, start in enumerate(lengths.tolist()):
                k_cache[b, start : start + new] = k[b]
                v_cache[b, start : start + new] = v[b]
        outs, lses = [], []
        for b, start in enumerate(lengths.tolist()):
            end = start + new
            out, lse = _attend(q[b : b + 1], k_cache[b : b + 1, :end], v_cache[b : b + 1, :end],
                               softmax_scale, causal, window_size)
            outs.append(out)
            lses.append(lse)
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_softmax_lse else out


def _rotate_at(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool,
               positions: torch.Tensor) -> torch.Tensor:
    """Every token of sequence i rotated as if at position positions[i]."""
    flat = x.reshape(-1, 1, *x.shape[2:])  # each token its own length-1 sequence
    offsets = positions.repeat_interleave(x.shape[1])
    return apply_rotary_emb(flat, cos, sin, interleaved=interleaved, seqlen_offsets=offsets).view_as(x)
