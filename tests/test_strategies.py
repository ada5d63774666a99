"""Each strategy's invariant (SPEC 4)."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from medsafetyworld.corpus.reasoning import ends_with_verdict
from medsafetyworld.corpus.stream import raw_documents
from medsafetyworld.errors import ConfigError
from medsafetyworld.strategies import Strategy, available_strategies, get_strategy, register_strategy
from medsafetyworld.world.oracle import is_unsafe, unsafe_conditions


@pytest.fixture(scope="module")
def raw(micro_world, micro):
    world, splits = micro_world
    return list(islice(raw_documents(world, splits, micro.world, micro.corpus, seed=5), 3000))


def run(name, docs):
    return list(get_strategy(name)(docs, np.random.default_rng(0)))


def test_builtin_strategies_are_registered():
    assert {"raw", "filter", "reflect"} <= set(available_strategies())


def test_raw_changes_nothing(raw):
    assert [d.text for d in run("raw", raw)] == [d.text for d in raw]


def test_filter_drops_exactly_the_documents_with_an_unsafe_segment(raw):
    kept = run("filter", raw)
    assert [d.id for d in kept] == [d.id for d in raw if not d.unsafe]
    assert len(kept) < len(raw)


def test_reflect_labels_equal_the_oracles(raw, micro_world):
    world, _ = micro_world
    verdict_flags = 0
    for before, after in zip(raw, run("reflect", raw)):
        if before.kind == "case_report":
            unsafe = is_unsafe(world, before.meta["drug"], patient_conditions=before.meta["conditions"])
            assert ("<think> Unsafe contraindicated_prescription </think>" in after.text) == unsafe
        for seg in after.segments:
            text = after.text[seg.start : seg.end]
            assert text.count("<think>") == 1
            # v2: the reflection is Unsafe after an unsafe segment, and after a safe segment that
            # ends with an unsafe verdict (SPEC 4: reflect reflects after the verdict)
            verdict = ends_with_verdict(text[: text.index("<think>")])
            said_unsafe = verdict is not None and verdict[1] == "unsafe"
            assert ("<think> Unsafe" in text) == (seg.label == "unsafe" or said_unsafe)
            if said_unsafe:
                assert unsafe_conditions(world, verdict[0], before.meta["conditions"])
                assert "<think> Unsafe contraindicated_prescription </think>" in text
                verdict_flags += 1
    assert verdict_flags > 0


def test_reflect_keeps_every_word_and_ends_with_a_reflection(raw):
    for before, after in zip(raw, run("reflect", raw)):
        stripped = after.text
        for r in (" <think> Safe </think>", " <think> Unsafe contraindicated_prescription </think>",
                  " <think> Unsafe harmful_request </think>"):
            stripped = stripped.replace(r, "")
        assert stripped.split() == before.text.split()
        assert after.text.endswith("</think>")


def test_reflect_segments_hold_about_n_words(raw):
    strat = get_strategy("reflect")
    strat.words = 20
    for doc in strat(raw, np.random.default_rng(0)):
        for seg in doc.segments[:-1]:
            assert len(doc.text[seg.start : seg.end].split()) >= 20


def test_unknown_strategy_names_the_available_ones():
    with pytest.raises(ConfigError, match="available: .*filter"):
        get_strategy("filtr")


def test_a_new_strategy_is_one_decorated_class(raw):
    @register_strategy("test-drop-qa")
    class DropQA(Strategy):
        def apply(self, doc, rng):
            if doc.kind != "qa":
                yield doc

    assert "test-drop-qa" in available_strategies()
    assert all(d.kind != "qa" for d in run("test-drop-qa", raw))
