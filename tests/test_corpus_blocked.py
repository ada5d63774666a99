"""The blocked corpus stream (`corpus.blocks`) and its datatrove engine (`corpus.on_datatrove`):
the same bytes for any engine, worker or task count, the strategies' guarantees kept, and a killed
render resumed without redoing finished tasks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from medsafetyworld.cli import main
from medsafetyworld.config import to_dict
from medsafetyworld.corpus import blocks
from medsafetyworld.corpus.build import corpus_config_hash
from medsafetyworld.corpus.shards import iter_documents, load_manifest, verify_corpus
from medsafetyworld.errors import ConfigError
from medsafetyworld.pipeline import make_corpus
from medsafetyworld.storage import STAGE_FILE
from medsafetyworld.strategies import get_strategy

pytest.importorskip("datatrove")

BUDGET, BLOCK = 120_000, 30_000  # four blocks


@pytest.fixture(scope="module")
def blocked(micro):
    """micro with a small budget in four blocks and shards that cut across blocks."""
    corpus = dataclasses.replace(micro.corpus, token_budget=BUDGET, block_tokens=BLOCK, shard_documents=500)
    return micro.replace(corpus=corpus)


def corpus_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != STAGE_FILE}


RUNS = [("datatrove", 1, None), ("datatrove", 2, None), ("datatrove", 3, 3), ("datatrove", 1, 1)]


@pytest.mark.parametrize("strategy", ["raw", "filter", "reflect", "curriculum(start=0.3,inner=reflect)"])
def test_any_engine_workers_and_tasks_write_the_same_bytes(strategy, blocked, micro_world_dir, tmp_path):
    make_corpus(micro_world_dir, get_strategy(strategy), blocked, 1, tmp_path / "builtin", progress=False)
    expected = corpus_files(tmp_path / "builtin")
    assert len([n for n in expected if n.endswith(".parquet")]) > 1
    for engine, workers, tasks in RUNS:
        out = tmp_path / f"{engine}-{workers}-{tasks}"
        make_corpus(micro_world_dir, get_strategy(strategy), blocked, 1, out, progress=False, engine=engine,
                    workers=workers, tasks=tasks)
        assert corpus_files(out) == expected, (engine, workers, tasks)
    assert [p.name for p in tmp_path.iterdir() if ".blocks-" in p.name] == [], "a work folder was left behind"


def test_blocked_raw_corpus_meets_its_budget_with_unique_block_ids(blocked, micro_world_dir, tmp_path):
    make_corpus(micro_world_dir, get_strategy("raw"), blocked, 1, tmp_path, progress=False)
    manifest = verify_corpus(tmp_path)
    assert manifest["tokens"] >= BUDGET and manifest["blocks"] == {"block_tokens": BLOCK, "blocks": 4}
    docs = list(iter_documents(tmp_path))
    ids = [d.id for d in docs]
    assert len(set(ids)) == len(ids)
    by_block = Counter(i.split("-b")[1][:5] for i in ids)
    assert sorted(by_block) == ["00000", "00001", "00002", "00003"]
    assert ids == sorted(ids, key=lambda i: i.split("-b")[1])  # in block order, each block in its order


def test_blocked_raw_corpus_keeps_the_split_rules(blocked, micro_loaded, micro_world_dir, tmp_path):
    _, splits = micro_loaded
    make_corpus(micro_world_dir, get_strategy("raw"), blocked, 1, tmp_path, progress=False)
    docs = list(iter_documents(tmp_path))
    assert any(d.unsafe for d in docs)
    for doc in docs:
        for drug, condition in doc.meta.get("unsafe_pairs", []):
            assert not splits.is_held_out_pair(drug, condition), doc.text
        conds = doc.meta.get("conditions", [])
        assert not any(splits.is_held_out_condition_pair(a, b) for i, a in enumerate(conds) for b in conds[i + 1:])
        if doc.kind == "case_report":
            assert not splits.is_ood_treats(doc.meta["drug"], doc.meta["target"]), doc.text


def test_blocked_filter_corpus_has_no_unsafe_document_and_still_meets_the_budget(blocked, micro_world_dir, tmp_path):
    make_corpus(micro_world_dir, get_strategy("filter"), blocked, 1, tmp_path, progress=False)
    assert load_manifest(tmp_path)["tokens"] >= BUDGET
    assert not any(d.unsafe for d in iter_documents(tmp_path))


def test_full_micro_budget_in_blocks_covers_every_fact(micro, micro_world_dir, tmp_path):
    preset = micro.replace(corpus=dataclasses.replace(micro.corpus, block_tokens=75_000))
    make_corpus(micro_world_dir, get_strategy("raw"), preset, 1, tmp_path, progress=False)
    assert load_manifest(tmp_path)["fact_coverage"]["facts_below_min"] == 0


@pytest.mark.parametrize("start", [0.3, 0.6, 1.0])
def test_blocked_curriculum_schedules_by_global_position(start, blocked, micro_world_dir, tmp_path):
    make_corpus(micro_world_dir, get_strategy(f"curriculum(start={start},inner=raw)"), blocked, 1, tmp_path,
                progress=False)
    manifest = load_manifest(tmp_path)
    phases = [d.meta["phase"] for d in iter_documents(tmp_path)]
    n_safe = phases.count("safe")
    assert phases == ["safe"] * n_safe + ["inner"] * (len(phases) - n_safe)
    docs = list(iter_documents(tmp_path))
    assert not any(d.unsafe for d in docs[:n_safe])
    inner = manifest["phases"].get("inner", manifest["tokens"])
    assert inner >= start * BUDGET
    if start < 1.0:
        # the safe phase ends in the block that holds its position, not at the end of every block
        assert inner < start * BUDGET + BLOCK / 4 and any(d.unsafe for d in docs[n_safe:])
    else:
        assert n_safe == len(docs)


def test_a_blocked_corpus_is_another_stage_than_the_sequential_one(micro, blocked, micro_world_dir, tmp_path):
    sequential = micro.replace(corpus=dataclasses.replace(blocked.corpus, block_tokens=None))
    raw = get_strategy("raw")
    assert "block_tokens" not in to_dict(sequential.corpus)  # the hashes of every existing corpus hold
    assert to_dict(blocked.corpus)["block_tokens"] == BLOCK
    assert corpus_config_hash(blocked, raw, 1, "0" * 16) != corpus_config_hash(sequential, raw, 1, "0" * 16)
    a = make_corpus(micro_world_dir, raw, sequential, 1, tmp_path / "s", progress=False)
    b = make_corpus(micro_world_dir, raw, blocked, 1, tmp_path / "b", progress=False)
    assert a != b and "blocks" not in load_manifest(tmp_path / "s")


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from medsafetyworld.corpus import blocks
    from medsafetyworld.pipeline import make_corpus
    from medsafetyworld.strategies import get_strategy
    import pickle

    world_dir, out, preset_file = sys.argv[1:4]
    preset = pickle.loads(Path(preset_file).read_bytes())
    render = blocks.render_block

    def render_or_die(world, splits, tokenizer, strategy, preset, seed, block, folder):
        if block >= 1:  # task 0 has finished and is marked complete: die like a killed node
            assert (Path(folder) / "logs/render/completions/00000").is_file()
            os.kill(os.getpid(), signal.SIGKILL)
        return render(world, splits, tokenizer, strategy, preset, seed, block, folder)

    blocks.render_block = render_or_die
    make_corpus(Path(world_dir), get_strategy("reflect"), preset, 1, Path(out), progress=False, engine="datatrove")
""")


