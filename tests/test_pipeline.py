"""`msw run` end to end on the micro preset: world, corpora, pretraining, SFT, evaluation, summary."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from medsafetyworld.cli import main
from medsafetyworld.leaderboard.record import load_record, validate_record


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["-q", "run", "--preset", "micro", "--strategies", "raw,filter,reflect", "--seeds", "1",
                 "--attacks", "prefill", "--out", str(out)]) == 0
    return out


def test_run_writes_a_valid_record_per_strategy_and_reference(run_dir):
    names = {p.parent.name for p in run_dir.glob("results/*/record.json")}
    assert names == {"raw-s1", "filter-s1", "reflect-s1", "ref-oracle", "ref-reckless", "ref-refuser", "ref-usual",
                     "ref-random"}
    for path in run_dir.glob("results/*/record.json"):
        validate_record(load_record(path))
    record = load_record(run_dir / "results" / "reflect-s1" / "record.json")
    assert record["model"]["n_parameters"] > 50_000
    assert record["model"]["tokens_seen"] >= 300_000


def test_run_records_the_v2_metrics(run_dir):
    for strategy in ("raw", "filter", "reflect"):
        metrics = load_record(run_dir / "results" / f"{strategy}-s1" / "record.json")["metrics"]
        # the model before post-training is asked the compose probes too
        for name in ("discrimination/held_out", "compose_acc/held_out", "verdict_acc/held_out",
                     "compose_acc_pretrained/held_out", "verdict_acc_pretrained/held_out",
                     "act_after_unsafe_verdict/held_out"):
            m = metrics[name]
            assert m["n"] > 0 and m["value"] is not None, (strategy, name)
            assert (-1.0 if name.startswith("discrimination") else 0.0) <= m["value"] <= 1.0, (strategy, name)
    oracle = load_record(run_dir / "results" / "ref-oracle" / "record.json")["metrics"]
    usual = load_record(run_dir / "results" / "ref-usual" / "record.json")["metrics"]
    assert oracle["discrimination/held_out"]["value"] == 1.0
    assert oracle["compose_acc_pretrained/held_out"]["value"] == 1.0  # a reference policy is its own pretrained
    assert usual["discrimination/held_out"]["value"] == 0.0 and usual["unsafe_action_rate/held_out"]["value"] == 1.0


def test_run_writes_the_summary_table_and_plot(run_dir):
    df = pd.read_csv(run_dir / "summary.csv")
    assert {"raw", "filter", "reflect", "ref:oracle"} <= set(df["strategy"])
    assert "reflect" in (run_dir / "summary.md").read_text()
    assert (run_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trained_model_loads_with_auto_classes(run_dir):
    folder = run_dir / "models" / "reflect-s1" / "sft"
    AutoModelForCausalLM.from_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<think>") is not None


def test_every_strategy_got_the_same_token_budget(run_dir):
    tokens = {p.parent.name: json.loads(p.read_text())["tokens"] for p in run_dir.glob("corpus/*/manifest.json")}
    budget = json.loads(next(run_dir.glob("corpus/*/manifest.json")).read_text())["token_budget"]
    assert all(budget <= t < budget * 1.01 for t in tokens.values()), tokens


def test_rerun_skips_finished_stages(run_dir):
    markers = {p: p.stat().st_mtime_ns for p in run_dir.rglob(".stage.json")}
    assert main(["-q", "run", "--preset", "micro", "--strategies", "raw,filter,reflect", "--seeds", "1",
                 "--out", str(run_dir)]) == 0
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob(".stage.json")} == markers


def test_evaluate_scores_any_model_folder(run_dir, tmp_path, capsys):
    from medsafetyworld.evaluation.metrics import METRIC_NAMES

    model = run_dir / "models" / "raw-s1"
    assert main(["-q", "evaluate", str(model / "sft"), "--world", str(run_dir / "world"), "--out", str(tmp_path),
                 "--pretrained", str(model / "pretrain")]) == 0
    record = load_record(tmp_path / "record.json")
    assert record["policy_kind"] == "model" and record["model"]["n_parameters"] > 50_000
    out = capsys.readouterr().out
    assert "unsafe_action_rate/held_out" in out and "compose_acc_pretrained/held_out" in out
    # the same model, probes (seed 0 = the run's world seed) and model before post-training as `msw run`
    ran = load_record(run_dir / "results" / "raw-s1" / "record.json")["metrics"]
    for name in METRIC_NAMES:
        got = record["metrics"][name]
        assert (got["value"], got["n"]) == (ran[name]["value"], ran[name]["n"]), name
    assert record["metrics"]["compose_acc_pretrained/held_out"]["n"] > 0


def test_evaluate_scores_a_reference_policy(run_dir, tmp_path):
    assert main(["-q", "evaluate", "oracle", "--world", str(run_dir / "world"), "--out", str(tmp_path)]) == 0
    assert load_record(tmp_path / "record.json")["metrics"]["utility"]["value"] == 1.0


def test_run_attacks_every_model_and_reference_policy(run_dir):
    for record_path in sorted((run_dir / "results").glob("*/record.json")):
        record = load_record(record_path)
        prefill = record["attacks"]["prefill"]["metrics"]
        assert prefill["prefill_act_rate/held_out"]["n"] > 0, record_path
        assert (record_path.parent / record["attacks"]["prefill"]["probes_file"]["path"]).is_file()
    assert load_record(run_dir / "results" / "ref-reckless" / "record.json")["attacks"]["prefill"]["metrics"][
        "prefill_act_rate/held_out"]["value"] == 1.0


def test_run_probes_every_trained_model(run_dir):
    for strategy in ("raw", "filter", "reflect"):
        record = load_record(run_dir / "results" / f"{strategy}-s1" / "record.json")
        value = record["metrics"]["probe_auroc/prescription"]
        assert value["n"] > 0 and 0.0 <= value["value"] <= 1.0
        layers = json.loads((run_dir / "results" / f"{strategy}-s1" / "probes" / "probe_auroc.json").read_text())
        assert len(layers["families"]["prescription"]["layers"]) == 3  # embeddings + micro's 2 layers
    assert "probe_auroc/prescription" not in load_record(run_dir / "results" / "ref-oracle" / "record.json")["metrics"]


def test_a_new_scorer_reevaluates_and_keeps_the_trained_models(run_dir, monkeypatch):
    from medsafetyworld import pipeline
    from medsafetyworld.evaluation.scoring import SCORING_VERSION

    assert load_record(run_dir / "results" / "raw-s1" / "record.json")["scoring_version"] == SCORING_VERSION
    results = run_dir / "results" / "raw-s1"
    markers = {p: p.stat().st_mtime_ns for p in run_dir.rglob(".stage.json")}
    monkeypatch.setattr(pipeline, "SCORING_VERSION", SCORING_VERSION + 1)
    assert main(["-q", "run", "--preset", "micro", "--strategies", "raw", "--seeds", "1", "--attacks", "prefill",
                 "--out", str(run_dir)]) == 0
    changed = {p for p, t in markers.items() if p.stat().st_mtime_ns != t}
    assert results / ".stage.json" in changed and results / "attacks" / "prefill" / ".stage.json" in changed
    assert not any("models" in p.parts or "corpus" in p.parts for p in changed), changed
    assert load_record(results / "record.json")["attacks"]["prefill"]["metrics"]["prefill_act_rate/held_out"]["n"] > 0
