"""No user file is ever removed: atomic_dir replaces only folders this package wrote, and the temp
folders of a killed build are cleaned by the next build of the same folder."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from medsafetyworld import storage
from medsafetyworld.errors import DataError
from medsafetyworld.storage import OWNER_MARK, STAGE_FILE, atomic_dir, remove_stale_temps, temp_dir


def build(out, files: dict[str, str]):
    with atomic_dir(out) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stage_file_matches_the_pipelines():
    from medsafetyworld.pipeline import STAGE_FILE as PIPELINE_STAGE_FILE

    assert STAGE_FILE == PIPELINE_STAGE_FILE == ".stage.json"


def test_a_folder_of_someone_elses_files_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("1,2")
    ran = []
    with pytest.raises(DataError, match=r"mine already exists.*Choose another --out, or remove .*mine yourself"):
        with atomic_dir(out) as tmp:
            ran.append(tmp)
    assert ran == []  # refused before any work
    assert (out / "thesis.tex").read_text() == "years of work"
    assert (out / "sub" / "data.csv").read_text() == "1,2"
    assert listing(tmp_path) == ["mine"]  # no temp folder left


def test_a_file_at_the_destination_is_refused(tmp_path):
    out = tmp_path / "corpus"
    out.write_text("not a folder")
    with pytest.raises(DataError, match="corpus exists and is a file"):
        build(out, {"a": "1"})
    assert out.read_text() == "not a folder"
    assert listing(tmp_path) == ["corpus"]


def test_a_destination_under_a_file_is_a_data_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="cannot write"):
        build(tmp_path / "f" / "out", {"a": "1"})
    assert (tmp_path / "f").read_text() == "x"


def test_a_symlink_at_the_destination_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep").write_text("k")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(DataError, match="symbolic link"):
        build(tmp_path / "link", {"a": "1"})
    assert (tmp_path / "real" / "keep").read_text() == "k"


def test_an_empty_folder_and_a_missing_one_are_built(tmp_path):
    (tmp_path / "empty").mkdir()
    build(tmp_path / "empty", {"a": "1"})
    build(tmp_path / "new" / "deeper", {"b": "2"})
    assert listing(tmp_path / "empty") == [OWNER_MARK, "a"]
    assert (tmp_path / "new" / "deeper" / "b").read_text() == "2"


def test_a_folder_it_built_is_replaced(tmp_path):
    out = tmp_path / "out"
    build(out, {"old": "1"})
    build(out, {"new": "2"})
    assert listing(out) == [OWNER_MARK, "new"]
    assert listing(tmp_path) == ["out"]
    # the mark is an empty folder: no file is added to what was built (a submission's files are all checked)
    assert [p.name for p in out.rglob("*") if not p.is_dir()] == ["new"]


def test_a_stage_folder_is_replaced(tmp_path):
    """A corpus whose stage key changed (its folder holds .stage.json, written before OWNER_MARK existed)."""
    out = tmp_path / "corpus"
    out.mkdir()
    (out / STAGE_FILE).write_text(json.dumps({"config_hash": "old"}))
    (out / "shard-00000.parquet").write_text("old shard")
    build(out, {"shard-00000.parquet": "new shard"})
    assert listing(out) == [OWNER_MARK, "shard-00000.parquet"]
    assert (out / "shard-00000.parquet").read_text() == "new shard"


def test_a_subfolder_of_a_stage_folder_is_replaced(tmp_path):
    """A world's tokenizer/ written before OWNER_MARK existed: its parent holds the stage marker."""
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / STAGE_FILE).write_text("{}")
    (tmp_path / "world" / "tokenizer").mkdir()
    (tmp_path / "world" / "tokenizer" / "tokenizer.json").write_text("old")
    build(tmp_path / "world" / "tokenizer", {"tokenizer.json": "new"})
    assert (tmp_path / "world" / "tokenizer" / "tokenizer.json").read_text() == "new"


def test_a_failed_build_leaves_the_old_folder_and_no_temp(tmp_path):
    out = tmp_path / "out"
    build(out, {"a": "1"})
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("boom")
    assert listing(out) == [OWNER_MARK, "a"]
    assert listing(tmp_path) == ["out"]


