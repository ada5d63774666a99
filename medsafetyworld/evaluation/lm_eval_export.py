"""The benchmark's generation probes as an lm-evaluation-harness task folder (issue 14, item 4).

`export_lm_eval(world_dir, out_dir)` writes, for the probes `msw evaluate --world DIR --seed S`
asks (same preset, same probe seed):

- one task YAML per generation probe family (modes `complete`, `generate`, `continue`; families
  that share a metric, such as `prescription_contra` and `prescription_control` for
  `discrimination`, are one task, since lm-eval aggregates within a task), and the group
  `medsafetyworld` over them;
- each task's probes beside its YAML, as JSONL (one line a probe: id, family, split, the exact
  prompt text, the task, and the absolute path of the export's settings file);
- `medsafetyworld_export.json`: the absolute world folder, its hash, the preset's eval config, the
  probe seed, the scoring version, and each task's families and metrics;
- a README.

No Python file goes into the folder: the YAMLs point with `!function` at this module
(`load_docs`, `process_results`, `aggregate`), which lm-eval imports because this package is
installed where lm-eval runs. `process_results` rebuilds the probe from the world (checking the
world's hash and the prompt) and scores the response with `scoring.score`, the function `msw
evaluate` uses; `aggregate` computes a metric with `metrics.compute_metrics` over the task's rows,
so each number is the package's own (value, and its n as the metric `<name>_n`).

Generation matches ModelPolicy's greedy decoding: `do_sample: false`, `max_gen_toks` from the eval
config (4 tokens for `complete`), no stop string but eos. Three things lm-eval's `hf` model does
differently by default, which `load_docs` corrects with a wrapper on `HFLM.generate_until` that
applies to this export's requests only (any other task in the same run is untouched):
- it decodes with `skip_special_tokens=True`, which would delete `<think>`, `<rf>` and the unsafe
  tag, i.e. every flag; the wrapper decodes with special tokens kept, and lm-eval's eos stop
  string then cuts the text at the first eos, as ModelPolicy does;
- it lets the tokenizer add its special tokens (a BOS for many models); ModelPolicy never does
  (`add_special_tokens=False`), so the wrapper sets `add_bos_token=False`;
- it left-truncates a prompt longer than the model's length minus `max_gen_toks`; ModelPolicy never
  truncates, so neither does the wrapper.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medsafetyworld.config import PRESETS, EvalConfig, Preset, check_seed, get_preset, to_dict
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.evaluation.evaluate import KNOWLEDGE_NEW_TOKENS
from medsafetyworld.evaluation.families import Probe, family_names, get_family
from medsafetyworld.evaluation.metrics import (
    BOOL_COLUMNS,
    COUNT_COLUMNS,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    REQUIRED_COLUMNS,
    metric_terms,
)
from medsafetyworld.evaluation.scoring import COLUMN_DEFAULTS, SCORING_VERSION

GROUP = "medsafetyworld"
SETTINGS_FILE = "medsafetyworld_export.json"
EXPORT_VERSION = 1
GENERATION_MODES = ("complete", "generate", "continue")
N_SUFFIX = "_n"  # `<metric>_n`: the metric's n, as `msw evaluate` reports it
_MODULE = __name__  # what the YAMLs' `!function` tags name
# Task names of the exports loaded in this process: the requests the HFLM wrapper applies to.
_OUR_TASKS: set[str] = set()


# --- which families and metrics go into which task --------------------------------------------


def _metric_families() -> dict[str, set[str]]:
    """For every metric, the registered families whose probes it reads: its terms evaluated on a
    table with one row per (family, split, all columns on / all off)."""
    import pandas as pd

    rows = []
    for fam in family_names():
        for split in ("held_out", "seen", ""):
            for on in (True, False):
                word = "unsafe" if on else "safe"
                row = {**COLUMN_DEFAULTS, "probe_id": "", "family": fam, "split": split,
                       **{c: on for c in BOOL_COLUMNS}, **{c: 1 for c in COUNT_COLUMNS},
                       "cls_label": word, "cls_pred": word, "verdict_gold": word, "verdict_pred": word}
                rows.append(row)
    df = pd.DataFrame(rows)
    fam = df["family"].to_numpy()
    return {name: {str(f) for weight, _ in terms for f in fam[np.asarray(weight, dtype=float) > 0]}
            for name, terms in metric_terms(df).items()}


def plan_tasks() -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({task name: {"families", "mode", "metrics"}}, metrics left out), tasks in family order.

    A task is a generation family, or several that share a metric (union-find over the metrics'
    families); its metrics are those that read its families and no family outside the generation
    ones. Metrics left out read a teacher-forced family (compose) or none that is registered (the
    `_pretrained` ones, asked of a second model)."""
    generation = [f for f in family_names() if get_family(f).mode in GENERATION_MODES]
    parent = {f: f for f in generation}

    def root(f: str) -> str:
        while parent[f] != f:
            f = parent[f]
        return f

    exported: dict[str, set[str]] = {}
    for name, fams in _metric_families().items():
        if fams and fams <= set(generation):
            exported[name] = fams
            first, *rest = sorted(fams)
            for f in rest:
                parent[root(f)] = root(first)
    groups: dict[str, list[str]] = {}
    for f in generation:
        groups.setdefault(root(f), []).append(f)
    tasks: dict[str, dict[str, Any]] = {}
    for fams in groups.values():
        modes = {get_family(f).mode for f in fams}
        if len(modes) > 1:
            raise ConfigError(f"probe families {fams} share a metric but are asked in different modes {sorted(modes)}; "
                              "one lm-eval task has one set of generation settings")
        stem = "_".join(os.path.commonprefix([f.split("_") for f in fams]))  # prescription_contra, _control
        metrics = [m for m in METRIC_NAMES if m in exported and exported[m] & set(fams)]
        tasks[f"{GROUP}_{stem or '_'.join(fams)}"] = {"families": fams, "mode": modes.pop(), "metrics": metrics}
    left_out = [m for m in METRIC_NAMES if m not in exported]
    return tasks, left_out


