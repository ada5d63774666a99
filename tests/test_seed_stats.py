"""Seed aggregation, the paired bootstrap between strategies and Holm, against hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest

from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.evaluation.metrics import (
    BOOL_COLUMNS,
    COUNT_COLUMNS,
    METRIC_NAMES,
    MetricValue,
    compute_metrics,
)
from medsafetyworld.evaluation.scoring import COLUMN_DEFAULTS
from medsafetyworld.leaderboard import build_record, load_records, save_record, summarize, write_summary
from medsafetyworld.leaderboard.significance import compare_to_baseline
from medsafetyworld.leaderboard.stats import aggregate_seeds, holm, paired_bootstrap, seed_pairs

N_BOOT = 200


def safe_requests(n: int, useful) -> pd.DataFrame:
    """n safe prescription requests (v2: control probes); those in `useful` answered with a safe
    treating drug."""
    rows = []
    for i in range(n):
        row = dict(COLUMN_DEFAULTS)
        row.update(treats_target=i in useful, safe_choice=i in useful)
        row.update(probe_id=f"safe-{i:04d}", family="prescription_control", split="held_out")
        rows.append(row)
    return pd.DataFrame(rows)


SPLIT_FAMILIES = ["prescription_contra", "prescription_control", "harmful", "compose", "compose_pretrained",
                  "act_after_verdict"]


def random_table(seed: int, n: int = 600) -> pd.DataFrame:
    """Every probe family with random scored columns, as the evaluator writes them."""
    rng = np.random.default_rng(seed)
    families = rng.choice(["knowledge", "safety_cls", *SPLIT_FAMILIES], n)
    table = pd.DataFrame({c: rng.random(n) < 0.4 for c in BOOL_COLUMNS})
    table["probe_id"] = [f"p{i:04d}" for i in range(n)]
    table["family"] = families
    table["split"] = np.where(np.isin(families, SPLIT_FAMILIES), rng.choice(["held_out", "seen"], n), "")
    is_cls = families == "safety_cls"
    table["cls_label"] = np.where(is_cls, rng.choice(["safe", "unsafe"], n), "")
    table["cls_pred"] = np.where(is_cls, rng.choice(["safe", "unsafe", ""], n), "")
    composed = np.isin(families, ["compose", "compose_pretrained"])
    for steps_column in (c for c in COUNT_COLUMNS if c.endswith("_steps")):  # (x_steps, x_right) pairs
        steps = rng.integers(0, 30, n)
        table[steps_column] = np.where(composed, steps, 0)
        table[steps_column.removesuffix("_steps") + "_right"] = np.where(composed, rng.integers(0, steps + 1), 0)
    table["verdict_gold"] = np.where(composed, rng.choice(["safe", "unsafe"], n), "")
    table["verdict_pred"] = np.where(composed, rng.choice(["safe", "unsafe", ""], n), "")
    missing = set(COLUMN_DEFAULTS) - {"drug"} - set(table.columns)
    assert not missing, f"random_table does not fill the scored columns {missing}"
    return table


def record(tmp_path, strategy: str, seed: int, probes: pd.DataFrame) -> dict:
    """A results record with its probes.parquet, laid out as `msw run` does."""
    folder = tmp_path / "results" / f"{strategy.replace(':', '-')}-s{seed}"
    folder.mkdir(parents=True)
    probes.to_parquet(folder / "probes.parquet", index=False)
    ref = strategy.startswith("ref:")
    rec = build_record(
        strategy=strategy, preset="micro", seed=seed, config={"eval": {"bootstrap_samples": N_BOOT}},
        config_hash="0123456789abcdef", world_hash="fedcba9876543210",
        corpus_hash=None if ref else "00112233445566778899aabbccddeeff",
        model_info={"n_parameters": None, "tokens_seen": None},
        metrics=compute_metrics(probes, n_boot=20, seed=seed), probes_path=folder / "probes.parquet",
        policy_kind="reference" if ref else "model",
    )
    save_record(rec, folder / "record.json")
    return rec


def with_utility(rec: dict, value: float | None) -> dict:
    rec["metrics"]["utility"] = MetricValue(math.nan if value is None else value, 10, 0.0, 1.0).to_dict()
    return rec


# --- across seeds -----------------------------------------------------------------------------


@pytest.fixture
def three_seeds(tmp_path):
    table = safe_requests(10, range(5))
    return [with_utility(record(tmp_path, "tag", s, table), u) for s, u in zip((1, 2, 3), (0.2, 0.5, 0.6))]


def test_aggregate_seeds_gives_mean_sample_std_min_max_over_three_seeds(three_seeds):
    row = aggregate_seeds(three_seeds).set_index(["strategy", "metric"]).loc[("tag", "utility")]
    # mean 1.3 / 3; squared deviations 0.054444 + 0.004444 + 0.027778 = 0.086667, / (3 - 1), sqrt
    assert row["n_seeds"] == 3 and row["seeds"] == "1 2 3"
    assert row["mean"] == pytest.approx(0.433333, abs=1e-6)
    assert row["std"] == pytest.approx(0.208167, abs=1e-6)
    assert (row["min"], row["max"]) == pytest.approx((0.2, 0.6))


def test_aggregate_seeds_leaves_out_a_seed_where_the_metric_is_undefined(three_seeds):
    with_utility(three_seeds[0], None)
    row = aggregate_seeds(three_seeds).set_index(["strategy", "metric"]).loc[("tag", "utility")]
    assert row["n_seeds"] == 2 and row["seeds"] == "2 3"
    assert (row["mean"], row["std"]) == pytest.approx((0.55, np.std([0.5, 0.6], ddof=1)))


def test_aggregate_seeds_of_one_seed_has_nan_std(tmp_path):
    table = aggregate_seeds([record(tmp_path, "ref:oracle", 0, safe_requests(4, range(4)))])
    assert len(table) == len(METRIC_NAMES) and set(table["policy_kind"]) == {"reference"}
    row = table.set_index("metric").loc["utility"]
    assert row["n_seeds"] == 1 and row["mean"] == 1.0 and row["min"] == row["max"] == 1.0
    assert math.isnan(row["std"])


def test_aggregate_seeds_agrees_with_the_summary_table(three_seeds):
    seeds = aggregate_seeds(three_seeds).set_index(["strategy", "metric"])
    row = summarize(three_seeds).iloc[0]
    assert seeds.loc[("tag", "utility"), "mean"] == pytest.approx(row["utility"])
    assert seeds.loc[("tag", "utility"), "std"] == pytest.approx(row["utility_std"])


# --- paired bootstrap -------------------------------------------------------------------------


def test_identical_strategies_differ_by_zero_with_p_one():
    table = safe_requests(100, range(40))
    result = paired_bootstrap(table, table.copy(), "utility", n_boot=N_BOOT, seed=0)
    assert result["diff"] == 0.0 and result["n"] == 100
    assert result["ci_low"] <= 0.0 <= result["ci_high"]
    assert result["p_value"] == 1.0


def test_flipping_many_probes_gives_the_exact_difference_and_an_interval_excluding_zero():
    a, b = safe_requests(200, range(100)), safe_requests(200, range(160))  # 60 of 200 probes flipped
    result = paired_bootstrap(a, b, "utility", n_boot=N_BOOT, seed=0)
    assert result["diff"] == pytest.approx(0.3)
    assert (result["value_a"], result["value_b"]) == pytest.approx((0.5, 0.8))
    assert 0.0 < result["ci_low"] < 0.3 < result["ci_high"]
    assert result["p_value"] == pytest.approx(2 / (N_BOOT + 1))  # no resample reached 0
    reverse = paired_bootstrap(b, a, "utility", n_boot=N_BOOT, seed=0)
    assert (reverse["diff"], reverse["ci_low"], reverse["ci_high"]) == pytest.approx(
        (-0.3, -result["ci_high"], -result["ci_low"]))


def test_flipping_one_probe_is_not_a_significant_difference():
    result = paired_bootstrap(safe_requests(200, range(100)), safe_requests(200, range(101)), "utility",
                              n_boot=N_BOOT, seed=0)
    assert result["diff"] == pytest.approx(0.005)
    assert result["ci_low"] == 0.0  # about 37% of resamples leave the flipped probe out
    assert result["p_value"] > 0.3


def test_pairing_is_by_probe_id_not_by_row_order():
    a, b = safe_requests(200, range(100)), safe_requests(200, range(160))
    shuffled = b.sample(frac=1.0, random_state=3)
    assert paired_bootstrap(a, shuffled, "utility", n_boot=N_BOOT, seed=0) == paired_bootstrap(
        a, b, "utility", n_boot=N_BOOT, seed=0)


def test_different_probe_sets_are_a_data_error():
    a = safe_requests(50, range(10))
    b = a.copy()
    b.loc[0, "probe_id"] = "safe-9999"
    with pytest.raises(DataError, match=r"not evaluated on the same probes.*1 probes missing.*safe-0000"):
        paired_bootstrap(a, b, "utility", n_boot=N_BOOT, seed=0)
    with pytest.raises(DataError, match="not evaluated on the same probes"):
        paired_bootstrap(a, a.iloc[:-1], "utility", n_boot=N_BOOT, seed=0)


def test_several_seeds_are_averaged_within_each_resample():
    a = [safe_requests(100, range(30)), safe_requests(100, range(50))]
    b = [safe_requests(100, range(60)), safe_requests(100, range(40, 100))]
    result = paired_bootstrap(a, b, "utility", n_boot=N_BOOT, seed=0)
    # seed means: a (0.3 + 0.5) / 2 = 0.4, b (0.6 + 0.6) / 2 = 0.6
    assert (result["value_a"], result["value_b"], result["diff"]) == pytest.approx((0.4, 0.6, 0.2))
    assert result["ci_low"] > 0


def test_the_bootstrap_reads_every_metric_as_compute_metrics_defines_it():
    for seed in range(3):
        table = random_table(seed)
        fresh = compute_metrics(table, n_boot=10)
        for m in METRIC_NAMES:
            value = paired_bootstrap(table, table, m, n_boot=10, seed=0)["value_a"]
            assert value == pytest.approx(fresh[m].value, nan_ok=True), m


def usual_requests(n: int, usual_control, usual_contra) -> pd.DataFrame:
    """n held-out control and n contra probes; the usual drug named (unflagged) on the given indices."""
    rows = []
    for family, named in (("prescription_control", usual_control), ("prescription_contra", usual_contra)):
        for i in range(n):
            row = {**COLUMN_DEFAULTS, "usual_choice": i in named}
            row.update(probe_id=f"{family}-{i:04d}", family=family, split="held_out")
            rows.append(row)
    return pd.DataFrame(rows)


def test_the_bootstrap_reads_discrimination_as_a_difference_of_two_rates():
    blind = usual_requests(100, range(80), range(80))  # 0.8 - 0.8
    composing = usual_requests(100, range(90), range(20))  # 0.9 - 0.2
    result = paired_bootstrap(blind, composing, "discrimination/held_out", n_boot=N_BOOT, seed=0)
    assert (result["value_a"], result["value_b"]) == pytest.approx((0.0, 0.7))
    assert result["diff"] == pytest.approx(0.7) and result["n"] == 200
    assert 0.0 < result["ci_low"] < 0.7 < result["ci_high"]
    # not the mean of the two rates (what a v1 multi-term metric was)
    assert result["value_b"] != pytest.approx((0.9 + 0.2) / 2)


def test_paired_bootstrap_is_deterministic_for_a_seed():
    a, b = random_table(1), random_table(2)
    first = paired_bootstrap(a, b, "over_refusal", n_boot=N_BOOT, seed=7)
    assert first == paired_bootstrap(a, b, "over_refusal", n_boot=N_BOOT, seed=7)
    assert first != paired_bootstrap(a, b, "over_refusal", n_boot=N_BOOT, seed=8)


def test_unknown_metric_is_a_config_error():
    table = safe_requests(10, range(5))
    with pytest.raises(ConfigError, match="probe_auroc"):
        paired_bootstrap(table, table, "probe_auroc", n_boot=N_BOOT)


# --- Holm and the comparison with the baseline ------------------------------------------------


def test_holm_adjusts_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, math.nan, 0.04])  # NaN is no test: m = 2
    assert adjusted[[0, 2]] == pytest.approx([0.04, 0.04]) and math.isnan(adjusted[1])


def test_seed_pairs_count_the_seed_pairs_that_differ_in_the_direction_of_the_difference():
    # strategy seeds 0.1, 0.75, 0.95 against baseline seeds 0.9, 0.8, 0.85 (mean difference -0.25): the
    # first two seeds are below every baseline seed (6 pairs), the third above every one (0)
    assert seed_pairs([0.9, 0.8, 0.85], [0.1, 0.75, 0.95], -0.25) == (6, 9)
    assert seed_pairs([0.9, 0.8, 0.85], [0.1, 0.75, 0.95], +0.25) == (3, 9)
    assert seed_pairs([0.5, 0.5], [0.4, 0.5], -0.05) == (2, 4)  # a tie agrees with neither direction
    assert seed_pairs([0.5, math.nan], [0.4], -0.1) == (1, 1)  # a seed where the metric is undefined
    assert seed_pairs([0.5], [0.5], 0.0) == (0, 1)


def test_a_difference_carried_by_one_seed_shows_in_the_seed_pairs(tmp_path):
    """filter's first seed is far better than raw's seeds and its second a little worse: the pooled
    difference is real over probes (significant), but only 2 of the 4 seed pairs show it."""
    for seed in (1, 2):
        record(tmp_path, "raw", seed, safe_requests(200, range(100)))
    record(tmp_path, "filter", 1, safe_requests(200, range(190)))
    record(tmp_path, "filter", 2, safe_requests(200, range(90)))
    row = compare_to_baseline(tmp_path, metrics=["utility"], n_boot=2000).iloc[0]
    assert row["diff"] == pytest.approx(0.2) and row["significant"]
    assert (row["seed_pairs_agreeing"], row["seed_pairs"]) == (2, 4)
    md = write_summary(load_records(sorted(tmp_path.glob("results/*/record.json"))), tmp_path)["md"].read_text()
    assert "| utility ↑ | `filter` | 0.500 | 0.700 | +0.200 [" in md and "| 2/4 | better |" in md


@pytest.fixture
def run_dir(tmp_path):
    record(tmp_path, "ref:oracle", 0, safe_requests(200, range(200)))
    for seed in (1, 2):
        record(tmp_path, "raw", seed, safe_requests(200, range(100)))
        record(tmp_path, "filter", seed, safe_requests(200, range(160)))
        record(tmp_path, "reflect", seed, safe_requests(200, range(101)))
    return tmp_path


def test_compare_to_baseline_finds_the_real_difference_and_not_the_noise(run_dir):
    table = compare_to_baseline(run_dir, metrics=["utility", "over_refusal"], n_boot=N_BOOT)
    assert list(zip(table["metric"], table["strategy"])) == [
        ("utility", "filter"), ("utility", "reflect"), ("over_refusal", "filter"), ("over_refusal", "reflect")]
    rows = table.set_index(["metric", "strategy"])
    assert rows.loc[("utility", "filter"), "diff"] == pytest.approx(0.3)
    assert rows.loc[("utility", "filter"), ["n_seeds", "n_seeds_baseline", "n"]].tolist() == [2, 2, 200]
    assert rows.loc[("utility", "filter"), "significant"] and rows.loc[("utility", "filter"), "direction"] == "better"
    assert rows.loc[("utility", "filter"), ["seed_pairs_agreeing", "seed_pairs"]].tolist() == [4, 4]
    assert not rows.loc[("utility", "reflect"), "significant"]
    assert not rows["significant"].loc["over_refusal"].any()  # nobody refuses: diff 0, p 1
    for _, group in table.groupby("metric"):
        assert group["p_holm"].tolist() == pytest.approx(holm(group["p_value"].tolist()).tolist())


def test_compare_to_baseline_accepts_record_paths_and_pairs(run_dir):
    paths = sorted(run_dir.glob("results/*/record.json"))
    by_folder = compare_to_baseline(run_dir, metrics=["utility"], n_boot=N_BOOT)
    pd.testing.assert_frame_equal(compare_to_baseline(paths, metrics=["utility"], n_boot=N_BOOT), by_folder)
    with pytest.raises(DataError, match="a record alone"):
        compare_to_baseline([{"strategy": "raw"}], metrics=["utility"], n_boot=N_BOOT)


def test_compare_to_baseline_without_the_baseline_is_a_data_error(run_dir):
    with pytest.raises(DataError, match="baseline 'nope' has no records"):
        compare_to_baseline(run_dir, baseline="nope", n_boot=N_BOOT)


def test_a_changed_probes_file_is_a_data_error(run_dir):
    safe_requests(200, range(3)).to_parquet(run_dir / "results" / "filter-s1" / "probes.parquet", index=False)
    with pytest.raises(DataError, match="does not have the sha256 the record holds"):
        compare_to_baseline(run_dir, n_boot=N_BOOT)


# --- what the summary writes ------------------------------------------------------------------


def test_summary_in_a_run_folder_lists_the_significant_differences(run_dir):
    paths = write_summary(load_records(sorted(run_dir.glob("results/*/record.json"))), run_dir)
    significance = pd.read_csv(paths["significance"])
    assert set(significance["strategy"]) == {"filter", "reflect"}
    assert set(significance["metric"]) == set(METRIC_NAMES)
    assert significance.loc[significance["significant"], ["metric", "strategy"]].values.tolist() == [
        ["utility", "filter"]]
    md = paths["md"].read_text()
    assert "## Differences vs `raw`" in md and "(2000 resamples;" in md
    assert f"the 1 of {2 * len(METRIC_NAMES)} differences" in md
    assert "| utility ↑ | `filter` | 0.500 | 0.800 | +0.300 [" in md


def test_summary_of_one_strategy_says_there_is_nothing_to_compare(tmp_path):
    records = [record(tmp_path, "raw", 1, safe_requests(20, range(5)))]
    paths = write_summary(records, tmp_path)
    assert "significance" not in paths and not (tmp_path / "significance.csv").exists()
    assert "Nothing to compare: no strategy besides `raw` was trained." in paths["md"].read_text()
    assert math.isnan(pd.read_csv(paths["csv"])["utility_std"].item())


def test_summary_without_probe_tables_says_so(tmp_path):
    records = [record(tmp_path / "run", s, 1, safe_requests(20, range(5))) for s in ("raw", "filter")]
    md = write_summary(records, tmp_path / "elsewhere")["md"].read_text()
    assert "Nothing to compare: the per-probe tables of `raw` were not found" in md



def test_summary_of_strategies_on_different_probes_says_why_nothing_was_compared(tmp_path):
    records = [record(tmp_path, "raw", 1, safe_requests(20, range(5))),
               record(tmp_path, "filter", 1, safe_requests(30, range(5)))]
    paths = write_summary(records, tmp_path)
    assert "significance" not in paths and len(pd.read_csv(paths["csv"])) == 2
    assert "Nothing to compare: the strategies were not evaluated on the same probes" in paths["md"].read_text()


# --- attacked metrics ---------------------------------------------------------------------------


def contra_requests(n: int, unsafe) -> pd.DataFrame:
    """n held-out prescription_contra probes; those in `unsafe` answered with the contraindicated drug."""
    rows = []
    for i in range(n):
        row = dict(COLUMN_DEFAULTS)
        row.update(contraindicated_choice=i in unsafe, treats_target=True)
        row.update(probe_id=f"contra-{i:04d}", family="prescription_contra", split="held_out")
        rows.append(row)
    return pd.DataFrame(rows)


def add_attack(tmp_path, strategy: str, seed: int, label: str, probes: pd.DataFrame) -> None:
    """An attack entry in a record, its per-probe table where the pipeline puts it."""
    from medsafetyworld.leaderboard.record import load_record
    from medsafetyworld.storage import sha256_file

    folder = tmp_path / "results" / f"{strategy}-s{seed}"
    (folder / "attacks" / label).mkdir(parents=True)
    path = folder / "attacks" / label / "probes.parquet"
    probes.to_parquet(path, index=False)
    rec = load_record(folder / "record.json")
    metrics = {k: v.to_dict() for k, v in compute_metrics(probes, n_boot=20, seed=seed).items()}
    rec.setdefault("attacks", {})[label] = {
        "attack": label, "params": {}, "metrics": metrics,
        "probes_file": {"path": f"attacks/{label}/probes.parquet", "sha256": sha256_file(path)}}
    save_record(rec, folder / "record.json")


def test_the_summary_compares_attacked_metrics_on_the_attacks_own_probes(tmp_path):
    """Clean, raw and filter act alike; under `prefill` filter acts unsafely far less often. The
    comparison finds that on the attacked tables, names it `<metric>@<label>`, and says which attack
    it could not compare (one only raw has, one whose table changed)."""
    for strategy, attacked in (("raw", range(180)), ("filter", range(60))):
        for seed in (1, 2):
            record(tmp_path, strategy, seed, contra_requests(200, range(100)))
            add_attack(tmp_path, strategy, seed, "prefill", contra_requests(200, attacked))
            add_attack(tmp_path, strategy, seed, "jailbreak", contra_requests(200, attacked))
    add_attack(tmp_path, "raw", 1, "suffix", contra_requests(200, range(10)))
    contra_requests(200, range(3)).to_parquet(
        tmp_path / "results" / "filter-s2" / "attacks" / "jailbreak" / "probes.parquet", index=False)
    paths = write_summary(load_records(sorted(tmp_path.glob("results/*/record.json"))), tmp_path)
    table = pd.read_csv(paths["significance"]).set_index(["metric", "strategy"])
    clean = table.loc[("unsafe_action_rate/held_out", "filter")]
    assert clean["diff"] == 0 and not clean["significant"]
    attacked = table.loc[("unsafe_action_rate/held_out@prefill", "filter")]
    assert attacked["value_baseline"] == pytest.approx(0.9) and attacked["value"] == pytest.approx(0.3)
    assert attacked["diff"] == pytest.approx(-0.6) and attacked["significant"] and attacked["direction"] == "better"
    assert attacked["n_seeds"] == 2 and attacked["n"] == 200
    assert not any("@jailbreak" in m or "@suffix" in m for m, _ in table.index)
    # the attacked tables hold no safe prescriptions: no utility under prefill, compared or shown
    assert ("utility@prefill", "filter") not in table.index and ("utility", "filter") in table.index
    assert "utility@prefill" not in pd.read_csv(paths["csv"]).columns
    md = paths["md"].read_text()
    assert "| unsafe_action_rate/held_out@prefill ↓ | `filter` | 0.900 | 0.300 | -0.600 [" in md
    assert "Attacks not compared (per-probe tables missing or changed): `jailbreak`, `suffix`." in md


def test_msw_summarize_rebuilds_the_summary_from_every_record_in_a_run_folder(run_dir, capsys):
    """Two processes (say) wrote raw and filter into one folder; `msw summarize` sees both."""
    from medsafetyworld.cli import main

    assert not (run_dir / "summary.md").exists()
    assert main(["-q", "summarize", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "7 records; summary in" in out and "| utility ↑ | `filter` | 0.500 | 0.800 |" in out
    table = pd.read_csv(run_dir / "summary.csv")
    assert set(table["strategy"]) == {"raw", "filter", "reflect", "ref:oracle"}
    assert set(pd.read_csv(run_dir / "significance.csv")["strategy"]) == {"filter", "reflect"}
    assert main(["-q", "summarize", str(run_dir), "--baseline", "filter"]) == 0
    assert set(pd.read_csv(run_dir / "significance.csv")["strategy"]) == {"raw", "reflect"}


def test_msw_summarize_of_a_folder_without_records_says_so(tmp_path, capsys):
    from medsafetyworld.cli import main

    assert main(["-q", "summarize", str(tmp_path)]) == 2
    assert "no results/*/record.json under" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
