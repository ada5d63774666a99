"""Every input is checked where it enters (issue 13, part 3): shards against their manifest before
training reads them, a manifest's shape, a corpus's world and strategy against those given, a
record's per-probe paths confined to its folder, and a record's metrics and scores against its
per-probe table (leaderboard/verify.py), with summarize leaving out the records that fail."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest

from medsafetyworld.config import config_hash
from medsafetyworld.corpus.shards import load_manifest, verify_corpus
from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.metrics import compute_metrics
from medsafetyworld.evaluation.policies import reference_policy
from medsafetyworld.leaderboard import load_record, load_records, write_summary
from medsafetyworld.leaderboard.rescore import disagreeing_metrics
from medsafetyworld.leaderboard.verify import check_record, verify_record
from medsafetyworld.pipeline import check_corpus, evaluate_policy, make_corpus, make_pretrained, make_world
from medsafetyworld.storage import sha256_file
from medsafetyworld.strategies import get_strategy
from medsafetyworld.training.data import cached_token_stream, load_token_stream, schedule_regions
from medsafetyworld.training.trainer import pretrain
from medsafetyworld.world.io import load_world


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# --- shards, manifests, and the corpus given to training ------------------------------------------


@pytest.fixture(scope="module")
def corpora(micro, micro_world_dir, tmp_path_factory):
    """micro corpora of raw and filter, rendered once; tests copy them."""
    root = tmp_path_factory.mktemp("corpora")
    for name in ("raw", "filter"):
        make_corpus(micro_world_dir, get_strategy(name), micro, 1, root / name, progress=False)
    return root


def copy_corpus(corpora, name, tmp_path):
    return shutil.copytree(corpora / name, tmp_path / name)


def test_an_intact_corpus_reads_as_before_and_bare_shards_stay_allowed(corpora, micro_tokenizer, tmp_path):
    corpus = copy_corpus(corpora, "raw", tmp_path)
    eos = micro_tokenizer.eos_token_id
    stream = load_token_stream(corpus, eos)
    assert np.array_equal(cached_token_stream(corpus, eos), stream)
    bare = tmp_path / "bare"  # shards without manifest.json (tests, tools): nothing to check against
    bare.mkdir()
    for shard in corpus.glob("shard-*.parquet"):
        shutil.copy2(shard, bare / shard.name)
    assert np.array_equal(load_token_stream(bare, eos), stream)


@pytest.mark.parametrize("cached_first", [False, True])
def test_a_shard_swapped_for_another_corporas_is_refused_before_training_reads_it(
        corpora, micro_tokenizer, tmp_path, cached_first):
    corpus = copy_corpus(corpora, "raw", tmp_path)
    eos = micro_tokenizer.eos_token_id
    if cached_first:  # a stream cached from the intact shards does not hide the swap
        cached_token_stream(corpus, eos)
    shard = corpus / "shard-00000.parquet"
    shutil.copy(corpora / "filter" / "shard-00000.parquet", shard)
    for read in (load_token_stream, cached_token_stream):
        with pytest.raises(DataError) as exc:
            read(corpus, eos)
        message = one_line(exc)
        assert str(shard) in message and "sha256" in message and "msw corpus --out" in message


def test_pretraining_refuses_a_swapped_shard(corpora, micro, micro_world_dir, tmp_path):
    corpus = copy_corpus(corpora, "raw", tmp_path)
    shutil.copy(corpora / "filter" / "shard-00000.parquet", corpus / "shard-00000.parquet")
    with pytest.raises(DataError, match="shard-00000.parquet does not match the sha256"):
        pretrain(corpus, micro_world_dir / "tokenizer", tmp_path / "model", micro.model, micro.train, seed=0,
                 progress=False)
    assert not (tmp_path / "model" / "config.json").exists()


def test_a_stray_shard_and_an_edited_corpus_hash_are_refused(corpora, micro_tokenizer, tmp_path):
    corpus = copy_corpus(corpora, "raw", tmp_path)
    stray = corpus / "shard-00099.parquet"
    shutil.copy(corpora / "filter" / "shard-00000.parquet", stray)
    with pytest.raises(DataError, match="shard-00099.parquet is not in the manifest"):
        load_token_stream(corpus, micro_tokenizer.eos_token_id)
    stray.unlink()
    manifest = json.loads((corpus / "manifest.json").read_text())
    manifest["corpus_hash"] = "0" * 64
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="corpus hash .* is not that of its shards"):
        verify_corpus(corpus)


def mangle(manifest, how):
    if how == "list":
        return [manifest]
    m = dict(manifest)
    if how == "no shards":
        del m["shards"]
    elif how == "shards not a list":
        m["shards"] = {"file": "shard-00000.parquet"}
    elif how == "shard not an object":
        m["shards"] = ["shard-00000.parquet"]
    elif how == "shard path escapes":
        m["shards"] = [{**m["shards"][0], "file": "../../elsewhere/shard-00000.parquet"}]
    elif how == "sha not hex":
        m["shards"] = [{**m["shards"][0], "sha256": 12}]
    elif how == "tokens a string":
        m["tokens"] = "many"
    elif how == "tokens a boolean":
        m["tokens"] = True
    elif how == "world hash a number":
        m["world_hash"] = 7
    elif how == "phases not offsets":
        m["phases"] = {"safe": "start"}
    elif how == "schedule not pairs":
        m["schedule"] = [["safe"]]
    return m


@pytest.mark.parametrize("how", ["list", "no shards", "shards not a list", "shard not an object", "shard path escapes",
                                 "sha not hex", "tokens a string", "tokens a boolean", "world hash a number",
                                 "phases not offsets", "schedule not pairs"])
def test_a_manifest_of_the_wrong_shape_is_one_data_error_line(corpora, micro_tokenizer, tmp_path, how):
    corpus = copy_corpus(corpora, "raw", tmp_path)
    manifest = json.loads((corpus / "manifest.json").read_text())
    (corpus / "manifest.json").write_text(json.dumps(mangle(manifest, how)))
    for read in (load_manifest, verify_corpus, lambda c: load_token_stream(c, micro_tokenizer.eos_token_id),
                 lambda c: schedule_regions(c, 100)):
        with pytest.raises(DataError) as exc:
            read(corpus)
        message = one_line(exc)
        assert "is not a corpus manifest" in message and "msw corpus --out" in message


def test_a_corpus_of_another_strategy_is_refused_naming_what_to_pass(corpora, micro, micro_world_dir, tmp_path):
    with pytest.raises(DataError) as exc:
        make_pretrained(micro_world_dir, corpora / "filter", get_strategy("raw"), micro, 1, tmp_path / "m",
                        progress=False)
    message = one_line(exc)
    assert "rendered for strategy 'filter', not 'raw'" in message and "--strategy 'filter'" in message
    assert not (tmp_path / "m").exists()  # refused before any training
    assert check_corpus(corpora / "filter", micro_world_dir, get_strategy("filter"))["strategy"] == "filter"


def test_a_corpus_of_another_world_is_refused_naming_what_to_pass(corpora, micro, micro_world_dir, tmp_path):
    other_world = tmp_path / "world1"
    make_world(micro, 1, other_world)
    with pytest.raises(DataError) as exc:
        make_pretrained(other_world, corpora / "raw", get_strategy("raw"), micro, 1, tmp_path / "m", progress=False)
    message = one_line(exc)
    assert f"not rendered from the world in {other_world}" in message and "pass the --world" in message
    assert not (tmp_path / "m").exists()


def test_msw_train_with_the_wrong_strategy_exits_2_in_one_line(corpora, micro_world_dir, tmp_path, capsys):
    from medsafetyworld.cli import main

    code = main(["-q", "train", "--world", str(micro_world_dir), "--corpus", str(corpora / "filter"),
                 "--strategy", "raw", "--preset", "micro", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "--strategy 'filter'" in err


def test_the_corpus_hash_is_still_the_hash_of_the_shard_hashes(corpora):
    """Stage keys hash the corpus hash: the checks must not change how it is computed."""
    manifest = verify_corpus(corpora / "raw")
    shard_hashes = "".join(sha256_file(corpora / "raw" / s["file"]) for s in manifest["shards"])
    assert manifest["corpus_hash"] == hashlib.sha256(shard_hashes.encode()).hexdigest()


# --- results records ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast(micro):
    return dataclasses.replace(micro, eval=dataclasses.replace(
        micro.eval, probes_per_pair=1, harmful_per_condition=1, max_probes_per_family=8, knowledge_facts=4,
        bootstrap_samples=20))


@pytest.fixture(scope="module")
def evaluated(fast, micro_world_dir, tmp_path_factory):
    """A run folder as `msw run` lays it out (world/, results/ref-*/) with the oracle and the
    reckless reference policies evaluated; tests copy it."""
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(micro_world_dir, run / "world")
    world, _ = load_world(run / "world")
    for name in ("oracle", "reckless"):
        fields = {"strategy": f"ref:{name}", "seed": 0, "corpus_hash": None, "policy_kind": "reference",
                  "model_info": {"n_parameters": 0, "tokens_seen": 0}}
        evaluate_policy(lambda name=name: reference_policy(name, world, 0), run / "world", fast,
                        run / "results" / f"ref-{name}", key=config_hash(name, "reference"), record_fields=fields,
                        probe_seed=0, pretrained=lambda policy: policy)
    return run


@pytest.fixture
def run(evaluated, tmp_path):
    return shutil.copytree(evaluated, tmp_path / "run")


def edit_record(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def rewrite_table(folder, change):
    """Change the per-probe table, then make the record agree with it: metrics recomputed, sha256
    updated, as someone covering their tracks would."""
    table = pd.read_parquet(folder / "probes.parquet")
    change(table)
    table.to_parquet(folder / "probes.parquet", index=False)

    def agree(record):
        record["metrics"].update({k: v.to_dict() for k, v in compute_metrics(table, n_boot=20, seed=0).items()})
        record["probes_file"]["sha256"] = sha256_file(folder / "probes.parquet")

    edit_record(folder / "record.json", agree)


def test_an_untouched_record_checks_out_and_is_re_scored(run):
    check = check_record(run / "results" / "ref-oracle" / "record.json")
    table = pd.read_parquet(run / "results" / "ref-oracle" / "probes.parquet")
    assert check.ok and check.problems == [] and check.rescored == len(table) > 0
    assert table["family"].eq("compose_pretrained").any()  # the pretrained rows are re-scored too
    assert verify_record(run / "results" / "ref-reckless" / "record.json") == []


@pytest.mark.parametrize("path", ["../../../outside.parquet", "/etc/passwd", "sub/../../outside.parquet"])
def test_a_per_probe_path_outside_the_record_folder_is_refused(run, path):
    folder = run / "results" / "ref-oracle"
    shutil.copy(folder / "probes.parquet", run.parent / "outside.parquet")
    edit_record(folder / "record.json", lambda r: r["probes_file"].update(path=path))
    with pytest.raises(DataError) as exc:
        load_record(folder / "record.json")
    assert "is not a file in the record's folder" in one_line(exc)
    assert "record's folder" in verify_record(folder / "record.json")[0]


def test_a_symlink_out_of_the_record_folder_is_refused(run):
    folder = run / "results" / "ref-oracle"
    outside = run.parent / "outside.parquet"
    shutil.move(folder / "probes.parquet", outside)
    (folder / "probes.parquet").symlink_to(outside)  # same bytes, same sha256: only the place is wrong
    with pytest.raises(DataError, match="a symlink leads out of the record's folder"):
        load_record(folder / "record.json")


def test_an_attack_path_outside_the_record_folder_is_refused(run):
    folder = run / "results" / "ref-oracle"
    entry = {"attack": "prefill", "params": {}, "metrics": {},
             "probes_file": {"path": "../ref-reckless/probes.parquet", "sha256": "0" * 64}}
    edit_record(folder / "record.json", lambda r: r.setdefault("attacks", {}).update(prefill=entry))
    with pytest.raises(DataError, match=r"attacks\.prefill\.probes_file\.path"):
        load_record(folder / "record.json")


def test_an_edited_metric_is_found(run):
    path = run / "results" / "ref-oracle" / "record.json"
    record = load_record(path)
    computed = compute_metrics(pd.read_parquet(path.parent / "probes.parquet"), n_boot=1)
    assert disagreeing_metrics(record["metrics"], computed) == []
    record["metrics"]["utility"]["value"] = 0.123
    record["metrics"]["over_refusal"]["n"] += 1
    wrong = disagreeing_metrics(record["metrics"], computed)
    assert [w.split(" ")[0] for w in wrong] == ["utility", "over_refusal"]
    assert "record 0.123" in wrong[0]
    edit_record(path, lambda r: r["metrics"]["utility"].update(value=0.123))
    (problem,) = verify_record(path)
    assert "1 metric(s) disagree" in problem and "utility (record 0.123" in problem


def test_a_replaced_table_with_its_hash_and_metrics_updated_is_caught_by_re_scoring(run):
    folder = run / "results" / "ref-reckless"

    def flip(table):  # the reckless policy "refused" its first contraindicated request
        i = table.index[table["family"] == "prescription_contra"][0]
        table.loc[i, ["refused", "contraindicated_choice"]] = [True, False]

    rewrite_table(folder, flip)
    assert check_record(folder / "record.json", rescore=False).ok  # metrics and hash agree with the table
    (problem,) = verify_record(folder / "record.json")
    assert "1 of" in problem and "not scored as the scorer scores their responses" in problem


def test_a_replaced_response_is_caught_by_re_scoring(run):
    folder = run / "results" / "ref-reckless"

    def silence(table):  # an answer swapped for a refusal, its scored columns left as they were
        i = table.index[table["family"] == "prescription_contra"][0]
        table.loc[i, "response"] = "I cannot recommend anything for this patient."

    rewrite_table(folder, silence)
    (problem,) = verify_record(folder / "record.json")
    assert "not scored as the scorer scores" in problem


def test_a_table_of_other_probes_is_caught(run):
    folder = run / "results" / "ref-oracle"

    def ask_another(table):
        table.loc[table.index[0], "prompt"] = "a prompt of no probe"

    rewrite_table(folder, ask_another)
    (problem,) = verify_record(folder / "record.json")
    assert "not this world's for probe seed 0" in problem


def test_without_the_world_the_metrics_are_still_checked(run):
    shutil.rmtree(run / "world")
    path = run / "results" / "ref-oracle" / "record.json"
    check = check_record(path)
    assert check.ok and check.rescored == 0 and any("no world" in n for n in check.notes)
    edit_record(path, lambda r: r["metrics"]["utility"].update(value=0.5))
    assert "utility (record 0.5" in verify_record(path)[0]


def test_summarize_leaves_out_a_record_that_disagrees_and_lists_it(run, caplog):
    path = run / "results" / "ref-oracle" / "record.json"
    edit_record(path, lambda r: r["metrics"]["utility"].update(value=0.0))
    records = load_records(sorted(run.glob("results/*/record.json")))
    with caplog.at_level(logging.WARNING, logger="medsafetyworld"):
        paths = write_summary(records, run)
    assert list(pd.read_csv(paths["csv"])["strategy"]) == ["ref:reckless"]
    md = paths["md"].read_text()
    assert "**Left out** (1 records" in md and f"{path} (`ref:oracle` seed 0): 1 metric(s) disagree" in md
    assert "2 of 2 records were checked" in md
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"summarize: left out {path}") and "\n" not in warning


def add_prefill(run, fast):
    """The prefill attack run on the oracle's record, as `msw run --attacks prefill` adds it."""
    from medsafetyworld.attacks import AttackContext, get_attack
    from medsafetyworld.attacks.run import run_attack

    folder = run / "results" / "ref-oracle"
    world, splits = load_world(run / "world")
    ctx = AttackContext(world, splits, fast, reference_policy("oracle", world, 0), 0, folder / "attacks" / "prefill",
                        progress=False)
    entry = run_attack(get_attack("prefill"), ctx)
    entry["probes_file"]["path"] = "attacks/prefill/probes.parquet"
    edit_record(folder / "record.json", lambda r: r.setdefault("attacks", {}).update(prefill=entry))
    return folder


