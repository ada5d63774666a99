"""The bad-input suite (issue 13): every mistake a user can make ends in exit code 2 and exactly one
line on stderr, `msw: error: ...`, naming what is wrong; never a traceback, a hang or a lost file.

`CASES` is a table of (command, input, expected fragments); add a row for each new mistake found.
The property tests feed random strategy specs, random JSON for world, splits and record files, and
random bytes for shards and model files, and accept only exit 2 (one line) or success.

Everything runs in-process on the micro world, with `micro` swapped for a variant whose corpus and
evaluation are a few seconds (`FAST`), so the file runs in about a minute.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from medsafetyworld import cli
from medsafetyworld.cli import main
from medsafetyworld.config import PRESETS

_MICRO = PRESETS["micro"]
FAST = dataclasses.replace(
    _MICRO,
    corpus=dataclasses.replace(_MICRO.corpus, token_budget=20_000, min_fact_mentions=1),
    eval=dataclasses.replace(_MICRO.eval, max_new_tokens=8, probes_per_pair=1, harmful_per_condition=1,
                             max_probes_per_family=6, knowledge_facts=4, bootstrap_samples=20),
)
HUGE = str(2**70)


@pytest.fixture(autouse=True)
def fast_micro_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", FAST)


@contextlib.contextmanager
def _fast_presets():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, "micro", FAST)
        yield


class TookTooLong(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int):
    """A hang becomes a failure: TookTooLong after `seconds`."""

    def ring(*_):
        raise TookTooLong(f"no answer after {seconds}s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def call(argv: list[str], seconds: int = 120) -> tuple[int, str]:
    """(exit code, stderr) of `msw argv`, in-process; any exception but SystemExit propagates (a
    traceback is a failure)."""
    err = io.StringIO()
    with deadline(seconds), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    lines = err.splitlines()
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("msw: error: "), f"not one `msw: error:` line:\n{err}"
    for fragment in fragments:
        assert fragment.lower() in err.lower(), f"{fragment!r} not in {err!r}"
    return err


def assert_exit_2_or_success(code: int, err: str) -> None:
    """(For property tests: `--hypothesis-show-statistics` counts the outcomes.)"""
    event(f"exit {code}")
    assert code in (0, 2), f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    if code == 2:
        assert_one_line_error(code, err)


# --- inputs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_dir(micro_world_dir, tmp_path_factory):
    """A small raw corpus of the micro world (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("corpus") / "raw"
    with _fast_presets():
        code, err = call(["-q", "corpus", "--world", micro_world_dir, "--preset", "micro", "--out", out])
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def run_dir(micro_world_dir, tmp_path_factory):
    """A run folder with the records of two reference policies (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("run")
    with _fast_presets():
        for name in ("oracle", "usual"):
            code, err = call(["-q", "evaluate", name, "--world", micro_world_dir, "--preset", "micro",
                              "--out", out / "results" / f"ref-{name}"])
            assert code == 0, err
    return out


def _copy_world(ctx) -> Path:
    out = ctx["tmp"] / "world"
    shutil.copytree(ctx["world"], out)
    return out


def _copy_model(ctx) -> Path:
    out = ctx["tmp"] / "model"
    shutil.copytree(ctx["model"], out)
    return out


def world_with(world=None, splits=None, preset=None, change=None):
    """A setup: the micro world copied, world.json / splits.json changed by a function of their JSON
    (or replaced by text or bytes), preset.json replaced, or `change(folder)` applied."""

    def write(path: Path, how):
        if how is None:
            return
        if callable(how):
            data = json.loads(path.read_text())
            how(data)
            path.write_text(json.dumps(data))
        elif isinstance(how, bytes):
            path.write_bytes(how)
        else:
            path.write_text(how)

    def setup(ctx):
        folder = _copy_world(ctx)
        write(folder / "world.json", world)
        write(folder / "splits.json", splits)
        if preset is not None:
            (folder / "preset.json").write_text(preset)
        if change is not None:
            change(folder)
        return folder

    return setup


def model_with(change):
    """A setup: the random micro model copied, then `change(folder)`."""

    def setup(ctx):
        folder = _copy_model(ctx)
        change(folder)
        return folder

    return setup


def _edit_config(**fields):
    def change(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **fields}))

    return change


def _truncate(name, keep):
    def change(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:keep] if keep >= 0 else data[:keep])

    return change


def _remove(*names):
    def change(folder):
        for name in names:
            target = folder / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()

    return change


def _write(name, data):
    def change(folder):
        (folder / name).write_bytes(data) if isinstance(data, bytes) else (folder / name).write_text(data)

    return change


def _drop_tensor(name):
    def change(folder):
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        del tensors[name]
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    return change


def _a_file(ctx):
    path = ctx["tmp"] / "a-file"
    path.write_text("keep me")
    return path


def _node(of_kind):
    return lambda data: next(n for n in data["nodes"] if n["kind"] == of_kind)


def _set_node(of_kind, **fields):
    return lambda data: _node(of_kind)(data).update(fields)


def _drop_field(of_kind, field):
    return lambda data: _node(of_kind)(data).pop(field)


def _corpus_with(change):
    def setup(ctx):
        folder = ctx["tmp"] / "corpus"
        shutil.copytree(ctx["corpus"], folder)
        change(folder)
        return folder

    setup.needs_corpus = True
    return setup


# Each row: (id, setup returning the path that stands for {X} or None, argv with {W} the micro
# world, {M} the random micro model, {C} a corpus, {R} a run folder, {T} an empty folder, {X} the
# setup's path, expected fragments of the message).
W, M, T, X, C, R = "{W}", "{M}", "{T}", "{X}", "{C}", "{R}"
EVAL_X = ["-q", "evaluate", X, "--world", W, "--preset", "micro", "--out", f"{T}/res"]
CORPUS_X = ["-q", "corpus", "--world", X, "--out", f"{T}/corpus"]
EVAL_WORLD_X = ["-q", "evaluate", "oracle", "--world", X, "--preset", "micro", "--out", f"{T}/res"]


def run_argv(*extra):
    return ["run", "--preset", "micro", *extra, "--out", f"{T}/run"]


def strategy(spec):
    return run_argv("--strategies", spec)


CASES = [
    # the command line itself
    ("no-command", None, [], ["required: command"]),
    ("unknown-command", None, ["trian"], ["invalid choice", "trian"]),
    ("unknown-option", None, ["world", "--bogus", "--out", f"{T}/w"], ["unrecognized arguments", "--bogus"]),
    ("missing-out", None, ["world", "--preset", "micro"], ["required", "--out"]),
    ("nul-in-argument", None, ["world", "--out", "a\x00b"], ["NUL"]),
    ("bad-backend", None, run_argv("--backend", "gpu"), ["invalid choice", "gpu"]),
    ("bad-decoding", None, ["evaluate", "oracle", "--world", W, "--decoding", "beam", "--out", f"{T}/r"],
     ["invalid choice", "beam"]),
    # seeds
    ("world-seed-negative", None, ["world", "--preset", "micro", "--seed", "-1", "--out", f"{T}/w"],
     ["--seed", "from 0 to 4294967295", "-1"]),
    ("world-seed-huge", None, ["world", "--preset", "micro", "--seed", HUGE, "--out", f"{T}/w"], ["--seed", HUGE]),
    ("world-seed-text", None, ["world", "--seed", "abc", "--out", f"{T}/w"], ["--seed", "'abc'"]),
    ("world-seed-float", None, ["world", "--seed", "1.5", "--out", f"{T}/w"], ["--seed", "1.5"]),
    ("run-seeds-negative", None, run_argv("--seeds", "-1"), ["--seeds", "-1"]),
    ("run-seeds-huge", None, run_argv("--seeds", f"1,{HUGE}"), ["--seeds", HUGE]),
    ("run-seeds-empty", None, run_argv("--seeds", ""), ["--seeds", "comma-separated integers"]),
    ("run-seeds-commas", None, run_argv("--seeds", ",,"), ["--seeds"]),
    ("run-seeds-text", None, run_argv("--seeds", "one"), ["seeds must be"]),
    ("run-seeds-twice", None, run_argv("--seeds", "1,2,1"), ["given twice"]),
    ("run-world-seed-huge", None, run_argv("--world-seed", HUGE), ["--world-seed", HUGE]),
    ("run-world-seed-negative", None, run_argv("--world-seed", "-3"), ["--world-seed", "-3"]),
    ("evaluate-seed-negative", None, ["evaluate", "oracle", "--world", W, "--seed", "-5", "--out", f"{T}/r"],
     ["--seed", "-5"]),
    ("attack-seed-2**64", None, ["attack", "oracle", "--world", W, "--seed", str(2**64), "--out", f"{T}/r"],
     ["--seed", str(2**64)]),
    ("corpus-seed-negative", None, ["corpus", "--world", W, "--seed", "-1", "--out", f"{T}/c"], ["--seed"]),
    ("train-seed-negative", None, ["train", "--world", W, "--corpus", C, "--seed", "-2", "--out", f"{T}/m"],
     ["--seed"]),
    ("sweep-seed-huge", None, ["sweep", "--seed", HUGE, "--out", f"{T}/s"], ["--seed"]),
    ("sweep-world-seed-negative", None, ["sweep", "--world-seed", "-1", "--out", f"{T}/s"], ["--world-seed"]),
    # other numbers and lists
    ("num-beams-zero", None, ["evaluate", M, "--world", W, "--decoding", "safebeam", "--num-beams", "0",
                              "--out", f"{T}/r"], ["--num-beams", "at least 1"]),
    ("sweep-threads-negative", None, ["sweep", "--threads", "-1", "--out", f"{T}/s"], ["--threads", "at least 0"]),
    ("bench-steps-one", None, ["bench-train", "--preset", "micro", "--steps", "1"], ["--steps", "at least 2"]),
    ("bench-steps-text", None, ["bench-train", "--steps", "many"], ["--steps", "many"]),
    ("bench-unknown-backend", None, ["bench-train", "--preset", "micro", "--backends", "tpu", "--steps", "2"],
     ["unknown backend", "tpu"]),
    ("bench-backends-empty", None, ["bench-train", "--backends", ""], ["--backends", "empty list"]),
    ("attacks-empty", None, ["attack", "oracle", "--world", W, "--attacks", "", "--out", f"{T}/r"],
     ["--attacks", "empty list"]),
    ("attacks-only-commas", None, ["attack", "oracle", "--world", W, "--attacks", ",", "--out", f"{T}/r"],
     ["--attacks", "empty list"]),
    ("run-attacks-empty", None, run_argv("--attacks", ""), ["--attacks", "empty list"]),
    ("strategies-empty", None, strategy(""), ["--strategies", "empty list"]),
    ("sweep-shapes-empty", None, ["sweep", "--shapes", "", "--out", f"{T}/s"], ["--shapes", "empty list"]),
    ("sweep-tokens-empty", None, ["sweep", "--tokens", " , ", "--out", f"{T}/s"], ["--tokens", "empty list"]),
    ("sweep-bad-shape", None, ["sweep", "--preset", "micro", "--shapes", "3x", "--out", f"{T}/s"],
     ["'3x'", "LAYERSxWIDTH"]),
    ("sweep-bad-tokens", None, ["sweep", "--preset", "micro", "--tokens", "lots", "--out", f"{T}/s"],
     ["'lots'", "token count"]),
    # presets
    ("world-unknown-preset", None, ["world", "--preset", "huge", "--out", f"{T}/w"], ["huge", "micro, tiny, small"]),
    ("run-unknown-preset", None, ["run", "--preset", "Tiny", "--out", f"{T}/r"], ["'Tiny'", "micro, tiny"]),
    ("corpus-unknown-preset", None, ["corpus", "--world", W, "--preset", "big", "--out", f"{T}/c"], ["'big'"]),
    ("evaluate-unknown-preset", None, ["evaluate", "oracle", "--world", W, "--preset", "x", "--out", f"{T}/r"],
     ["unknown preset"]),
    ("sweep-unknown-preset", None, ["sweep", "--preset", "x", "--out", f"{T}/s"], ["unknown preset"]),
    ("bench-unknown-preset", None, ["bench-train", "--preset", "x"], ["unknown preset"]),
    # output paths
    ("world-out-is-a-file", _a_file, ["world", "--preset", "micro", "--out", X], ["a-file", "is a file"]),
    ("world-out-under-a-file", _a_file, ["world", "--preset", "micro", "--out", f"{X}/sub/w"],
     ["a-file is a file", "cannot be made under it"]),
    ("corpus-out-is-a-file", _a_file, ["corpus", "--world", W, "--out", X], ["is a file"]),
    ("train-out-is-a-file", _a_file, ["train", "--world", W, "--corpus", C, "--out", X], ["is a file"]),
    ("evaluate-out-is-a-file", _a_file, ["evaluate", "oracle", "--world", W, "--out", X], ["is a file"]),
    ("attack-out-under-a-file", _a_file, ["attack", "oracle", "--world", W, "--out", f"{X}/r"], ["is a file"]),
    ("run-out-under-a-file", _a_file, run_argv()[:-1] + [f"{X}/run"], ["is a file"]),
    ("sweep-out-is-a-file", _a_file, ["sweep", "--out", X], ["is a file"]),
    ("corpus-out-is-its-world", world_with(), ["-q", "corpus", "--world", X, "--out", X],
     ["--out", "is the --world folder", "choose another --out"]),
    ("corpus-out-holds-its-world", world_with(), ["-q", "corpus", "--world", X, "--out", T],
     ["holds the --world folder"]),
    ("evaluate-out-is-its-world", world_with(), ["evaluate", "oracle", "--world", X, "--out", X],
     ["is the --world folder"]),
    ("evaluate-out-is-the-model", model_with(lambda folder: None), ["evaluate", X, "--world", W, "--out", X],
     ["is the model folder"]),
    ("train-out-is-the-corpus", None, ["train", "--world", W, "--corpus", C, "--out", C], ["is the --corpus folder"]),
    ("out-empty", None, ["world", "--out", ""], ["empty output path"]),
    ("out-name-too-long", None, ["world", "--out", f"{T}/{'x' * 300}/w"], ["file name too long"]),
    ("csv-is-a-folder", None, ["bench-train", "--csv", T], ["is a folder"]),
    ("stats-csv-under-a-file", _a_file, ["corpus", "stats", C, "--csv", f"{X}/t.csv"], ["is a file"]),
    # strategy specs
    ("unknown-strategy", None, strategy("raw,filtr"), ["'filtr'", "reflect"]),
    ("tag-p-not-a-number", None, strategy("tag(p=abc)"), ["tag", "p must be a number", "'abc'"]),
    ("tag-p-a-list", None, strategy("tag(p=[1])"), ["p must be a number"]),
    ("tag-p-out-of-range", None, strategy("tag(p=2)"), ["probability"]),
    ("tag-p-infinite", None, strategy("tag(p=1e999)"), ["probability"]),
    ("tag-unknown-parameter", None, strategy("tag(q=1)"), ["does not take q", "it takes p"]),
    ("tag-parameter-twice", None, strategy("tag(p=0.1,p=0.2)"), ["given twice"]),
    ("tag-not-key-value", None, strategy("tag(p)"), ["key=value"]),
    ("unbalanced-open", None, strategy("tag(p=0.1"), ["unbalanced '('"]),
    ("unbalanced-close", None, strategy("tag(p=0.1))"), ["unbalanced ')'"]),
    ("curriculum-without-inner", None, strategy("curriculum(start=0.5)"), ["curriculum", "needs inner="]),
    ("curriculum-bare", None, ["corpus", "--world", W, "--strategy", "curriculum", "--out", f"{T}/c"],
     ["needs inner="]),
    ("curriculum-nested", None, strategy("curriculum(start=0.5,inner=curriculum(start=0.1,inner=raw))"),
     ["do not nest"]),
    ("curriculum-unknown-inner", None, strategy("curriculum(start=0.5,inner=nope)"), ["unknown strategy 'nope'"]),
    ("curriculum-start-text", None, strategy("curriculum(start=half,inner=filter)"), ["start must be a number"]),
    ("noisy-warmup-fraction", None, strategy("noisy(warmup=2.5)"), ["warmup must be a whole number"]),
    ("noisy-warmup-bool", None, strategy("noisy(warmup=True)"), ["warmup must be a number"]),
    ("noisy-recall-zero", None, strategy("noisy(recall=0)"), ["recall"]),
    ("rewrite-share-negative", None, strategy("rewrite(share=-1)"), ["fraction"]),
    ("recipe-with-parameters", None, strategy("safety_pretraining(p=1)"), ["takes no parameters"]),
    ("chain-empty-term", None, strategy("raw+"), ["empty term"]),
    ("chain-only-plus", None, strategy("+"), ["empty term"]),
    ("spec-not-a-name", None, strategy("1tag"), ["cannot read strategy spec"]),
    ("spec-trailing-text", None, strategy("tag(p=0.1)x"), ["cannot read strategy spec"]),
    ("spec-deep-unbalanced", None, strategy("curriculum(inner=" * 500), ["unbalanced"]),
    ("spec-deep-balanced", None, strategy("curriculum(inner=" * 500 + "raw" + ")" * 500), ["too long"]),
    ("spec-nested-ten-levels", None, strategy("tag(p=" + "(" * 9 + "0.1" + ")" * 9 + ")"), ["nests 10 levels"]),
    ("spec-100k-characters", None, strategy("raw+" * 25_000 + "raw"), ["100003 characters", "too long"]),
    ("spec-huge-number", None, strategy("tag(p=" + "9" * 5000 + ")"), ["too long"]),
    ("spec-label-too-long", None, strategy("+".join(["tag(p=1e-9)"] * 16)), ["label too long"]),
    ("corpus-unknown-strategy", None, ["corpus", "--world", W, "--strategy", "nope", "--out", f"{T}/c"],
     ["unknown strategy"]),
    ("train-bad-strategy", None, ["train", "--world", W, "--corpus", C, "--strategy", "tag(p=x)", "--out", f"{T}/m"],
     ["p must be a number"]),
    # attack specs
    ("unknown-attack", None, run_argv("--attacks", "prefil"), ["unknown attack", "prefill"]),
    ("attack-unknown-parameter", None, run_argv("--attacks", "prefill(x=1)"), ["does not take x"]),
    ("attack-lr-text", None, run_argv("--attacks", "harmful_ft(lr=abc)"), ["lr must be a number"]),
    ("attack-examples-negative", None, run_argv("--attacks", "harmful_ft(examples=-1)"), ["examples"]),
    ("attack-bad-templates", None, run_argv("--attacks", "jailbreak(templates=nope)"), ["templates"]),
    ("attack-spec-too-long", None, run_argv("--attacks", "prefill(" + "x=1," * 100 + "x=1)"), ["too long"]),
    ("finetune-a-reference", None, ["attack", "oracle", "--world", W, "--attacks", "harmful_ft", "--out", f"{T}/r"],
     ["finetune model weights"]),
    # evaluate / attack targets
    ("safebeam-reference", None, ["evaluate", "oracle", "--world", W, "--decoding", "safebeam", "--out", f"{T}/r"],
     ["needs a model folder"]),
    ("pretrained-reference", None, ["evaluate", "oracle", "--world", W, "--pretrained", M, "--out", f"{T}/r"],
     ["--pretrained needs a model folder"]),
    ("model-not-found", None, ["evaluate", f"{T}/nowhere", "--world", W, "--out", f"{T}/r"],
     ["neither a model folder nor a reference policy", "oracle"]),
    ("attack-model-not-found", None, ["attack", "orcale", "--world", W, "--out", f"{T}/r"],
     ["neither a model folder nor a reference policy"]),
    # world folders
    ("world-missing", None, ["corpus", "--world", f"{T}/nowhere", "--out", f"{T}/c"], ["nowhere", "msw world"]),
    ("world-is-a-file", _a_file, ["evaluate", "oracle", "--world", X, "--out", f"{T}/r"], ["a-file", "not a folder"]),
    ("world-is-a-model", None, ["evaluate", "oracle", "--world", M, "--out", f"{T}/r"], ["no world.json"]),
    ("world-json-missing", world_with(change=_remove("world.json")), CORPUS_X, ["no world.json"]),
    ("world-json-not-json", world_with(world="{not json"), CORPUS_X, ["world.json", "not valid JSON"]),
    ("world-json-bytes", world_with(world=b"\xff\xfe\x00garbage"), CORPUS_X, ["world.json", "not valid JSON"]),
    ("world-json-list", world_with(world="[1, 2, 3]"), CORPUS_X, ["world.json", "a JSON array"]),
    ("world-json-null", world_with(world="null"), CORPUS_X, ["world.json", "a JSON null"]),
    ("world-unknown-kind", world_with(world=_set_node("drug", kind="potion")), CORPUS_X,
     ["kind 'potion'", "drug, compound, effect, condition"]),
    ("world-unknown-relation", world_with(world=lambda d: d["edges"][0].update(relation="cures")), CORPUS_X,
     ["relation 'cures'"]),
    ("world-edge-wrong-kinds", world_with(world=lambda d: d["edges"][0].update(target=d["edges"][0]["source"])),
     CORPUS_X, ["does not join a drug to a compound"]),
    ("world-edge-to-nowhere", world_with(world=lambda d: d["edges"][0].update(target="nowhere")), CORPUS_X,
     ["'nowhere'", "does not join"]),
    ("world-nodes-not-a-list", world_with(world=lambda d: d.update(nodes="abc")), CORPUS_X, ["'nodes'"]),
    ("world-node-twice", world_with(world=lambda d: d["nodes"].append(dict(d["nodes"][0]))), CORPUS_X,
     ["appears twice"]),
    ("world-node-without-id", world_with(world=lambda d: d["nodes"][0].pop("id")), CORPUS_X, ["node 0"]),
    ("world-not-directed", world_with(world=lambda d: d.update(directed=False)), CORPUS_X, ["directed"]),
    ("world-no-edges", world_with(world=lambda d: d.update(edges=[])), EVAL_WORLD_X, ["usual drug", "does not treat"]),
    ("world-no-conditions", world_with(world=lambda d: d.update(nodes=[n for n in d["nodes"]
                                                                       if n["kind"] != "condition"])),
     CORPUS_X, ["no condition nodes"]),
    ("world-usual-drug-missing", world_with(world=_drop_field("condition", "usual_drug")), CORPUS_X,
     ["usual_drug None"]),
    ("world-usual-drug-a-list", world_with(world=_set_node("condition", usual_drug=["x"])), CORPUS_X,
     ["usual_drug"]),
    ("world-seed-negative-inside", world_with(world=lambda d: d["graph"].update(seed=-1)), CORPUS_X, ["graph.seed"]),
    ("world-no-patients", world_with(world=lambda d: d["graph"].update(patient_names=[])), CORPUS_X,
     ["patient_names"]),
    ("splits-list", world_with(splits="[]"), CORPUS_X, ["splits.json", "a JSON array"]),
    ("splits-not-json", world_with(splits="{"), CORPUS_X, ["splits.json", "not valid JSON"]),
    ("splits-key-missing", world_with(splits=lambda d: d.pop("ood_treats")), CORPUS_X, ["ood_treats missing"]),
    ("splits-pair-is-text", world_with(splits=lambda d: d.update(held_out_pairs=["ab"])), CORPUS_X,
     ["held_out_pairs", "not a pair of names"]),
    ("splits-unknown-names", world_with(splits=lambda d: d.update(held_out_pairs=[["nope", "nada"]])), CORPUS_X,
     ["not a (drug, condition) pair of this world"]),
    ("splits-pairs-not-a-list", world_with(splits=lambda d: d.update(ood_treats=7)), CORPUS_X,
     ["ood_treats is not a list"]),
    ("splits-template-out-of-range", world_with(splits=lambda d: d.update(reserved_templates=[99])), CORPUS_X,
     ["reserved_templates [99]"]),
    ("splits-every-template", world_with(splits=lambda d: d.update(reserved_templates=list(range(6)))), CORPUS_X,
     ["reserves every request template"]),
    ("splits-template-text", world_with(splits=lambda d: d.update(reserved_templates=["0"])), CORPUS_X,
     ["template numbers"]),
    ("preset-json-not-json", world_with(preset="{bad"), CORPUS_X, ["preset.json", "--preset"]),
    ("preset-json-list", world_with(preset="[1]"), CORPUS_X, ["preset.json"]),
    ("preset-json-unknown", world_with(preset='{"preset": "huge"}'), CORPUS_X, ["unknown preset 'huge'"]),
    ("world-tokenizer-missing", world_with(change=_remove("tokenizer")), CORPUS_X, ["no tokenizer"]),
    ("world-tokenizer-not-json", world_with(change=_write("tokenizer/tokenizer.json", "{bad")), CORPUS_X,
     ["cannot load the tokenizer"]),
    # model folders
    ("model-no-weights", model_with(_remove("model.safetensors")), EVAL_X, ["no weights", "model.safetensors"]),
    ("model-weights-truncated", model_with(_truncate("model.safetensors", 1000)), EVAL_X, ["cannot load the model"]),
    ("model-weights-cut-short", model_with(_truncate("model.safetensors", -100)), EVAL_X, ["cannot load the model"]),
    ("model-weights-empty", model_with(_write("model.safetensors", b"")), EVAL_X, ["cannot load the model"]),
    ("model-weights-garbage", model_with(_write("model.safetensors", b"\x00" * 64)), EVAL_X,
     ["cannot load the model"]),
    ("model-no-config", model_with(_remove("config.json")), EVAL_X, ["no config.json"]),
    ("model-config-not-json", model_with(_write("config.json", "{bad")), EVAL_X, ["config.json", "not valid JSON"]),
    ("model-config-list", model_with(_write("config.json", "[1, 2]")), EVAL_X, ["not a model config"]),
    ("model-config-empty", model_with(_write("config.json", "{}")), EVAL_X, ["no model_type"]),
    ("model-config-unknown-type", model_with(_edit_config(model_type="nonesuch")), EVAL_X,
     ["cannot load the model"]),
    ("model-config-bad-value", model_with(_edit_config(hidden_size="abc")), EVAL_X, ["cannot load the model"]),
    ("model-config-wrong-shape", model_with(_edit_config(hidden_size=64)), EVAL_X,
     ["shapes of its weights do not match its config.json"]),
    ("model-weights-lack-a-tensor", model_with(_drop_tensor("model.norm.weight")), EVAL_X,
     ["lack 1 of the model's tensors", "model.norm.weight"]),
    ("model-no-tokenizer", model_with(_remove("tokenizer.json", "tokenizer_config.json")), EVAL_X, ["no tokenizer"]),
    ("model-tokenizer-not-json", model_with(_write("tokenizer.json", "{bad")), EVAL_X, ["cannot load the model"]),
    ("model-is-a-file", _a_file, EVAL_X, ["neither a model folder nor a reference policy"]),
    ("attack-broken-model", model_with(_truncate("model.safetensors", 1000)),
     ["-q", "attack", X, "--world", W, "--preset", "micro", "--out", f"{T}/res"], ["cannot load the model"]),
    ("pretrained-broken", model_with(_remove("model.safetensors")),
     ["-q", "evaluate", M, "--world", W, "--preset", "micro", "--pretrained", X, "--out", f"{T}/res"],
     ["no weights"]),
    # corpora and runs
    ("corpus-missing", None, ["train", "--world", W, "--corpus", f"{T}/nowhere", "--out", f"{T}/m"],
     ["manifest.json missing"]),
    ("corpus-is-a-world", None, ["train", "--world", W, "--corpus", W, "--out", f"{T}/m"], ["manifest.json missing"]),
    ("stats-of-a-world", None, ["corpus", "stats", W], ["manifest.json missing", "msw corpus"]),
    ("stats-manifest-not-json", _corpus_with(_write("manifest.json", "{bad")), ["corpus", "stats", X],
     ["manifest"]),
    ("stats-manifest-list", _corpus_with(_write("manifest.json", "[]")), ["corpus", "stats", X], ["manifest"]),
    ("summarize-nowhere", None, ["summarize", f"{T}/nowhere"], ["no results/*/record.json"]),
    ("summarize-a-file", _a_file, ["summarize", X], ["no results/*/record.json"]),
    ("stats-of-a-file", _a_file, ["corpus", "stats", X], ["manifest.json missing"]),
    ("summarize-unknown-baseline", None, ["summarize", R, "--baseline", "nope"],
     ["--baseline nope", "ref:oracle, ref:usual"]),
]


@pytest.fixture
def ctx(tmp_path, micro_world_dir, random_model_dir, request):
    """Paths the cases name; the corpus and the run folder are built only for the cases that use them."""
    names = {"tmp": tmp_path, "world": micro_world_dir, "model": random_model_dir}
    params = request.node.callspec.params
    argv = " ".join(params["argv"])
    if C in argv or getattr(params["setup"], "needs_corpus", False):
        names["corpus"] = request.getfixturevalue("corpus_dir")
    if R in argv:
        names["run"] = request.getfixturevalue("run_dir")
    return names


def _fill(argv: list[str], ctx: dict, x: Path | None) -> list[str]:
    values = {W: ctx["world"], M: ctx["model"], T: ctx["tmp"], X: x, C: ctx.get("corpus"), R: ctx.get("run")}
    out = []
    for arg in argv:
        for key, value in values.items():
            if key in arg:
                arg = arg.replace(key, str(value))
        out.append(arg)
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name,setup,argv,fragments", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_exit_2(name, setup, argv, fragments, ctx):
    x = setup(ctx) if setup else None
    before = {"world": _snapshot(ctx["world"]), "model": _snapshot(ctx["model"])}
    kept = _snapshot(x) if isinstance(x, Path) and x.is_dir() else None
    code, err = call(_fill(argv, ctx, x))
    assert_one_line_error(code, err, *fragments)
    # nothing the user gave is lost or changed
    assert _snapshot(ctx["world"]) == before["world"] and _snapshot(ctx["model"]) == before["model"]
    if kept is not None:
        assert _snapshot(x) == kept
    if isinstance(x, Path) and x.name == "a-file":
        assert x.read_text() == "keep me"


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)


# --- errors of the operating system on the user's paths -------------------------------------


@pytest.mark.parametrize("code,fragments", [
    (errno.ENOSPC, ["world.json", "no space left", "rerun"]),
    (errno.EACCES, ["world.json", "permission denied"]),
    (errno.EROFS, ["world.json", "read-only file system"]),
    (errno.EDQUOT, ["world.json", "quota"]),
])
def test_an_os_error_on_an_output_path_is_one_line_naming_it(code, fragments, tmp_path, monkeypatch):
    import medsafetyworld.world.io as world_io

    def refuse(path, data):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(world_io, "write_atomic", refuse)
    assert_one_line_error(*call(["world", "--preset", "micro", "--out", tmp_path / "w"]), *fragments)


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert_one_line_error(*call(["world", "--preset", "micro", "--out", tmp_path / "w"]), "cannot write in",
                          str(tmp_path))
    assert not (tmp_path / "w").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(*call(["world", "--preset", "micro", "--out", locked / "w"]), "cannot write in")
    finally:
        locked.chmod(0o700)


def test_other_errors_keep_their_traceback(monkeypatch):
    """Only the user's mistakes are one line: a bug (or an OSError that is no path's fault) must
    still show where it happened."""
    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_strategies", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["strategies"])

    def io_error(args):
        raise OSError(errno.EIO, "Input/output error", "/dev/sda")

    monkeypatch.setattr(cli, "cmd_strategies", io_error)
    with pytest.raises(OSError):
        main(["strategies"])


def test_verbose_shows_the_traceback_of_a_user_error(capsys, tmp_path):
    assert main(["-v", "corpus", "--world", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("msw: error:")


def test_quiet_loading_a_model_prints_no_hugging_face_bar(micro_world_dir, random_model_dir, tmp_path,
                                                          one_torch_thread):
    code, err = call(["-q", "evaluate", random_model_dir, "--world", micro_world_dir, "--preset", "micro",
                      "--out", tmp_path / "r"])
    assert code == 0, err
    assert "Loading weights" not in err and "%|" not in err, err


# --- property tests -------------------------------------------------------------------------

# A fixed sample by default (the suite must not flake); MSW_BAD_INPUT_EXAMPLES=1000 searches wider
# and at random, e.g. after a change to a parser.
_EXAMPLES = int(os.environ.get("MSW_BAD_INPUT_EXAMPLES", "0"))
PROPERTY = settings(max_examples=_EXAMPLES or 60, deadline=None, derandomize=not _EXAMPLES,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEWER = settings(PROPERTY, max_examples=_EXAMPLES or 30)

NAMES = ["raw", "filter", "tag", "rewrite", "refusal", "moral", "reflect", "redflag", "noisy", "curriculum",
         "safety_pretraining", "p", "inner", "start", "share", "recall", "warmup", "nope"]
VALUES = st.one_of(st.sampled_from(["0", "0.5", "1", "-1", "2", "1e999", "nan", "abc", "True", "[1]", "{}", "''",
                                    "0x10", "1_0", "()", "None"]),
                   st.floats(allow_nan=True).map(repr), st.integers().map(str))


def _spec(inner):
    params = st.lists(st.tuples(st.sampled_from(NAMES), st.one_of(VALUES, inner)), max_size=3).map(
        lambda kv: ",".join(f"{k}={v}" for k, v in kv))
    call_ = st.tuples(st.sampled_from(NAMES), params).map(lambda t: f"{t[0]}({t[1]})")
    return st.lists(st.one_of(st.sampled_from(NAMES), call_, inner), min_size=1, max_size=3).map("+".join)


SPECS = st.one_of(
    st.recursive(st.sampled_from(NAMES), _spec, max_leaves=12),
    st.text(alphabet=st.sampled_from(list("()+,=. abtgrw01-_\"'[]{}\\\n\x00é")), max_size=60),
    st.text(max_size=40),
)


class Reached(Exception):
    """The command got past its checks to the first piece of work (the test stops it there)."""


@PROPERTY
@given(spec=SPECS)
def test_any_strategy_spec_is_run_or_refused_in_one_line(spec, monkeypatch, tmp_path):
    """`msw run --strategies SPEC`: a spec is either accepted (the run reaches its first stage,
    stopped here) or refused in one line."""
    import medsafetyworld.pipeline as pipeline

    def reached(*a, **k):
        raise Reached

    monkeypatch.setattr(pipeline, "make_world", reached)
    try:
        code, err = call(["run", "--preset", "micro", "--strategies", spec, "--out", tmp_path / "run"], seconds=30)
    except Reached:
        event("accepted")
        return
    event("exit 2")
    assert_one_line_error(code, err)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _paths(data, prefix=()):
    """Every (path, value) inside a JSON value, the root first."""
    yield prefix, data
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


@st.composite
def mutated(draw, original):
    """`original` (JSON) with one value somewhere replaced by random JSON, or deleted."""
    data = copy.deepcopy(original)
    paths = [p for p, _ in _paths(data) if p]
    # the first levels, where the meaning is, as often as the deep leaves
    path = draw(st.sampled_from(paths[:200]) | st.sampled_from(paths))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()):
        parent[path[-1]] = draw(JSON)
    elif isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])
    return data


def _scratch(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


def _world_json(micro_world_dir, name):
    return json.loads((micro_world_dir / name).read_text())


@pytest.fixture(scope="module")
def original_world(micro_world_dir):
    return _world_json(micro_world_dir, "world.json"), _world_json(micro_world_dir, "splits.json")


def _check_world_file(micro_world_dir, tmp_path, name, payload: bytes):
    folder = _scratch(tmp_path)
    shutil.copytree(micro_world_dir, folder / "w")
    (folder / "w" / name).write_bytes(payload)
    code, err = call(["-q", "evaluate", "oracle", "--world", folder / "w", "--preset", "micro",
                      "--out", folder / "r"], seconds=60)
    assert_exit_2_or_success(code, err)
    assert (folder / "w" / name).read_bytes() == payload  # the user's file is left as it was


@PROPERTY
@given(data=JSON, name=st.sampled_from(["world.json", "splits.json"]))
def test_random_json_as_a_world_file_is_refused_in_one_line(data, name, micro_world_dir, tmp_path):
    _check_world_file(micro_world_dir, tmp_path, name, json.dumps(data).encode())


@PROPERTY
@given(data=st.data(), name=st.sampled_from(["world.json", "splits.json"]))
def test_a_world_file_changed_anywhere_is_used_or_refused_in_one_line(data, name, micro_world_dir, original_world,
                                                                      tmp_path):
    original = original_world[0] if name == "world.json" else original_world[1]
    _check_world_file(micro_world_dir, tmp_path, name, json.dumps(data.draw(mutated(original))).encode())


@PROPERTY
@given(payload=st.binary(max_size=200))
def test_random_bytes_as_world_json_are_refused_in_one_line(payload, micro_world_dir, tmp_path):
    _check_world_file(micro_world_dir, tmp_path, "world.json", payload)


@pytest.fixture(scope="module")
def original_record(run_dir):
    return json.loads((run_dir / "results" / "ref-oracle" / "record.json").read_text())


def _check_record(run_dir, tmp_path, payload: bytes):
    folder = _scratch(tmp_path) / "run"
    shutil.copytree(run_dir, folder)
    record = folder / "results" / "ref-oracle" / "record.json"
    record.write_bytes(payload)
    kept = _snapshot(folder / "results")
    code, err = call(["summarize", folder], seconds=60)
    assert_exit_2_or_success(code, err)
    assert _snapshot(folder / "results") == kept  # records and per-probe tables are never changed


@PROPERTY
@given(data=JSON)
def test_random_json_as_a_record_is_refused_in_one_line(data, run_dir, tmp_path):
    _check_record(run_dir, tmp_path, json.dumps(data).encode())


@PROPERTY
@given(data=st.data())
def test_a_record_changed_anywhere_is_summarized_or_refused_in_one_line(data, run_dir, original_record, tmp_path):
    _check_record(run_dir, tmp_path, json.dumps(data.draw(mutated(original_record))).encode())


@PROPERTY
@given(payload=st.binary(max_size=2000))
def test_random_bytes_as_a_shard_are_refused_in_one_line(payload, corpus_dir, micro_world_dir, tmp_path,
                                                         monkeypatch):
    """`msw corpus stats` and `msw train` on a corpus whose shard holds random bytes: exit 2 (one
    line), or success for stats; training must never start on it."""
    import medsafetyworld.training.trainer as trainer

    def reached(*a, **k):
        raise Reached("training started on a damaged shard")

    monkeypatch.setattr(trainer, "build_model", reached)
    folder = _scratch(tmp_path) / "corpus"
    shutil.copytree(corpus_dir, folder)
    (folder / "shard-00000.parquet").write_bytes(payload)
    assert_exit_2_or_success(*call(["corpus", "stats", folder], seconds=60))
    code, err = call(["-q", "train", "--world", micro_world_dir, "--corpus", folder, "--preset", "micro",
                      "--out", folder.parent / "model"], seconds=60)
    assert_one_line_error(code, err)
    assert (folder / "shard-00000.parquet").read_bytes() == payload


def _check_model_file(random_model_dir, micro_world_dir, tmp_path, name, payload: bytes):
    folder = _scratch(tmp_path)
    shutil.copytree(random_model_dir, folder / "m")
    (folder / "m" / name).write_bytes(payload)
    code, err = call(["-q", "evaluate", folder / "m", "--world", micro_world_dir, "--preset", "micro",
                      "--out", folder / "r"], seconds=60)
    assert_one_line_error(code, err)
    assert (folder / "m" / name).read_bytes() == payload


@FEWER
@given(payload=st.binary(max_size=300), name=st.sampled_from(["model.safetensors", "config.json"]))
def test_random_bytes_as_a_model_file_are_refused_in_one_line(payload, name, random_model_dir, micro_world_dir,
                                                              tmp_path):
    _check_model_file(random_model_dir, micro_world_dir, tmp_path, name, payload)


@FEWER
@given(cut=st.floats(0, 0.999))
def test_a_truncated_model_is_refused_in_one_line(cut, random_model_dir, micro_world_dir, tmp_path):
    weights = (random_model_dir / "model.safetensors").read_bytes()
    _check_model_file(random_model_dir, micro_world_dir, tmp_path, "model.safetensors",
                      weights[: int(cut * len(weights))])


@FEWER
@given(data=JSON)
def test_random_json_as_a_model_config_is_refused_in_one_line(data, random_model_dir, micro_world_dir, tmp_path):
    _check_model_file(random_model_dir, micro_world_dir, tmp_path, "config.json", json.dumps(data).encode())
