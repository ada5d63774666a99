"""Training: the model, the pretraining data and the built-in trainer (SPEC 5)."""

from medsafetyworld.training.data import PackedBatches, load_token_stream
from medsafetyworld.training.model import build_model, count_parameters
from medsafetyworld.training.trainer import finetune, pretrain

__all__ = [
    "PackedBatches",
    "build_model",
    "count_parameters",
    "finetune",
    "load_token_stream",
    "pretrain",
]
