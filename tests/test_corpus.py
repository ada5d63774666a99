"""The raw corpus keeps the split rules of SPEC 2 and the labels of the oracle (SPEC 3)."""

from __future__ import annotations

import re
from bisect import bisect_right
from itertools import islice

import numpy as np
import pandas as pd
import pytest

from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.reasoning import VERDICT
from medsafetyworld.corpus.shards import iter_documents, load_manifest, verify_corpus
from medsafetyworld.corpus.writer import write_corpus
from medsafetyworld.corpus.stream import RawStream, raw_documents, shuffled
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.pipeline import make_corpus
from medsafetyworld.strategies import get_strategy
from medsafetyworld.world.oracle import is_unsafe, unsafe_conditions

N_DOCS = 6000


@pytest.fixture(scope="module")
def tiny_raw(tiny_world):
    from medsafetyworld.config import get_preset

    preset = get_preset("tiny")
    world, splits = tiny_world
    return list(islice(raw_documents(world, splits, preset.world, preset.corpus, seed=3), N_DOCS))


def test_shuffled_is_numpys_permutation_of_the_same_draws():
    """The stream shuffles lists with `shuffled`, which must order them as the permutation it
    replaced did, and leave the generator where that left it."""
    items = [f"k{i}" for i in range(23)]
    for seed in range(50):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        for n in (1, 2, 10, 23):
            assert shuffled(a, items[:n]) == [items[i] for i in b.permutation(n)]
        assert a.random() == b.random()


def test_kind_draw_is_numpys_weighted_choice_of_the_same_draws(tiny_world):
    from medsafetyworld.config import get_preset

    preset = get_preset("tiny")
    world, splits = tiny_world
    stream = RawStream(world, splits, preset.world, preset.corpus, seed=0)
    _, weights = zip(*preset.corpus.kind_weights)
    p = np.array(weights) / sum(weights)
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(2000):
        assert bisect_right(stream.kind_cdf, a.random()) == int(b.choice(len(p), p=p))


def test_a_negative_kind_weight_is_a_config_error(tiny_world):
    import dataclasses

    from medsafetyworld.config import get_preset

    preset = get_preset("tiny")
    world, splits = tiny_world
    bad = dataclasses.replace(preset.corpus, kind_weights=(("monograph", 1.0), ("qa", -1.0)))
    with pytest.raises(ConfigError, match="kind_weights"):
        RawStream(world, splits, preset.world, bad, seed=0)


def test_segments_partition_the_text(tiny_raw):
    for doc in tiny_raw:
        assert doc.segments[0].start == 0 and doc.segments[-1].end == len(doc.text)
        assert all(a.end == b.start for a, b in zip(doc.segments, doc.segments[1:]))


def test_held_out_pairs_never_make_a_raw_document_unsafe(tiny_raw, tiny_world):
    world, splits = tiny_world
    unsafe = [d for d in tiny_raw if d.unsafe]
    assert unsafe, "the raw corpus must contain unsafe documents"
    for doc in unsafe:
        for drug, condition in doc.meta["unsafe_pairs"]:
            assert not splits.is_held_out_pair(drug, condition), doc.text


def test_held_out_condition_pairs_never_share_a_training_patient(tiny_raw, tiny_world):
    _, splits = tiny_world
    for doc in tiny_raw:
        conds = doc.meta.get("conditions", [])
        for i, a in enumerate(conds):
            for b in conds[i + 1 :]:
                assert not splits.is_held_out_condition_pair(a, b), doc.text


def test_ood_treats_pairs_never_prescribed_in_training(tiny_raw, tiny_world):
    _, splits = tiny_world
    for doc in tiny_raw:
        if doc.kind == "case_report" or doc.meta.get("question") in ("prescription", "treats"):
            assert not splits.is_ood_treats(doc.meta["drug"], doc.meta["target"]), doc.text


def test_reserved_request_templates_never_appear(tiny_raw, tiny_world):
    _, splits = tiny_world
    used = {d.meta["template"] for d in tiny_raw if d.meta.get("question") == "prescription"}
    assert used and not used & set(splits.reserved_templates)


def test_segment_labels_are_the_oracles(tiny_raw, tiny_world):
    world, _ = tiny_world
    for doc in tiny_raw:
        if doc.kind == "case_report" or doc.meta.get("question") == "prescription":
            expected = is_unsafe(world, doc.meta["drug"], patient_conditions=doc.meta["conditions"])
        elif doc.meta.get("question") == "harmful":
            expected = is_unsafe(world, doc.meta["drug"], harm_target=doc.meta["target"])
        else:
            expected = False
        assert doc.unsafe == expected, doc.text


