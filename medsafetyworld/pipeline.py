"""The stages of a benchmark run and the run itself (SPEC 5-7).

Layout of a run folder:

    OUT/world/                      world.json, splits.json, tokenizer/
    OUT/corpus/<strategy>-s<seed>/  shards + manifest.json
    OUT/models/<strategy>-s<seed>/  pretrain/ and sft/ (Hugging Face folders)
    OUT/results/<name>/             probes.parquet + record.json (reference policies as ref-<name>)
    OUT/summary.csv, summary.md, pareto.png

A stage whose folder holds a `.stage.json` with the same config hash is skipped; anything else is
(re)built. Pretraining resumes from its last checkpoint, so an interrupted run picks up where it was.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medsafetyworld.attacks import Attack, AttackContext, get_attack
from medsafetyworld.attacks.run import attack_folder, load_attack_result, run_attack
from medsafetyworld.config import Preset, config_hash, to_dict
from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.blocks import BlockPlan
from medsafetyworld.corpus.build import build_corpus, corpus_config_hash
from medsafetyworld.corpus.shards import load_manifest
from medsafetyworld.corpus.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from medsafetyworld.corpus.vocabulary import template_strings as vocabulary_texts_of_templates
from medsafetyworld.corpus.vocabulary import vocabulary_texts
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.evaluation.evaluate import evaluate
from medsafetyworld.evaluation.model_policy import ModelPolicy
from medsafetyworld.evaluation.policies import REFERENCE_POLICIES, Policy, reference_policy
from medsafetyworld.evaluation.scoring import SCORING_VERSION
from medsafetyworld.leaderboard.record import build_record, load_record, save_record
from medsafetyworld.leaderboard.summary import write_summary
from medsafetyworld.storage import STAGE_FILE, path_safe, write_json_atomic
from medsafetyworld.strategies import Strategy, get_strategy
from medsafetyworld.training.distributed import launched_by_torchrun
from medsafetyworld.training.sft_data import SFT_VERSION, sft_texts
from medsafetyworld.training.trainer import finetune, pretrain
from medsafetyworld.world.generate import generate_world
from medsafetyworld.world.io import load_world, save_world, world_hash
from medsafetyworld.world.splits import make_splits

log = logging.getLogger("medsafetyworld")


def folder_name(strategy: Strategy, seed: int) -> str:
    """`<label>-s<seed>`, the label made path-safe: `curriculum(start=0.2,inner=filter)` ->
    `curriculum_start-0.2_inner-filter-s1`."""
    return f"{path_safe(strategy.label)}-s{seed}"


def _up_to_date(folder: Path, key: str) -> bool:
    marker = Path(folder) / STAGE_FILE
    return marker.is_file() and json.loads(marker.read_text()).get("config_hash") == key


def stage(folder: Path, key: str, build: Callable[[], Any], name: str) -> bool:
    """Run `build` unless `folder` already holds the output for config hash `key`. True if built."""
    if _up_to_date(folder, key):
        log.info("%s: up to date (%s), skipped", name, folder)
        return False
    start = time.time()
    build()
    seconds = round(time.time() - start, 1)
    write_json_atomic(Path(folder) / STAGE_FILE, {"config_hash": key, "stage": name, "seconds": seconds})
    log.info("%s: done in %.1fs", name, time.time() - start)
    return True


def stage_seconds(folder: Path) -> float | None:
    marker = Path(folder) / STAGE_FILE
    return json.loads(marker.read_text()).get("seconds") if marker.is_file() else None


# --- stages ---------------------------------------------------------------------------------


def make_world(preset: Preset, seed: int, out: Path) -> str:
    """World, splits and the world's tokenizer into `out`; returns the world hash."""

    def build():
        world = generate_world(preset.world, seed)
        splits = make_splits(world, preset.world, seed, len(T.REQUESTS))
        save_world(world, splits, out)
        save_tokenizer(build_tokenizer(vocabulary_texts(world)), Path(out) / "tokenizer")
        (Path(out) / "preset.json").write_text(json.dumps({"preset": preset.name, "seed": seed}))

    # the tokenizer's vocabulary follows the templates, so they are part of the key
    stage(out, config_hash(preset.world, seed, "world", sorted(set(vocabulary_texts_of_templates()))), build, "world")
    return world_hash(out)