def test_files_put_there_during_the_build_are_not_removed(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="did not write"):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("1")
            out.mkdir()
            (out / "user.txt").write_text("u")
    assert listing(out) == ["user.txt"]
    assert listing(tmp_path) == ["out"]


def test_the_temp_folder_of_a_killed_build_is_removed_by_the_next_build(tmp_path):
    out = tmp_path / "corpus"
    script = textwrap.dedent(f"""
        import os, signal
        from medsafetyworld.storage import atomic_dir
        with atomic_dir({str(out)!r}) as tmp:
            (tmp / "shard-00000.parquet").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert done.returncode == -9
    left = listing(tmp_path)
    assert len(left) == 1 and left[0].startswith(".corpus.")  # what SIGKILL leaves behind
    build(out, {"shard-00000.parquet": "whole"})
    assert listing(tmp_path) == ["corpus"]
    assert (out / "shard-00000.parquet").read_text() == "whole"


def test_only_temps_of_dead_processes_of_this_host_are_removed(tmp_path):
    dead = dead_pid()
    host = storage._HOST
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    names = {
        "dead": f".corpus.{host}-{dead}.abc_12",
        "dead_old": f".corpus.{host}-{dead}.abc_12_old",
        "alive": f".corpus.{host}-{os.getppid()}.xyz",  # our parent runs: another writer now
        "ours": temp_dir(tmp_path, "corpus").name,  # this process's own
        "other_host": f".corpus.{other_host}-{dead}.abc",
        "other_folder": f".corpus.x.{host}-{dead}.abc",  # a temp of folder `corpus.x`
        "not_a_temp": ".corpus.keep",
        "user": "corpus-notes",
    }
    for name in names.values():
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "f").write_text("x")
    (tmp_path / f".corpus.{host}-{dead}.afile").write_text("a file, not a folder")
    removed = remove_stale_temps(tmp_path, "corpus")
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead_old"]])
    kept = set(listing(tmp_path))
    assert kept == {n for k, n in names.items() if k not in ("dead", "dead_old")} | {f".corpus.{host}-{dead}.afile"}


def test_msw_corpus_on_a_folder_with_other_files_refuses_and_keeps_them(micro, micro_world_dir, tmp_path):
    from medsafetyworld.pipeline import make_corpus
    from medsafetyworld.strategies import get_strategy

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine already exists"):
        make_corpus(micro_world_dir, get_strategy("raw"), micro, 1, out, progress=False)
    assert listing(out) == ["notes.txt"]
    assert listing(tmp_path) == ["mine"]


def test_a_corpus_whose_stage_key_changed_is_re_rendered(micro, micro_world_dir, tmp_path):
    from medsafetyworld.pipeline import make_corpus
    from medsafetyworld.strategies import get_strategy

    out = tmp_path / "corpus"
    first = make_corpus(micro_world_dir, get_strategy("raw"), micro, 1, out, progress=False)
    marker = json.loads((out / STAGE_FILE).read_text())
    (out / STAGE_FILE).write_text(json.dumps({**marker, "config_hash": "another"}))
    (out / OWNER_MARK).rmdir()  # as a corpus rendered before OWNER_MARK existed
    again = make_corpus(micro_world_dir, get_strategy("raw"), micro, 1, out, progress=False)
    assert again == first
    assert json.loads((out / STAGE_FILE).read_text())["config_hash"] == marker["config_hash"]
    assert listing(tmp_path) == ["corpus"]


def test_a_world_whose_stage_key_changed_is_rebuilt_with_its_tokenizer(micro, tmp_path):
    from medsafetyworld.pipeline import make_world

    out = tmp_path / "world"
    first = make_world(micro, 0, out)
    marker = json.loads((out / STAGE_FILE).read_text())
    (out / STAGE_FILE).write_text(json.dumps({**marker, "config_hash": "another"}))
    (out / "tokenizer" / OWNER_MARK).rmdir()  # as a world built before OWNER_MARK existed
    assert make_world(micro, 0, out) == first
    assert (out / "tokenizer" / OWNER_MARK).is_dir() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert json.loads((out / STAGE_FILE).read_text())["config_hash"] == marker["config_hash"]
