"""Running the notebook series: fast mode, where outputs go, and headless execution.

Each notebook's first code cell (tagged `parameters`) holds its knobs; the next cell calls
`fast_mode(FAST)` so `TUTORIAL_FAST=1` (tests, CI) switches every notebook to its smallest
honest version, and writes its figures under `output_dir(name)`.
`run_notebooks` executes the series top to bottom in fresh kernels, as `make run` and the
tests do (`python -m diffusion_utils notebooks`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from diffusion_utils.paths import NOTEBOOK_DIR, OUTPUTS_DIR

FAST_ENV = "TUTORIAL_FAST"
OUT_ENV = "TUTORIAL_OUT"


_ON, _OFF = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def fast_mode(default: bool = False) -> bool:
    """True when the notebook's own FAST knob is set or the environment asks for fast mode.

    TUTORIAL_FAST accepts 1/true/yes/on and 0/false/no/off (any case); anything else is a
    ValueError, so a typo never silently runs the long version.
    """
    value = os.environ.get(FAST_ENV, "").strip().lower()
    if value not in _ON | _OFF:
        raise ValueError(f"{FAST_ENV}={os.environ[FAST_ENV]!r} is not understood; use 1 (fast) or 0 (full)")
    return bool(default) or value in _ON


def output_dir(name: str) -> Path:
    """Folder for the files a notebook makes: $TUTORIAL_OUT/<name>, else outputs/<name> in the repo."""
    root = Path(os.environ.get(OUT_ENV) or OUTPUTS_DIR)
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_notebooks(notebook_dir: Path = NOTEBOOK_DIR, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally those whose name starts with one of `only`."""
    notebooks = sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(prefix) for prefix in only)]
        if not notebooks:
            raise ValueError(f"no notebook in {notebook_dir} starts with {', '.join(only)}")
    return notebooks


def run_notebook(path: Path, out_dir: Path, fast: bool, timeout: int = 1800) -> Path:
    """Execute one notebook in a fresh kernel (cwd = its folder); save the executed copy in out_dir.

    Raises `nbclient.exceptions.CellExecutionError` naming the failing cell.
    """
    import nbformat
    from nbclient import NotebookClient

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ[OUT_ENV] = str(out_dir)
    os.environ[FAST_ENV] = "1" if fast else os.environ.get(FAST_ENV, "0")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(path).parent)}},
    )
    executed = out_dir / Path(path).name
    try:
        client.execute()
    finally:
        nbformat.write(notebook, executed)
    return executed


def run_notebooks(out_dir: Path, fast: bool = False, only: list[str] | None = None) -> list[tuple]:
    """Run the series in order; returns (notebook, executed copy, seconds) per notebook."""
    fast = fast_mode(fast)  # an unknown TUTORIAL_FAST fails here, before any kernel starts
    results = []
    for notebook in find_notebooks(only=only):
        start = time.perf_counter()
        print(f"running {notebook.name} ...", flush=True)
        executed = run_notebook(notebook, out_dir, fast)
        seconds = time.perf_counter() - start
        print(f"  done in {seconds:.0f} s -> {executed}", flush=True)
        results.append((notebook, executed, seconds))
    return results