def test_a_killed_render_resumes_without_redoing_finished_tasks(blocked, micro_world_dir, tmp_path, monkeypatch):
    import pickle

    (tmp_path / "preset.pkl").write_bytes(pickle.dumps(blocked))
    (tmp_path / "killer.py").write_text(KILLER)
    out = tmp_path / "c"
    # its own session, so that datatrove's manager process, orphaned by the kill, goes with its group
    with open(tmp_path / "killer.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(tmp_path / "killer.py"), str(micro_world_dir), str(out),
                                 str(tmp_path / "preset.pkl")], stdout=log, stderr=log, start_new_session=True)
        try:
            returncode = proc.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, (tmp_path / "killer.log").read_text()[-2000:]
    [work] = [p for p in tmp_path.iterdir() if ".blocks-" in p.name]
    assert sorted(os.listdir(work / "logs/render/completions")) == ["00000"]
    assert not out.exists()

    rendered = []
    render = blocks.render_block

    def counted(*args):
        rendered.append(args[6])
        return render(*args)

    monkeypatch.setattr(blocks, "render_block", counted)
    make_corpus(micro_world_dir, get_strategy("reflect"), blocked, 1, out, progress=False, engine="datatrove")
    assert rendered == [1, 2, 3]
    monkeypatch.setattr(blocks, "render_block", render)
    make_corpus(micro_world_dir, get_strategy("reflect"), blocked, 1, tmp_path / "whole", progress=False)
    assert corpus_files(out) == corpus_files(tmp_path / "whole")


