"""Every notebook runs top to bottom in a fresh kernel in fast mode, and is stored clean."""

import json
import subprocess
import sys

from diffusion_utils import tutorial

import pytest

NOTEBOOKS = tutorial.find_notebooks()
CELL_TIMEOUT_S = 600  # a generous per-cell limit: fast mode is meant to take seconds


def test_the_series_exists():
    names = [nb.name for nb in NOTEBOOKS]
    assert names[:1] == ["01_forward_noising.ipynb"], names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code, "a notebook without code"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert "widgets" not in json.loads(notebook.read_text()).get("metadata", {})
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell must be tagged"
    assert "FAST = False" in "".join(code[0]["source"])


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv(tutorial.FAST_ENV, "1")
    executed = tutorial.run_notebook(notebook, tmp_path, fast=True, timeout=CELL_TIMEOUT_S)
    cells = json.loads(executed.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_runner_rejects_unknown_prefix():
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_utils", "notebooks", "--only", "99", "--fast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no notebook in")
    assert "Traceback" not in result.stderr
