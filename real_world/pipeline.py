"""The real-web pipeline on datatrove (0.10.x): reader, labeler, strategy, tokenizer and writer as
pipeline steps under a datatrove executor (`executors`: local processes, workers = cores, by default;
Slurm or Ray when asked).

Output folder:
  OUT/corpus/   shard-RRRRR.parquet (one a task, the schema `msw train` reads) and manifest.json,
                written only once every task is done
  OUT/tasks/    each task's counts (read, labeled, unlabeled, kept, dropped, rewrite_failed, tokens, and the
                LLM judge's requests and cache hits) and RRRRR-rewrite_failed.jsonl, the id and reason of each
                document an LLM rewrite failed on (left out of the corpus)
  OUT/logs/     datatrove's logging folder; logs/completions/RRRRR marks a finished task
  OUT/run.json  the run's settings, what `finalize` needs to write the manifest later

A rerun of the same command skips finished tasks (datatrove's completion markers) and redoes only
the others, on any executor (`executors`); a rerun with other settings into the same OUT is refused.
A task writes its shard to a temporary file and renames it at its end, so a killed task leaves no
half shard. Documents are read by file: task r reads files r, r + tasks, ...
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medsafetyworld.corpus.document import UNSAFE
from medsafetyworld.corpus.shards import MARKERS, SCHEMA, corpus_hash_of
from medsafetyworld.errors import ConfigError, DataError
from medsafetyworld.storage import sha256_file, write_atomic, write_json_atomic

from .executors import ExecutorOptions, check_options, make_executor
from .fineweb import parquet_files
from .interventions import apply_strategy, real_text_strategy
from .labelers import label_documents
from .rewriter import FLAGS, RewriteFailed

try:
    from datatrove.data import Document as DTDocument
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.readers import ParquetReader
except ImportError:  # the optional extra is not installed
    PipelineStep = object
    ParquetReader = object
    DTDocument = None

INSTALL_HINT = "the real-web pipeline needs datatrove: pip install 'medsafetyworld[real-world]'"


def _need_datatrove() -> None:
    if DTDocument is None:
        raise ConfigError(INSTALL_HINT)


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items, the last one shorter (itertools.batched, Python 3.12)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _write_counts(out: Path, rank: int, step: str, counts: Counter) -> None:
    write_json_atomic(out / "tasks" / f"{rank:05d}-{step}.json", dict(counts))


class FineWebReader(ParquetReader):
    """datatrove's ParquetReader with a limit on the documents of all tasks together: task r reads at
    most its share of `total_limit` (None: no limit)."""

    name = "FineWeb-Edu"

    def __init__(self, data_folder, total_limit: int | None = None, tasks: int = 1, **kwargs):
        super().__init__(data_folder, glob_pattern="**/*.parquet", **kwargs)
        self.total_limit, self.tasks = total_limit, tasks

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if self.total_limit is not None:
            self.limit = self.total_limit // world_size + (rank < self.total_limit % world_size)
            if self.limit == 0:
                return
        yield from super().run(data, rank, world_size)


class LabelStep(PipelineStep):
    """Adds the labeler's score, category and segments to each document's metadata, `batch_size`
    documents at a time (one batch of segments for a model, concurrent requests for a judge); a
    failure leaves the document unlabeled (kept and counted)."""

    name = "label"
    type = "🏷 LABEL"

    def __init__(self, labeler, out: str, batch_size: int = 64):
        super().__init__()
        self.labeler, self.out, self.batch_size = labeler, out, batch_size

    def run(self, data, rank: int = 0, world_size: int = 1):
        counts = Counter(read=0, labeled=0, unlabeled=0, unsafe=0)
        before = Counter(getattr(self.labeler, "stats", {}))
        for batch in batches(data, self.batch_size):
            yield from self._label(batch, counts)
        counts.update(Counter(getattr(self.labeler, "stats", {})) - before)  # a judge's requests, cache hits
        _write_counts(Path(self.out), rank, "label", counts)

    def _label(self, batch, counts: Counter):
        with self.track_time():
            metas = label_documents(self.labeler, [d.text for d in batch])
        for doc, meta in zip(batch, metas):
            doc.metadata.update(meta)
            status = meta["label_status"]
            counts["read"] += 1
            counts[status] += 1
            counts["unsafe"] += status == "labeled" and any(s["label"] == UNSAFE for s in meta["segments"])
            self.stat_update(status)
            yield doc


class StrategyStep(PipelineStep):
    """Applies a MedSafetyWorld strategy (filter, tag, reflect, ...) or an LLM rewriting strategy
    (`rewriter.llm_strategy`) to each labeled document. A document an LLM rewrite failed on is left
    out, counted as `rewrite_failed` and listed in OUT/tasks/RRRRR-rewrite_failed.jsonl."""

    name = "strategy"
    type = "🛡 STRATEGY"

    def __init__(self, spec, seed: int, out: str):
        super().__init__()
        self.spec, self.seed, self.out = spec, seed, out
        real_text_strategy(spec)  # refused here, before any task starts

    def run(self, data, rank: int = 0, world_size: int = 1):
        strategy = real_text_strategy(self.spec)
        counts, failed = Counter(kept=0, dropped=0), []
        for doc in data:
            with self.track_time():
                try:
                    results = list(apply_strategy(strategy, doc.id, doc.text, doc.metadata, self.seed))
                except RewriteFailed as exc:
                    counts["rewrite_failed"] += 1
                    self.stat_update("rewrite_failed")
                    failed.append(json.dumps({"id": doc.id, "error": str(exc)[:300]}))
                    continue
            if not results:
                counts["dropped"] += 1
                self.stat_update("dropped")
            for new in results:
                counts["kept"] += 1
                counts["rewritten"] += any(new.meta.get(flag) for flag in FLAGS.values())
                meta = {**doc.metadata, **new.meta, "segments": [vars(s) for s in new.segments]}
                yield DTDocument(text=new.text, id=new.id, metadata=meta)
        if failed:
            write_atomic(Path(self.out) / "tasks" / f"{rank:05d}-rewrite_failed.jsonl", "\n".join(failed) + "\n")
        _write_counts(Path(self.out), rank, "strategy", counts)


def load_any_tokenizer(path: str):
    from medsafetyworld.corpus.tokenizer import load_tokenizer

    return load_tokenizer(path)


class TokenizeStep(PipelineStep):
    """Token ids of each document (no special tokens; the trainer appends eos), in batches."""

    name = "tokenize"
    type = "🔢 TOKENIZE"

    def __init__(self, tokenizer_dir: str, batch_size: int = 256):
        super().__init__()
        self.tokenizer_dir, self.batch_size = tokenizer_dir, batch_size

    def run(self, data, rank: int = 0, world_size: int = 1):
        tok = load_any_tokenizer(self.tokenizer_dir)
        for batch in batches(data, self.batch_size):
            yield from self._flush(tok, batch)

    def _flush(self, tok, batch):
        with self.track_time():
            ids = tok([d.text for d in batch], add_special_tokens=False)["input_ids"]
        for doc, doc_ids in zip(batch, ids):
            doc.metadata["input_ids"] = doc_ids
            yield doc


class CorpusWriter(PipelineStep):
    """Writes the task's documents as OUT/corpus/shard-RRRRR.parquet in the corpus schema of
    `medsafetyworld.corpus.shards` (kind "web"; meta holds the FineWeb-Edu columns and the labels)."""

    name = "corpus writer"
    type = "💽 WRITER"

    def __init__(self, out: str):
        super().__init__()
        self.out = out

    def run(self, data, rank: int = 0, world_size: int = 1):
        rows = []
        for doc in data:
            meta = dict(doc.metadata)
            ids = meta.pop("input_ids")
            segments = meta.pop("segments", [])
            rows.append({"id": doc.id, "kind": "web", "text": doc.text,
                         "segments": [{k: s[k] for k in ("start", "end", "label", "category")} for s in segments],
                         "meta": json.dumps(meta, sort_keys=True, default=str), "input_ids": ids,
                         "n_tokens": len(ids) + 1})
            self.stat_update("written")
        folder = Path(self.out) / "corpus"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".tmp-shard-{rank:05d}-*.parquet"):  # a killed run's; one task per rank runs
            stale.unlink(missing_ok=True)
        final = folder / f"shard-{rank:05d}.parquet"
        tmp = folder / f".tmp-shard-{rank:05d}-{os.getpid()}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp, compression="zstd")
        os.replace(tmp, final)
        _write_counts(Path(self.out), rank, "writer", Counter(written=len(rows),
                                                               tokens=sum(r["n_tokens"] for r in rows)))
        if False:  # a writer yields nothing; this keeps run a generator
            yield


def _absolute(path) -> str:
    """A local path made absolute (tasks may run in another folder, on another node); a URL kept."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def build_steps(input_dir, out, labeler, strategy, tokenizer_dir, *, limit=None, tasks=1, seed=0):
    _need_datatrove()
    out = _absolute(out)
    return [
        FineWebReader(_absolute(input_dir), total_limit=limit, tasks=tasks),
        LabelStep(labeler, out),
        StrategyStep(strategy, seed, out),
        TokenizeStep(_absolute(tokenizer_dir)),
        CorpusWriter(out),
    ]


