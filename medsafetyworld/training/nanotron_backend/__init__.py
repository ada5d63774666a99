"""The nanotron training backend (SPEC 5): multi-GPU pretraining with nanotron, ending in the same
Hugging Face LlamaForCausalLM folder as the built-in trainer.

nanotron is not a dependency: it is installed from source at NANOTRON_COMMIT (INSTALL_HINT), and
only `train_nanotron` and the processes it starts import it. Everything else here (the config
writer, the checkpoint converter, the dataloader, the flash_attn shim) runs without it.
"""

from medsafetyworld.training.nanotron_backend.config import nanotron_config, train_steps, write_config
from medsafetyworld.training.nanotron_backend.convert import convert_checkpoint
from medsafetyworld.training.nanotron_backend.flash_attn_shim import install_flash_attn_shim
from medsafetyworld.training.nanotron_backend.launch import (
    INSTALL_HINT,
    NANOTRON_COMMIT,
    nanotron_available,
    train_nanotron,
)

__all__ = [
    "INSTALL_HINT",
    "NANOTRON_COMMIT",
    "convert_checkpoint",
    "install_flash_attn_shim",
    "nanotron_available",
    "nanotron_config",
    "train_nanotron",
    "train_steps",
    "write_config",
]
