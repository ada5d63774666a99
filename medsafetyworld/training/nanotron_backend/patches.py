"""A fix to nanotron at the pinned commit, applied in our training processes only.

`nanotron.helpers.get_custom_weight_decay_for_named_parameters` tests each parameter's name and a
variable `tied_name` against the weight-decay exclusion patterns, but assigns `tied_name` only for
tied parameters: an untied parameter is tested against the name of the last tied one before it.
In the Qwen2 model every RMSNorm gain is tied (across tensor-parallel ranks), so with the pattern
`.*layernorm.*` each attention and MLP matrix after a norm inherits its exclusion: measured on the
real model, 13 of 14 parameters of a 2-layer model went without weight decay where 5 should have.
With untied embeddings, the first parameter meets `tied_name` unassigned (UnboundLocalError).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def weight_decay_groups(named_parameters: Iterable[tuple[str, Any]], model: Any,
                        module_id_to_prefix: dict[int, str], weight_decay: float,
                        exclude_named_params: list[str] | None) -> list[dict[str, Any]]:
    """One optimizer group per parameter: weight decay 0 when the parameter's own name (or, if
    tied, its tie's full name) matches an exclusion pattern (re.match, as nanotron), else
    `weight_decay`. A drop-in for the nanotron helper of the same signature."""
    patterns = [re.compile(p) for p in exclude_named_params or []]
    groups = []
    for name, param in named_parameters:
        names = [name]
        if getattr(param, "is_tied", False):
            names.append(param.get_tied_info().get_full_name_from_module_id_to_prefix(
                module_id_to_prefix=module_id_to_prefix))
        excluded = any(p.match(n) for p in patterns for n in names)
        groups.append({"named_params": [(name, param)], "weight_decay": 0.0 if excluded else weight_decay})
    return groups


def apply_patches() -> None:
    """Point nanotron's optimizer builder at `weight_decay_groups`; needs nanotron importable."""
    import nanotron.helpers

    nanotron.helpers.get_custom_weight_decay_for_named_parameters = weight_decay_groups
