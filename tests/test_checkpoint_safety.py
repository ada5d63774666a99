"""Nothing in a checkpoint is unpickled: optimizer state is safetensors + JSON, a legacy
`optimizer.pt` is read only as plain tensors, and a malicious one is refused without running."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from medsafetyworld import storage
from medsafetyworld.errors import DataError
from medsafetyworld.training import pretrain
from medsafetyworld.training.trainer import (
    LEGACY_OPTIMIZER,
    OPTIMIZER_JSON,
    OPTIMIZER_TENSORS,
    _decode_state,
    _encode_state,
    _read_optimizer_state,
)
from tests.test_trainer import SMALL, train_config, write_corpus

CFG = dataclasses.replace(train_config(12 * 8 * 64, batch_size=8, checkpoint_every=5), threads=1)  # 12 steps


class Evil:
    """Unpickling it creates `path` (what an attacker's payload would do, harmlessly)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, n_docs=1500)
    return root


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    log = pretrain(corpus, corpus / "tokenizer", out, SMALL, CFG, seed=3, progress=False)
    return out, log


def run(corpus, out, **kw):
    return pretrain(corpus, corpus / "tokenizer", out, SMALL, CFG, seed=3, progress=False, **kw)


def killed_at_7(corpus, out):
    """A run stopped after step 7: its checkpoint is the one of step 5."""
    log = run(corpus, out, stop_after=7)
    assert log["complete"] is False and (out / "checkpoint").is_dir()
    return out / "checkpoint"


def same_weights(a, b) -> bool:
    a = AutoModelForCausalLM.from_pretrained(a).state_dict()
    b = AutoModelForCausalLM.from_pretrained(b).state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_holds_no_pickle(corpus, tmp_path):
    ckpt = killed_at_7(corpus, tmp_path)
    names = sorted(p.name for p in ckpt.iterdir())
    assert OPTIMIZER_TENSORS in names and OPTIMIZER_JSON in names and LEGACY_OPTIMIZER not in names
    for path in ckpt.iterdir():
        assert path.is_file() and path.suffix in (".json", ".safetensors"), path
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            with safe_open(path, framework="pt") as f:
                assert list(f.keys())
    # the optimizer's tensors are all there: two moments and a step per parameter
    with safe_open(ckpt / OPTIMIZER_TENSORS, framework="pt") as f:
        keys = set(f.keys())
    n_params = len(AutoModelForCausalLM.from_pretrained(ckpt).state_dict())
    assert len(keys) >= 3 * (n_params - 1)  # the tied head is one parameter
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_resuming_the_new_format_is_bit_identical(corpus, uninterrupted, tmp_path):
    full, full_log = uninterrupted
    killed_at_7(corpus, tmp_path)
    log = run(corpus, tmp_path)
    assert log["resumed_from_step"] == 5 and log["loss_curve"] == full_log["loss_curve"]
    assert same_weights(full, tmp_path)


def test_a_legacy_optimizer_pt_of_plain_tensors_still_resumes_bit_identically(corpus, uninterrupted, tmp_path):
    """Runs in progress have checkpoints of the older format; they resume (weights_only=True)."""
    full, full_log = uninterrupted
    ckpt = killed_at_7(corpus, tmp_path)
    state = _read_optimizer_state(ckpt, torch.device("cpu"))
    torch.save(state, ckpt / LEGACY_OPTIMIZER)  # exactly what the trainer used to write
    (ckpt / OPTIMIZER_TENSORS).unlink()
    (ckpt / OPTIMIZER_JSON).unlink()
    log = run(corpus, tmp_path)
    assert log["resumed_from_step"] == 5 and log["loss_curve"] == full_log["loss_curve"]
    assert same_weights(full, tmp_path)


def test_a_malicious_optimizer_pt_is_refused_not_run(corpus, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    ckpt = killed_at_7(corpus, out)
    (ckpt / OPTIMIZER_TENSORS).unlink()
    (ckpt / OPTIMIZER_JSON).unlink()
    torch.save({"state": {}, "param_groups": [], "payload": Evil(marker)}, ckpt / LEGACY_OPTIMIZER)
    with pytest.raises(DataError, match=r"optimizer\.pt is not plain tensors and was refused.*delete .*checkpoint"):
        run(corpus, out)
    assert not marker.exists()
    assert (ckpt / LEGACY_OPTIMIZER).is_file()  # nothing deleted on the user's behalf either

    # the same payload loaded the way the trainer used to would have run it: the test can fail
    torch.load(ckpt / LEGACY_OPTIMIZER, weights_only=False)
    assert marker.exists()


def test_a_malicious_optimizer_pt_beside_the_new_format_is_never_read(corpus, uninterrupted, tmp_path):
    full, _ = uninterrupted
    out, marker = tmp_path / "run", tmp_path / "pwned"
    ckpt = killed_at_7(corpus, out)
    torch.save(Evil(marker), ckpt / LEGACY_OPTIMIZER)
    run(corpus, out)
    assert not marker.exists()
    assert same_weights(full, out)


def test_a_pickled_model_in_a_checkpoint_is_not_loaded(corpus, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    ckpt = killed_at_7(corpus, out)
    (ckpt / "model.safetensors").unlink()
    torch.save(Evil(marker), ckpt / "pytorch_model.bin")
    with pytest.raises(DataError, match="checkpoint in .* cannot be loaded.*delete"):
        run(corpus, out)
    assert not marker.exists()


@pytest.mark.parametrize("tamper", ["unknown marker", "missing tensor", "tensor key not a string", "deep",
                                    "not json", "not a state dict"])
def test_a_tampered_optimizer_state_is_a_data_error(corpus, tmp_path, tamper):
    ckpt = killed_at_7(corpus, tmp_path)
    structure = json.loads((ckpt / OPTIMIZER_JSON).read_text())
    if tamper == "unknown marker":
        structure["param_groups"][0]["betas"] = {"__reduce__": ["os.system", "true"]}
        text = json.dumps(structure)
    elif tamper == "missing tensor":
        first = next(iter(structure["state"].values()))
        first["exp_avg"] = {"__tensor__": "nowhere"}
        text = json.dumps(structure)
    elif tamper == "tensor key not a string":
        next(iter(structure["state"].values()))["exp_avg"] = {"__tensor__": [1]}
        text = json.dumps(structure)
    elif tamper == "deep":
        text = '{"state": {}, "param_groups": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif tamper == "not json":
        text = "{"
    else:
        text = json.dumps([1, 2])
    (ckpt / OPTIMIZER_JSON).write_text(text)
    with pytest.raises(DataError, match="optimizer state in .*checkpoint.*delete"):
        run(corpus, tmp_path)


def test_the_state_codec_keeps_every_value_and_type():
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)},
                  1: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, dtype=torch.bfloat16)}},
        "param_groups": [{"lr": 0.1 + 0.2, "betas": (0.9, 0.95), "eps": 1e-8, "foreach": None,
                          "amsgrad": False, "params": [0, 1]}],
        "__odd": {"__tuple__": "a str key that looks like a marker"},
    }
    tensors = {}
    structure = json.loads(json.dumps(_encode_state(state, "", tensors)))
    back = _decode_state(structure, tensors)
    assert list(back["state"]) == [0, 1]
    assert back["param_groups"][0]["betas"] == (0.9, 0.95) and isinstance(back["param_groups"][0]["betas"], tuple)
    assert back["param_groups"][0]["lr"] == 0.1 + 0.2
    assert back["param_groups"][0]["foreach"] is None and back["param_groups"][0]["amsgrad"] is False
    assert back["__odd"] == state["__odd"]
    for i in (0, 1):
        for name, t in state["state"][i].items():
            assert back["state"][i][name].dtype == t.dtype and torch.equal(back["state"][i][name], t)
    with pytest.raises(TypeError, match="not a tensor or plain value"):
        _encode_state({"x": object()}, "", {})


def test_the_temp_folder_of_a_checkpoint_save_killed_midway_is_removed(corpus, uninterrupted, tmp_path):
    full, _ = uninterrupted
    killed_at_7(corpus, tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".checkpoint.{storage._HOST}-{child.pid}.abcd1234"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    run(corpus, tmp_path)
    assert not stale.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert same_weights(full, tmp_path)
