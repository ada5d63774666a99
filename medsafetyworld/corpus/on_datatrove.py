"""A blocked corpus (`corpus.blocks`) rendered on datatrove: `msw corpus --engine datatrove --workers N`
locally, or the same pipeline on datatrove's Slurm or Ray executors (`corpus_executors`).

Two pipelines of one step each, datatrove style (the steps know nothing of how they are run):
- `RenderBlocks`, the source: task `rank` of `tasks` renders blocks b with b % tasks == rank, each
  raw stream -> strategy -> tokenizer, cut at the block's quota, into a block file. The strategy
  runs inside this step rather than as a step after it: where a block ends depends on the tokens
  the strategy leaves (`filter` draws more raw documents to fill the same quota), which a step
  downstream of a lazily pulled source could not tell it.
- `AssembleCorpus`, one task, after every render task: the shards and the manifest from the
  blocks in block order (`blocks.assemble`), so that the bytes are the same for any number of
  tasks, workers or machines, and the same as `msw corpus` without datatrove writes.

Tasks hold paths and configs, not the world: each loads the world and tokenizer from the world
folder, so a task pickles small and runs on any machine that sees the folders. datatrove's
completion markers (in the work folder's `logs/`) make a killed render resume per task; blocks a
killed task had finished are kept too (`blocks.block_done`).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from medsafetyworld.config import Preset
from medsafetyworld.corpus import blocks
from medsafetyworld.corpus.build import corpus_manifest_extra
from medsafetyworld.corpus.tokenizer import load_tokenizer
from medsafetyworld.errors import ConfigError
from medsafetyworld.storage import STAGE_FILE, write_json_atomic
from medsafetyworld.strategies import Strategy
from medsafetyworld.world.io import load_world

EXECUTORS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class CorpusJob:
    """Everything a task needs to render or assemble one corpus."""

    world_dir: str
    strategy: Strategy
    preset: Preset
    seed: int
    out: str
    world_hash: str

    @property
    def manifest_extra(self) -> dict[str, Any]:
        return corpus_manifest_extra(self.preset, self.strategy, self.seed, self.world_hash)

    @property
    def key(self) -> str:
        """The corpus stage key (`corpus.build.corpus_config_hash`)."""
        return self.manifest_extra["config_hash"]

    @property
    def work(self) -> Path:
        return blocks.work_folder(Path(self.out), self.key)

    @property
    def plan(self) -> blocks.BlockPlan:
        plan = blocks.BlockPlan.of(self.preset.corpus)
        if plan is None:
            raise ConfigError(f"preset {self.preset.name}: the datatrove engine renders a blocked corpus, and "
                              "corpus block_tokens is not set; pass --block-tokens (e.g. a tenth of the budget)")
        return plan


class RenderBlocks(PipelineStep):
    """Renders the blocks of its task into the job's work folder; passes no documents on (the
    blocks are files, read by `AssembleCorpus`)."""

    name = "MedSafetyWorld corpus blocks"
    type = "📖 - READER"

    def __init__(self, job: CorpusJob):
        super().__init__()
        self.job = job

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        job, folder = self.job, self.job.work
        mine = [b for b in job.plan.of_task(rank, world_size) if not blocks.block_done(folder, b)]
        if not mine:
            return
        world, splits = load_world(Path(job.world_dir))
        tokenizer = load_tokenizer(Path(job.world_dir) / "tokenizer")
        folder.mkdir(parents=True, exist_ok=True)
        for b in mine:
            with self.track_time(unit="block"):
                summary = blocks.render_block(world, splits, tokenizer, job.strategy, job.preset, job.seed, b, folder)
            self.stat_update("blocks")
            self.stat_update("documents", value=summary["documents"], unit="block")
            self.stat_update("tokens", value=summary["tokens"], unit="block")


class AssembleCorpus(PipelineStep):
    """Writes the corpus from every block, then the stage marker that `msw run` and `msw corpus`
    read, so that a corpus rendered on a cluster is a cached stage like any other."""

    name = "MedSafetyWorld corpus assembly"
    type = "💽 - WRITER"

    def __init__(self, job: CorpusJob, progress: bool = False):
        super().__init__()
        self.job, self.progress = job, progress

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        job, start = self.job, time.time()
        preset = job.preset
        world, _ = load_world(Path(job.world_dir))
        manifest = blocks.assemble(job.work, job.plan, Path(job.out), shard_documents=preset.corpus.shard_documents,
                                   manifest_extra=job.manifest_extra, atomic_facts=world.atomic_facts(),
                                   write_jsonl=preset.corpus.write_jsonl, progress=self.progress)
        write_json_atomic(Path(job.out) / STAGE_FILE, {"config_hash": job.key, "stage": f"corpus {job.strategy.label}",
                                                        "seconds": round(time.time() - start, 1)})
        self.stat_update("documents", value=manifest["documents"], unit="corpus")
        self.stat_update("tokens", value=manifest["tokens"], unit="corpus")


def corpus_executors(job: CorpusJob, *, executor: str = "local", tasks: int | None = None, workers: int = 1,
                     logging_dir: str | None = None, progress: bool = False, **options: Any) -> tuple[Any, Any]:
    """(render, assemble): datatrove executors for the job, the assembly depending on the render;
    `assemble.run()` runs (local, ray) or submits (slurm) both. `tasks` (default: one per block, the
    finest resume) is how many render tasks share the blocks; `workers` how many run at once.
    `options` go to the executor class (Slurm needs `time` and `partition`; see datatrove's
    SlurmPipelineExecutor and RayPipelineExecutor); `logging_dir` defaults to the work folder's logs/,
    which must be on a file system every node sees."""
    plan = job.plan
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if tasks is not None and (isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1):
        raise ConfigError(f"tasks={tasks!r} must be a positive number of render tasks")
    tasks = plan.blocks if tasks is None else min(tasks, plan.blocks)
    logs = str(logging_dir or job.work / "logs")
    render_steps, assemble_steps = [RenderBlocks(job)], [AssembleCorpus(job, progress)]
    if executor == "local":
        # fork: a worker starts with this process's imports instead of importing torch again
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "forkserver"
        render = LocalPipelineExecutor(render_steps, tasks=tasks, workers=workers, logging_dir=f"{logs}/render",
                                       start_method=start_method, **options)
        # the assembly always runs: its output, not a marker, says whether it is done (`msw` stages)
        assemble = LocalPipelineExecutor(assemble_steps, tasks=1, workers=1, logging_dir=f"{logs}/assemble",
                                         depends=render, skip_completed=False)
    elif executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not {"time", "partition"} <= set(options):
            raise ConfigError("the slurm executor needs time= and partition= options (SlurmPipelineExecutor)")
        render = SlurmPipelineExecutor(render_steps, tasks=tasks, workers=workers, logging_dir=f"{logs}/render",
                                       job_name="msw-corpus-blocks", **options)
        assemble = SlurmPipelineExecutor(assemble_steps, tasks=1, logging_dir=f"{logs}/assemble",
                                         job_name="msw-corpus-assemble", depends=render, skip_completed=False,
                                         **options)
    else:
        from datatrove.executor import RayPipelineExecutor

        render = RayPipelineExecutor(render_steps, tasks=tasks, workers=workers, logging_dir=f"{logs}/render",
                                     **options)
        assemble = RayPipelineExecutor(assemble_steps, tasks=1, logging_dir=f"{logs}/assemble", depends=render,
                                       skip_completed=False, **options)
    return render, assemble


def render_on_datatrove(world_dir: Path, strategy: Strategy, preset: Preset, seed: int, out: Path, *,
                        world_hash: str, workers: int = 1, tasks: int | None = None,
                        progress: bool = True) -> None:
    """`msw corpus --engine datatrove`: the corpus rendered by LocalPipelineExecutor with `workers`
    processes, then its work folder removed."""
    job = CorpusJob(str(world_dir), strategy, preset, seed, str(out), world_hash)
    _, assemble = corpus_executors(job, tasks=tasks, workers=workers, progress=progress)
    assemble.run()
    blocks.remove_work_folder(job.work)
