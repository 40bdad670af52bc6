"""The git clean filter for notebooks: a notebook as JupyterLab saves it comes out as stored, exactly."""

import copy
import json
import subprocess
import sys

from diffusion_utils.paths import NOTEBOOK_DIR, REPO_DIR

import pytest

FILTER = REPO_DIR / ".ci" / "clean-notebook"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
LAB_LANGUAGE_INFO = {  # what ipykernel 7 reports and JupyterLab saves
    "codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
    "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3", "version": "3.11.7",
}  # fmt: skip


def as_jupyterlab_saves_it(notebook: dict) -> dict:
    """The notebook after Run All and Save in JupyterLab: outputs, counts, widget state, new metadata."""
    saved = copy.deepcopy(notebook)
    saved["metadata"]["kernelspec"]["display_name"] = "Python 3 (ipykernel)"
    saved["metadata"]["language_info"] = dict(LAB_LANGUAGE_INFO)
    widget_state = {"state": {}, "version_major": 2, "version_minor": 0}
    saved["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": widget_state}
    code = [cell for cell in saved["cells"] if cell["cell_type"] == "code"]
    for count, cell in enumerate(code, 1):
        cell["execution_count"] = count
        cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": ["FAST=True\n"]},
                           {"data": {"image/png": "iVBORw0KGgo=", "text/plain": ["<Figure>"]},
                            "metadata": {}, "output_type": "display_data"}]  # fmt: skip
        cell["metadata"]["scrolled"] = True
        cell["metadata"]["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00.000Z"}
    return saved


def dumps(notebook: dict) -> str:
    """JSON as nbformat (and so JupyterLab) writes a notebook."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def run_filter(text: str) -> str:
    return subprocess.run([sys.executable, str(FILTER)], input=text.encode(), capture_output=True,
                          check=True).stdout.decode()  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_run_and_saved_notebook_comes_out_as_stored(path):
    stored = path.read_text(encoding="utf-8")
    saved = dumps(as_jupyterlab_saves_it(json.loads(stored)))
    assert saved != stored
    assert run_filter(saved) == stored
    assert run_filter(stored) == stored  # a clean notebook passes unchanged


def test_git_applies_the_filter_to_notebooks(tmp_path):
    notebook = NOTEBOOKS[0]
    attr = subprocess.run(["git", "check-attr", "filter", str(notebook.relative_to(REPO_DIR))], cwd=REPO_DIR,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert attr.stdout.strip().endswith("filter: notebook"), attr.stdout
    saved = tmp_path / notebook.name
    saved.write_text(dumps(as_jupyterlab_saves_it(json.loads(notebook.read_text(encoding="utf-8")))),
                     encoding="utf-8")

    def blob(path, *options):  # the object git would store for `path` as notebooks/<name>
        command = ["git", *options, "hash-object", f"--path=notebooks/{notebook.name}", str(path)]
        done = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    with_filter = ("-c", f"filter.notebook.clean={sys.executable} .ci/clean-notebook")
    assert blob(saved, *with_filter) == blob(notebook, "-c", "filter.notebook.clean=cat")


def test_text_that_is_not_json_passes_through():
    assert run_filter("<<<<<<< HEAD\n") == "<<<<<<< HEAD\n"
