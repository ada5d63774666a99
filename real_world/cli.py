"""`msw real-world ...`, registered through the entry-point group `medsafetyworld.commands`."""

from __future__ import annotations

import argparse

from medsafetyworld.errors import ConfigError


def _labeler_args(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--labeler-arg {pair!r} is not KEY=VALUE (e.g. train=labeled.jsonl)")
        out[key] = value
    return out


def make_labeler(args):
    from .labelers import get_labeler

    return get_labeler(args.labeler, threshold=args.threshold, words=args.words, **_labeler_args(args.labeler_arg))


def cmd_run(args) -> None:
    from .fineweb import require_hub
    from .pipeline import run_real_world

    source = args.input if args.input else require_hub(args.hub, args.hub_config)
    manifest = run_real_world(source, args.out, make_labeler(args), args.strategy, world=args.world,
                              tokenizer=args.tokenizer, limit=args.limit, tasks=args.tasks, workers=args.workers,
                              seed=args.seed, labeler_spec=args.labeler)
    c = manifest["counts"]
    print(f"read {c.get('read', 0)} documents ({c.get('unlabeled', 0)} unlabeled, {c.get('unsafe', 0)} unsafe); "
          f"{manifest['documents']} written ({c.get('dropped', 0)} dropped by {manifest['strategy_label']}), "
          f"{manifest['tokens']} tokens; corpus in {args.out}/corpus")


def cmd_labelers(args) -> None:
    from .labelers import available_labelers

    print("\n".join(available_labelers()))


def register(subparsers) -> None:
    """Adds `real-world` and its subcommands to `msw`'s subparsers."""
    p = subparsers.add_parser("real-world", help="MedSafetyWorld's interventions on real web text (FineWeb-Edu)")
    sub = p.add_subparsers(dest="real_world_command", required=True)
    r = sub.add_parser("run", help="label, intervene on and tokenize FineWeb-Edu shards on datatrove (resumable)")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="a local folder of FineWeb-Edu Parquet shards")
    src.add_argument("--hub", metavar="DATASET", help="a hub dataset, e.g. HuggingFaceFW/fineweb-edu (online only)")
    r.add_argument("--hub-config", default="sample-10BT", help="the hub dataset's config (default sample-10BT)")
    r.add_argument("--out", required=True, help="output folder (OUT/corpus is what `msw train` reads)")
    r.add_argument("--labeler", default="keyword", help="keyword or tfidf (see `msw real-world labelers`)")
    r.add_argument("--labeler-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a labeler parameter: keywords=FILE (keyword), train=JSONL (tfidf)")
    r.add_argument("--threshold", type=int, default=3, help="a segment scored at least this (0-5) is unsafe")
    r.add_argument("--words", type=int, default=100, help="segment size in words (cut at sentence ends)")
    r.add_argument("--strategy", default="raw", help="raw, filter, tag(p=0.05), reflect")
    tok = r.add_mutually_exclusive_group(required=True)
    tok.add_argument("--world", help="a world folder: its tokenizer, and `msw train --world` accepts the corpus")
    tok.add_argument("--tokenizer", help="any tokenizer folder (tokenizer.json)")
    r.add_argument("--limit", type=int, default=None, help="at most this many documents in all")
    r.add_argument("--tasks", type=int, default=None, help="datatrove tasks (default: one per input file)")
    r.add_argument("--workers", type=int, default=None, help="tasks run at once (default: the cores)")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_run)
    lab = sub.add_parser("labelers", help="list the registered labelers")
    lab.set_defaults(func=cmd_labelers)


__all__ = ["register", "argparse"]