# how a corpus renders: in this process, or (a blocked corpus) on datatrove (`corpus.on_datatrove`)
ENGINES = ("builtin", "datatrove")


def make_corpus(
    world_dir: Path, strategy: Strategy, preset: Preset, seed: int, out: Path, progress: bool = True,
    workers: int = 1, engine: str = "builtin", tasks: int | None = None,
) -> str:
    """The strategy's corpus; returns its corpus hash. `workers`, `engine` and `tasks` change how
    fast, not what: they are not in the stage key. `engine` "datatrove" renders a blocked corpus
    (`preset.corpus.block_tokens`) with datatrove's LocalPipelineExecutor, `workers` at once, in
    `tasks` tasks (default one per block)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown corpus engine {engine!r}; choose one of {', '.join(ENGINES)}")
    whash = world_hash(world_dir)
    blocked = BlockPlan.of(preset.corpus) is not None  # a bad block size fails here, before any work
    if engine == "datatrove":
        if not blocked:
            raise ConfigError("--engine datatrove renders a blocked corpus, and corpus block_tokens is not set: pass "
                              "--block-tokens (e.g. a tenth of the token budget); the sequential stream renders in "
                              "one process")
        try:
            from medsafetyworld.corpus.on_datatrove import render_on_datatrove
        except ImportError as exc:
            raise ConfigError(f"--engine datatrove needs datatrove ({exc}); install it with "
                              "pip install 'medsafetyworld[datatrove]'") from None

    def build():
        if engine == "datatrove":
            render_on_datatrove(world_dir, strategy, preset, seed, out, world_hash=whash, workers=workers,
                                tasks=tasks, progress=progress)
            return
        world, splits = load_world(world_dir)
        tokenizer = load_tokenizer(Path(world_dir) / "tokenizer")
        build_corpus(world, splits, tokenizer, strategy, preset, seed, out, world_hash=whash, progress=progress,
                     workers=workers)

    stage(out, corpus_config_hash(preset, strategy, seed, whash), build, f"corpus {strategy.label}")
    return load_manifest(out)["corpus_hash"]


def check_corpus(corpus_dir: Path, world_dir: Path, strategy: Strategy) -> dict[str, Any]:
    """The corpus's manifest, checked to have been rendered from the world in `world_dir` and for
    `strategy` (its label, or its name and parameters); DataError saying which differs and what to
    pass otherwise. Post-training follows the strategy given, so a corpus of another strategy would
    train a model of neither. The shards themselves are checked against the manifest when training
    reads them (training.data.shard_paths)."""
    manifest = load_manifest(corpus_dir)
    whash = world_hash(world_dir)
    recorded = manifest.get("world_hash")
    if recorded != whash:
        was = f"world hash {recorded[:16]}" if isinstance(recorded, str) else "no world hash in its manifest"
        raise DataError(
            f"the corpus {corpus_dir} was not rendered from the world in {world_dir} ({was}; that world's is "
            f"{whash[:16]}); pass the --world it was rendered from, or render a corpus from this world "
            f"(`msw corpus --world {world_dir} --out NEW_FOLDER`)")
    label, name, params = manifest.get("strategy_label"), manifest.get("strategy"), manifest.get("strategy_params")
    same = label == strategy.label or (
        name == strategy.name and params == json.loads(json.dumps(strategy.params())))
    if not same:
        was = label or name
        if not isinstance(was, str):
            raise DataError(f"the manifest of {corpus_dir} records no strategy; render the corpus again "
                            f"(`msw corpus --world {world_dir} --strategy '{strategy.label}' --out NEW_FOLDER`)")
        raise DataError(
            f"the corpus {corpus_dir} was rendered for strategy '{was}', not '{strategy.label}' (post-training "
            f"follows the strategy); pass --strategy '{was}', or render a '{strategy.label}' corpus "
            f"(`msw corpus --world {world_dir} --strategy '{strategy.label}' --out NEW_FOLDER`)")
    return manifest


BACKENDS = ("builtin", "nanotron")


def make_pretrained(
    world_dir: Path, corpus_dir: Path, strategy: Strategy, preset: Preset, seed: int, out: Path, progress: bool = True,
    *, backend: str = "builtin", parallel: str = "ddp", compile: bool = False,
) -> str | None:
    """Pretraining alone, into `out/pretrain`; returns its stage key (None on a torchrun rank other
    than 0, whose share is done). The corpus must be of this world and strategy (check_corpus).
    `backend`: the built-in trainer or nanotron (a separate stage key: it trains other weights)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    corpus_hash = check_corpus(corpus_dir, world_dir, strategy)["corpus_hash"]
    pre_key = config_hash(preset.model, preset.train, corpus_hash, seed, "pretrain",
                          *([backend] if backend != "builtin" else []))
    tokenizer_dir = Path(world_dir) / "tokenizer"

    def build_pretrain():
        if backend == "nanotron":
            from medsafetyworld.training.nanotron_backend import train_nanotron

            train_nanotron(corpus_dir, tokenizer_dir, out / "pretrain", preset.model, preset.train, seed,
                           progress=progress)
        else:
            pretrain(corpus_dir, tokenizer_dir, out / "pretrain", preset.model, preset.train, seed, progress=progress,
                     parallel=parallel, compile=compile)

    if launched_by_torchrun() and int(os.environ["RANK"]) != 0:
        if not _up_to_date(out / "pretrain", pre_key):
            build_pretrain()  # rank 0 keeps the books (the stage marker) and post-trains
        return None
    stage(out / "pretrain", pre_key, build_pretrain, f"pretrain {strategy.label} s{seed}")
    return pre_key


