"""A user's mistakes give one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import json

import pytest

from medsafetyworld.cli import main


def fails(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("msw: error:")
    for text in expected:
        assert text in err
    return err


def test_bad_preset_names_the_presets(capsys, tmp_path):
    fails(capsys, ["world", "--preset", "huge", "--out", str(tmp_path)], "huge", "micro, tiny, small, paper")


def test_bad_strategy_names_the_strategies(capsys, tmp_path):
    fails(capsys, ["run", "--preset", "micro", "--strategies", "raw,filtr", "--out", str(tmp_path)], "filtr", "reflect")
    assert not (tmp_path / "world").exists(), "a bad name must fail before any work"


def test_missing_world_names_the_fix(capsys, tmp_path):
    fails(capsys, ["corpus", "--world", str(tmp_path / "nowhere"), "--preset", "micro", "--out", str(tmp_path / "c")],
          "nowhere", "msw world")


def test_corrupt_world_is_reported(capsys, tmp_path, micro_world_dir):
    bad = tmp_path / "w"
    bad.mkdir()
    (bad / "world.json").write_text("{not json")
    (bad / "splits.json").write_text((micro_world_dir / "splits.json").read_text())
    fails(capsys, ["corpus", "--world", str(bad), "--preset", "micro", "--out", str(tmp_path / "c")], "world.json")


def test_bad_seeds_are_an_argument_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--seeds", "one", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "seeds must be" in capsys.readouterr().err


def test_world_command_writes_node_link_json_and_prints_a_summary(capsys, tmp_path):
    assert main(["world", "--preset", "micro", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "drug" in out and "held" in out
    graph = json.loads((tmp_path / "world.json").read_text())
    assert {n["kind"] for n in graph["nodes"]} == {"drug", "compound", "effect", "condition"}
    assert {e["relation"] for e in graph["edges"]} == {"contains", "causes", "relieves", "aggravates"}
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert set(splits) >= {"held_out_pairs", "held_out_condition_pairs", "held_out_control_pairs", "ood_treats",
                           "reserved_templates"}
    assert splits["held_out_control_pairs"]  # v2: control condition pairs are held out too


def test_evaluate_and_attack_name_every_reference_policy_in_their_help(capsys):
    from medsafetyworld.evaluation.policies import REFERENCE_POLICIES

    assert REFERENCE_POLICIES == ("oracle", "reckless", "refuser", "usual", "random")
    for command in ("evaluate", "attack"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert all(name in out for name in REFERENCE_POLICIES), (command, out)
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--pretrained" in capsys.readouterr().out


def test_shell_msw_shows_the_last_line_of_the_report(capsys, tmp_path):
    from medsafetyworld.shell import msw

    assert msw("world", "--preset", "micro", "--seed", 3, "--out", tmp_path / "w") is None
    assert (tmp_path / "w" / "world.json").is_file()
    shown = capsys.readouterr().out.strip().splitlines()
    assert len(shown) == 1 and shown[0].startswith("world hash ") and shown[0].endswith(str(tmp_path / "w"))


def test_shell_msw_failure_shows_its_error_and_names_the_command(capsys, tmp_path):
    from medsafetyworld.shell import msw

    with pytest.raises(RuntimeError, match=r"msw summarize .*nowhere failed \(exit 2\)"):
        msw("summarize", tmp_path / "nowhere")
    assert "msw: error:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs a subcommand"):
        msw()
