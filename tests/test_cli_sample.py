"""The `sample` and `evaluate` commands as a user types them, on a tiny checkpoint trained here.

The checkpoint comes from `train --preset smoke` (16 px, a few steps): it draws noise, not art,
which is all these tests need. They check exit codes, files, shapes, JSON keys and messages;
sample quality is measured by `evaluate` on the shipped model, not here.
"""

import json
import shutil
import subprocess
import sys

from diffusion_utils import data

import numpy as np
import pytest
from PIL import Image

SMOKE_SIZE = 16  # the smoke preset's image size


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "diffusion_utils", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("smoke_run")
    result = run_cli("train", "--preset", "smoke", "--out", run, "--steps", 10)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-1000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-1000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in last, last


def grid_size(rows, cols, size=SMOKE_SIZE, upscale=4):
    """(width, height) of viz.save_grid's PNG: 1-pixel padding around each image, then upscaled."""
    return (cols * (size + 1) + 1) * upscale, (rows * (size + 1) + 1) * upscale


def test_sample_every_style_writes_a_row_per_style(ckpt, tmp_path):
    grid, npz = tmp_path / "grid.png", tmp_path / "samples.npz"
    result = run_cli("sample", "--checkpoint", ckpt, "--steps", 3, "--out", grid, "--save-npz", npz)
    assert result.returncode == 0, result.stderr[-2000:]
    n_styles = len(data.STYLES)
    assert Image.open(grid).size == grid_size(rows=n_styles, cols=4)  # default: 4 per style
    assert ", ".join(data.STYLES) in result.stdout
    with np.load(npz) as saved:
        assert set(saved.files) == {"images", "labels"}
        images, labels = saved["images"], saved["labels"]
    assert images.dtype == np.uint8 and images.shape == (4 * n_styles, SMOKE_SIZE, SMOKE_SIZE, 3)
    assert np.issubdtype(labels.dtype, np.integer)
    assert labels.tolist() == np.repeat(np.arange(n_styles), 4).tolist()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_sample_one_style_with_each_sampler(ckpt, tmp_path, sampler):
    npz = tmp_path / "samples.npz"
    extra = ["--eta", 1.0] if sampler == "ddim" else []
    result = run_cli("sample", "--checkpoint", ckpt, "--style", "drip", "--n", 5, "--steps", 2,
                     "--sampler", sampler, *extra, "--out", tmp_path / "grid.png", "--save-npz", npz)
    assert result.returncode == 0, result.stderr[-2000:]
    with np.load(npz) as saved:
        assert saved["images"].shape == (5, SMOKE_SIZE, SMOKE_SIZE, 3)
        assert saved["labels"].tolist() == [data.STYLES.index("drip")] * 5
    assert Image.open(tmp_path / "grid.png").size == grid_size(rows=2, cols=3)


def test_sample_is_reproducible_by_seed(ckpt, tmp_path):
    def images(seed, name):
        npz = tmp_path / f"{name}.npz"
        result = run_cli("sample", "--checkpoint", ckpt, "--n", 4, "--steps", 2, "--seed", seed,
                         "--out", tmp_path / f"{name}.png", "--save-npz", npz)
        assert result.returncode == 0, result.stderr[-2000:]
        with np.load(npz) as saved:
            return saved["images"]

    first = images(7, "a")
    assert np.array_equal(first, images(7, "b"))
    assert not np.array_equal(first, images(8, "c"))


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--style", "cubism"], ["unknown style 'cubism'", "de_stijl", "ink_landscape"]),
        (["--n", 0], ["--n must be between 1 and 10,000, got 0"]),
        (["--steps", 1001], ["[1, 1000]"]),
        (["--guidance", -1], ["guidance", ">= 0"]),
        (["--sampler", "dpm++", "--eta", 0.5], ["--eta applies only to --sampler ddim"]),
        (["--seed", -3], ["--seed must be between 0 and"]),
    ],
    ids=["unknown-style", "n-zero", "steps-above-T", "negative-guidance", "eta-not-ddim", "negative-seed"],
)
def test_sample_rejects_bad_values(ckpt, tmp_path, args, fragments):
    result = run_cli("sample", "--checkpoint", ckpt, *args, "--out", tmp_path / "grid.png")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "grid.png").exists()


def test_sample_rejects_missing_and_corrupt_checkpoints(ckpt, tmp_path):
    missing = run_cli("sample", "--checkpoint", tmp_path / "nowhere", "--out", tmp_path / "grid.png")
    assert_one_line_error(missing, "not found", "nowhere")

    broken = tmp_path / "broken"
    shutil.copytree(ckpt / "checkpoint", broken)
    ema = broken / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:100])  # truncated
    result = run_cli("sample", "--checkpoint", broken, "--out", tmp_path / "grid.png")
    assert_one_line_error(result, "ema.safetensors")

    (broken / "config.json").write_text("{not json")
    assert_one_line_error(run_cli("sample", "--checkpoint", broken, "--out", tmp_path / "grid.png"),
                          "config.json")


def test_evaluate_json_reports_metrics_and_settings(ckpt, tmp_path):
    result = run_cli("evaluate", "--checkpoint", ckpt, "--n", 8, "--steps", 2, "--guidance", 2,
                     "--classifier-dir", tmp_path / "classifier", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"style_accuracy", "kid", "kid_real_floor", "n", "sampler", "steps", "guidance",
            "seconds", "memorisation"} <= set(report)
    assert (report["n"], report["sampler"], report["steps"], report["guidance"]) == (8, "dpm++", 2, 2.0)
    assert 0.0 <= report["style_accuracy"] <= 1.0
    assert report["seconds"]["total"] > 0
    assert "style accuracy" in result.stdout and "real-vs-real floor" in result.stdout  # the table
    assert (tmp_path / "classifier" / f"style_classifier_{SMOKE_SIZE}px.json").exists()  # cached


def test_evaluate_rejects_bad_values(ckpt):
    assert_one_line_error(run_cli("evaluate", "--checkpoint", ckpt, "--n", 3), "n must be an integer >= 4")
    assert_one_line_error(run_cli("evaluate", "--checkpoint", ckpt, "--eta", 1), "--eta applies only")


def test_sampler_view_callback_draws_a_grid_or_says_why(ckpt):
    from diffusion_utils import checkpoint, widgets

    model, schedule, info = checkpoint.load_model(ckpt)
    fig = widgets.update_sampler_view(model, schedule, info, sampler="ddim", steps=2, eta=0.5, guidance=2.0,
                                      style="op_art", seed=1, n=3)
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape[:2] == (SMOKE_SIZE + 2, 3 * (SMOKE_SIZE + 1) + 1)  # one row of 3 padded images
    assert "ddim, 2 steps, eta 0.5" in fig._suptitle.get_text()
    bad = widgets.update_sampler_view(model, schedule, info, steps=5000)
    assert "no samples" in " ".join(text.get_text() for text in bad.texts)