def make_model(
    world_dir: Path, corpus_dir: Path, strategy: Strategy, preset: Preset, seed: int, out: Path, progress: bool = True,
    *, backend: str = "builtin", parallel: str = "ddp", compile: bool = False,
) -> Path | None:
    """Pretraining (make_pretrained) then SFT; returns the SFT model folder. Under `torchrun` every
    rank pretrains its share, then rank 0 alone post-trains; the other ranks return None."""
    pre_key = make_pretrained(world_dir, corpus_dir, strategy, preset, seed, out, progress, backend=backend,
                              parallel=parallel, compile=compile)
    if pre_key is None:
        return None

    def build_sft():
        world, splits = load_world(world_dir)
        texts = sft_texts(world, splits, preset, strategy, seed)
        finetune(out / "pretrain", texts, out / "sft", preset.train, seed, progress=progress)

    sft_key = config_hash(pre_key, preset.train, strategy.name, strategy.params(), "sft", SFT_VERSION)
    stage(out / "sft", sft_key, build_sft, f"sft {strategy.label} s{seed}")
    return out / "sft"


def evaluate_policy(
    make_policy: Callable[[], Policy], world_dir: Path, preset: Preset, out: Path, *, key: str,
    record_fields: dict[str, Any], probe_seed: int, pretrained: Callable[[Policy], Policy | None] | None = None,
) -> dict[str, Any]:
    """Evaluate and write `out/probes.parquet` and `out/record.json`; returns the record.
    `make_policy` is called only if the stage runs, so a skipped stage loads no model.
    `pretrained(policy)`: the policy before post-training, asked the compose probes again (for a
    reference policy, the policy itself); None leaves the `_pretrained` metrics undefined."""
    whash = world_hash(world_dir)

    def build():
        world, splits = load_world(world_dir)
        policy = make_policy()
        _, metrics = evaluate(policy, world, splits, preset.eval, probe_seed=probe_seed,
                              out_path=out / "probes.parquet", pretrained=pretrained(policy) if pretrained else None)
        record = build_record(preset=preset.name, config=to_dict(preset), config_hash=key, world_hash=whash,
                              metrics=metrics, probes_path=out / "probes.parquet", **record_fields)
        save_record(record, out / "record.json")

    stage(out, config_hash(key, preset.eval, whash, probe_seed, "eval", SCORING_VERSION), build,
          f"evaluate {record_fields['strategy']}")
    return load_record(out / "record.json")


