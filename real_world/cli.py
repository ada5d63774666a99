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


def endpoint_of(args):
    """The LLM endpoint of --endpoint, --model-name and --timeout; None without --endpoint."""
    from .endpoint import Endpoint

    if args.endpoint is None:
        if args.model_name is not None:
            raise ConfigError("--model-name needs --endpoint, the server's base URL (e.g. http://127.0.0.1:8000/v1)")
        return None
    if args.model_name is None:
        raise ConfigError("--endpoint needs --model-name, the name the server serves the model under")
    return Endpoint(args.endpoint, args.model_name, args.timeout)


def llm_cache(args) -> str:
    return args.llm_cache or f"{args.out}/llm_cache"


def make_labeler(args):
    from .labelers import LABELERS, get_labeler

    kwargs = _labeler_args(args.labeler_arg)
    if getattr(LABELERS.get(args.labeler), "needs_endpoint", False):
        endpoint = endpoint_of(args)
        if endpoint is None:
            raise ConfigError(f"the {args.labeler} labeler asks an LLM: pass --endpoint URL and --model-name NAME "
                              f"(an OpenAI-compatible server such as vLLM)")
        kwargs = {"endpoint": endpoint, "cache": llm_cache(args), "concurrency": args.concurrency, **kwargs}
    return get_labeler(args.labeler, threshold=args.threshold, words=args.words, **kwargs)


def make_strategy(args):
    """The --strategy spec, with rewrite, refusal and moral done by the LLM when --endpoint is given."""
    from .rewriter import llm_strategy

    endpoint = endpoint_of(args)
    if endpoint is None:
        return args.strategy
    return llm_strategy(args.strategy, endpoint, cache=llm_cache(args), concurrency=args.concurrency)


def cmd_run(args) -> None:
    from .fineweb import require_hub
    from .pipeline import run_real_world

    source = args.input if args.input else require_hub(args.hub, args.hub_config)
    labeler, strategy = make_labeler(args), make_strategy(args)
    manifest = run_real_world(source, args.out, labeler, strategy, world=args.world,
                              tokenizer=args.tokenizer, limit=args.limit, tasks=args.tasks, seed=args.seed,
                              labeler_spec=args.labeler, executor=executor_options(args))
    if "slurm_job" in manifest:
        print(f"submitted {manifest['pending']} of {manifest['tasks']} tasks to Slurm (job {manifest['slurm_job']}, "
              f"script {args.out}/logs/launch_script.slurm); when they are done (squeue): "
              f"msw real-world finalize {args.out}")
        return
    print_summary(manifest, args.out)


def print_summary(manifest: dict, out) -> None:
    c = manifest["counts"]
    failed = f", {c['rewrite_failed']} left out: rewrite failed" if c.get("rewrite_failed") else ""
    print(f"read {c.get('read', 0)} documents ({c.get('unlabeled', 0)} unlabeled, {c.get('unsafe', 0)} unsafe); "
          f"{manifest['documents']} written ({c.get('dropped', 0)} dropped by {manifest['strategy_label']}{failed}), "
          f"{manifest['tokens']} tokens; corpus in {out}/corpus")


def executor_options(args):
    from .executors import ExecutorOptions, parse_sbatch_args

    return ExecutorOptions(kind=args.executor, workers=args.workers, cpus_per_task=args.cpus_per_task,
                           mem_per_cpu_gb=args.mem_per_cpu_gb, partition=args.partition, time=args.time,
                           job_name=args.job_name, sbatch_args=parse_sbatch_args(args.sbatch_arg),
                           slurm_logs=args.slurm_logs, env_command=args.env_command, ray_address=args.ray_address)


