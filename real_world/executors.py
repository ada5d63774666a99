"""Which datatrove executor runs the real-web pipeline (`msw real-world run --executor ...`).

- `local` (default): `LocalPipelineExecutor`, `workers` tasks at once on this machine (the cores).
- `slurm`: `SlurmPipelineExecutor` writes OUT/logs/executor.pik (the pickled pipeline) and an sbatch
  script running one task per element of a job array (`srun launch_pickled_pipeline ...`), submits it
  with `sbatch` and returns: the command ends once the jobs are queued, and `msw real-world finalize
  OUT` writes the manifest when they are done. OUT must be on a filesystem the compute nodes share.
- `ray`: `RayPipelineExecutor` on a Ray cluster (`ray_address`, or a local one when None); the
  command waits for the tasks.

Every executor skips the tasks whose completion marker OUT/logs/completions/RRRRR exists, so a run
started with one can be finished with another.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass

from medsafetyworld.errors import ConfigError

EXECUTORS = ("local", "slurm", "ray")
SLURM_ONLY = ("partition", "time", "job_name", "sbatch_args", "slurm_logs", "env_command")
RAY_ONLY = ("ray_address",)


@dataclass(frozen=True)
class ExecutorOptions:
    """How the pipeline's tasks are run. `workers`: tasks at once (None: the cores for local, no
    limit for Slurm and Ray). `cpus_per_task` and `mem_per_cpu_gb` are reserved per task on Slurm
    and Ray. `sbatch_args`: extra `#SBATCH --KEY=VALUE` lines, e.g. (("account", "lab"),)."""

    kind: str = "local"
    workers: int | None = None
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    partition: str | None = None
    time: str | None = None
    job_name: str | None = None
    sbatch_args: tuple[tuple[str, str], ...] = ()
    slurm_logs: str | None = None
    env_command: str | None = None
    ray_address: str | None = None

    @property
    def waits(self) -> bool:
        """Whether `executor.run()` returns only when the tasks are done (Slurm returns once queued)."""
        return self.kind != "slurm"


def parse_sbatch_args(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    """--sbatch-arg KEY=VALUE (or a bare KEY, a flag such as `exclusive`) as (key, value) pairs."""
    out = []
    for pair in pairs:
        key, _, value = pair.partition("=")
        key = key.strip().removeprefix("--")
        if not key:
            raise ConfigError(f"--sbatch-arg {pair!r} is not KEY=VALUE (e.g. account=mylab or gres=gpu:1)")
        out.append((key, value))
    return tuple(out)


def check_options(options: ExecutorOptions) -> None:
    """ConfigError for an unknown executor, an option of another executor, a missing partition, or
    what the executor needs and this machine lacks (sbatch, the ray package)."""
    if options.kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {options.kind!r}; choose one of {', '.join(EXECUTORS)}")
    if options.workers is not None and options.workers < 1:
        raise ConfigError(f"--workers {options.workers} must be at least 1")
    if options.cpus_per_task < 1 or options.mem_per_cpu_gb <= 0:
        raise ConfigError("--cpus-per-task must be at least 1 and --mem-per-cpu-gb above 0")
    for kind, names in (("slurm", SLURM_ONLY), ("ray", RAY_ONLY)):
        given = [n for n in names if getattr(options, n) not in (None, ())]
        if given and options.kind != kind:
            flag = "--" + given[0].replace("_", "-").replace("sbatch-args", "sbatch-arg")
            raise ConfigError(f"{flag} is an option of --executor {kind}, not {options.kind}")
    if options.kind == "slurm":
        if not options.partition:
            raise ConfigError("--executor slurm needs --partition NAME (`sinfo -s` lists the cluster's partitions)")
        if shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm submits with sbatch, which is not on PATH here; run this command "
                              "on the cluster's login node (the machine you normally run sbatch on)")
    if options.kind == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor ray needs the ray package: pip install 'ray[default]' (and a cluster: "
                          "`ray start --head` on one node, --ray-address HOST:6379 to join it)")


def make_executor(steps: list, tasks: int, logging_dir: str, options: ExecutorOptions):
    """The datatrove executor running `steps` as `tasks` tasks, logging (and marking completed tasks)
    in `logging_dir`. For Ray this connects to the cluster: its executor expects `ray.init()` done."""
    check_options(options)
    if options.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=options.workers or tasks,
                                     logging_dir=logging_dir, skip_completed=True)
    if options.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        return SlurmPipelineExecutor(
            pipeline=steps, tasks=tasks, workers=options.workers or -1, logging_dir=logging_dir,
            skip_completed=True, partition=options.partition, time=options.time or "24:00:00",
            cpus_per_task=options.cpus_per_task, mem_per_cpu_gb=options.mem_per_cpu_gb,
            job_name=options.job_name or "msw-real-world", sbatch_args=dict(options.sbatch_args),
            slurm_logs_folder=options.slurm_logs, env_command=options.env_command,
            qos="",  # datatrove's default "normal" is not a QOS on every cluster; the partition's default is
        )
    import ray
    from datatrove.executor import RayPipelineExecutor

    if not ray.is_initialized():
        ray.init(address=options.ray_address)
    return RayPipelineExecutor(pipeline=steps, tasks=tasks, workers=options.workers or -1, logging_dir=logging_dir,
                               skip_completed=True, cpus_per_task=options.cpus_per_task,
                               mem_per_cpu_gb=options.mem_per_cpu_gb)
