"""flash-attn 2.6.3's fused `layer_norm_fn` (LayerNorm or RMSNorm with dropout and a residual
add) in plain PyTorch. The sum x + residual and the normalisation are fp32; the output has x's
dtype and the returned residual has residual's dtype (fp32 with residual_in_fp32, else x's).
The parallel-branch options (x1, weight1, bias1) and rowscale, which nanotron never passes, raise
NotImplementedError."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6,
                  dropout_p=0.0, rowscale=None, prenorm=False, residual_in_fp32=False,
                  is_rms_norm=False, return_dropout_mask=False):
    """y = norm(dropout(x) + residual) * weight (+ bias); (y, residual_out) when prenorm; the
    boolean dropout mask (None without dropout) and None for x1's mask follow when asked for."""
    unsupported = [name for name, value in
                   (("x1", x1), ("weight1", weight1), ("bias1", bias1), ("rowscale", rowscale))
                   if value is not None]
    if unsupported:
        raise NotImplementedError(
            f"the PyTorch flash_attn shim does not implement {', '.join(unsupported)}; install flash-attn for it"
        )
    h = x.float()
    mask = None
    if dropout_p > 0.0:
        mask = torch.rand_like(h) >= dropout_p
        h = h.masked_fill(~mask, 0.0) / (1.0 - dropout_p)
    if residual is not None:
        h = h + residual.float()
    if is_rms_norm:
        y = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps) * weight.float()
        y = y if bias is None else y + bias.float()
    else:
        y = F.layer_norm(h, h.shape[-1:], weight.float(), None if bias is None else bias.float(), eps)
    y = y.to(x.dtype)
    residual_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
    out = (y, h.to(residual_dtype)) if prenorm else (y,)
    if return_dropout_mask:
        return (*out, mask, None)
    return out if prenorm else y