def run_real_world(input_dir, out, labeler, strategy="raw", *, world=None, tokenizer=None,
                   limit: int | None = None, tasks: int | None = None, workers: int | None = None,
                   seed: int = 0, labeler_spec: str | None = None, executor: ExecutorOptions | None = None) -> dict:
    """Run the pipeline (resuming finished tasks) and write the corpus manifest; returns it.
    `strategy`: a spec (raw, filter, tag, reflect) or a Strategy, e.g. `rewriter.llm_strategy(...)`.
    `executor`: local (default), Slurm or Ray (`executors.ExecutorOptions`; its `workers` wins over
    `workers`). Slurm returns once the jobs are queued, with {"slurm_job": id, "tasks": n, "pending": k}
    instead of the manifest; `finalize(out)` writes the manifest when they are done."""
    _need_datatrove()
    options = executor or ExecutorOptions(workers=workers)
    if options.workers is None and workers is not None:
        options = replace(options, workers=workers)
    check_options(options)
    if (world is None) == (tokenizer is None):
        raise ConfigError("pass exactly one of --world (its tokenizer; `msw train --world` then trains on the "
                          "corpus) or --tokenizer (a tokenizer folder)")
    tokenizer_dir = Path(world) / "tokenizer" if world is not None else Path(tokenizer)
    load_any_tokenizer(str(tokenizer_dir))  # a bad folder fails here, once
    strategy_obj = real_text_strategy(strategy)
    if tasks is None and "://" in str(input_dir):
        raise ConfigError(f"{input_dir} is read remotely, so its files are not counted ahead: pass --tasks N")
    tasks = tasks or len(parquet_files(input_dir))
    if options.kind == "local" and options.workers is None:
        options = replace(options, workers=min(os.cpu_count() or 1, tasks))
    out = Path(out)
    extra = {"source": str(input_dir), "labeler": labeler_spec or labeler.name, "labeler_params": labeler.params(),
             "threshold": labeler.threshold, "limit": limit, "tokenizer": str(tokenizer_dir)}
    settings = {"source": _absolute(input_dir), "limit": limit, "tasks": tasks, "labeler": extra["labeler"],
                "threshold": labeler.threshold, "words": labeler.words, "strategy": strategy_obj.label, "seed": seed,
                "tokenizer": _absolute(tokenizer_dir), "world": None if world is None else _absolute(world)}
    _record_run(out, settings, strategy_obj, extra, options.kind)
    (out / "corpus" / "manifest.json").unlink(missing_ok=True)  # written again once every task is done
    steps = build_steps(input_dir, out, labeler, strategy, tokenizer_dir, limit=limit, tasks=tasks, seed=seed)
    runner = make_executor(steps, tasks, _absolute(out / "logs"), options)
    runner.run()
    if not options.waits and (pending := unfinished_tasks(out, tasks)):
        return {"slurm_job": str(runner.job_id), "tasks": tasks, "pending": len(pending)}
    return finalize(out)


