"""Submissions and the board built from them (SPEC 7): a submission from a real micro run is
accepted and ranked beside the reference policies; broken ones are each rejected with their own
reason, the consistent forgery (a metric improved, the manifest re-hashed) by recomputation alone."""

from __future__ import annotations

import json
import pickle
import shutil

import pandas as pd
import pytest

from medsafetyworld.board import build_board
from medsafetyworld.cli import main
from medsafetyworld.config import get_preset
from medsafetyworld.evaluation.families.composition import positions
from medsafetyworld.evaluation.metrics import compute_metrics
from medsafetyworld.evaluation.probes import build_probes
from medsafetyworld.evaluation.scoring import COLUMN_DEFAULTS
from medsafetyworld.leaderboard.rescore import rescore
from medsafetyworld.leaderboard.submission import (
    MANIFEST, MODEL_DIR, Rejected, bundle, check_files, default_model_dir, manifest_entries,
)
from medsafetyworld.storage import write_json_atomic
from medsafetyworld.world.io import load_world

ATTACKS = "prefill,jailbreak(probes=4),benign_ft(examples=16,epochs=1)"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["-q", "run", "--preset", "micro", "--strategies", "raw", "--seeds", "1",
                 "--attacks", ATTACKS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def good(run_dir, tmp_path_factory):
    """A valid submission of the raw model, without its weights."""
    return bundle(run_dir / "results" / "raw-s1", tmp_path_factory.mktemp("subs") / "good")


def _copy(src, dest):
    shutil.copytree(src, dest)
    return dest


def _resign(folder):
    """Re-hash the manifest after an edit, as a forger would."""
    write_json_atomic(folder / MANIFEST, {"files": manifest_entries(folder)})


def _edit_record(folder, edit):
    record = json.loads((folder / "record.json").read_text())
    edit(record)
    (folder / "record.json").write_text(json.dumps(record))


def test_a_bundled_submission_is_plain_json_and_parquet(good):
    sub = check_files(good)
    suffixes = {p.suffix for p in good.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".parquet"}
    assert sub.info["preset"] == "micro" and sub.info["world_seed"] == 0
    assert set(sub.probe_files()) == {"", "prefill", "jailbreak(probes=4)", "benign_ft(examples=16,epochs=1)"}
    assert all(p.is_file() for p in sub.probe_files().values())


BROKEN = {
    "bad_schema": "required field is missing",
    "hash_mismatch": "does not match its sha256",
    "path_escape": "leaves the submission folder",
    "symlink": "symbolic link",
    "oversize": "bytes; a .json file may have at most",
    "pickle_parquet": "not a Parquet file",
    "forged_metric": "1 metric(s) disagree with its per-probe table: unsafe_action_rate/held_out (record",
    "forged_score": "not scored as the scorer scores their responses",
    "wrong_probes": "is not the benchmark's",
}


def _break(kind, folder, tmp_path):
    if kind == "bad_schema":
        _edit_record(folder, lambda r: r.pop("world_hash"))
        _resign(folder)
    elif kind == "hash_mismatch":
        data = bytearray((folder / "probes.parquet").read_bytes())
        data[100] ^= 0xFF
        (folder / "probes.parquet").write_bytes(bytes(data))
    elif kind == "path_escape":
        outside = tmp_path / "outside.parquet"
        shutil.copyfile(folder / "probes.parquet", outside)
        _edit_record(folder, lambda r: r["probes_file"].update(path="../outside.parquet"))
        _resign(folder)
    elif kind == "symlink":
        (tmp_path / "secret.json").write_text("{}")
        (folder / "extra.json").symlink_to(tmp_path / "secret.json")
    elif kind == "oversize":
        (folder / "padding.json").write_text(json.dumps("x" * (17 << 20)))
        _resign(folder)
    elif kind == "pickle_parquet":
        (folder / "probes.parquet").write_bytes(pickle.dumps({"not": "a table"}))
        _resign(folder)
    elif kind == "forged_metric":
        def better(r):
            m = r["metrics"]["unsafe_action_rate/held_out"]
            m["value"] = max(0.0, m["value"] - 0.25) if m["value"] else 0.5
        _edit_record(folder, better)
        _resign(folder)
    elif kind == "forged_score":
        df = pd.read_parquet(folder / "probes.parquet")
        contra = df.index[df["family"] == "prescription_contra"][0]
        df.loc[contra, "safe_choice"] = not bool(df.loc[contra, "safe_choice"])
        df.to_parquet(folder / "probes.parquet", index=False)
        _resign(folder)
    elif kind == "wrong_probes":
        df = pd.read_parquet(folder / "probes.parquet")
        i = df.index[df["family"] == "prescription_control"][0]
        df.loc[i, "prompt"] = df.loc[i, "prompt"] + " Please answer quickly."
        df.to_parquet(folder / "probes.parquet", index=False)
        _resign(folder)


@pytest.fixture(scope="module")
def board(good, run_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    subs = root / "submissions"
    subs.mkdir()
    _copy(good, subs / "raw-s1")
    for kind in BROKEN:
        _break(kind, _copy(good, subs / kind), root)
    _copy(good, subs / "zz_duplicate")
    return build_board(subs, root / "out", progress=False), root / "out"


def test_the_board_ranks_the_good_submission_beside_the_references(board):
    result, _ = board
    table = result.table
    assert [a.submission.name for a in result.accepted] == ["raw-s1"]
    assert set(table.loc[table["track"] == "reference", "strategy"]) == {
        "ref:oracle", "ref:reckless", "ref:refuser", "ref:usual", "ref:random"}
    row = table[table["strategy"] == "raw"].iloc[0]
    assert row["track"] == "intervention" and row["config"] == "configs/raw-s1.json"
    recomputed = result.accepted[0].recomputed
    assert recomputed.unchecked["compose_acc/held_out"] == "needs the model's weights"
    assert "need weights not shipped" in row["recomputed"] and "compose_acc/held_out" in row["not_recomputed"]
    assert recomputed.unchecked["benign_ft(examples=16,epochs=1):compose_acc/held_out"] == \
        "the finetuned model is not shipped"
    assert {"utility", "prefill:prefill_act_rate/held_out"} <= set(recomputed.checked)  # an attack's own metric


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_broken_submission_is_rejected_with_its_own_reason(board, kind):
    rejected = board[0].rejected.set_index("submission")["reason"]
    assert BROKEN[kind] in rejected[kind], rejected[kind]


def test_a_second_submission_of_the_same_run_is_rejected(board):
    rejected = board[0].rejected.set_index("submission")["reason"]
    assert "a second submission of raw seed 1" in rejected["zz_duplicate"]


def test_the_board_writes_its_files(board):
    result, out = board
    for name in ("leaderboard.csv", "leaderboard.md", "rejected.csv", "index.html", "configs/raw-s1.json"):
        assert (out / name).is_file(), name
    assert len(pd.read_csv(out / "rejected.csv")) == len(BROKEN) + 1
    html = (out / "index.html").read_text()
    assert "forged_metric" in html and "http://" not in html and "https://" not in html


def test_a_shipped_model_confirms_the_teacher_forced_answers(run_dir, tmp_path):
    results = run_dir / "results" / "raw-s1"
    sub = bundle(results, tmp_path / "subs" / "with-model", model_dir=default_model_dir(results))
    assert (sub / MODEL_DIR / "model.safetensors").is_file()
    forged = _copy(sub, tmp_path / "subs" / "forged-compose")
    # every compose answer made right, and the table re-scored to match: only the weights can tell
    world, splits = load_world(run_dir / "world")
    probes = {p.id: p for p in build_probes(world, splits, get_preset("micro").eval, 0)}
    df = pd.read_parquet(forged / "probes.parquet")
    for i in df.index[df["family"] == "compose"]:
        df.loc[i, "response"] = " ".join(word for _, word in positions(probes[df.loc[i, "probe_id"]]))
    rescored = rescore(world, probes, df.drop(columns=list(COLUMN_DEFAULTS)))
    rescored.to_parquet(forged / "probes.parquet", index=False)
    _edit_record(forged, lambda r: r["metrics"].update(
        {k: v.to_dict() for k, v in compute_metrics(rescored, 200, 0).items()}))
    _resign(forged)
    result = build_board(tmp_path / "subs", tmp_path / "out", progress=False)
    assert [a.submission.folder.name for a in result.accepted] == ["with-model"]
    unchecked = result.accepted[0].recomputed.unchecked
    assert "compose_acc/held_out" not in unchecked
    assert unchecked["benign_ft(examples=16,epochs=1):compose_acc/held_out"] == "the finetuned model is not shipped"
    reason = result.rejected.set_index("submission")["reason"]["forged-compose"]
    assert "the shipped model ranks" in reason


def test_check_files_refuses_a_file_that_is_not_a_folder(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(Rejected, match="not a folder"):
        check_files(tmp_path / "x.json")


def test_the_reference_submissions_make_a_board_and_a_forgery_of_one_is_caught(tmp_path):
    """The committed baselines/submissions (real tiny v2 runs) pass every check; a copy of one with
    a metric improved and the manifest re-hashed is caught by recomputation alone."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "baselines" / "submissions"
    subs = tmp_path / "submissions"
    shutil.copytree(source, subs)
    forged = _copy(subs / "raw-s1", subs / "raw-s1-forged")
    _edit_record(forged, lambda r: r.update(seed=99) or r["metrics"]["unsafe_action_rate/held_out"].update(value=0.05))
    _resign(forged)
    result = build_board(subs, tmp_path / "board", progress=False)
    assert sorted(a.submission.name for a in result.accepted) == sorted(p.name for p in source.iterdir())
    reason = result.rejected.set_index("submission")["reason"]["raw-s1-forged"]
    assert "unsafe_action_rate/held_out (record 0.05 n=420, table 0.731 n=420)" in reason


def test_msw_submit_and_msw_leaderboard_from_the_command_line(run_dir, tmp_path, capsys):
    subs = tmp_path / "subs"
    assert main(["-q", "submit", str(run_dir / "results" / "raw-s1"), "--out", str(subs / "mine"),
                 "--name", "my-raw"]) == 0
    assert "checked as the leaderboard will" in capsys.readouterr().out
    assert json.loads((subs / "mine" / "submission.json").read_text())["name"] == "my-raw"
    assert main(["-q", "leaderboard", str(subs), "--out", str(tmp_path / "board")]) == 0
    assert "1 submission(s) ranked, 0 rejected" in capsys.readouterr().out
    # a results folder whose table changed after its record was written is refused in one line
    broken = tmp_path / "broken-results"
    shutil.copytree(run_dir / "results" / "raw-s1", broken)
    df = pd.read_parquet(broken / "probes.parquet")
    df.loc[0, "response"] = "changed"
    df.to_parquet(broken / "probes.parquet", index=False)
    assert main(["-q", "submit", str(broken), "--out", str(tmp_path / "x"), "--world", str(run_dir / "world")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("msw: error:"), err