def test_unsafe_rates_follow_the_config(tiny_raw):
    reports = [d for d in tiny_raw if d.kind == "case_report"]
    qa = [d for d in tiny_raw if d.kind == "qa"]
    unsafe_reports = sum(d.unsafe for d in reports) / len(reports)
    harmful = sum(d.unsafe for d in qa) / len(qa)
    assert 0.11 < unsafe_reports < 0.19  # config 0.15, > 1000 reports
    assert 0.02 < harmful < 0.08  # config 0.05


def test_case_report_checks_every_effect_of_its_candidate_against_the_patient(tiny_raw, tiny_world):
    """v2 (SPEC 3): the check recalls the candidate's compounds, their effects and each effect's
    relieves and aggravates lists, each list followed by the patient's conditions found in it."""
    world, _ = tiny_world
    reports = [d for d in tiny_raw if d.kind == "case_report"]
    assert reports
    for doc in reports:
        drug, conditions = doc.meta["candidate"], doc.meta["conditions"]
        assert T.CHECK_OPEN.format(drug=drug) in doc.text
        assert T.CHECK_CONTAINS.format(drug=drug, compounds=T.join_names(world.contains(drug))) in doc.text
        for c, e in world.drug_effects(drug):
            assert T.CHECK_CAUSES.format(compound=c, effects=T.join_names(world.causes(c))) in doc.text
            for relation, objects in (("relieves", world.relieves(e)), ("aggravates", world.aggravates(e))):
                if objects:
                    matched = [k for k in objects if k in conditions] or [T.CHECK_NO_MATCH]
                    assert T.CHECK_LIST.format(effect=e, relation=relation, conditions=T.join_names(objects),
                                               matched=T.join_names(matched)) in doc.text, doc.text


def test_case_report_verdict_comes_after_the_check_and_before_the_decision(tiny_raw, tiny_world):
    world, _ = tiny_world
    for doc in (d for d in tiny_raw if d.kind == "case_report"):
        m = doc.meta
        verdicts = list(VERDICT.finditer(doc.text))
        assert len(verdicts) == 1, doc.text  # raw has no switches by default (switch_share 0)
        drug, word = verdicts[0].group(1), verdicts[0].group(2)
        assert drug == m["candidate"] == m["drug"]
        unsafe_for = unsafe_conditions(world, drug, m["conditions"])
        assert (word == "unsafe") == bool(unsafe_for) == doc.unsafe
        if unsafe_for:
            assert verdicts[0].group(3) == T.join_names(unsafe_for)
        assert doc.text.index(T.CHECK_OPEN.format(drug=drug)) < verdicts[0].start()
        decision = doc.text[verdicts[0].end():]
        assert decision.strip() in {t.format(drug=drug, patient=m["patient"]) for t in T.CASE_PRESCRIBE}


def test_unsafe_case_reports_show_the_aggravation(tiny_raw):
    for doc in (d for d in tiny_raw if d.kind == "case_report" and d.unsafe):
        # v2: an aggravates list of the check in which the patient's condition is found
        for _, k in doc.meta["unsafe_pairs"]:
            assert re.search(rf"aggravates [^;.]*; patient: [^.]*(?<![\w-]){re.escape(k)}(?![\w-])", doc.text), doc.text


def test_corpus_same_seed_same_hash_other_seed_differs(micro, micro_world_dir, tmp_path):
    raw = get_strategy("raw")
    a = make_corpus(micro_world_dir, raw, micro, 1, tmp_path / "a", progress=False)
    b = make_corpus(micro_world_dir, raw, micro, 1, tmp_path / "b", progress=False)
    c = make_corpus(micro_world_dir, raw, micro, 2, tmp_path / "c", progress=False)
    assert a == b != c


def test_corpus_meets_budget_coverage_and_loads_in_pandas(micro, micro_world_dir, tmp_path):
    make_corpus(micro_world_dir, get_strategy("raw"), micro, 1, tmp_path / "c", progress=False)
    manifest = verify_corpus(tmp_path / "c")
    assert manifest["tokens"] >= micro.corpus.token_budget
    assert manifest["fact_coverage"]["facts_below_min"] == 0
    df = pd.read_parquet(tmp_path / "c" / manifest["shards"][0]["file"])
    assert list(df.columns[:5]) == ["id", "kind", "text", "segments", "meta"]
    assert sum(manifest["per_kind"][k]["documents"] for k in manifest["per_kind"]) == manifest["documents"]


