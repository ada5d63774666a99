"""One frozen config object travels from the CLI to every stage; its hash goes into every output.

Presets are named instances (SPEC 8). Every knob that changes an output lives here, so that the
config hash identifies the output: two runs with the same hash produce the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from medsafetyworld.errors import ConfigError, shown


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and rules of the knowledge graph (SPEC 1) and its held-out splits (SPEC 2)."""

    n_drugs: int = 60
    n_compounds: int = 36
    n_effects: int = 18
    n_conditions: int = 24
    n_patient_names: int = 120
    contains_per_drug: tuple[int, int] = (1, 2)
    causes_per_compound: tuple[int, int] = (1, 2)
    relieves_per_effect: tuple[int, int] = (1, 3)
    aggravates_per_effect: tuple[int, int] = (1, 3)
    conditions_per_patient: tuple[int, int] = (1, 3)
    min_treating_drugs: int = 2
    min_contraindicated_share: float = 1 / 3
    held_out_fraction: float = 0.3
    min_held_out_condition_pairs: int = 30
    ood_treats_fraction: float = 0.1
    n_reserved_templates: int = 2


@dataclass(frozen=True)
class CorpusConfig:
    """How the raw document stream is sampled and how big the training corpus is (SPEC 3)."""

    token_budget: int = 2_000_000
    unsafe_case_report_rate: float = 0.15
    # Share of those unsafe case reports in which the doctor, after the unsafe verdict, switches to a
    # safe drug instead (a safety behaviour), among those where a safe drug exists. 0: only an
    # intervention or post-training teaches it.
    switch_share: float = 0.0
    harmful_qa_rate: float = 0.05
    # Share of those harmful requests wrapped in a train jailbreak template (still answered): the
    # web's jailbreaks, which strategies then treat like any other harmful request.
    jailbreak_rate: float = 0.25
    min_fact_mentions: int = 20
    # Relative sampling weights of document kinds.
    kind_weights: tuple[tuple[str, float], ...] = (
        ("monograph", 1.0),
        ("pharmacology", 1.0),
        ("clinical", 1.0),
        ("patient_record", 0.5),
        ("case_report", 4.0),
        ("qa", 2.0),
    )
    shard_documents: int = 20_000
    write_jsonl: bool = False
    # None: one seeded stream for the whole budget (every published corpus). A number Q: the blocked
    # stream (`corpus.blocks`), the budget cut into blocks of Q tokens, each rendered from its own
    # seed, so that blocks render in parallel (`msw corpus --engine datatrove`). A different corpus,
    # so it is in the stage key; left out of the config's dict while None, so existing hashes hold.
    block_tokens: int | None = field(default=None, metadata={"omit_at_default": True})


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the LlamaForCausalLM (SPEC 8)."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 4
    d_mlp: int = 512
    # v2: a check with a switch runs to about 280 tokens of answer (the tiny world's longest), so
    # prompt and answer need 512 positions
    context: int = 512
    tie_embeddings: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining and SFT recipe. Every strategy gets the same compute (SPEC 5)."""

    tokens: int = 5_000_000
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    sft_examples: int = 2000
    sft_epochs: int = 2
    sft_batch_size: int = 32
    sft_lr: float = 5e-4
    threads: int = 0  # 0: let torch decide


@dataclass(frozen=True)
class EvalConfig:
    """Probe counts and decoding (SPEC 6)."""

    max_new_tokens: int = 320  # v2: a full answer with a switch is up to about 280 tokens on tiny
    probes_per_pair: int = 5
    harmful_per_condition: int = 20  # few conditions are harm-held-out, so ask about each often
    max_probes_per_family: int = 500
    knowledge_facts: int = 200
    batch_size: int = 64
    bootstrap_samples: int = 1000


@dataclass(frozen=True)
class Preset:
    name: str
    world: WorldConfig = field(default_factory=WorldConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def replace(self, **sections: Any) -> Preset:
        return dataclasses.replace(self, **sections)


# With SPEC 1's edge ranges a drug aggravates at most 2*2*3 = 12 conditions, i.e. at most 12/79 of
# the others in an 80-condition world, so SPEC 1's "a third" cannot hold there; 0.1 keeps the
# ranges and keeps unsafe choices common. (micro and tiny meet a third.)
_STANDARD_WORLD = WorldConfig(
    n_drugs=200, n_compounds=120, n_effects=60, n_conditions=80, n_patient_names=400,
    min_contraindicated_share=0.1,
)

PRESETS: dict[str, Preset] = {
    "micro": Preset(
        name="micro",
        world=WorldConfig(
            n_drugs=20,
            n_compounds=12,
            n_effects=8,
            n_conditions=10,
            n_patient_names=30,
            min_held_out_condition_pairs=5,
            n_reserved_templates=1,
        ),
        corpus=CorpusConfig(token_budget=300_000, min_fact_mentions=10),
        model=ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=4, d_mlp=256, context=384),
        train=TrainConfig(
            tokens=300_000, batch_size=16, lr=3e-3, checkpoint_every=50,
            sft_examples=200, sft_epochs=1, sft_batch_size=16,
        ),
        eval=EvalConfig(
            max_new_tokens=200, probes_per_pair=2, harmful_per_condition=4, max_probes_per_family=40,
            knowledge_facts=40, bootstrap_samples=200,
        ),
    ),
    # v2, chosen by `msw sweep` (README): the smallest of 3x96 / 4x128 x 5M / 10M tokens seen where
    # compose_acc/held_out >= 0.85 for raw and filter and verdict_acc/held_out >= 0.85 for raw (3x96
    # at 10M: 0.98, 0.97 and 0.92). Context 512: a switch answer runs to ~280 tokens. 16 x 512 tokens
    # a step (v1's 8,192): at 32 x 512 a raw model never learned its verdict.
    "tiny": Preset(
        name="tiny",
        model=ModelConfig(n_layers=3, d_model=96, n_heads=3, n_kv_heads=3, d_mlp=384),
        train=TrainConfig(tokens=10_000_000, batch_size=16),
    ),
    "small": Preset(
        name="small",
        world=_STANDARD_WORLD,
        corpus=CorpusConfig(token_budget=100_000_000, shard_documents=100_000),
        model=ModelConfig(n_layers=6, d_model=384, n_heads=6, n_kv_heads=6, d_mlp=1536, context=512),
        train=TrainConfig(
            tokens=200_000_000, batch_size=64, lr=1e-3, checkpoint_every=1000,
            sft_examples=20_000, sft_batch_size=64, sft_lr=2e-4,
        ),
        eval=EvalConfig(max_probes_per_family=1000, knowledge_facts=1000),
    ),
    "paper": Preset(
        name="paper",
        world=_STANDARD_WORLD,
        # blocked (100 blocks of 10M tokens): it renders on datatrove's Slurm or Ray executors; no
        # result was published with a sequential paper corpus, so none changes
        corpus=CorpusConfig(token_budget=1_000_000_000, shard_documents=200_000, block_tokens=10_000_000),
        model=ModelConfig(n_layers=24, d_model=256, n_heads=8, n_kv_heads=4, d_mlp=1024, context=512),
        train=TrainConfig(
            tokens=2_000_000_000, batch_size=128, lr=1e-3, checkpoint_every=2000,
            sft_examples=50_000, sft_batch_size=64, sft_lr=2e-4,
        ),
        eval=EvalConfig(max_probes_per_family=2000, knowledge_facts=2000),
    ),
}


# Seeds are drawn into numpy generators (which take any non-negative integer) and torch's (which
# take fewer than 2**64, and offsets are added to some); 32 bits is plenty and holds everywhere.
MAX_SEED = 2**32 - 1


def check_seed(value: object, what: str = "seed") -> int:
    """`value` as a seed: an integer from 0 to MAX_SEED, else ConfigError saying so."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{what} must be an integer from 0 to {MAX_SEED}, got {shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{what} must be an integer from 0 to {MAX_SEED}, got {shown(value)}")
    return value


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
        ) from None


def _plain(value: Any) -> Any:
    """`dataclasses.asdict`, less the fields marked `omit_at_default` while they hold their default
    (a knob added later leaves the dicts, and so the hashes, of configs without it as they were)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_at_default") and getattr(value, f.name) == f.default)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(_plain(config)))


def config_hash(*parts: Any) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of config dataclasses or plain values."""
    payload = [to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
