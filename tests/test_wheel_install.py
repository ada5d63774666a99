"""pip install as users do it: a wheel built from the repository, installed into a fresh virtual
environment, runs `msw run --preset micro` from outside the source tree; it claims no top-level
import name but its own, and the built-in strategies come through the entry-point group that
third-party ones use.

The environment sees the machine's site-packages (torch and the other dependencies: the test
installs nothing from the network) but not this checkout: the wheel is installed with --no-deps
--no-index, and the test asserts the package is imported from the environment, not the source."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
          str(ROOT)], cwd=out)
    [whl] = out.glob("medsafetyworld-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("venv")
    env_dir = home / "env"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], cwd=home)
    python = env_dir / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=home)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}:{env['PATH']}"
    return env_dir, env


def test_the_wheel_claims_no_top_level_name_but_its_own(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"medsafetyworld"}, tops
    assert "medsafetyworld/baselines/reflect.py" in names
    assert "medsafetyworld/leaderboard/schema.json" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[medsafetyworld.strategies]" in text and "medsafetyworld.baselines" in text


def test_msw_runs_micro_from_the_installed_wheel(venv, tmp_path):
    env_dir, env = venv
    python = str(env_dir / "bin" / "python")
    where = _run([python, "-c", "import medsafetyworld; print(medsafetyworld.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(env_dir), f"imported from {where.strip()}, not the environment"
    strategies = _run([str(env_dir / "bin" / "msw"), "strategies"], cwd=tmp_path, env=env)
    assert "reflect" in strategies and "safety_pretraining" in strategies
    _run([str(env_dir / "bin" / "msw"), "-q", "run", "--preset", "micro", "--strategies", "raw", "--seeds", "1",
          "--out", str(tmp_path / "run")], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"})
    assert (tmp_path / "run" / "results" / "raw-s1" / "record.json").is_file()
    assert (tmp_path / "run" / "summary.md").is_file()
