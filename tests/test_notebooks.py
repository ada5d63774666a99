"""The paper-replication notebooks (notebooks/, issue 16) run top to bottom at `micro`.

Every notebook is executed by papermill with its parameter cell overridden (`scale="micro"` and one
run folder shared by all of them, so a model two notebooks need is trained once); any cell error
fails the test. The micro overrides below keep each notebook's code path whole (every loop, plot
and table runs) while training fewer models than the `tiny` defaults.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# notebook -> parameters at micro, besides scale and run_dir
MICRO = {
    "01_world_tour": {},
    "02_reflection_vs_filtering": {"seeds": [1], "attacks": ["prefill", "benign_ft"]},
    "03_safety_pretraining_ladder": {"ladder": ["raw", "filter", "safety_pretraining"]},
    "04_curriculum_timing": {"starts": [0.0, 0.6, 1.0]},
    "05_red_flag": {"attacks": ["prefill", "benign_ft"]},
    "06_real_web": {},
}


def code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text("utf-8"))["cells"] if c["cell_type"] == "code"]


def test_every_notebook_is_executed_here():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(MICRO)


@pytest.mark.parametrize("name", sorted(MICRO))
def test_notebook_has_a_parameter_cell_that_names_the_overrides(name):
    cells = code_cells(NOTEBOOKS / f"{name}.ipynb")
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "one cell tagged `parameters` (papermill injects the overrides after it)"
    names = {t.id for node in ast.parse("".join(tagged[0]["source"])).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    assert {"scale", "run_dir", *MICRO[name]} <= names


@pytest.mark.parametrize("name", sorted(MICRO))
def test_notebook_uses_only_the_public_api(name):
    """No `_private` name of the package or of real_world, imported or reached as an attribute."""
    for cell in code_cells(NOTEBOOKS / f"{name}.ipynb"):
        source = "".join(line for line in cell["source"] if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medsafetyworld"):
                assert not any(p.startswith("_") for p in node.module.split(".")), node.module
                assert not any(a.name.startswith("_") for a in node.names), [a.name for a in node.names]
            if isinstance(node, ast.Import):
                for a in node.names:
                    assert not any(p.startswith("_") for p in a.name.split(".")), a.name
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                pytest.fail(f"{name}: private attribute .{node.attr}")


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook-run") / "run"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MICRO))
def test_notebook_runs_at_micro(name, shared_run, tmp_path):
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"), str(out),
        parameters={"scale": "micro", "run_dir": str(shared_run), **MICRO[name]},
        cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
    )
    cells = json.loads(out.read_text("utf-8"))["cells"]
    errors = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors
    images = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "each notebook ends in plots"
