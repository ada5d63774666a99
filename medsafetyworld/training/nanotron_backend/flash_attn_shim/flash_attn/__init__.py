"""Pure-PyTorch stand-in for flash-attn 2.6.3 (the API nanotron's pin, `>=2.5,<2.7`, expects).

The local version label tells any log that prints `flash_attn.__version__` that this is the shim.
"""

__version__ = "2.6.3+pytorch.shim"

from .flash_attn_interface import (  # the real package exports these at top level too
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_with_kvcache,
)

__all__ = [
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_with_kvcache",
]
