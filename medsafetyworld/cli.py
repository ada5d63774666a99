"""`msw`: the command line, parsed and checked here (what each subcommand does is in
`medsafetyworld.commands`). Every mistake a user can make ends in one line on stderr,
`msw: error: <what is wrong and the fix>`, and exit code 2, never a traceback:

- a bad argument (a name, a number, a seed, an output path) is refused by the parser (`_Parser`),
  before any work;
- a bad input found later (a preset, a spec, a damaged file) raises MSWError where it enters;
- an OSError on a path the user gave (a file where a folder is needed, permissions, a full disk)
  is translated by `errors.os_error_message`.

`main` is the one place that prints them, so a new command gets this for free. Anything else is a
bug and keeps its traceback; `-v` shows the traceback of a user error too.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path

from medsafetyworld.commands import (
    cmd_attack, cmd_bench_train, cmd_corpus, cmd_corpus_stats, cmd_evaluate, cmd_export_lm_eval, cmd_leaderboard,
    cmd_run, cmd_strategies, cmd_submit, cmd_summarize, cmd_sweep, cmd_train, cmd_world,
)
from medsafetyworld.config import PRESETS, check_seed
from medsafetyworld.errors import ConfigError, MSWError, one_line, os_error_message, shown
from medsafetyworld.strategies.registry import split_top


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors are one line like every other error of `msw` (subcommands too: their
    parsers are of the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"msw: error: {one_line(message)} (see `{self.prog} --help`)\n")


def _arg_type(check):
    """An argparse type from a function that raises MSWError: its message becomes the parser's."""

    def parse(text: str):
        try:
            return check(text)
        except MSWError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = check.__name__
    return parse


@_arg_type
def _seed(text: str) -> int:
    return check_seed(text)


@_arg_type
def _seeds(text: str) -> list[int]:
    seeds = [s.strip() for s in text.split(",") if s.strip()]
    if not seeds:
        raise ConfigError(f"seeds must be comma-separated integers, got {shown(text)}")
    try:
        out = [int(s) for s in seeds]
    except ValueError:
        raise ConfigError(f"seeds must be comma-separated integers, got {shown(text)}") from None
    out = [check_seed(s) for s in out]
    if len(set(out)) < len(out):
        raise ConfigError(f"a seed is given twice in {shown(text)}")
    return out


@_arg_type
def _names(text: str) -> list[str]:
    """Comma-separated strategy or attack specs; commas inside parentheses belong to a spec's parameters."""
    names = [s.strip() for s in split_top(text, ",") if s.strip()]
    if not names:
        raise ConfigError(f"an empty list {shown(text)}; give at least one comma-separated name")
    return names


def _int_at_least(low: int):
    @_arg_type
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{shown(text)} is not an integer") from None
        if value < low:
            raise ConfigError(f"must be at least {low}, got {value}")
        return value

    return integer


def check_out_path(path: Path | str, folder: bool = True) -> Path:
    """`path` if an output (a folder, or a file unless `folder`) can be written there: what
    exists of it is of the right kind and the nearest existing folder is writable. ConfigError
    naming the path and the fix otherwise. Nothing is created."""
    if not str(path).strip():
        raise ConfigError(f"an empty output path; give a {'folder' if folder else 'file'}")
    path = Path(path)
    try:
        if path.exists() or path.is_symlink():
            if folder and not path.is_dir():
                raise ConfigError(f"{path} is a file, not a folder; give a folder (it is created if missing)")
            if not folder and path.is_dir():
                raise ConfigError(f"{path} is a folder; give the path of a file")
        parent = path if folder and path.is_dir() else path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"{parent} is a file, so {path} cannot be made under it; choose another path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write in {parent} (permission denied or a read-only file system); "
                              f"choose another path for {path}")
    except OSError as exc:  # a name too long, a folder we may not look into, ...
        raise ConfigError(os_error_message(exc) or f"{path}: {exc.strerror or exc}") from None
    return path


@_arg_type
def _out_dir(text: str) -> Path:
    return check_out_path(text, folder=True)


@_arg_type
def _out_file(text: str) -> Path:
    return check_out_path(text, folder=False)