def test_a_prompt_attacks_table_is_re_scored_and_its_own_metrics_recomputed(run, fast):
    folder = add_prefill(run, fast)
    check = check_record(folder / "record.json")
    rows = sum(len(pd.read_parquet(p)) for p in (folder / "probes.parquet", folder / "attacks/prefill/probes.parquet"))
    assert check.ok and check.rescored == rows
    edit_record(folder / "record.json",
                lambda r: r["attacks"]["prefill"]["metrics"]["prefill_act_rate/held_out"].update(value=0.5))
    (problem,) = verify_record(folder / "record.json")
    assert problem.startswith("attack prefill: 1 metric(s) disagree")
    assert "prefill_act_rate/held_out (record 0.5" in problem


def test_a_prompt_attacks_replaced_response_is_caught_by_re_scoring(run, fast):
    folder = add_prefill(run, fast)
    attacked = folder / "attacks" / "prefill" / "probes.parquet"
    table = pd.read_parquet(attacked)
    table.loc[table.index[0], "response"] = "I cannot recommend anything for this patient."
    table.to_parquet(attacked, index=False)
    edit_record(folder / "record.json", lambda r: r["attacks"]["prefill"]["probes_file"].update(
        sha256=sha256_file(attacked)))
    (problem,) = verify_record(folder / "record.json")
    assert problem.startswith("attack prefill: 1 of") and "not scored as the scorer scores" in problem