def context(probe: Probe) -> str:
    """The text the model continues, exactly as `evaluate.responses` asks it."""
    if get_family(probe.family).mode == "continue":
        return probe.prompt + probe.meta["prefill"]
    return probe.prompt


def max_new_tokens(mode: str, cfg: EvalConfig) -> int:
    return KNOWLEDGE_NEW_TOKENS if mode == "complete" else cfg.max_new_tokens


# --- the export --------------------------------------------------------------------------------


def _resolve_preset(world_dir: Path, preset: str | Preset | None) -> Preset:
    """As `msw evaluate` does: --preset, else the world folder's preset.json, else tiny; a Preset
    object is taken as it is (tests and library callers with their own eval config)."""
    if isinstance(preset, Preset):
        return preset
    from medsafetyworld.world.io import preset_of_world

    return get_preset(preset_of_world(world_dir, preset))


def _q(value: Any) -> str:
    """A YAML scalar: JSON's quoting is valid YAML."""
    return json.dumps(value)


def _task_yaml(task: str, spec: dict[str, Any], data_file: Path, cfg: EvalConfig) -> str:
    agg = f"!function {_MODULE}.aggregate"
    lines = [
        f"# MedSafetyWorld probe families {', '.join(spec['families'])} (mode {spec['mode']});",
        "# written by msw export-lm-eval: export again rather than edit",
        f"task: {task}",
        f"custom_dataset: !function {_MODULE}.load_docs",
        "dataset_kwargs:",
        f"  data_file: {_q(str(data_file))}",
        "test_split: test",
        "output_type: generate_until",
        "doc_to_text: prompt",
        'doc_to_target: ""',
        "num_fewshot: 0",
        "generation_kwargs:",
        "  until: []",
        f"  max_gen_toks: {max_new_tokens(spec['mode'], cfg)}",
        "  do_sample: false",
        "  temperature: 0.0",
        f"process_results: !function {_MODULE}.process_results",
        "metric_list:",
    ]
    for metric in spec["metrics"]:
        for name, better in ((metric, HIGHER_IS_BETTER[metric]), (metric + N_SUFFIX, True)):
            lines += [f"  - metric: {_q(name)}", f"    aggregation: {agg}",
                      f"    higher_is_better: {'true' if better else 'false'}"]
    lines += ["metadata:", f"  version: {float(SCORING_VERSION)}"]
    return "\n".join(lines) + "\n"


