"""`msw corpus stats`: counts read back from the shards agree with the manifest, with what each
strategy does to unsafe content, and across corpora rendered with the same token budget."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from medsafetyworld.cli import main
from medsafetyworld.corpus import stats as S
from medsafetyworld.corpus.reasoning import VERDICT
from medsafetyworld.corpus.shards import iter_documents, load_manifest
from medsafetyworld.corpus.stats import ALL, COLUMNS, compare_corpora, corpus_stats
from medsafetyworld.errors import DataError
from medsafetyworld.pipeline import make_corpus
from medsafetyworld.strategies import get_strategy

STRATEGIES = ("raw", "tag", "filter", "redflag", "reflect")
BUDGET = 20_000


@pytest.fixture(scope="module")
def corpora(micro, micro_world_dir, tmp_path_factory):
    """Small corpora of the micro world, several shards each, keyed by strategy."""
    preset = micro.replace(corpus=dataclasses.replace(micro.corpus, token_budget=BUDGET, shard_documents=150))
    root = tmp_path_factory.mktemp("corpora")
    for name in STRATEGIES:
        make_corpus(micro_world_dir, get_strategy(name), preset, 1, root / name, progress=False)
    return {name: root / name for name in STRATEGIES}


@pytest.fixture(scope="module")
def stats(corpora):
    return {name: corpus_stats(path) for name, path in corpora.items()}


def fails(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("msw: error:") and err.count("\n") == 1
    for text in expected:
        assert text in err


@pytest.mark.parametrize("name", STRATEGIES)
def test_kinds_sum_to_all_and_all_matches_the_manifest(stats, corpora, name):
    df, manifest = stats[name], load_manifest(corpora[name])
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS) and df.index[-1] == ALL
    assert (df.drop(index=ALL).sum() == df.loc[ALL]).all()
    assert df.loc[ALL, "tokens"] == manifest["tokens"] >= manifest["token_budget"] == BUDGET
    assert df.loc[ALL, "documents"] == manifest["documents"]
    # the writer counted the same things document by document; the shards must say the same
    assert set(df.index) - {ALL} == set(manifest["per_kind"])
    for kind, counts in manifest["per_kind"].items():
        expected = {**{c: counts[c] for c in COLUMNS[:4]},
                    **{c: counts[f"count:{marker}"] for c, marker in S.MARKERS.items()}}
        assert df.loc[kind].to_dict() == expected, kind
    assert len(manifest["shards"]) > 1, "the test must cover more than one shard"


def test_strategies_leave_their_marks(stats, corpora):
    raw, tag, filt, redflag, reflect = (stats[n].loc[ALL] for n in STRATEGIES)
    assert raw["unsafe_segments"] > 0 and raw[list(S.MARKERS)].sum() == 0
    assert tag["tags"] > 0 and tag["unsafe_documents"] > 0
    assert filt["unsafe_segments"] == filt["unsafe_documents"] == 0 and filt[list(S.MARKERS)].sum() == 0
    assert redflag["red_flags"] == redflag["unsafe_documents"] > 0  # one flag per unsafe document
    # v2: an Unsafe reflection follows every unsafe segment, and also every unsafe verdict of a
    # check (whose own segment is safe: the harm is only stated, not yet acted on)
    unsafe_verdicts = sum(m.group(2) == "unsafe" for doc in iter_documents(corpora["reflect"])
                          for m in VERDICT.finditer(doc.text))
    assert unsafe_verdicts > 0 and reflect["unsafe_segments"] > 0
    assert reflect["unsafe_reflections"] == reflect["unsafe_segments"] + unsafe_verdicts
    assert reflect["safe_reflections"] > 0 and reflect[["tags", "red_flags"]].sum() == 0


def test_batches_are_summed_across_shards(corpora, monkeypatch):
    whole = corpus_stats(corpora["reflect"])
    monkeypatch.setattr(S, "BATCH_ROWS", 7)  # many batches, some without every kind
    pd.testing.assert_frame_equal(corpus_stats(corpora["reflect"]), whole)


def test_compare_puts_corpora_side_by_side_with_their_budgets(corpora, stats):
    table = compare_corpora([corpora["raw"], corpora["filter"]])
    assert list(table.columns) == ["raw (raw)", "filter (filter)"]
    assert (table.loc[(ALL, "token_budget")] == BUDGET).all()
    for name, column in (("raw", "raw (raw)"), ("filter", "filter (filter)")):
        for kind in stats[name].index:
            side = table.loc[kind, column].drop("token_budget", errors="ignore")
            assert side.to_dict() == stats[name].loc[kind].to_dict()
    assert table.index[0] == (ALL, "documents") and S.budget_note(table).startswith(f"token budget {BUDGET:,}")


def test_cli_prints_both_corpora_and_writes_csv(capsys, corpora, tmp_path):
    csv = tmp_path / "out" / "stats.csv"
    assert main(["-q", "corpus", "stats", str(corpora["raw"]), str(corpora["tag"]), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "raw (raw)" in out and "tag (tag)" in out and "token_budget" in out and "red_flags" in out
    assert f"token budget {BUDGET:,} for every corpus" in out
    back = pd.read_csv(csv, index_col=[0, 1])
    pd.testing.assert_frame_equal(back, compare_corpora([corpora["raw"], corpora["tag"]]), check_names=False,
                                  check_column_type=False)


def test_cli_rejects_a_folder_that_is_not_a_corpus(capsys, tmp_path, corpora, micro_world_dir):
    fails(capsys, ["corpus", "stats", str(micro_world_dir)], "manifest.json missing", "msw corpus")
    fails(capsys, ["corpus", "stats", str(corpora["raw"]), str(tmp_path / "nowhere")], "nowhere")
    not_a_manifest = tmp_path / "other"
    not_a_manifest.mkdir()
    (not_a_manifest / "manifest.json").write_text(json.dumps({"documents": 3}))
    fails(capsys, ["corpus", "stats", str(not_a_manifest)], "not a corpus manifest")
    (not_a_manifest / "manifest.json").write_text("{oops")
    fails(capsys, ["corpus", "stats", str(not_a_manifest)], "corrupt manifest")


def test_missing_or_broken_shard_is_a_data_error(corpora, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(corpora["raw"], copy)
    shard = copy / load_manifest(copy)["shards"][-1]["file"]
    shard.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="cannot read shard"):
        corpus_stats(copy)
    shard.unlink()
    with pytest.raises(DataError, match="missing"):
        corpus_stats(copy)


def test_stats_needs_a_folder_and_corpus_keeps_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["corpus", "stats"])
    assert exc.value.code == 2 and "DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # the rendering command still wants --world and --out
        main(["corpus", "--strategy", "raw"])
    assert exc.value.code == 2 and "--world" in capsys.readouterr().err