def test_summarize_drops_an_attack_whose_table_changed_and_keeps_the_record(run, fast, caplog):
    folder = add_prefill(run, fast)
    assert verify_record(folder / "record.json") == []
    table = pd.read_parquet(folder / "attacks" / "prefill" / "probes.parquet")
    table.head(3).to_parquet(folder / "attacks" / "prefill" / "probes.parquet", index=False)
    assert verify_record(folder / "record.json")[0].startswith("attack prefill: its per-probe file")
    with caplog.at_level(logging.WARNING, logger="medsafetyworld"):
        paths = write_summary(load_records(sorted(run.glob("results/*/record.json"))), run)
    csv = pd.read_csv(paths["csv"])
    assert set(csv["strategy"]) == {"ref:oracle", "ref:reckless"}
    assert not [c for c in csv.columns if c.endswith("@prefill")]
    assert "**Attacks left out**" in paths["md"].read_text()


def test_summarize_with_every_record_failing_is_one_data_error(run):
    for path in run.glob("results/*/record.json"):
        edit_record(path, lambda r: r["metrics"]["utility"].update(value=0.42))
    with pytest.raises(DataError) as exc:
        write_summary(load_records(sorted(run.glob("results/*/record.json"))), run)
    assert "every record failed its check" in one_line(exc)


def test_msw_summarize_prints_the_records_left_out(run, capsys):
    from medsafetyworld.cli import main

    edit_record(run / "results" / "ref-oracle" / "record.json", lambda r: r["metrics"]["utility"].update(value=0.0))
    assert main(["-q", "summarize", str(run)]) == 0
    out = capsys.readouterr().out
    assert "**Left out**" in out and "ref-oracle" in out


def test_msw_summarize_refuses_a_record_reading_outside_its_folder(run, capsys):
    from medsafetyworld.cli import main

    shutil.copy(run / "results" / "ref-oracle" / "probes.parquet", run.parent / "outside.parquet")
    edit_record(run / "results" / "ref-oracle" / "record.json",
                lambda r: r["probes_file"].update(path="../../../outside.parquet"))
    assert main(["-q", "summarize", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is not a file in the record's folder" in err and err.count("\n") == 1
