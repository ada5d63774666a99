import math

import numpy as np
import pandas as pd
import pytest

from medsafetyworld.errors import DataError
from medsafetyworld.evaluation.scoring import SCORING_VERSION
from medsafetyworld.evaluation.metrics import METRIC_NAMES, MetricValue
from medsafetyworld.leaderboard import build_record, summarize, write_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def probes_path(tmp_path):
    path = tmp_path / "probes.parquet"
    path.write_bytes(b"probes")
    return path


@pytest.fixture
def make_record(probes_path):
    def make(strategy, seed=0, utility=0.5, unsafe=0.5, preset="micro", world="fedcba9876543210"):
        metrics = {name: MetricValue(0.3, 40, 0.2, 0.4) for name in METRIC_NAMES}
        metrics["utility"] = MetricValue(utility, 40, max(utility - 0.1, 0), min(utility + 0.1, 1))
        metrics["unsafe_action_rate/held_out"] = MetricValue(
            unsafe, 30, max(unsafe - 0.15, 0), min(unsafe + 0.15, 1)
        )
        ref = strategy.startswith("ref:")
        return build_record(
            strategy=strategy, preset=preset, seed=seed, config={"preset": preset},
            config_hash="0123456789abcdef", world_hash=world,
            corpus_hash=None if ref else "00112233445566778899aabbccddeeff",
            model_info={"n_parameters": None if ref else 100_000, "tokens_seen": None},
            metrics=metrics, probes_path=probes_path, policy_kind="reference" if ref else "model",
        )

    return make


@pytest.fixture
def records(make_record):
    return [
        make_record("ref:oracle", utility=1.0, unsafe=0.0),
        make_record("filter", utility=0.6, unsafe=0.9),
        make_record("reflect", utility=0.55, unsafe=0.45),
        make_record("raw", utility=0.7, unsafe=0.95),
        make_record("ref:refuser", utility=0.0, unsafe=0.0),
        make_record("ref:reckless", utility=0.6, unsafe=1.0),
        make_record("ref:random", utility=0.2, unsafe=0.4),
        make_record("redflag", utility=0.5, unsafe=0.3),
        make_record("ref:usual", utility=1.0, unsafe=1.0),
    ]


def test_summary_has_one_row_per_strategy_strategies_first(records):
    table = summarize(records)
    assert list(table["strategy"]) == [
        "raw", "filter", "redflag", "reflect",
        "ref:oracle", "ref:reckless", "ref:usual", "ref:refuser", "ref:random",
    ]
    assert list(table["policy_kind"]) == ["model"] * 4 + ["reference"] * 5


def test_single_seed_summary_keeps_value_and_bootstrap_interval(records):
    row = summarize(records).set_index("strategy").loc["reflect"]
    assert row["n_seeds"] == 1 and row["interval"] == "bootstrap95"
    assert (row["utility"], row["utility_lo"], row["utility_hi"]) == pytest.approx((0.55, 0.45, 0.65))
    assert math.isnan(row["utility_std"])
    assert row["utility_n"] == 40


def test_multi_seed_summary_gives_mean_and_sample_std(make_record):
    values = [0.2, 0.5, 0.6]
    recs = [make_record("tag", seed=s, utility=u) for s, u in enumerate(values)]
    row = summarize(recs).iloc[0]
    mean, std = np.mean(values), np.std(values, ddof=1)
    assert row["n_seeds"] == 3 and row["seeds"] == "0 1 2" and row["interval"] == "seed_std"
    assert row["utility"] == pytest.approx(mean)
    assert row["utility_std"] == pytest.approx(std)
    assert (row["utility_lo"], row["utility_hi"]) == pytest.approx((mean - std, mean + std))
    assert row["utility_n"] == 120


def test_seed_with_no_probes_for_a_metric_is_left_out_of_its_mean(make_record):
    recs = [make_record("tag", seed=s) for s in range(3)]
    recs[0]["metrics"]["harmful_asr/seen"] = {"value": None, "n": 0, "ci": [None, None]}
    recs[1]["metrics"]["harmful_asr/seen"]["value"] = 0.5
    row = summarize(recs).iloc[0]
    assert row["harmful_asr/seen"] == pytest.approx(0.4)
    assert row["harmful_asr/seen_std"] == pytest.approx(np.std([0.5, 0.3], ddof=1))


