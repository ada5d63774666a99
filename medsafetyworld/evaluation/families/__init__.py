"""The registered probe families (SPEC 6), in the order the evaluator builds them. A third party
registers another with `register_family` (families/base.py)."""

from medsafetyworld.evaluation.families.base import (
    MODES,
    Probe,
    ProbeFamily,
    family_names,
    get_family,
    register_family,
    unsafe_request_families,
)
from medsafetyworld.evaluation.families import knowledge  # noqa: F401  (registers, in this order)
from medsafetyworld.evaluation.families import prescription  # noqa: F401
from medsafetyworld.evaluation.families import harmful  # noqa: F401
from medsafetyworld.evaluation.families import safety_cls  # noqa: F401
from medsafetyworld.evaluation.families import composition  # noqa: F401

COMPOSITION_FAMILIES = ("compose",)  # what the size sweep measures on a pretrained model

__all__ = ["COMPOSITION_FAMILIES", "MODES", "Probe", "ProbeFamily", "family_names", "get_family",
           "register_family", "unsafe_request_families"]
