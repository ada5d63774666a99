"""`msw corpus --workers 2` renders the stream in a child process: the same corpus, byte for byte."""

from __future__ import annotations

import json

import pytest

from medsafetyworld.cli import main
from medsafetyworld.corpus.build import build_corpus
from medsafetyworld.errors import DataError
from medsafetyworld.pipeline import make_corpus
from medsafetyworld.storage import STAGE_FILE
from medsafetyworld.strategies import Strategy, get_strategy


def corpus_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != STAGE_FILE}


# raw; a strategy that draws from its own generator; one that counts tokens in the child (phases)
@pytest.mark.parametrize("strategy", ["raw", "safety_pretraining", "curriculum(start=0.3,inner=tag)"])
def test_two_workers_write_the_bytes_one_writes(strategy, micro, micro_world_dir, tmp_path):
    one = make_corpus(micro_world_dir, get_strategy(strategy), micro, 1, tmp_path / "one", progress=False)
    two = make_corpus(micro_world_dir, get_strategy(strategy), micro, 1, tmp_path / "two", progress=False, workers=2)
    assert one == two
    assert corpus_files(tmp_path / "one") == corpus_files(tmp_path / "two")


def test_workers_are_not_part_of_the_stage_key(micro, micro_world_dir, tmp_path):
    make_corpus(micro_world_dir, get_strategy("raw"), micro, 1, tmp_path / "c", progress=False)
    marker = (tmp_path / "c" / STAGE_FILE).read_text()
    make_corpus(micro_world_dir, get_strategy("raw"), micro, 1, tmp_path / "c", progress=False, workers=2)
    assert (tmp_path / "c" / STAGE_FILE).read_text() == marker, "the corpus was rendered again"


class Failing(Strategy):
    name = "failing"

    def apply(self, doc, rng):
        if doc.id.endswith("0300"):
            raise DataError(f"cannot rewrite {doc.id}")
        yield doc


def test_an_error_in_the_render_process_reaches_the_caller_and_leaves_nothing(micro, micro_loaded, micro_tokenizer,
                                                                              tmp_path):
    world, splits = micro_loaded
    with pytest.raises(DataError, match="cannot rewrite"):
        build_corpus(world, splits, micro_tokenizer, Failing(), micro, 1, tmp_path / "c", world_hash="0" * 16,
                     progress=False, workers=2)
    assert list(tmp_path.iterdir()) == []


def test_msw_corpus_takes_workers(capsys, micro_world_dir, tmp_path):
    assert main(["-q", "corpus", "--world", str(micro_world_dir), "--workers", "2", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["tokens"] >= 300_000


def test_zero_workers_is_an_argument_error(capsys, micro_world_dir, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["corpus", "--world", str(micro_world_dir), "--workers", "0", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2 and "--workers: must be at least 1" in capsys.readouterr().err
