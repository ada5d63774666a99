"""A pure-PyTorch stand-in for the parts of `flash_attn` that nanotron imports.

nanotron (at the pinned commit) imports `flash_attn` at module level even when its model runs on
`scaled_dot_product_attention`, and no flash-attn binary wheel exists for our GPUs' torch. The
package in `flash_attn/` next to this file implements exactly the entry points nanotron imports,
in plain PyTorch (numerically the same, without the fused kernels' speed). It is put on `sys.path`
only when the real package cannot be imported, and only by the processes that run nanotron.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SHIM_ROOT = Path(__file__).resolve().parent


def install_flash_attn_shim() -> bool:
    """Make `import flash_attn` find the shim; True if installed, False (and nothing done) when the
    real flash_attn imports or the shim is already in place."""
    if str(SHIM_ROOT) in sys.path:
        return False
    try:
        importlib.import_module("flash_attn")
    except ImportError:
        pass
    else:
        return False
    for name in [m for m in sys.modules if m == "flash_attn" or m.startswith("flash_attn.")]:
        del sys.modules[name]  # a half-imported broken install must not shadow the shim
    sys.path.insert(0, str(SHIM_ROOT))
    importlib.invalidate_caches()
    return True