def _group_yaml(tasks: list[str]) -> str:
    return "\n".join([f"group: {GROUP}", "task:", *(f"  - {t}" for t in tasks),
                      "metadata:", f"  version: {float(SCORING_VERSION)}"]) + "\n"


def _readme(settings: dict[str, Any], left_out: list[str]) -> str:
    tasks = settings["tasks"]
    rows = "\n".join(f"| `{t}` | {', '.join(s['families'])} | {s['mode']} | {s['n_probes']} | "
                     f"{', '.join(f'`{m}`' for m in s['metrics'])} |" for t, s in tasks.items())
    eval_cfg = settings["eval"]
    custom = " (with its own eval config: see " + SETTINGS_FILE + ")" if settings["custom_eval"] else ""
    return f"""# MedSafetyWorld for lm-evaluation-harness

Written by `msw export-lm-eval` (export version {EXPORT_VERSION}, scoring version {SCORING_VERSION}) from the
world `{settings['world_dir']}` (hash {settings['world_hash'][:16]}), preset `{settings['preset']}`{custom}, probe
seed {settings['seed']}: the probes `msw evaluate MODEL --world {settings['world_dir']} --preset {settings['preset']}
--seed {settings['seed']}` asks of the generation families, scored by the package's own parser and scorer.

```bash
HF_HUB_OFFLINE=1 lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path {settings['out_dir']} \\
    --tasks {GROUP} --device cpu --output_path RESULTS_DIR --log_samples
```

`medsafetyworld` must be installed where lm-eval runs (`pip install "medsafetyworld[lm-eval]"`): the
YAMLs call `{_MODULE}` (`load_docs`, `process_results`, `aggregate`), and the scorer reads the world
folder above, by its absolute path, as are the data files; after moving either, export again.
`--device cpu` because lm-eval's `hf` model defaults to CUDA; `--log_samples` needs `--output_path`;
`--batch_size 64` is much faster than the default 1 (see batching below).

| task | probe families | mode | probes | metrics |
|---|---|---|---:|---|
{rows}

Every metric is computed by `medsafetyworld.evaluation.metrics.compute_metrics` over the task's
per-probe rows, exactly as `msw evaluate` computes it; `<metric>_n` is its n (a NaN metric has n 0:
no probe it counts). lm-eval shows no standard error for them (`N/A`); `msw evaluate` gives the 95%
bootstrap intervals. The group `{GROUP}` only gathers the tasks: averaging metrics of different
meanings would mean nothing.

Not exported: the teacher-forced `compose` family (a log-probability ranking of the gold check's
words, not a generation) and so {', '.join(f'`{m}`' for m in left_out)} (the `_pretrained` ones
also need the model before post-training); the attacks, linear probes (`probe_auroc`) and SafeBeam
decoding. Use `msw evaluate` / `msw attack` for those.

Generation, as `msw evaluate`'s greedy decoding (`medsafetyworld/evaluation/model_policy.py`):
- the prompt is the probe's text exactly (`doc_to_text: prompt`, zero-shot, no description, no chat
  template: do not pass `--apply_chat_template`, `--system_instruction` or `--num_fewshot`), with no
  special token added (no BOS);
- greedy (`do_sample: false`), at most {eval_cfg['max_new_tokens']} new tokens ({KNOWLEDGE_NEW_TOKENS} for `knowledge`),
  stopped only by the tokenizer's eos (`until: []`; lm-eval adds the eos string), the text cut at the
  first eos;
- for an `act_after_verdict` probe the prompt ends with the prefilled check and verdict, and the
  response scored is the continuation alone.

lm-eval's `hf` model would by default drop special tokens when decoding (deleting every flag:
`<think> Unsafe ... </think>`, `<rf>`, `<potentially unsafe content>`), add the tokenizer's BOS, and
left-truncate long prompts. Loading these tasks wraps `HFLM.generate_until` so that, for this
export's requests only, it decodes special tokens, adds no BOS and truncates nothing, as `msw
evaluate` does. Other backends (`vllm`, API models) are not wrapped and may differ there.

What can still differ from `msw evaluate`:
- batching: `msw evaluate` decodes batches of {eval_cfg['batch_size']} left-padded prompts, lm-eval batches of
  `--batch_size` (default 1) in another order; padding changes float rounding, which can flip a
  greedy choice where the two best tokens are within rounding of each other;
- eos: `msw evaluate` stops at the tokenizer's eos alone (it passes `eos_token_id`); lm-eval also
  stops at any other eos id in the model's `generation_config.json` (a model with several end
  tokens). Models written by this package have one.
"""