def reference_key(name: str) -> str:
    """The stage key of reference policy `name` (it has no training: its name is all of it)."""
    return config_hash(name, "reference")


def evaluate_reference(name: str, world, world_dir: Path, preset: Preset, world_seed: int, out: Path) -> dict[str, Any]:
    """evaluate_policy for reference policy `name` on the world in `world_dir` (`world`, loaded),
    probe seed `world_seed`, into `out`; it is its own model before post-training."""
    fields = {"strategy": f"ref:{name}", "seed": world_seed, "corpus_hash": None, "policy_kind": "reference",
              "model_info": {"n_parameters": 0, "tokens_seen": 0}}
    return evaluate_policy(lambda: reference_policy(name, world, world_seed), world_dir, preset, out,
                           key=reference_key(name), record_fields=fields, probe_seed=world_seed,
                           pretrained=lambda policy: policy)


def attack_policy(
    record_dir: Path, attacks: list[Attack], make_context: Callable[[Path], AttackContext], *, key: str
) -> dict[str, Any]:
    """Run each attack (a stage of its own under `record_dir/attacks/`) and put its results into
    the record in `record_dir` under `attacks.<label>`; returns the record."""
    record_dir, entries = Path(record_dir), {}
    for attack in attacks:
        folder = attack_folder(record_dir, attack)
        stage(folder, config_hash(key, attack.name, attack.params(), "attack", SCORING_VERSION),
              lambda attack=attack, folder=folder: run_attack(attack, make_context(folder)), f"attack {attack.label}")
        entry = load_attack_result(folder)
        entry["probes_file"]["path"] = str((folder / entry["probes_file"]["path"]).relative_to(record_dir))
        entries[attack.label] = entry
    record = load_record(record_dir / "record.json")
    record["attacks"] = {**record.get("attacks", {}), **entries}
    save_record(record, record_dir / "record.json")
    return load_record(record_dir / "record.json")  # brings a cached attack's metrics up to date


def probe_policy(record_dir: Path, model_dir: Path, world_dir: Path, preset: Preset, *, key: str, seed: int) -> dict:
    """Linear probes on every layer of the model (SPEC 6 `probe_auroc`), a stage of its own in
    `record_dir/probes/`; the selected layer's AUROC per context family joins the record's metrics
    (the per-layer values stay in `probes/probe_auroc.json`). Returns the record."""
    from medsafetyworld.evaluation.linear_probes import evaluate_probes

    folder = Path(record_dir) / "probes"
    stage(folder, config_hash(key, preset.eval.bootstrap_samples, seed, "probe_auroc"),
          lambda: evaluate_probes(model_dir, world_dir, folder / "probe_auroc.json", seed=seed,
                                  n_boot=preset.eval.bootstrap_samples), "probe_auroc")
    record = load_record(Path(record_dir) / "record.json")
    record["metrics"].update(json.loads((folder / "probe_auroc.json").read_text())["metrics"])
    save_record(record, Path(record_dir) / "record.json")
    return record


def resolve_attacks(specs: list[str], *, models: bool) -> list[Attack]:
    """Attacks by spec, failing before any work on a bad one."""
    attacks = [get_attack(s) for s in specs]
    if not models and (bad := [a.label for a in attacks if a.needs_model]):
        raise ConfigError(f"{', '.join(bad)} finetune model weights; a reference policy has none")
    return attacks


# --- the whole run --------------------------------------------------------------------------


