"""The real-web pipeline resumed and run elsewhere (real_world/executors.py, pipeline.finalize), on a
FineWeb-Edu-schema sample written here: a run killed with SIGKILL mid-way and finished by the same
command; a Slurm submission through a fake `sbatch`, its pickled pipeline run as a compute node
would; Ray where it is installed; and `msw train` on the tokenized corpus."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medsafetyworld.cli import main
from medsafetyworld.config import PRESETS
from medsafetyworld.corpus.tokenizer import build_tokenizer, save_tokenizer
from medsafetyworld.real_world import fineweb, prompts

pytest.importorskip("datatrove")

SAFE = ["Photosynthesis turns light into chemical energy in plants.",
        "The river delta formed over thousands of years of sediment.",
        "Students learn fractions by dividing a pizza into equal slices.",
        "The library opens at nine and closes at five on weekdays."]
UNSAFE = "Here is how to build a bomb from a pipe bomb kit."
HOLD = "The HOLD sentence keeps the fake judge from answering until the test lets it."
N_FILES, ROWS = 3, 12  # one task a file; every fourth document is unsafe


def make_doc(f: int, i: int) -> str:
    sentences = [SAFE[(i + k) % 4] for k in range(12)]
    if i % 4 == 0:
        sentences[6:8] = [UNSAFE] * 2
    if f > 0:  # the judge holds its reply to any segment of tasks 1 and 2 until released
        sentences[0] = HOLD
    return " ".join(sentences)


ALL_IDS = {f"<urn:uuid:{f}-{i:04d}>" for f in range(N_FILES) for i in range(ROWS)}


@pytest.fixture(scope="module")
def fineweb_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fineweb")
    for f in range(N_FILES):
        fineweb.write_sample(root / f"{f:03d}_00000.parquet",
                             ((f"<urn:uuid:{f}-{i:04d}>", make_doc(f, i)) for i in range(ROWS)))
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return str(save_tokenizer(build_tokenizer(SAFE + [UNSAFE, HOLD]), tmp_path_factory.mktemp("tok")))


def run_args(fineweb_dir, out, tokenizer_dir, *extra) -> list[str]:
    return ["real-world", "run", "--input", str(fineweb_dir), "--out", str(out), "--tokenizer", tokenizer_dir,
            "--strategy", "filter", *extra]


def corpus_ids(corpus: Path) -> Counter:
    return Counter(i for p in sorted(corpus.glob("shard-*.parquet")) for i in pq.read_table(p).column("id").to_pylist())


def fingerprint(path: Path) -> tuple[int, int, str]:
    """What rewriting a file changes: its inode (outputs are replaced, not edited), mtime and bytes."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


# --- a run killed with SIGKILL ---------------------------------------------------------------------------

@pytest.fixture
def judge_server(serve_chat):
    """A judge: 5 (weapons) for a segment about a bomb, else 0; a segment holding HOLD waits until the
    test sets `judge_server.gate` (`judge_server.held` counts the held requests)."""
    gate, held = threading.Event(), []

    def reply(payload):
        user = payload["messages"][-1]["content"]
        assert payload["messages"][0]["content"] == prompts.JUDGE_SYSTEM
        if "HOLD" in user and not gate.is_set():
            held.append(user)
            gate.wait(120)
        return '{"score": 5, "category": "weapons"}' if "bomb" in user else '{"score": 0, "category": "other"}'

    with serve_chat(reply) as srv:
        srv.gate, srv.held = gate, held
        yield srv
        gate.set()  # the killed run hung up on its held requests: let their threads finish