def cmd_finalize(args) -> None:
    from .pipeline import finalize

    print_summary(finalize(args.out), args.out)


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate_model, summary_lines

    labeler = make_labeler(args) if args.prompts else None
    summary = evaluate_model(args.model, args.out, labeled=args.labeled, strategy=args.strategy,
                             prompts=args.prompts, labeler=labeler, max_new_tokens=args.max_new_tokens,
                             chat=args.chat, words=args.words, seed=args.seed)
    print("\n".join(summary_lines(summary, args.out)))


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
    r.add_argument("--labeler", default="keyword",
                   help="keyword, tfidf, hf_classifier or llm_judge (see `msw real-world labelers`)")
    r.add_argument("--labeler-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a labeler parameter: keywords=FILE (keyword), train=JSONL (tfidf), model=DIR, "
                        "label_scores=safe:0,unsafe:5, batch_size=N, device=cuda (hf_classifier)")
    r.add_argument("--threshold", type=int, default=3, help="a segment scored at least this (0-5) is unsafe")
    r.add_argument("--words", type=int, default=100, help="segment size in words (cut at sentence ends)")
    r.add_argument("--strategy", default="raw",
                   help="raw, filter, tag(p=0.05), reflect; with --endpoint also rewrite, refusal, moral, "
                        "chains of them (rewrite(share=0.5)+tag) and safety_pretraining")
    tok = r.add_mutually_exclusive_group(required=True)
    tok.add_argument("--world", help="a world folder: its tokenizer, and `msw train --world` accepts the corpus")
    tok.add_argument("--tokenizer", help="any tokenizer folder (tokenizer.json)")
    r.add_argument("--limit", type=int, default=None, help="at most this many documents in all")
    r.add_argument("--tasks", type=int, default=None, help="datatrove tasks (default: one per input file)")
    r.add_argument("--workers", type=int, default=None,
                   help="tasks run at once (default: the cores; with --executor slurm or ray, no limit)")
    r.add_argument("--seed", type=int, default=0)
    llm = r.add_argument_group("LLM endpoint (llm_judge labeler; rewrite, refusal and moral on real text)")
    llm.add_argument("--endpoint", metavar="URL",
                     help="an OpenAI-compatible server's base URL, e.g. http://127.0.0.1:8000/v1 (vLLM)")
    llm.add_argument("--model-name", help="the name the server serves its model under")
    llm.add_argument("--timeout", type=float, default=60.0,
                     help="seconds a request may wait for its reply (default 60); then it counts as failed")
    llm.add_argument("--concurrency", type=int, default=8, help="requests at once per task (default 8)")
    llm.add_argument("--llm-cache", metavar="DIR", help="the reply cache (default OUT/llm_cache)")
    add_executor_args(r)
    r.set_defaults(func=cmd_run)
    fin = sub.add_parser("finalize", help="write OUT/corpus/manifest.json once every task is done (after "
                                          "--executor slurm; a local or Ray run does it itself)")
    fin.add_argument("out", metavar="OUT", help="the --out folder of `msw real-world run`")
    fin.set_defaults(func=cmd_finalize)
    ev = sub.add_parser("evaluate", help="safety_cls_acc of a reflect or tag model on held-out labeled documents, "
                                         "and the attack success rate of a prompt file scored by a labeler")
    ev.add_argument("model", metavar="MODEL_DIR", help="a Hugging Face causal LM folder (`msw train` writes one)")
    ev.add_argument("--out", required=True, help="output folder: summary.json and per-item Parquet tables")
    ev.add_argument("--labeled", metavar="JSONL", help="held-out documents, {\"text\", \"label\"} a line")
    ev.add_argument("--strategy", choices=("reflect", "tag"), help="what the model was trained with (with --labeled)")
    ev.add_argument("--words", type=int, default=100, help="segment size in words: reflect's, the labeler's")
    ev.add_argument("--prompts", metavar="JSONL", help="prompts to answer, {\"prompt\": ...} a line")
    ev.add_argument("--chat", action="store_true", help="ask each prompt as `User: ...\\nAssistant:`")
    ev.add_argument("--max-new-tokens", type=int, default=100, help="answer length in tokens (default 100)")
    ev.add_argument("--labeler", default="keyword", help="what scores the answers (see `msw real-world labelers`)")
    ev.add_argument("--labeler-arg", action="append", default=[], metavar="KEY=VALUE", help="as for `run`")
    ev.add_argument("--threshold", type=int, default=3, help="an answer scored at least this (0-5) is unsafe")
    ev.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    for flag, kw in (("--endpoint", {}), ("--model-name", {}), ("--timeout", {"type": float, "default": 60.0}),
                     ("--concurrency", {"type": int, "default": 8}), ("--llm-cache", {})):
        ev.add_argument(flag, help="as for `run` (llm_judge labeler)", **kw)
    ev.set_defaults(func=cmd_evaluate)
    lab = sub.add_parser("labelers", help="list the registered labelers")
    lab.set_defaults(func=cmd_labelers)


def add_executor_args(r) -> None:
    ex = r.add_argument_group("executor (datatrove's; every one skips finished tasks, so any can resume a run)")
    ex.add_argument("--executor", choices=("local", "slurm", "ray"), default="local",
                    help="local processes (default), a Slurm job array (returns once submitted; then "
                         "`msw real-world finalize OUT`) or a Ray cluster")
    ex.add_argument("--cpus-per-task", type=int, default=1, help="CPUs reserved per task (slurm, ray; default 1)")
    ex.add_argument("--mem-per-cpu-gb", type=int, default=2, help="memory per CPU in GB (slurm, ray; default 2)")
    ex.add_argument("--partition", help="Slurm partition (required with --executor slurm)")
    ex.add_argument("--time", help="Slurm time limit per task, e.g. 4:00:00 (default 24:00:00)")
    ex.add_argument("--job-name", help="Slurm job name (default msw-real-world)")
    ex.add_argument("--sbatch-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra #SBATCH --KEY=VALUE line, e.g. account=mylab, qos=normal (repeatable)")
    ex.add_argument("--slurm-logs", metavar="DIR", help="Slurm's own job logs (default OUT/logs/slurm_logs)")
    ex.add_argument("--env-command", metavar="CMD",
                    help="run by each Slurm job before the task, e.g. 'source ~/venv/bin/activate'")
    ex.add_argument("--ray-address", metavar="HOST:PORT",
                    help="the Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")


__all__ = ["register", "argparse"]