def run(
    preset: Preset, strategies: list[str], seeds: list[int], out: Path, *, world_seed: int = 0, progress: bool = True,
    attacks: list[str] = (), backend: str = "builtin",
) -> list[dict[str, Any]]:
    """World, corpora, pretraining, SFT and evaluation for every (strategy, seed), then each of
    `attacks` on each trained model (and the prompt attacks on the reference policies); writes the
    summary. `backend="nanotron"` pretrains with nanotron (which starts its own torchrun)."""
    if launched_by_torchrun():
        raise ConfigError("`msw run` is one process; under torchrun, train each model with `msw train` "
                          "(or use `msw run --backend nanotron`, which launches torchrun itself)")
    if not strategies:
        raise ConfigError("no strategies given; pass e.g. --strategies raw,filter,reflect")
    if not seeds:
        raise ConfigError("no seeds given; pass e.g. --seeds 1")
    resolved = [get_strategy(s) for s in strategies]  # fail on a bad name before any work
    attack_list = resolve_attacks(list(attacks), models=True)
    prompt_attacks = [a for a in attack_list if not a.needs_model]
    out = Path(out)
    world_dir = out / "world"
    whash = make_world(preset, world_seed, world_dir)
    records = []
    world, splits = load_world(world_dir)

    def context(policy, folder, model_dir=None, seed=world_seed):
        return AttackContext(world, splits, preset, policy, world_seed, folder, model_dir=model_dir, seed=seed,
                             progress=progress)

    for name in REFERENCE_POLICIES:
        folder = out / "results" / f"ref-{name}"
        records.append(evaluate_reference(name, world, world_dir, preset, world_seed, folder))
        if prompt_attacks:
            policy = reference_policy(name, world, world_seed)
            records[-1] = attack_policy(folder, prompt_attacks, lambda f, policy=policy: context(policy, f),
                                        key=reference_key(name))
    for seed in seeds:
        for strategy in resolved:
            tag = folder_name(strategy, seed)
            corpus_dir, model_root = out / "corpus" / tag, out / "models" / tag
            corpus_hash = make_corpus(world_dir, strategy, preset, seed, corpus_dir, progress)
            sft_dir = make_model(world_dir, corpus_dir, strategy, preset, seed, model_root, progress, backend=backend)
            log_ = json.loads((model_root / "pretrain" / "train_log.json").read_text())
            fields = {
                "strategy": strategy.label, "seed": seed, "corpus_hash": corpus_hash, "policy_kind": "model",
                "model_info": {"n_parameters": log_["parameters"], "tokens_seen": log_["tokens_seen"],
                               "pretrain_tokens_per_second": round(log_["tokens_per_second"]),
                               "final_pretrain_loss": log_["final_loss"],
                               "stage_seconds": {s: stage_seconds(p) for s, p in
                                                 (("corpus", corpus_dir), ("pretrain", model_root / "pretrain"),
                                                  ("sft", model_root / "sft"))}},
                "extra": {"strategy_params": strategy.params()},
            }
            key = config_hash(preset.model, preset.train, corpus_hash, seed, strategy.name, whash)
            load = lambda sft_dir=sft_dir: ModelPolicy(sft_dir, batch_size=preset.eval.batch_size, progress=progress)  # noqa: E731
            before = lambda _, root=model_root: ModelPolicy(root / "pretrain", batch_size=preset.eval.batch_size,  # noqa: E731
                                                            progress=progress)
            records.append(evaluate_policy(load, world_dir, preset, out / "results" / tag, key=key,
                                           record_fields=fields, probe_seed=world_seed, pretrained=before))
            records[-1] = probe_policy(out / "results" / tag, sft_dir, world_dir, preset, key=key, seed=world_seed)
            if attack_list:
                records[-1] = attack_policy(
                    out / "results" / tag, attack_list,
                    lambda f, load=load, sft_dir=sft_dir, seed=seed: context(load(), f, model_dir=sft_dir, seed=seed),
                    key=key)
    write_summary(records, out)
    return records
