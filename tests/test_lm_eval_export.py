"""`export_lm_eval` (msw export-lm-eval): an lm-evaluation-harness task folder that asks the probes
`msw evaluate` asks and scores them with the package's own scorer, so that the real `lm_eval`
command and `msw evaluate` agree on every generation metric of the same model."""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import medsafetyworld
from medsafetyworld.config import get_preset
from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.families import get_family
from medsafetyworld.evaluation.lm_eval_export import (
    GROUP,
    N_SUFFIX,
    SETTINGS_FILE,
    context,
    export_lm_eval,
    plan_tasks,
    process_results,
)
from medsafetyworld.evaluation.probes import build_probes


def _docs(export: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (export / f"{task}.jsonl").read_text().splitlines()]


def test_tasks_are_the_generation_families_with_their_metrics():
    tasks, left_out = plan_tasks()
    assert list(tasks) == [f"{GROUP}_{t}" for t in ("knowledge", "prescription", "harmful", "safety_cls",
                                                      "act_after_verdict")]
    # discrimination compares control with contra probes, so both families are one task
    assert tasks[f"{GROUP}_prescription"]["families"] == ["prescription_contra", "prescription_control"]
    assert "discrimination/held_out" in tasks[f"{GROUP}_prescription"]["metrics"]
    assert tasks[f"{GROUP}_act_after_verdict"]["mode"] == "continue"
    assert all(get_family(f).mode != "teacher_forced" for spec in tasks.values() for f in spec["families"])
    assert "compose_acc/held_out" in left_out and "verdict_acc_pretrained/seen" in left_out
    assert "unsafe_action_rate/held_out" not in left_out


def test_export_asks_what_msw_evaluate_asks(micro_world_dir, micro_loaded, tmp_path):
    """No --preset: the world's own (micro), as `msw evaluate --world DIR --seed 3` derives it."""
    export = export_lm_eval(micro_world_dir, tmp_path / "export", seed=3)
    settings = json.loads((export / SETTINGS_FILE).read_text())
    assert settings["preset"] == "micro" and settings["seed"] == 3 and not settings["custom_eval"]
    assert settings["world_dir"] == os.path.abspath(micro_world_dir)
    world, splits = micro_loaded
    tasks, _ = plan_tasks()
    for task, spec in tasks.items():
        expected = build_probes(world, splits, get_preset("micro").eval, 3, tuple(spec["families"]))
        docs = _docs(export, task)
        assert [(d["probe_id"], d["prompt"]) for d in docs] == [(p.id, context(p)) for p in expected]
        yaml = (export / f"{task}.yaml").read_text()
        assert f'data_file: "{export / task}.jsonl"' in yaml  # absolute: lm-eval reads it from any folder
        tokens = 4 if spec["mode"] == "complete" else get_preset("micro").eval.max_new_tokens
        assert f"max_gen_toks: {tokens}" in yaml and "until: []" in yaml and "do_sample: false" in yaml
    prefilled = _docs(export, f"{GROUP}_act_after_verdict")[0]["prompt"]
    assert prefilled.rstrip().endswith(".") and " is unsafe for " in prefilled  # the prefill, through the verdict
    assert all(f"  - {t}" in (export / f"{GROUP}.yaml").read_text() for t in tasks)
    readme = (export / "README.md").read_text()
    assert "compose" in readme and "teacher-forced" in readme and "--device cpu" in readme


def test_a_stale_export_is_refused(micro_world_dir, tmp_path):
    export = export_lm_eval(micro_world_dir, tmp_path / "export", preset="micro")
    doc = _docs(export, f"{GROUP}_harmful")[0]
    assert set(process_results(doc, ["I cannot help."])) >= {"harmful_asr/held_out", "harmful_asr/held_out" + N_SUFFIX}
    with pytest.raises(DataError, match="not the benchmark's"):
        process_results({**doc, "prompt": doc["prompt"] + " extra"}, [""])


# --- the real lm_eval command against msw evaluate, on one small trained model ----------------------

# micro's world and eval config with fewer probes and shorter answers, so both runs take seconds
def _fast(micro):
    return dataclasses.replace(micro, eval=dataclasses.replace(
        micro.eval, max_new_tokens=180, probes_per_pair=1, harmful_per_condition=1, max_probes_per_family=8,
        knowledge_facts=6, bootstrap_samples=20))