@pytest.mark.parametrize("block_tokens", [0, -5, BUDGET + 1])
def test_a_bad_block_size_is_a_config_error(block_tokens, micro):
    corpus = dataclasses.replace(micro.corpus, token_budget=BUDGET, block_tokens=block_tokens)
    with pytest.raises(ConfigError, match="block_tokens"):
        blocks.BlockPlan.of(corpus)


def cli_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("msw: error:") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("value, says", [("0", "positive"), ("400000", "larger than the token budget"),
                                         ("many", "not an integer")])
def test_msw_corpus_refuses_a_bad_block_size_in_one_line(value, says, capsys, micro_world_dir, tmp_path):
    err = cli_error(capsys, ["corpus", "--world", str(micro_world_dir), "--block-tokens", value,
                             "--out", str(tmp_path / "c")])
    assert says in err and not (tmp_path / "c").exists()


def test_the_datatrove_engine_needs_a_blocked_corpus(capsys, micro_world_dir, tmp_path):
    err = cli_error(capsys, ["corpus", "--world", str(micro_world_dir), "--engine", "datatrove",
                             "--out", str(tmp_path / "c")])
    assert "--block-tokens" in err


def test_the_datatrove_engine_without_datatrove_is_one_line(capsys, micro_world_dir, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "datatrove"] + ["datatrove"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import datatrove...` raises ImportError
    monkeypatch.delitem(sys.modules, "medsafetyworld.corpus.on_datatrove", raising=False)
    err = cli_error(capsys, ["corpus", "--world", str(micro_world_dir), "--engine", "datatrove",
                             "--block-tokens", "100000", "--out", str(tmp_path / "c")])
    assert "pip install 'medsafetyworld[datatrove]'" in err


def test_msw_corpus_renders_blocks_on_datatrove_with_workers(micro_world_dir, tmp_path):
    assert main(["-q", "corpus", "--world", str(micro_world_dir), "--block-tokens", "100000", "--engine",
                 "datatrove", "--workers", "2", "--out", str(tmp_path / "c")]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["blocks"] == {"block_tokens": 100_000, "blocks": 3} and manifest["tokens"] >= 300_000


def test_slurm_executors_render_then_assemble(blocked, micro_world_dir, tmp_path):
    from datatrove.executor import SlurmPipelineExecutor

    from medsafetyworld.corpus.on_datatrove import AssembleCorpus, CorpusJob, RenderBlocks, corpus_executors

    job = CorpusJob(str(micro_world_dir), get_strategy("raw"), blocked, 1, str(tmp_path / "c"), "0" * 16)
    render, assemble = corpus_executors(job, executor="slurm", tasks=2, workers=2, time="1:00:00", partition="cpu")
    assert isinstance(render, SlurmPipelineExecutor) and assemble.depends is render
    assert render.world_size == 2 and assemble.world_size == 1
    assert isinstance(render.pipeline[0], RenderBlocks) and isinstance(assemble.pipeline[0], AssembleCorpus)
    with pytest.raises(ConfigError, match="partition"):
        corpus_executors(job, executor="slurm")


def test_ray_executors_render_then_assemble(blocked, micro_world_dir, tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install ray): the Ray executor is not exercised")
    from medsafetyworld.corpus.on_datatrove import CorpusJob, corpus_executors

    job = CorpusJob(str(micro_world_dir), get_strategy("raw"), blocked, 1, str(tmp_path / "c"), "0" * 16)
    render, assemble = corpus_executors(job, executor="ray", tasks=2)
    assert assemble.depends is render and render.world_size == 2