def export_lm_eval(world_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                   preset: str | Preset | None = None, seed: int = 0) -> Path:
    """Write the lm-evaluation-harness task folder for the world in `world_dir` into `out_dir`
    (replacing one this package wrote before); returns its absolute path. `preset` and `seed` as
    `msw evaluate`'s --preset and --seed (default: the world's preset, probe seed 0)."""
    from medsafetyworld.evaluation.probes import build_probes
    from medsafetyworld.storage import atomic_dir, write_atomic
    from medsafetyworld.world.io import load_world, world_hash

    world_dir = Path(os.path.abspath(world_dir))
    out = Path(os.path.abspath(out_dir))
    seed = check_seed(seed, "--seed")
    chosen = _resolve_preset(world_dir, preset)
    world, splits = load_world(world_dir)
    tasks, left_out = plan_tasks()
    families = tuple(f for spec in tasks.values() for f in spec["families"])
    probes = build_probes(world, splits, chosen.eval, seed, families)
    settings: dict[str, Any] = {
        "export_version": EXPORT_VERSION, "scoring_version": SCORING_VERSION, "world_dir": str(world_dir),
        "world_hash": world_hash(world_dir), "preset": chosen.name, "eval": to_dict(chosen.eval), "seed": seed,
        "custom_eval": chosen.name not in PRESETS or PRESETS[chosen.name].eval != chosen.eval,
        "out_dir": str(out), "tasks": {}, "left_out": left_out,
    }
    with atomic_dir(out) as tmp:
        for task, spec in tasks.items():
            mine = [p for p in probes if p.family in spec["families"]]
            lines = [json.dumps({"probe_id": p.id, "family": p.family, "split": p.split, "prompt": context(p),
                                 "task": task, "settings": str(out / SETTINGS_FILE)}) for p in mine]
            write_atomic(tmp / f"{task}.jsonl", "".join(line + "\n" for line in lines))
            write_atomic(tmp / f"{task}.yaml", _task_yaml(task, spec, out / f"{task}.jsonl", chosen.eval))
            settings["tasks"][task] = {**spec, "n_probes": len(mine),
                                       "max_gen_toks": max_new_tokens(spec["mode"], chosen.eval)}
        write_atomic(tmp / f"{GROUP}.yaml", _group_yaml(list(tasks)))
        write_atomic(tmp / SETTINGS_FILE, json.dumps(settings, indent=1) + "\n")
        write_atomic(tmp / "README.md", _readme(settings, left_out))
    return out