def test_corpus_has_no_unknown_tokens(micro, micro_world_dir, tmp_path):
    tok = load_tokenizer(micro_world_dir / "tokenizer")
    make_corpus(micro_world_dir, get_strategy("reflect"), micro, 1, tmp_path / "c", progress=False)
    unk = tok.unk_token_id
    for doc in islice(iter_documents(tmp_path / "c"), 2000):
        assert unk not in tok(doc.text, add_special_tokens=False)["input_ids"], doc.text


def test_interrupted_corpus_leaves_nothing_behind(micro_world, tmp_path):
    world, splits = micro_world

    def exploding():
        from medsafetyworld.config import get_preset

        p = get_preset("micro")
        yield from islice(raw_documents(world, splits, p.world, p.corpus, 1), 100)
        raise KeyboardInterrupt

    from medsafetyworld.corpus.tokenizer import build_tokenizer
    from medsafetyworld.corpus.vocabulary import vocabulary_texts

    tok = build_tokenizer(vocabulary_texts(world))
    with pytest.raises(KeyboardInterrupt):
        write_corpus(exploding(), tok, tmp_path / "c", token_budget=10**9, shard_documents=10,
                     manifest_extra={}, atomic_facts=[], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="msw corpus"):
        load_manifest(tmp_path / "nope")


def test_meta_facts_are_true_edges_of_the_world(tiny_raw, tiny_world):
    world, _ = tiny_world
    edges = set(world.atomic_facts())
    for doc in tiny_raw:
        for fact in doc.meta.get("facts", []):
            assert tuple(fact) in edges, (fact, doc.text)
        if doc.unsafe:
            assert doc.meta["facts"], doc.text


# What `msw corpus` renders at micro (world seed 0, corpus seed 1), digested from the rows and the
# manifest's counts rather than the file bytes (which name the pyarrow version). Cached runs hold
# corpora rendered by the code these digests were taken from: a change that moves one of them
# changes every corpus, so it comes with a new BENCHMARK_VERSION and new digests, never by accident.
RENDERED = {
    "raw": "714bf55e7a0e9e1f1525e8f85cbddf6111760187462c68d361e644a8ce4f6478",
    "reflect": "8e24c77602d9dc97771a50ea9d92be4204ae9a36a2622edd6ed5350114fdc4a4",
    "safety_pretraining": "8dfb3e5e0ae75187b172b36db864d97ca8bfc038f8988aa1e6ff48f3700ec949",
}


def corpus_digest(folder) -> str:
    import hashlib
    import json

    import pyarrow.parquet as pq

    manifest = load_manifest(folder)
    counts = {k: manifest.get(k) for k in ("documents", "tokens", "per_kind", "fact_coverage", "phases")}
    h = hashlib.sha256(json.dumps(counts, sort_keys=True).encode())
    for shard in manifest["shards"]:
        for row in pq.read_table(folder / shard["file"]).to_pylist():
            h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()


@pytest.mark.parametrize("strategy", sorted(RENDERED))
def test_rendered_corpus_is_the_one_cached_runs_hold(strategy, micro, micro_world_dir, tmp_path):
    make_corpus(micro_world_dir, get_strategy(strategy), micro, 1, tmp_path / "c", progress=False)
    assert corpus_digest(tmp_path / "c") == RENDERED[strategy]


def test_shard_table_is_the_one_from_pylist_makes(tiny_raw, tmp_path):
    """The writer builds a shard's table from columns; Arrow's row-wise constructor gives the same
    table and the same Parquet bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medsafetyworld.corpus.shards import SCHEMA
    from medsafetyworld.corpus.writer import _ShardRows, corpus_rows

    docs = tiny_raw[:500]
    ids = [list(range(len(d.text) % 50)) for d in docs]  # any ids, empty lists included
    rows = _ShardRows()
    for row, i in zip(corpus_rows(docs, []), ids):
        rows.add(row, i, len(i) + 1)
    expected = pa.Table.from_pylist([{**d.to_row(), "input_ids": i, "n_tokens": len(i) + 1} for d, i in zip(docs, ids)],
                                    schema=SCHEMA)
    assert rows.table().equals(expected)
    pq.write_table(rows.table(), tmp_path / "a.parquet", compression="zstd")
    pq.write_table(expected, tmp_path / "b.parquet", compression="zstd")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
