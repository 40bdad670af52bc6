"""The notebooks as a learner uses them: JupyterLab in a real (headless) Chromium.

Starts JupyterLab on a free port over a temporary copy of the notebooks (fast mode), opens each
notebook with an explorer, runs all its cells, moves one slider with the keyboard and checks
that the explorer's picture appears, changes, and that no error shows anywhere. Screenshots go
to outputs/browser/. Needs Debian's `chromium` and the `playwright` package (dev extra); it is
skipped with the reason when either is missing. Nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from diffusion_utils import widgets
from diffusion_utils.paths import DATA_DIR, NOTEBOOK_DIR, OUTPUTS_DIR

import pytest

pytestmark = pytest.mark.browser

SHOTS = OUTPUTS_DIR / "browser"
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", shutil.which("chromium"))  # the binary, then its wrapper
CHROMIUM = next((path for path in CHROMIUM_PATHS if path and os.path.isfile(path)), None)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Every notebook with an explorer, and the slider a learner moves: (notebook, slider label, key presses).
EXPLORERS = [("01_forward_noising.ipynb", "t / T", 5), ("04_sampling.ipynb", "steps", 1)]
RUN_ALL_TIMEOUT_S = 150
LAB_SETTINGS = {  # a fresh user's JupyterLab, minus the pop-ups and with every cell in the page
    "@jupyterlab/notebook-extension:tracker": '{"windowingMode": "none"}',
    "@jupyterlab/docmanager-extension:plugin": '{"autoStartDefaultKernel": true}',
    "@jupyterlab/apputils-extension:notification": '{"fetchNews": "false"}',
}
ERROR_TEXT = re.compile(r"Traceback|\b\w+(Error|Exception)\b")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """URL (with token) of a JupyterLab serving a copy of notebooks/ (data/ linked beside it)."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium); the browser test needs it")
    pytest.importorskip("playwright", reason="playwright not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(NOTEBOOK_DIR, root / "notebooks", ignore=shutil.ignore_patterns(".*"))
    (root / "data").symlink_to(DATA_DIR)  # the notebooks read ../data/pretrained
    for plugin, value in LAB_SETTINGS.items():
        path = root / "settings" / f"{plugin.replace(':', '/')}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    token, port = os.urandom(12).hex(), _free_port()
    env = {**os.environ, "TUTORIAL_FAST": "1", "TUTORIAL_OUT": str(root / "outputs"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, server)
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for_server(url: str, token: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "JupyterLab exited while starting (see server.log)"
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:  # a fresh temporary profile per launch
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


def _run_all_cells(page) -> None:
    """Run > Run All Cells, then wait until none is queued or running (JupyterLab stops at an error)."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
    page.locator(".jp-CodeCell .jp-InputArea-prompt", has_text="*").first.wait_for(timeout=30_000)
    page.wait_for_function(  # queued and running cells show [*]
        """() => ![...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                  .some(p => p.textContent.includes('*'))""",
        timeout=RUN_ALL_TIMEOUT_S * 1000, polling=500,
    )  # fmt: skip


def _errors_shown(page) -> list[str]:
    outputs = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    texts = [text for text in outputs.all_inner_texts() if ERROR_TEXT.search(text)]
    return texts + [f"an explorer shows an error ({widgets.ERROR_CLASS})"] * page.locator(
        f"img.{widgets.ERROR_CLASS}").count()


def _wait_for_new_picture(image, before: bytes, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = image.screenshot()
        if now != before:
            return now
        time.sleep(0.5)
    raise AssertionError(f"the explorer's picture did not change within {timeout} s of the slider move")


@pytest.mark.parametrize("notebook, slider_label, presses", EXPLORERS)
def test_explorer_redraws_in_jupyterlab(lab, browser, notebook, slider_label, presses):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    url, token = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    stem = notebook.split("_")[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/lab/workspaces/{stem}/tree/notebooks/{notebook}?token={token}")  # this notebook only
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    dialog = page.locator(".jp-Dialog")  # JupyterLab may ask which kernel to start: the preferred one
    try:
        dialog.locator(".jp-mod-accept").click(timeout=10_000)
    except PlaywrightTimeout:
        pass
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
    try:
        _run_all_cells(page)
    finally:
        page.screenshot(path=SHOTS / f"{stem}_after_run_all.png")
    assert not _errors_shown(page), _errors_shown(page)
    unrun = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert all(re.search(r"\[\d+\]", text) for text in unrun), f"cells left unrun: {unrun}"
    image = page.locator("img.widget-image").last
    image.wait_for(timeout=30_000)
    image.scroll_into_view_if_needed()
    assert image.evaluate("img => img.naturalWidth > 100 && img.naturalHeight > 100"), "no picture shown"
    before = image.screenshot(path=SHOTS / f"{stem}_explorer_before.png")
    slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=slider_label)).last
    readout_before = slider.locator(".widget-readout").inner_text()
    slider.locator(".noUi-handle").focus()
    for _ in range(presses):
        page.keyboard.press("ArrowRight")
    assert slider.locator(".widget-readout").inner_text() != readout_before, "the slider did not move"
    _wait_for_new_picture(image, before)
    time.sleep(1.0)  # let a redraw queued by the last key press land
    image.screenshot(path=SHOTS / f"{stem}_explorer_after.png")
    page.screenshot(path=SHOTS / f"{stem}_page.png")
    assert not _errors_shown(page), _errors_shown(page)
    page.close()