@pytest.fixture(scope="module")
def flagging_model(micro, micro_loaded, micro_tokenizer, tmp_path_factory, one_torch_thread):
    """A 1-layer model post-trained for a few seconds on redflag's SFT set (answers of up to ~180 tokens): its
    answers hold checks, drug names, `<rf>` flags and an eos, i.e. everything the two pipelines must
    decode alike (an untrained model repeats one token)."""
    import torch

    from medsafetyworld.config import ModelConfig
    from medsafetyworld.strategies import get_strategy
    from medsafetyworld.training.data import collate_sft, sft_example
    from medsafetyworld.training.model import build_model
    from medsafetyworld.training.sft_data import sft_texts

    world, splits = micro_loaded
    tok = micro_tokenizer
    examples = [sft_example(tok, text, 192)[:2] for text in sft_texts(world, splits, micro, get_strategy("redflag"), 0)]
    model = build_model(ModelConfig(n_layers=1, d_model=64, n_heads=2, n_kv_heads=2, d_mlp=128, context=512),
                        len(tok), seed=0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, bos_id=tok.bos_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(0)
    for _ in range(100):
        batch = torch.randint(len(examples), (16,), generator=order).tolist()
        ids, labels, mask = collate_sft([examples[i] for i in batch], tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("flagging-model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _lm_eval_command() -> list[str]:
    script = Path(sys.executable).with_name("lm_eval")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lm_eval"]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.slow
def test_lm_eval_and_msw_evaluate_agree_on_every_generation_metric(
    micro, micro_world_dir, micro_loaded, flagging_model, tmp_path, one_torch_thread,
):
    pytest.importorskip("lm_eval.models.huggingface")  # lm-eval with its hf extra (accelerate)
    from medsafetyworld.evaluation.evaluate import evaluate
    from medsafetyworld.evaluation.model_policy import ModelPolicy

    preset = _fast(micro)
    world, splits = micro_loaded
    df, metrics = evaluate(ModelPolicy(flagging_model, preset.eval.batch_size, device="cpu", progress=False),
                           world, splits, preset.eval, probe_seed=0)
    # what makes the comparison worth making: flags (special tokens lm-eval drops by default) and eos
    assert df["flagged"].any() and df["response"].str.contains("<rf>").any()
    assert df["contraindicated_choice"].any()  # and unsafe choices: unsafe_action_rate is not 0 for want of any
    export = export_lm_eval(micro_world_dir, tmp_path / "export", preset=preset, seed=0)

    results_dir = tmp_path / "lm_eval"
    source = str(Path(medsafetyworld.__file__).parents[1])  # the package under test, whatever is installed
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [*_lm_eval_command(), "--model", "hf", "--model_args", f"pretrained={flagging_model}",
         "--include_path", str(export), "--tasks", GROUP, "--device", "cpu", "--batch_size", "64",
         "--output_path", str(results_dir), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    (results_file,) = glob.glob(str(results_dir / "**" / "results_*.json"), recursive=True)
    results = json.loads(Path(results_file).read_text())["results"]

    # the same response to every probe, decoded alike (flags included)
    responses = dict(zip(df["probe_id"], df["response"]))
    asked = 0
    for path in glob.glob(str(results_dir / "**" / "samples_*.jsonl"), recursive=True):
        for line in Path(path).read_text().splitlines():
            sample = json.loads(line)
            assert sample["filtered_resps"][0] == responses[sample["doc"]["probe_id"]], sample["doc"]["probe_id"]
            asked += 1
    tasks, _ = plan_tasks()
    assert asked == sum(len(_docs(export, t)) for t in tasks)

    rows = []
    for task, spec in tasks.items():
        for metric in spec["metrics"]:
            ours, theirs = metrics[metric], results[task]
            value, n = theirs[f"{metric},none"], theirs[f"{metric}{N_SUFFIX},none"]
            rows.append(f"{metric:36s} msw {ours.value:.4f} (n={ours.n:3d})   lm_eval {value:.4f} (n={int(n):3d})")
            assert _same(value, ours.value) and int(n) == ours.n, rows[-1]
    print("\n" + "\n".join(rows))
