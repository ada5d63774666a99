"""What each `msw` subcommand does, given its parsed arguments; `medsafetyworld.cli` parses the
command line, checks every argument before any work and turns a user's mistake into one line.
The heavy imports stay inside each command, so `msw --help` and a bad argument answer at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medsafetyworld.config import config_hash, get_preset
from medsafetyworld.errors import ConfigError, DataError, shown


def _preset_of_world(world_dir: Path, preset: str | None) -> str:
    from medsafetyworld.world.io import preset_of_world

    return preset_of_world(world_dir, preset)


def cmd_world(args) -> None:
    from medsafetyworld.pipeline import make_world
    from medsafetyworld.world.io import load_world, world_summary

    preset = get_preset(args.preset)
    whash = make_world(preset, args.seed, args.out)
    world, splits = load_world(args.out)
    print(world_summary(world, splits))
    print(f"world hash {whash[:16]}; written to {args.out}")


def _block_tokens(text: str) -> int | None:
    """--block-tokens: a number of tokens (checked with the preset's budget by the corpus stage), or
    `none` for the sequential stream."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--block-tokens {shown(text)} is not an integer (or none, for the sequential "
                          "stream)") from None


def cmd_corpus(args) -> None:
    from medsafetyworld.pipeline import make_corpus
    from medsafetyworld.strategies import get_strategy

    preset = get_preset(_preset_of_world(args.world, args.preset))
    if args.block_tokens is not None:
        blocked = dataclasses.replace(preset.corpus, block_tokens=_block_tokens(args.block_tokens))
        preset = preset.replace(corpus=blocked)
    strategy = get_strategy(args.strategy)
    corpus_hash = make_corpus(args.world, strategy, preset, args.seed, args.out, progress=not args.quiet,
                              workers=args.workers, engine=args.engine, tasks=args.tasks)
    from medsafetyworld.corpus.shards import load_manifest

    m = load_manifest(args.out)
    print(f"{m['documents']} documents, {m['tokens']} tokens in {len(m['shards'])} shard(s); "
          f"corpus hash {corpus_hash[:16]}; written to {args.out}")


def cmd_corpus_stats(args) -> None:
    from medsafetyworld.corpus.stats import budget_note, compare_corpora

    table = compare_corpora(args.dirs)
    print(table.to_string())
    print(budget_note(table))
    if args.csv:
        from medsafetyworld.storage import write_atomic

        write_atomic(args.csv, table.to_csv())
        print(f"written to {args.csv}")


def cmd_train(args) -> None:
    from medsafetyworld.pipeline import make_model
    from medsafetyworld.strategies import get_strategy

    preset = get_preset(_preset_of_world(args.world, args.preset))
    out = make_model(args.world, args.corpus, get_strategy(args.strategy), preset, args.seed, args.out,
                     progress=not args.quiet, backend=args.backend, parallel=args.parallel, compile=args.compile)
    if out is not None:  # None: a torchrun rank other than 0, whose share is done
        print(f"model written to {out}")


def cmd_bench_train(args) -> None:
    from medsafetyworld.training.bench import bench_train, format_table

    table = bench_train(get_preset(args.preset), args.steps, args.backends, vocab=args.vocab,
                        progress=not args.quiet)
    print(format_table(table))
    if args.csv:
        table.to_csv(args.csv, index=False)


def cmd_evaluate(args) -> None:
    record = _evaluate(args)[0]
    for metric, value in record["metrics"].items():
        print(f"{metric:32s} {value['value']}  (n={value['n']})")


def _evaluate(args):
    """The clean evaluation of `args.model` into `args.out` (skipped when up to date); returns
    (record, policy, preset, key)."""
    from medsafetyworld.evaluation.model_policy import ModelPolicy
    from medsafetyworld.evaluation.policies import REFERENCE_POLICIES, reference_policy
    from medsafetyworld.pipeline import evaluate_policy
    from medsafetyworld.storage import sha256_file
    from medsafetyworld.world.io import load_world

    preset = get_preset(_preset_of_world(args.world, args.preset))
    if args.model in REFERENCE_POLICIES:
        if args.decoding != "greedy":
            raise ConfigError(f"--decoding {args.decoding} needs a model folder; reference policies answer by rule")
        policy, kind, name = reference_policy(args.model, load_world(args.world)[0]), "reference", f"ref:{args.model}"
    else:
        if not Path(args.model).is_dir():
            raise ConfigError(f"{args.model} is neither a model folder nor a reference policy "
                              f"({', '.join(REFERENCE_POLICIES)})")
        policy = ModelPolicy(Path(args.model), preset.eval.batch_size, progress=not args.quiet,
                             decoding=args.decoding, num_beams=args.num_beams)
        kind, name = "model", args.model
    n_parameters = None
    extra = {}
    if kind == "model":
        from medsafetyworld.training.model import count_parameters

        n_parameters = count_parameters(policy.model)
        extra["decoding"] = policy.decoding_info()
        if args.decoding == "safebeam":  # a SafeBeam record must not pass for the greedy one
            name = f"{name}+safebeam{args.num_beams}"
    fields = {"strategy": args.name or name, "seed": args.seed, "corpus_hash": None, "policy_kind": kind,
              "model_info": {"n_parameters": n_parameters, "tokens_seen": None}}
    if extra:
        fields["extra"] = extra
    weights = sorted(Path(args.model).glob("*.safetensors")) if kind == "model" else []
    decoding = [] if args.decoding == "greedy" else [extra["decoding"]]  # SafeBeam gets a key of its own
    # A model is its weights (and the --name its record carries), not the path it was typed as: `m`,
    # `./m` and `/abs/m` share one evaluation. A reference policy is its name.
    identity = name if kind == "reference" else ["model", args.name]
    key = config_hash("evaluate", identity, [sha256_file(w) for w in weights], *decoding)
    if kind == "reference":
        if args.pretrained is not None:
            raise ConfigError(f"--pretrained needs a model folder; the reference policy {args.model} has no training")
        pretrained = lambda same: same  # noqa: E731  (a reference policy has no training)
    elif args.pretrained is not None:
        key = config_hash(key, [sha256_file(w) for w in sorted(Path(args.pretrained).glob("*.safetensors"))])
        pretrained = lambda _: ModelPolicy(Path(args.pretrained), preset.eval.batch_size,  # noqa: E731
                                           progress=not args.quiet)
    else:
        pretrained = None
    record = evaluate_policy(lambda: policy, args.world, preset, Path(args.out), key=key,
                             record_fields=fields, probe_seed=args.seed, pretrained=pretrained)
    return record, policy, preset, key