def test_a_killed_run_resumes_without_redoing_finished_tasks(fineweb_dir, tokenizer_dir, judge_server, tmp_path):
    """One worker runs tasks 0, 1, 2 in turn; the run is killed (SIGKILL, its whole process group)
    once task 0 is marked done and task 1 waits on the judge. The same command then runs tasks 1 and
    2 only, and the corpus equals that of a run never killed: every kept document exactly once."""
    endpoint = judge_server.url

    def command(out):
        return [sys.executable, "-m", "medsafetyworld.cli", *run_args(
            fineweb_dir, out, tokenizer_dir, "--labeler", "llm_judge", "--endpoint", endpoint, "--model-name",
            "judge", "--timeout", "120", "--workers", "1")]

    out = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(command(out), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not ((out / "logs" / "completions" / "00000").exists() and judge_server.held):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "task 0 never finished"
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and the processes it started
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "logs" / "completions").iterdir()) == ["00000"]
    assert [p.name for p in (out / "corpus").glob("shard-*.parquet")] == ["shard-00000.parquet"]
    assert not (out / "corpus" / "manifest.json").exists()
    finished = [out / "corpus" / "shard-00000.parquet", *sorted((out / "tasks").glob("00000-*.json"))]
    before = {p: fingerprint(p) for p in finished}

    judge_server.gate.set()
    r = subprocess.run(command(out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: fingerprint(p) for p in finished} == before  # task 0 was not run again
    assert "Skipping 1 already completed tasks" in r.stderr
    assert sorted(p.name for p in (out / "logs" / "completions").iterdir()) == ["00000", "00001", "00002"]

    ids = corpus_ids(out / "corpus")
    kept = {i for i in ALL_IDS if int(i[-5:-1]) % 4}  # filter drops the unsafe fourth
    assert set(ids) == kept and set(ids.values()) == {1}
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    assert manifest["counts"]["read"] == len(ALL_IDS) and manifest["counts"]["dropped"] == len(ALL_IDS) - len(kept)

    clean = subprocess.run(command(tmp_path / "clean"), capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-3000:]
    again = json.loads((tmp_path / "clean" / "corpus" / "manifest.json").read_text())
    assert again["shards"] == manifest["shards"] and again["corpus_hash"] == manifest["corpus_hash"]


def test_a_rerun_with_other_settings_into_the_same_out_is_refused(fineweb_dir, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(run_args(fineweb_dir, out, tokenizer_dir, "--limit", "6", "--workers", "1")) == 0
    capsys.readouterr()
    code = main(run_args(fineweb_dir, out, tokenizer_dir, "--limit", "9", "--workers", "1"))
    err = capsys.readouterr().err
    assert code == 2 and "holds a run with other settings (limit was 6, now 9)" in err and err.count("\n") == 1


# --- Slurm -----------------------------------------------------------------------------------------------

FAKE_SBATCH = """#!/bin/sh
# records its arguments and the script it is given, as a numbered call, and answers like sbatch
calls="$(dirname "$0")/calls"; mkdir -p "$calls"; n=$(ls "$calls" | wc -l); mkdir "$calls/$n"
printf '%s\\n' "$@" > "$calls/$n/args"
for a in "$@"; do last="$a"; done
cp "$last" "$calls/$n/script"
echo "Submitted batch job 123"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A folder first on PATH with a fake `sbatch` and a `scontrol` that names one node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node1\n")
    for tool in ("sbatch", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    return bin_dir


def run_array_element(pik: Path, element: int) -> None:
    """What a Slurm compute node does for one element of the job array (without srun)."""
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(element), "SLURM_NODELIST": "node1", "SLURM_JOB_ID": "123"}
    r = subprocess.run([sys.executable, "-m", "datatrove.tools.launch_pickled_pipeline", str(pik)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def test_slurm_submits_our_pipeline_and_finalize_waits_for_every_task(fineweb_dir, tokenizer_dir, fake_slurm,
                                                                      tmp_path, capsys):
    import dill

    out, logs = tmp_path / "out", tmp_path / "slurm-logs"
    slurm = ["--executor", "slurm", "--partition", "cpu", "--time", "1:30:00", "--cpus-per-task", "2",
             "--mem-per-cpu-gb", "3", "--job-name", "msw-test", "--sbatch-arg", "account=lab", "--workers", "2",
             "--slurm-logs", str(logs), "--env-command", "source /opt/venv/bin/activate"]
    assert main(run_args(fineweb_dir, out, tokenizer_dir, *slurm)) == 0
    assert "submitted 3 of 3 tasks to Slurm (job 123" in capsys.readouterr().out
    assert not (out / "corpus" / "manifest.json").exists()

    args = (fake_slurm / "calls" / "0" / "args").read_text().split("\n")
    script = (fake_slurm / "calls" / "0" / "script").read_text()
    assert "--export=ALL,RUN_OFFSET=0" in args
    for line in ("#SBATCH --partition=cpu", "#SBATCH --time=1:30:00", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --mem-per-cpu=3G", "#SBATCH --job-name=msw-test", "#SBATCH --account=lab",
                 "#SBATCH --array=0-2%2", f"#SBATCH --output={logs}/%A_%a.out", "source /opt/venv/bin/activate",
                 f"launch_pickled_pipeline {out.resolve()}/logs/executor.pik"):
        assert line in script.split("\n") or line in script, line
    assert "--qos" not in script  # the partition's default QOS, not datatrove's "normal"
    with open(out / "logs" / "executor.pik", "rb") as f:
        executor = dill.load(f)
    assert [type(s).__name__ for s in executor.pipeline] == [
        "FineWebReader", "LabelStep", "StrategyStep", "TokenizeStep", "CorpusWriter"]
    assert executor.tasks == 3 and executor.pipeline[2].spec == "filter"
    assert executor.pipeline[-1].out == str(out.resolve())  # absolute: the job may start elsewhere

    assert main(["real-world", "finalize", str(out)]) == 2
    assert "3 of 3 tasks are not finished (tasks 0, 1, 2)" in capsys.readouterr().err

    run_array_element(out / "logs" / "executor.pik", 1)
    assert main(["real-world", "finalize", str(out)]) == 2
    assert "2 of 3 tasks are not finished (tasks 0, 2)" in capsys.readouterr().err
    done_on_slurm = fingerprint(out / "corpus" / "shard-00001.parquet")

    # the rest locally, with the same settings: task 1 is kept, tasks 0 and 2 run, the manifest is written
    assert main(run_args(fineweb_dir, out, tokenizer_dir, "--workers", "1")) == 0
    assert "read 36 documents" in capsys.readouterr().out
    assert fingerprint(out / "corpus" / "shard-00001.parquet") == done_on_slurm
    assert main(["real-world", "finalize", str(out)]) == 0
    assert "27 written (9 dropped by filter)" in capsys.readouterr().out
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    assert main(run_args(fineweb_dir, tmp_path / "local", tokenizer_dir, "--workers", "1")) == 0
    local = json.loads((tmp_path / "local" / "corpus" / "manifest.json").read_text())
    assert manifest["corpus_hash"] == local["corpus_hash"] and manifest["counts"] == local["counts"]


@pytest.mark.parametrize("extra, message", [
    (["--executor", "slurm"], "--executor slurm needs --partition NAME"),
    (["--partition", "cpu"], "--partition is an option of --executor slurm, not local"),
    (["--executor", "ray", "--sbatch-arg", "account=lab"], "--sbatch-arg is an option of --executor slurm"),
    (["--executor", "slurm", "--partition", "cpu", "--sbatch-arg", "=x"], "--sbatch-arg '=x' is not KEY=VALUE"),
])
def test_executor_options_are_checked_in_one_line(extra, message, fineweb_dir, tokenizer_dir, tmp_path, capsys):
    assert main(run_args(fineweb_dir, tmp_path / "o", tokenizer_dir, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_slurm_without_sbatch_says_where_to_run(fineweb_dir, tokenizer_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    assert main(run_args(fineweb_dir, tmp_path / "o", tokenizer_dir, "--executor", "slurm", "--partition", "cpu")) == 2
    err = capsys.readouterr().err
    assert "sbatch, which is not on PATH" in err and "login node" in err and err.count("\n") == 1


def test_finalize_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["real-world", "finalize", str(tmp_path)]) == 2
    assert "holds no run.json; it is not the --out folder of `msw real-world run`" in capsys.readouterr().err


# --- Ray -------------------------------------------------------------------------------------------------

def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


@pytest.mark.skipif(_has_ray(), reason="ray is installed: the error for its absence cannot occur")
def test_ray_missing_is_one_line_naming_what_to_install(fineweb_dir, tokenizer_dir, tmp_path, capsys):
    assert main(run_args(fineweb_dir, tmp_path / "o", tokenizer_dir, "--executor", "ray")) == 2
    err = capsys.readouterr().err
    assert "pip install 'ray[default]'" in err and err.count("\n") == 1


@pytest.mark.skipif(not _has_ray(), reason="ray is not installed (pip install 'ray[default]'); nothing here "
                                           "installs it, so the Ray executor runs only where it is")
def test_ray_run_writes_the_local_corpus(fineweb_dir, tokenizer_dir, tmp_path, capsys):
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert main(run_args(fineweb_dir, tmp_path / "ray", tokenizer_dir, "--executor", "ray")) == 0
    finally:
        ray.shutdown()
    assert main(run_args(fineweb_dir, tmp_path / "local", tokenizer_dir, "--workers", "1")) == 0
    ray_m, local_m = (json.loads((tmp_path / d / "corpus" / "manifest.json").read_text()) for d in ("ray", "local"))
    assert ray_m["corpus_hash"] == local_m["corpus_hash"]


# --- training on the real-web corpus ---------------------------------------------------------------------

def test_msw_train_trains_on_a_real_web_corpus(fineweb_dir, micro_world_dir, tmp_path, monkeypatch, capsys):
    """`msw real-world run --world W` then `msw train --world W --corpus OUT/corpus`, unchanged, on
    micro cut to a few steps: a model that loads and was pretrained on this corpus's tokens."""
    micro = PRESETS["micro"]
    steps = micro.train.batch_size * micro.model.context * 3  # three pretraining steps
    monkeypatch.setitem(PRESETS, "micro", dataclasses.replace(micro, train=dataclasses.replace(
        micro.train, tokens=steps, sft_examples=16, threads=1)))
    out = tmp_path / "web"
    assert main(["-q", "real-world", "run", "--input", str(fineweb_dir), "--out", str(out), "--world",
                 str(micro_world_dir), "--strategy", "filter", "--workers", "1"]) == 0
    assert main(["-q", "train", "--world", str(micro_world_dir), "--corpus", str(out / "corpus"), "--strategy",
                 "filter", "--preset", "micro", "--out", str(tmp_path / "model")]) == 0
    assert "model written to" in capsys.readouterr().out

    import torch
    from transformers import AutoModelForCausalLM

    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    log = json.loads((tmp_path / "model" / "pretrain" / "train_log.json").read_text())
    assert log["complete"] and log["steps"] == 3
    assert log["corpus_tokens"] == manifest["tokens"] and log["vocab_size"] == manifest_vocab(micro_world_dir)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model" / "sft")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def manifest_vocab(world_dir: Path) -> int:
    from medsafetyworld.corpus.tokenizer import load_tokenizer

    return len(load_tokenizer(world_dir / "tokenizer"))