def build_corpus_stats_parser() -> argparse.ArgumentParser:
    """`msw corpus stats DIR...`: its own parser, so `msw corpus --world ...` keeps its options as they are."""
    p = _Parser(
        prog="msw corpus stats",
        description="documents, tokens, unsafe segments, tag, red-flag and reflection counts per document kind, "
                    "corpora side by side with their token budgets")
    p.add_argument("-q", "--quiet", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders written by `msw corpus`")
    p.add_argument("--csv", type=_out_file, default=None, metavar="PATH", help="also write the table as CSV")
    p.set_defaults(func=cmd_corpus_stats)
    return p


def _corpus_stats_argv(argv: list[str]) -> list[str] | None:
    """argv without `corpus stats` if the command is `msw [-q] [-v] corpus stats ...`, else None."""
    i = 0
    while i < len(argv) and argv[i] in ("-q", "--quiet", "-v", "--verbose"):
        i += 1
    return argv[:i] + argv[i + 2 :] if argv[i : i + 2] == ["corpus", "stats"] else None


@_arg_type
def _list(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"an empty list {shown(text)}; give at least one comma-separated value")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="msw", description="MedSafetyWorld: does pretraining-time safety stop unsafe composition?")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log every stage")
    sub = p.add_subparsers(dest="command", required=True)
    presets = ", ".join(PRESETS)

    w = sub.add_parser("world", help="generate a world, its held-out splits and its tokenizer")
    w.add_argument("--preset", default="tiny", help=f"one of {presets} (default tiny)")
    w.add_argument("--seed", type=_seed, default=0)
    w.add_argument("--out", type=_out_dir, required=True)
    w.set_defaults(func=cmd_world)

    c = sub.add_parser("corpus", help="render a strategy's training corpus as Parquet shards "
                                      "(`msw corpus stats DIR...` compares rendered corpora)",
                       epilog="msw corpus stats DIR [DIR ...] [--csv PATH]: per-kind counts of rendered corpora, "
                              "side by side")
    c.add_argument("--world", type=Path, required=True, help="a folder written by `msw world`")
    c.add_argument("--strategy", default="raw")
    c.add_argument("--preset", default=None, help="default: the world's preset")
    c.add_argument("--seed", type=_seed, default=1)
    c.add_argument("--out", type=_out_dir, required=True)
    c.add_argument("--workers", type=_int_at_least(1), default=1,
                   help="processes: 2 renders the stream beside the writer, the same shards sooner on two cores "
                        "(more add nothing: the stream is one seeded sequence); with --engine datatrove, the "
                        "blocks render in this many processes at once; default 1")
    c.add_argument("--block-tokens", default=None, metavar="Q",
                   help="render the blocked stream: blocks of Q tokens, each from its own seed, which render in "
                        "parallel (a different corpus from the sequential one; `none`: sequential); default: the "
                        "preset's corpus block_tokens")
    c.add_argument("--engine", choices=("builtin", "datatrove"), default="builtin",
                   help="builtin: this process; datatrove: the blocks of a blocked corpus on datatrove's local "
                        "executor (pip install 'medsafetyworld[datatrove]'), resumable per task; the same bytes")
    c.add_argument("--tasks", type=_int_at_least(1), default=None,
                   help="with --engine datatrove: render tasks sharing the blocks (default: one per block)")
    c.set_defaults(func=cmd_corpus)

    t = sub.add_parser("train", help="pretrain on a corpus, then post-train (SFT)")
    t.add_argument("--world", type=Path, required=True)
    t.add_argument("--corpus", type=Path, required=True)
    t.add_argument("--strategy", default="raw", help="the corpus's strategy (sets the SFT format)")
    t.add_argument("--preset", default=None)
    t.add_argument("--seed", type=_seed, default=1)
    t.add_argument("--out", type=_out_dir, required=True)
    t.add_argument("--backend", choices=("builtin", "nanotron"), default="builtin",
                   help="the built-in trainer (default; data parallel under torchrun) or nanotron (GPUs)")
    t.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp",
                   help="under torchrun: replicate the model (ddp, default) or shard it (fsdp)")
    t.add_argument("--compile", action="store_true", help="run the model through torch.compile")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score a Hugging Face model folder or a reference policy")
    e.add_argument("model", help="a model folder, or one of oracle, reckless, refuser, usual, random")
    e.add_argument("--world", type=Path, required=True)
    e.add_argument("--preset", default=None)
    e.add_argument("--seed", type=_seed, default=0, help="probe seed (use the world seed to match `msw run`)")
    e.add_argument("--name", default=None, help="name in the record (default: the model path)")
    e.add_argument("--out", type=_out_dir, required=True)
    e.add_argument("--decoding", choices=("greedy", "safebeam"), default="greedy",
                   help="greedy (default), or SafeBeam: beam search dropping, each step, the half of the "
                        "candidates most likely to be followed by <potentially unsafe content>")
    e.add_argument("--num-beams", type=_int_at_least(1), default=4, help="beams for --decoding safebeam (default 4)")
    e.add_argument("--pretrained", type=Path, default=None, metavar="DIR",
                   help="the model before post-training, for compose_acc_pretrained and verdict_acc_pretrained")
    e.set_defaults(func=cmd_evaluate)

    a = sub.add_parser("attack", help="evaluate a model folder or reference policy, then attack it and evaluate again")
    a.add_argument("model", help="a Hugging Face model folder, or one of oracle, reckless, refuser, usual, random")
    a.add_argument("--world", type=Path, required=True)
    a.add_argument("--attacks", type=_names, default=["prefill"],
                   help="comma-separated attack specs, e.g. prefill,benign_ft,harmful_ft(examples=300,lr=1e-3)")
    a.add_argument("--preset", default=None)
    a.add_argument("--seed", type=_seed, default=0, help="probe and finetuning seed")
    a.add_argument("--name", default=None, help="name in the record (default: the model path)")
    a.add_argument("--out", type=_out_dir, required=True, help="the results folder (the clean record goes there too)")
    a.set_defaults(func=cmd_attack, decoding="greedy", num_beams=4, pretrained=None)

    r = sub.add_parser("run", help="the whole benchmark: world, corpora, training, evaluation, summary")
    r.add_argument("--preset", default="tiny", help=f"one of {presets} (default tiny)")
    r.add_argument("--strategies", type=_names, default=["raw", "filter", "reflect"])
    r.add_argument("--seeds", type=_seeds, default=[1])
    r.add_argument("--world-seed", type=_seed, default=0)
    r.add_argument("--attacks", type=_names, default=[],
                   help="attack specs to run on every trained model, e.g. prefill,benign_ft,harmful_ft")
    r.add_argument("--backend", choices=("builtin", "nanotron"), default="builtin",
                   help="pretraining backend (default builtin)")
    r.add_argument("--out", type=_out_dir, required=True)
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench-train", help="tokens/s, MFU and peak memory of each training backend on a preset")
    b.add_argument("--preset", default="tiny", help=f"one of {presets} (default tiny)")
    b.add_argument("--steps", type=int, default=50, help="training steps per backend (default 50)")
    b.add_argument("--backends", type=_names, default=None,
                   help="comma-separated, from builtin, builtin+compile, nanotron (default: all that apply here)")
    b.add_argument("--vocab", type=int, default=1000,
                   help="vocabulary size of the synthetic tokens (default 1000)")
    b.add_argument("--csv", type=_out_file, default=None, metavar="PATH", help="also write the table as CSV")
    b.set_defaults(func=cmd_bench_train)

    m = sub.add_parser("summarize", help="rebuild a run folder's summary from every record in it "
                       "(e.g. after runs of different strategies or seeds into the same --out)")
    m.add_argument("run", help="the --out folder of `msw run`")
    m.add_argument("--baseline", default=None, help="the strategy the others are compared to (default raw)")
    m.set_defaults(func=cmd_summarize)

    w = sub.add_parser("sweep", help="pretrain every model shape x tokens seen per strategy and measure "
                       "compose_acc and verdict_acc (how `tiny` was chosen)")
    w.add_argument("--preset", default="tiny", help="the world, corpus and context to sweep on (default tiny)")
    w.add_argument("--strategies", type=_names, default=["raw", "filter"])
    w.add_argument("--shapes", type=_list, default=["3x96", "4x128", "6x160"],
                   help="comma-separated LAYERSxWIDTH (heads of width 32, MLP 4x), default 3x96,4x128,6x160")
    w.add_argument("--tokens", type=_list, default=["2.5M", "5M", "10M"], help="tokens seen, default 2.5M,5M,10M")
    w.add_argument("--seed", type=_seed, default=1)
    w.add_argument("--world-seed", type=_seed, default=0)
    w.add_argument("--threads", type=_int_at_least(0), default=0, help="torch threads per training (0: torch decides; "
                   "1 to run two sweeps side by side on two cores); part of each point's stage key")
    w.add_argument("--out", type=_out_dir, required=True)
    w.set_defaults(func=cmd_sweep)

    u = sub.add_parser("submit", help="bundle a results folder as a leaderboard submission (JSON and Parquet, "
                       "with a manifest of hashes) and check it as the leaderboard will")
    u.add_argument("results", help="a results folder: OUT/results/<strategy>-s<seed> of `msw run`, or the --out "
                   "of `msw evaluate`/`msw attack`")
    u.add_argument("--out", type=_out_dir, required=True, help="the submission folder to write")
    u.add_argument("--world", type=Path, default=None,
                   help="the world it was evaluated on (default: the run's OUT/world)")
    u.add_argument("--name", default=None, help="the submission's name (default: the results folder's)")
    u.add_argument("--track", choices=("intervention", "model"), default=None,
                   help="intervention: a strategy trained by the preset's recipe; model: any recipe "
                        "(default: the record's)")
    u.add_argument("--probe-seed", type=_seed, default=None,
                   help="the probe seed it was evaluated with (default: the world seed, as `msw run`)")
    u.add_argument("--with-model", action="store_true",
                   help="ship the model's safetensors, config and tokenizer, so the teacher-forced metrics "
                        "can be recomputed")
    u.add_argument("--model", type=Path, default=None,
                   help="the model folder for --with-model (default: the run's OUT/models/<name>/sft)")
    u.set_defaults(func=cmd_submit)

    lb = sub.add_parser("leaderboard", help="check every submission in a folder and build the leaderboard "
                        "(Markdown, CSV, one self-contained HTML page)")
    lb.add_argument("submissions", type=Path, help="a folder holding one folder per submission")
    lb.add_argument("--out", type=_out_dir, required=True)
    lb.set_defaults(func=cmd_leaderboard)

    x = sub.add_parser("export-lm-eval", help="write an lm-evaluation-harness task folder of the generation "
                       "probes, scored by this package's parser")
    x.add_argument("--world", type=Path, required=True)
    x.add_argument("--preset", default=None)
    x.add_argument("--seed", type=_seed, default=0, help="probe seed (the world seed matches `msw run`)")
    x.add_argument("--out", type=_out_dir, required=True)
    x.set_defaults(func=cmd_export_lm_eval)

    s = sub.add_parser("strategies", help="list the registered strategies")
    s.set_defaults(func=cmd_strategies)
    register_plugin_commands(sub)
    return p