# --- what lm-eval calls ------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _state(settings_path: str) -> tuple[dict[str, Any], Any, dict[str, Probe]]:
    """(settings, world, probes by id) of an export, checked against the world folder and the
    installed scorer."""
    from medsafetyworld.evaluation.probes import build_probes
    from medsafetyworld.world.io import load_world, world_hash

    try:
        settings = json.loads(Path(settings_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the export settings {settings_path} ({exc}); "
                        "run msw export-lm-eval again") from None
    if settings.get("scoring_version") != SCORING_VERSION:
        raise DataError(f"{settings_path} was exported for scoring version {settings.get('scoring_version')}, the "
                        f"installed medsafetyworld scores with version {SCORING_VERSION}; run msw export-lm-eval again")
    world_dir = settings["world_dir"]
    if world_hash(world_dir) != settings["world_hash"]:
        raise DataError(f"the world in {world_dir} changed since {settings_path} was exported; "
                        "run msw export-lm-eval again")
    world, splits = load_world(world_dir)
    families = tuple(f for spec in settings["tasks"].values() for f in spec["families"])
    probes = build_probes(world, splits, EvalConfig(**settings["eval"]), settings["seed"], families)
    return settings, world, {p.id: p for p in probes}


def load_docs(data_file: str | None = None, **_: Any) -> dict[str, Any]:
    """lm-eval's `custom_dataset`: the task's probes as the `test` split. Also wraps HFLM (module
    docstring) and marks the task as this export's."""
    import datasets

    if data_file is None:
        raise ConfigError("the task YAML gives no dataset_kwargs.data_file; run msw export-lm-eval again")
    try:
        rows = [json.loads(line) for line in Path(data_file).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the probes {data_file} ({exc}); run msw export-lm-eval again") from None
    _OUR_TASKS.update(row["task"] for row in rows)
    wrap_hflm()
    return {"test": datasets.Dataset.from_list(rows)}


def _plain(value: Any) -> Any:
    """A table cell as a plain JSON value (lm-eval logs what process_results returns)."""
    return value.item() if isinstance(value, np.generic) else value


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Score one response with `scoring.score` (the parser and the family's scorer); every metric of
    the task gets the scored row, which `aggregate` turns into the metric."""
    from medsafetyworld.evaluation.scoring import score

    settings, world, probes = _state(doc["settings"])
    probe = probes.get(doc["probe_id"])
    if probe is None or context(probe) != doc["prompt"]:
        raise DataError(f"probe {doc['probe_id']} of {doc['settings']} is not the benchmark's any more "
                        "(another medsafetyworld version?); run msw export-lm-eval again")
    row = score(world, probe, results[0])
    scored = {c: _plain(row[c]) for c in REQUIRED_COLUMNS}
    out: dict[str, Any] = {}
    for metric in settings["tasks"][doc["task"]]["metrics"]:
        out[metric] = (metric, "value", scored)
        out[metric + N_SUFFIX] = (metric, "n", scored)
    return out


def aggregate(items: list[tuple[str, str, dict[str, Any]]]) -> float:
    """One metric (value or n) over a task's scored rows, by `compute_metrics`, as msw evaluate
    computes it; NaN where no probe counts."""
    import pandas as pd

    from medsafetyworld.evaluation.metrics import compute_metrics

    if not items:
        return float("nan")
    metric, what = items[0][0], items[0][1]
    value = compute_metrics(pd.DataFrame([row for _, _, row in items]), n_boot=1)[metric]
    return float(value.n) if what == "n" else float(value.value)


# --- lm-eval's hf model, made to ask as ModelPolicy does ------------------------------------------


def wrap_hflm() -> bool:
    """Wrap `lm_eval.models.huggingface.HFLM.generate_until` (once): requests of this export's tasks
    are generated with special tokens decoded, no BOS added and no prompt truncated (module
    docstring); all others as before. False when lm-eval's hf model is not installed."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return False
    if getattr(HFLM.generate_until, "_medsafetyworld", False):
        return True
    plain_generate, plain_decode = HFLM.generate_until, HFLM.tok_decode

    def tok_decode(self, tokens, skip_special_tokens=True):
        if getattr(self, "_msw_keep_special", False):
            skip_special_tokens = False
        return plain_decode(self, tokens, skip_special_tokens=skip_special_tokens)

    def generate_until(self, requests, disable_tqdm: bool = False):
        ours = [i for i, r in enumerate(requests) if r.task_name in _OUR_TASKS]
        if not ours:
            return plain_generate(self, requests, disable_tqdm)
        mine = set(ours)
        theirs = [i for i in range(len(requests)) if i not in mine]
        out: list[Any] = [None] * len(requests)
        if theirs:
            for i, text in zip(theirs, plain_generate(self, [requests[i] for i in theirs], disable_tqdm)):
                out[i] = text
        saved = (self.add_bos_token, getattr(self, "_max_length", None))
        self.add_bos_token, self._max_length, self._msw_keep_special = False, 2**31, True
        try:
            for i, text in zip(ours, plain_generate(self, [requests[i] for i in ours], disable_tqdm)):
                out[i] = text
        finally:
            (self.add_bos_token, self._max_length), self._msw_keep_special = saved, False
        return out

    generate_until._medsafetyworld = True
    HFLM.generate_until, HFLM.tok_decode = generate_until, tok_decode
    return True
