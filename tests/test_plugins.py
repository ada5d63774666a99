"""A third-party strategy, installed as its own distribution with an entry point in the
`medsafetyworld.strategies` group, works through `msw strategies`, `msw corpus` and `msw run`
without any edit to this package."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

PLUGIN = '''
from medsafetyworld.strategies import Strategy, register_strategy


@register_strategy("drop_unsafe_qa")
class DropUnsafeQA(Strategy):
    """Drops harmful question answering, keeps every other document."""

    def apply(self, doc, rng):
        if not (doc.kind == "qa" and doc.unsafe):
            yield doc
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """What `pip install msw-plugin-demo` leaves in site-packages: the module and a .dist-info
    with its entry point (importlib.metadata reads it from any folder on sys.path)."""
    root = tmp_path_factory.mktemp("site")
    (root / "msw_plugin_demo.py").write_text(PLUGIN)
    info = root / "msw_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: msw-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medsafetyworld.strategies]\ndrop_unsafe_qa = msw_plugin_demo\n")
    return root


def msw(site, *args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "medsafetyworld.cli", "-q", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_the_plugin_is_listed(site, tmp_path):
    out = msw(site, "strategies", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "drop_unsafe_qa" in out.stdout.split()


def test_msw_corpus_renders_with_the_plugin(site, micro_world_dir, tmp_path):
    out = msw(site, "corpus", "--world", str(micro_world_dir), "--strategy", "drop_unsafe_qa",
              "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["strategy"] == "drop_unsafe_qa"
    assert manifest["per_kind"]["qa"]["unsafe_documents"] == 0
    assert sum(k["unsafe_documents"] for k in manifest["per_kind"].values()) > 0  # case reports kept


def test_msw_run_trains_and_scores_the_plugin(site, tmp_path):
    out = msw(site, "run", "--preset", "micro", "--strategies", "drop_unsafe_qa", "--seeds", "1",
              "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert "drop_unsafe_qa" in set(summary["strategy"])
    assert (tmp_path / "run" / "results" / "drop_unsafe_qa-s1" / "record.json").is_file()


def test_a_broken_plugin_is_one_clear_error(tmp_path):
    root = tmp_path / "site"
    info = root / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medsafetyworld.strategies]\nbroken = no_such_module\n")
    out = msw(root, "strategies", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("msw: error:") and "broken" in out.stderr and "Traceback" not in out.stderr