def _record_run(out: Path, settings: dict, strategy, extra: dict, executor: str) -> None:
    """OUT/run.json, after checking that a run already in OUT had the same settings (its finished
    tasks are kept, so other settings would mix two corpora)."""
    path = out / "run.json"
    if path.is_file():
        try:
            before = json.loads(path.read_text())["settings"]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path} is not a run record; delete {out} (or pass a new --out) and run again") from None
        if changed := [k for k in settings if before.get(k) != settings[k]]:
            k = changed[0]
            raise ConfigError(f"{out} holds a run with other settings ({k} was {before.get(k)!r}, now "
                              f"{settings[k]!r}); rerun it with its own settings to finish it, or pass a new --out")
    write_json_atomic(path, {"settings": settings, "extra": extra, "executor": executor,
                             "strategy": {"strategy": strategy.name, "strategy_label": strategy.label,
                                          "strategy_params": json.loads(json.dumps(strategy.params()))}})


def unfinished_tasks(out: Path, tasks: int) -> list[int]:
    """The ranks below `tasks` without a completion marker in OUT/logs/completions."""
    done = {p.name for p in (Path(out) / "logs" / "completions").glob("*")}
    return [r for r in range(tasks) if f"{r:05d}" not in done]


def finalize(out: Path) -> dict:
    """OUT/corpus/manifest.json from every task's shard and counts and OUT/run.json; returns it.
    DataError naming the unfinished tasks when some are not done (`msw real-world finalize OUT`)."""
    out = Path(out)
    try:
        run = json.loads((out / "run.json").read_text())
        settings = run["settings"]
        tasks = int(settings["tasks"])
    except FileNotFoundError:
        raise DataError(f"{out} holds no run.json; it is not the --out folder of `msw real-world run`") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{out / 'run.json'} is not a run record; run `msw real-world run` into a new --out") from None
    if missing := unfinished_tasks(out, tasks):
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        raise DataError(f"{len(missing)} of {tasks} tasks are not finished (tasks {shown}); wait for jobs still "
                        f"queued or running (squeue), or rerun the same `msw real-world run` command, which runs "
                        f"only those")
    counts, per_kind, shards = Counter(), Counter(), []
    for rank in range(tasks):
        for step in ("label", "strategy", "writer"):
            path = out / "tasks" / f"{rank:05d}-{step}.json"
            if path.is_file():
                counts.update(json.loads(path.read_text()))
        shard = out / "corpus" / f"shard-{rank:05d}.parquet"
        if not shard.is_file():
            raise DataError(f"task {rank} is marked done but {shard} is missing; delete "
                            f"{out / 'logs' / 'completions' / f'{rank:05d}'} and rerun to redo it")
        shards.append(_shard_entry(shard, per_kind))
    manifest = {
        "kind": "real_world",
        **run["extra"],
        "documents": per_kind["documents"],
        "tokens": per_kind["tokens"],
        "token_budget": per_kind["tokens"],
        "per_kind": {"web": dict(sorted(per_kind.items()))},
        "counts": dict(sorted(counts.items())),
        "shards": shards,
        "corpus_hash": corpus_hash_of(shards),
        "seed": settings["seed"],
        **run["strategy"],
    }
    if settings["world"] is not None:
        from medsafetyworld.world.io import world_hash

        manifest["world_hash"] = world_hash(settings["world"])
    write_json_atomic(out / "corpus" / "manifest.json", manifest)
    return manifest


def _shard_entry(shard: Path, per_kind: Counter) -> dict:
    """The manifest's entry of one shard; adds its documents, tokens and markers to `per_kind`."""
    table = pq.read_table(shard, columns=["text", "segments", "n_tokens"])
    n_tokens = int(sum(table.column("n_tokens").to_pylist()))
    per_kind["documents"] += table.num_rows
    per_kind["tokens"] += n_tokens
    for text, segs in zip(table.column("text").to_pylist(), table.column("segments").to_pylist()):
        unsafe = sum(s["label"] == UNSAFE for s in segs)
        per_kind["unsafe_segments"] += unsafe
        per_kind["unsafe_documents"] += unsafe > 0
        for marker in MARKERS.values():
            per_kind[f"count:{marker}"] += text.count(marker)
    return {"file": shard.name, "documents": table.num_rows, "tokens": n_tokens, "sha256": sha256_file(shard)}
