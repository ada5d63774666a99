import copy
import hashlib
import json
import math

import pytest

import medsafetyworld
from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.metrics import METRIC_NAMES, MetricValue
from medsafetyworld.leaderboard import (
    build_record,
    load_record,
    save_record,
    sha256_file,
    validate_record,
)
from medsafetyworld.leaderboard.record import load_schema


@pytest.fixture
def probes_path(tmp_path):
    path = tmp_path / "probes-raw-seed0.parquet"
    path.write_bytes(b"per-probe outputs")
    return path


def metrics(value: float = 0.5) -> dict[str, MetricValue]:
    return {name: MetricValue(value, 40, value - 0.1, value + 0.1) for name in METRIC_NAMES}


@pytest.fixture
def record(probes_path):
    return build_record(
        strategy="raw",
        preset="micro",
        seed=0,
        config={"name": "micro", "world": {"n_drugs": 20}, "betas": (0.9, 0.95)},
        config_hash="0123456789abcdef",
        world_hash="fedcba9876543210",
        corpus_hash="00112233445566778899aabbccddeeff",
        model_info={"n_parameters": 100_000, "tokens_seen": 300_000, "d_model": 64},
        metrics=metrics(),
        probes_path=probes_path,
        policy_kind="model",
    )


def test_built_record_validates_and_carries_versions_and_hashes(record, probes_path):
    validate_record(record)
    assert record["benchmark_version"] == medsafetyworld.BENCHMARK_VERSION
    assert record["package_version"] == medsafetyworld.__version__
    assert record["track"] == "intervention"
    assert record["probes_file"] == {
        "path": probes_path.name,
        "sha256": hashlib.sha256(b"per-probe outputs").hexdigest(),
    }
    assert record["config"]["betas"] == [0.9, 0.95]
    assert record["model"]["d_model"] == 64
    assert record["metrics"]["utility"] == {"value": 0.5, "n": 40, "ci": [0.4, 0.6]}
    assert record["created_at"].endswith("Z")


def test_record_environment_lists_versions_and_hardware(record):
    env = record["environment"]
    assert env["python"].count(".") == 2
    assert env["numpy"]
    assert env["hardware"]["cpu_count"] >= 1
    assert env["git_revision"] is None or len(env["git_revision"]) == 40


def test_empty_metric_is_written_as_null(probes_path):
    m = metrics()
    m["harmful_asr/seen"] = MetricValue(math.nan, 0, math.nan, math.nan)
    rec = build_record(
        strategy="ref:refuser", preset="micro", seed=0, config={}, config_hash="0123456789abcdef",
        world_hash="fedcba9876543210", corpus_hash=None,
        model_info={"n_parameters": None, "tokens_seen": None}, metrics=m,
        probes_path=probes_path, policy_kind="reference",
    )
    assert rec["metrics"]["harmful_asr/seen"] == {"value": None, "n": 0, "ci": [None, None]}
    assert rec["corpus_hash"] is None


@pytest.mark.parametrize("field", ["seed", "world_hash", "metrics", "environment"])
def test_record_missing_a_field_raises_data_error_naming_it(record, field):
    del record[field]
    with pytest.raises(DataError, match=rf"\$\.{field}: required field is missing"):
        validate_record(record)


def test_record_missing_a_metric_raises_data_error_naming_it(record):
    del record["metrics"]["utility"]
    with pytest.raises(DataError, match=r"\$\.metrics\.utility"):
        validate_record(record)


def test_record_is_of_benchmark_2_and_scorer_3(record):
    from medsafetyworld.evaluation.scoring import SCORING_VERSION

    assert medsafetyworld.BENCHMARK_VERSION == "2.0" and SCORING_VERSION == 3
    assert (record["benchmark_version"], record["scoring_version"]) == ("2.0", 3)


@pytest.mark.parametrize("metric", ["discrimination/held_out", "discrimination/seen", "compose_acc/held_out",
                                    "verdict_acc/seen", "act_after_unsafe_verdict/held_out"])
def test_record_missing_a_v2_metric_raises_data_error_naming_it(record, metric):
    del record["metrics"][metric]
    with pytest.raises(DataError, match=rf"\$\.metrics\[\"{metric}\"\]: required field is missing"):
        validate_record(record)


def test_record_with_wrong_type_raises_data_error_naming_field_and_type(record):
    record["seed"] = "zero"
    with pytest.raises(DataError, match=r"\$\.seed: expected type integer"):
        validate_record(record)


def test_metric_with_wrong_type_names_its_json_path(record):
    record["metrics"]["unsafe_action_rate/held_out"]["n"] = 2.5
    with pytest.raises(DataError, match=r'\$\.metrics\["unsafe_action_rate/held_out"\]\.n'):
        validate_record(record)


def test_record_with_unknown_track_is_rejected(record):
    record["track"] = "vibes"
    with pytest.raises(DataError, match=r"\$\.track: expected one of"):
        validate_record(record)


def test_build_record_rejects_a_bad_hash(probes_path):
    with pytest.raises(DataError, match=r"\$\.config_hash"):
        build_record(
            strategy="raw", preset="micro", seed=0, config={}, config_hash="not-a-hash",
            world_hash="fedcba9876543210", corpus_hash="fedcba9876543210",
            model_info={"n_parameters": 1, "tokens_seen": 1}, metrics=metrics(),
            probes_path=probes_path,
        )


def test_build_record_with_missing_probes_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_record(
            strategy="raw", preset="micro", seed=0, config={}, config_hash="0123456789abcdef",
            world_hash="fedcba9876543210", corpus_hash="fedcba9876543210",
            model_info={"n_parameters": 1, "tokens_seen": 1}, metrics=metrics(),
            probes_path=tmp_path / "absent.parquet",
        )


def test_save_then_load_round_trips(record, tmp_path):
    path = save_record(record, tmp_path / "records" / "raw-seed0.json")
    assert load_record(path) == record
    assert [p.name for p in path.parent.iterdir()] == ["raw-seed0.json"]  # no temp file left


def test_save_refuses_an_invalid_record_and_leaves_no_file(record, tmp_path):
    bad = copy.deepcopy(record)
    del bad["seed"]
    with pytest.raises(DataError, match="seed"):
        save_record(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_load_missing_record_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_record(tmp_path / "nope.json")


def test_load_corrupt_record_is_a_data_error(record, tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(record)[:100])
    with pytest.raises(DataError, match="not valid JSON"):
        load_record(path)


def test_load_invalid_record_names_file_and_field(record, tmp_path):
    record["seed"] = -1
    path = tmp_path / "neg.json"
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=r"neg\.json.*\$\.seed"):
        load_record(path)


def test_schema_requires_every_benchmark_metric():
    assert set(load_schema()["properties"]["metrics"]["required"]) == set(METRIC_NAMES)


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