def cmd_attack(args) -> None:
    from medsafetyworld.attacks import AttackContext
    from medsafetyworld.evaluation.policies import REFERENCE_POLICIES
    from medsafetyworld.pipeline import attack_policy, resolve_attacks
    from medsafetyworld.world.io import load_world

    is_model = args.model not in REFERENCE_POLICIES
    attacks = resolve_attacks(args.attacks, models=is_model)  # a bad spec fails before any work
    record, policy, preset, key = _evaluate(args)
    world, splits = load_world(args.world)

    def context(folder):
        return AttackContext(world, splits, preset, policy, args.seed, folder,
                             model_dir=Path(args.model) if is_model else None, seed=args.seed, progress=not args.quiet)

    record = attack_policy(Path(args.out), attacks, context, key=key)
    clean = record["metrics"]
    for label, entry in record["attacks"].items():
        print(f"== {label}")
        for metric, value in entry["metrics"].items():
            if value["n"]:
                base = clean.get(metric, {}).get("value")
                print(f"{metric:32s} {value['value']}  (n={value['n']}; clean {base})")


def cmd_run(args) -> None:
    from medsafetyworld.pipeline import run

    preset = get_preset(args.preset)
    records = run(preset, args.strategies, args.seeds, Path(args.out), world_seed=args.world_seed,
                  progress=not args.quiet, attacks=args.attacks, backend=args.backend)
    print((Path(args.out) / "summary.md").read_text())
    print(f"{len(records)} records; summary in {args.out}/summary.md, summary.csv, pareto.png")


def cmd_summarize(args) -> None:
    from medsafetyworld.leaderboard import load_records, write_summary

    root = Path(args.run)
    paths = sorted(root.glob("results/*/record.json"))
    if not paths:
        raise DataError(f"no results/*/record.json under {root}; pass the --out folder of `msw run`")
    records = load_records(paths)
    if args.baseline is not None:
        present = sorted({str(r.get("strategy")) for r in records})
        if args.baseline not in present:
            raise ConfigError(f"--baseline {args.baseline} has no records in {root}; strategies there: "
                              f"{', '.join(present)}")
    write_summary(records, root, baseline=args.baseline or "raw")
    print((root / "summary.md").read_text())
    print(f"{len(records)} records; summary in {root}/summary.md, summary.csv, pareto.png")


def cmd_sweep(args) -> None:
    from medsafetyworld.sweep import sweep

    from medsafetyworld.sweep import to_markdown

    table = sweep(get_preset(args.preset), args.strategies, args.shapes, args.tokens, Path(args.out), seed=args.seed,
                  world_seed=args.world_seed, threads=args.threads, progress=not args.quiet)
    print(to_markdown(table))
    print(f"written to {Path(args.out) / 'sweep.csv'}")


def cmd_submit(args) -> None:
    from medsafetyworld.board import verify_folder
    from medsafetyworld.leaderboard.submission import bundle, default_model_dir

    model_dir = None
    if args.with_model:
        model_dir = args.model or default_model_dir(Path(args.results))
    out = bundle(args.results, args.out, world_dir=args.world, name=args.name, track=args.track,
                 probe_seed=args.probe_seed, model_dir=model_dir)
    from medsafetyworld.leaderboard.submission import Rejected

    try:
        checked = verify_folder(out)
    except Rejected as e:
        raise DataError(f"{out} was written, but the leaderboard would reject it: {e}") from None
    print(f"submission written to {out} and checked as the leaderboard will: recomputed "
          f"{checked.recomputed.summary()}")


def cmd_leaderboard(args) -> None:
    from medsafetyworld.board import build_board

    board = build_board(args.submissions, args.out, progress=not args.quiet)
    print(f"{len(board.accepted)} submission(s) ranked, {len(board.rejected)} rejected; "
          f"{args.out}/index.html, leaderboard.md, leaderboard.csv, rejected.csv")
    for name, reason in zip(board.rejected["submission"], board.rejected["reason"]):
        print(f"  rejected {name}: {reason}")


def cmd_export_lm_eval(args) -> None:
    from medsafetyworld.evaluation.lm_eval_export import export_lm_eval

    out = export_lm_eval(args.world, args.out, preset=args.preset, seed=args.seed)
    print(f"lm-evaluation-harness tasks written to {out}; run:\n  HF_HUB_OFFLINE=1 lm_eval --model hf "
          f"--model_args pretrained=MODEL_DIR --include_path {out} --tasks medsafetyworld --device cpu")


def cmd_strategies(args) -> None:
    from medsafetyworld.strategies import available_strategies
    from medsafetyworld.strategies.registry import recipes

    named = recipes()
    print("\n".join(f"{n} = {named[n]}" if n in named else n for n in available_strategies()))
