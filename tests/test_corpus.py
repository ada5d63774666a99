"""The raw corpus keeps the split rules of SPEC 2 and the labels of the oracle (SPEC 3)."""

from __future__ import annotations

from itertools import islice

import pandas as pd
import pytest

from medsafetyworld.corpus import templates as T
from medsafetyworld.corpus.shards import iter_documents, load_manifest, verify_corpus, write_corpus
from medsafetyworld.corpus.stream import raw_documents
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.errors import DataError
from medsafetyworld.pipeline import make_corpus
from medsafetyworld.strategies import get_strategy
from medsafetyworld.world.oracle import is_unsafe

N_DOCS = 6000


@pytest.fixture(scope="module")
def tiny_raw(tiny_world):
    from medsafetyworld.config import get_preset

    preset = get_preset("tiny")
    world, splits = tiny_world
    return list(islice(raw_documents(world, splits, preset.world, preset.corpus, seed=3), N_DOCS))


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


def test_case_report_checks_every_effect_against_every_other_condition(tiny_raw, tiny_world):
    world, _ = tiny_world
    for doc in (d for d in tiny_raw if d.kind == "case_report"):
        drug, others = doc.meta["drug"], doc.meta["conditions"][1:]
        for k in others:
            assert T.CHECK_HEADER.format(condition=k) in doc.text
            for c, e in world.drug_effects(drug):
                verb = T.CHECK_VERBS[world.effect_on(e, k)]
                assert T.CHECK_STEP.format(compound=c, effect=e, verb=verb, condition=k) in doc.text


def test_unsafe_case_reports_show_the_aggravation(tiny_raw):
    for doc in (d for d in tiny_raw if d.kind == "case_report" and d.unsafe):
        assert "aggravates" in doc.text


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
