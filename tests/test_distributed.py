"""Data-parallel pretraining under torchrun, on CPUs with gloo: 2 processes train what 1 does.

Each launch is a real `torchrun --nproc-per-node 2` of the built-in trainer, so the process
group, the batch split, the gradient averaging (DDP) or sharding (FSDP2) and the collective
checkpoint are all exercised as on GPUs.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from medsafetyworld.errors import ConfigError
from medsafetyworld.training import pretrain
from medsafetyworld.training.distributed import Ranks
from tests.test_trainer import SMALL, train_config, write_corpus

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

STEPS, BATCH = 12, 8
CFG = dataclasses.replace(train_config(STEPS * BATCH * SMALL.context, batch_size=BATCH, checkpoint_every=5),
                          threads=1)

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from medsafetyworld.training import pretrain
    from tests.test_distributed import CFG, SMALL
    root, out, parallel, stop = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    log = pretrain(root, root / "tokenizer", out, SMALL, CFG, seed=3, progress=False,
                   parallel=parallel, stop_after=stop or None)
    if os.environ["RANK"] == "0":  # one writer: every rank returns the same log
        Path(sys.argv[5]).write_text(json.dumps(log))
""")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, n_docs=1500)
    return root


def torchrun(tmp_path, corpus, out, parallel="ddp", stop_after=0, nproc=2) -> dict:
    import json

    script, result = tmp_path / "launch.py", tmp_path / f"log-{parallel}-{nproc}-{stop_after}.json"
    script.write_text(SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(script), str(corpus), str(out), parallel, str(stop_after), str(result)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text())


def weights(folder) -> dict:
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def assert_same_weights(a, b, atol=1e-5):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, pretrain(corpus, corpus / "tokenizer", out, SMALL, CFG, seed=3, progress=False)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_what_one_does(corpus, single, tmp_path, parallel):
    one_dir, one = single
    two = torchrun(tmp_path, corpus, tmp_path / "model", parallel)
    assert two["processes"] == 2 and two["parallel"] == parallel
    assert [s for s, _ in two["loss_curve"]] == [s for s, _ in one["loss_curve"]]
    losses_one = torch.tensor([v for _, v in one["loss_curve"]])
    losses_two = torch.tensor([v for _, v in two["loss_curve"]])
    torch.testing.assert_close(losses_two, losses_one, atol=2e-4, rtol=0)
    assert losses_two[-1] < losses_two[0] - 0.3  # and it learns
    assert two["config_hash"] == one["config_hash"]  # how many ranks is not part of what is trained
    assert_same_weights(tmp_path / "model", one_dir)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "model").config.tie_word_embeddings


def test_a_checkpoint_of_two_ranks_resumes_on_one(corpus, single, tmp_path):
    one_dir, one = single
    killed = torchrun(tmp_path, corpus, tmp_path / "model", "fsdp", stop_after=8)
    assert killed["complete"] is False and (tmp_path / "model" / "checkpoint").is_dir()
    resumed = pretrain(corpus, corpus / "tokenizer", tmp_path / "model", SMALL, CFG, seed=3, progress=False)
    assert resumed["resumed_from_step"] == 5 and resumed["processes"] == 1
    torch.testing.assert_close(torch.tensor([v for _, v in resumed["loss_curve"]]),
                               torch.tensor([v for _, v in one["loss_curve"]]), atol=2e-4, rtol=0)
    assert_same_weights(tmp_path / "model", one_dir)


def test_a_checkpoint_of_one_process_resumes_on_two(corpus, single, tmp_path):
    one_dir, _ = single
    pretrain(corpus, corpus / "tokenizer", tmp_path / "model", SMALL, CFG, seed=3, progress=False, stop_after=7)
    resumed = torchrun(tmp_path, corpus, tmp_path / "model", "ddp")
    assert resumed["resumed_from_step"] == 5 and resumed["processes"] == 2
    assert_same_weights(tmp_path / "model", one_dir)


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    assert Ranks(1, 4).rows(8) == slice(2, 4)
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        Ranks(0, 3).rows(8)


def test_unknown_parallel_mode_is_refused(corpus, tmp_path):
    cfg = dataclasses.replace(CFG, tokens=BATCH * SMALL.context)
    with pytest.raises(ConfigError, match="unknown parallel mode 'tp'"):
        pretrain(corpus, corpus / "tokenizer", tmp_path, SMALL, cfg, seed=3, progress=False, parallel="tp")
