"""Built-in intervention strategies (SPEC 4). Each file registers one; adding a strategy is one file
plus one import line here (or a plugin entry point, with no edit at all)."""

from . import (  # noqa: F401,A004
    curriculum, filter, moral, noisy, raw, redflag, reflect, refusal, rewrite, safety_pretraining, tag,
)