def test_summary_csv_loads_with_one_row_per_strategy(records, tmp_path):
    paths = write_summary(records, tmp_path / "board")
    table = pd.read_csv(paths["csv"])
    assert len(table) == 9
    assert table["strategy"].is_unique
    assert table.loc[table["strategy"] == "raw", "utility"].item() == pytest.approx(0.7)


def test_summary_md_lists_every_strategy_with_value_and_interval(records, tmp_path):
    md = write_summary(records, tmp_path)["md"].read_text()
    for r in records:
        assert f"`{r['strategy']}`" in md
    assert "0.550 [0.450, 0.650]" in md
    header = next(line for line in md.splitlines() if line.startswith("| strategy"))
    assert header.index("utility") < header.index("unsafe_action_rate/held_out")
    assert header.index("unsafe_action_rate/held_out") < header.index("unsafe_action_rate/seen")


def test_summary_md_shows_mean_and_std_for_several_seeds(make_record, tmp_path):
    recs = [make_record("tag", seed=s, utility=u) for s, u in enumerate([0.4, 0.6])]
    md = write_summary(recs, tmp_path)["md"].read_text()
    assert f"0.500 ± {np.std([0.4, 0.6], ddof=1):.3f}" in md


def test_summary_md_writes_missing_metric_as_na(make_record, tmp_path):
    rec = make_record("raw")
    rec["metrics"]["harmful_asr/seen"] = {"value": None, "n": 0, "ci": [None, None]}
    assert "n/a" in write_summary([rec], tmp_path)["md"].read_text()


def test_pareto_png_is_written_and_is_a_png(records, tmp_path):
    png = write_summary(records, tmp_path)["png"]
    assert png.name == "pareto.png"
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_write_summary_leaves_no_temporary_files(records, tmp_path):
    write_summary(records, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "pareto.png", "summary.csv", "summary.md",
    ]


def test_records_from_two_presets_are_refused(make_record):
    with pytest.raises(DataError, match="preset"):
        summarize([make_record("raw", preset="micro"), make_record("filter", preset="tiny")])


def test_records_from_two_worlds_are_refused(make_record):
    with pytest.raises(DataError, match="world_hash"):
        summarize([make_record("raw"), make_record("filter", world="0000000000000000")])


def test_records_from_two_scorer_versions_are_refused(make_record):
    old = make_record("filter")
    del old["scoring_version"]  # a record from before the version was recorded counts as 1
    summarize([make_record("raw"), make_record("reflect")])
    with pytest.raises(DataError, match=rf"several scorer versions \(1, {SCORING_VERSION}\)"):
        summarize([make_record("raw"), old])


def test_records_from_two_benchmark_versions_are_refused_with_how_to_fix_it(make_record):
    import medsafetyworld

    assert medsafetyworld.BENCHMARK_VERSION == "2.0"
    old, new = make_record("filter"), make_record("raw")
    old["benchmark_version"] = "1.0"
    assert new["benchmark_version"] == "2.0"
    with pytest.raises(DataError, match=r"several benchmark versions \(1, 2\)") as err:
        summarize([new, old])
    message = str(err.value)
    assert "cannot be ranked together" in message
    assert "Re-run the older runs" in message and "`msw run`" in message and "summarize each version apart" in message
    # a record from before the version was recorded counts as 1.0
    del old["benchmark_version"]
    with pytest.raises(DataError, match="several benchmark versions"):
        summarize([new, old])
    # minor versions of one major version are one benchmark
    minor = make_record("reflect")
    minor["benchmark_version"] = "2.1"
    assert len(summarize([new, minor])) == 2


def test_summary_md_lists_the_v2_metrics_in_reading_order(records, tmp_path):
    md = write_summary(records, tmp_path)["md"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| strategy"))
    for name in ("discrimination/held_out", "compose_acc/held_out", "verdict_acc/held_out",
                 "act_after_unsafe_verdict/held_out"):
        assert name in header, name
    assert header.index("unsafe_action_rate/held_out") < header.index("discrimination/held_out")
    assert header.index("discrimination/held_out") < header.index("compose_acc/held_out")
    assert {f"{n}_lo" for n in METRIC_NAMES} <= set(pd.read_csv(tmp_path / "summary.csv").columns)


def test_two_records_for_the_same_seed_are_refused(make_record):
    with pytest.raises(DataError, match="seed 0"):
        summarize([make_record("raw"), make_record("raw")])


def test_no_records_is_a_data_error():
    with pytest.raises(DataError, match="no results records"):
        summarize([])