COMMANDS_GROUP = "medsafetyworld.commands"


def register_plugin_commands(sub) -> None:
    """Commands of other packages: each entry point of the group `medsafetyworld.commands` is a
    function `register(subparsers)` that adds its subcommands. A plugin that fails to load is
    skipped with a warning on stderr, so it never breaks the built-in commands."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not break `msw`
            print(f"msw: warning: commands plugin {ep.name!r} ({ep.value}) not loaded: {one_line(str(exc))}",
                  file=sys.stderr)


@contextlib.contextmanager
def _hf_bars_off(quiet: bool):
    """Under -q, Hugging Face's own bars (`Loading weights`, ...) stay off in every command, even
    where a model is loaded without a progress flag; restored afterwards."""
    if not quiet:
        yield
        return
    loaded = sys.modules.get("transformers.utils.logging")
    was_on = loaded.is_progress_bar_enabled() if loaded else None
    env = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers is first imported
    if loaded:
        loaded.disable_progress_bar()
    try:
        yield
    finally:
        if env is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = env
        if loaded and was_on:
            loaded.enable_progress_bar()


# Arguments that name folders a command reads; its --out must be none of them nor hold one, since
# an output folder is replaced as a whole (a corpus written over its world deletes the world).
_INPUTS = ("world", "corpus", "model", "pretrained", "dirs", "results", "submissions")


def check_out_is_no_input(args: argparse.Namespace) -> None:
    out = getattr(args, "out", None)
    if out is None:
        return
    target = Path(out).resolve()
    for name in _INPUTS:
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is None or not Path(value).exists():  # e.g. a reference policy's name
                continue
            source = Path(value).resolve()
            if source == target or target in source.parents:
                what = "model" if name == "model" else "input" if name == "dirs" else f"--{name}"
                raise ConfigError(f"--out {out} {'is' if source == target else 'holds'} the {what} folder "
                                  f"{value}, which writing the output would replace; choose another --out")


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user caused (MSWError, an OSError on a path they
    gave), or None for anything else (a bug: it keeps its traceback)."""
    if isinstance(exc, MSWError):
        return one_line(str(exc))
    if isinstance(exc, OSError):
        message = os_error_message(exc)
        return one_line(message) if message else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    stats_argv = _corpus_stats_argv(argv)
    parser = build_corpus_stats_parser() if stats_argv is not None else build_parser()
    if nul := next((a for a in argv if "\x00" in str(a)), None):  # no path or name holds one
        parser.error(f"argument {shown(nul)} holds a NUL character")
    args = parser.parse_args(stats_argv if stats_argv is not None else argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        check_out_is_no_input(args)
        with _hf_bars_off(getattr(args, "quiet", False)):
            args.func(args)
    except KeyboardInterrupt:
        print("msw: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"msw: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
