"""`python -m diffusion_utils bench`: the report has every field, as a user runs it (no timing assertions)."""

import importlib.util
import json
import math
import subprocess
import sys

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)

import harness as bench  # benchmarks/harness.py, the `bench` command's code (on the path: conftest.py)
import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None and bench.TORCH_REFERENCE.is_file()
TINY = ["--preset", "smoke", "--repeats", "1", "--warmup", "0", "--batch", "2", "--sample-batch", "2",
        "--threads", "1"]
PRESET_FIELDS = ["preset", "image_size", "batch_size", "sample_batch", "parameters", "gflop_per_image",
                 *[f"mlx_{phase}_{what}" for phase in ("train", "sample")
                   for what in ("img_s", "cpu_s_per_img", "peak_memory_mb", "gflops", "mfu")]]
TORCH_FIELDS = [f"{prefix}{phase}{suffix}" for phase in ("train", "sample")
                for prefix, suffix in (("torch_", "_img_s"), ("torch_", "_cpu_s_per_img"),
                                       ("", "_ratio_mlx_over_torch"), ("", "_cpu_ratio_mlx_over_torch"))]


def run_bench(*args):
    done = subprocess.run([sys.executable, "-m", "diffusion_utils", "bench", *args],
                          capture_output=True, text=True, timeout=600)
    return done


def positive(value):
    return isinstance(value, (int, float)) and value > 0


def check_latent_vs_pixel(report, batch, sample_batch):
    """The latent-vs-pixel comparison: which networks, on what, and the two speedups (pixel cost / latent cost
    per image) positive, finite and consistent with the raw images/s."""
    comparison = report["latent_vs_pixel"]
    assert comparison["batch_size"] == batch and comparison["sample_batch"] == sample_batch
    assert comparison["sampler"] == "ddim" and comparison["sample_steps"] >= 1
    assert "latent64" in comparison["compared"]
    pixel, latent = comparison["pixel"], comparison["latent"]
    assert pixel["input_shape"] == [64, 64, 3] and latent["input_shape"] == [16, 16, 4]
    assert pixel["attention_resolutions"] == [32, 16] and latent["attention_resolutions"] == [8, 4]
    assert abs(pixel["parameters"] - latent["parameters"]) < 0.001 * latent["parameters"]  # matched width
    assert pixel["gflop_per_image"] > 10 * latent["gflop_per_image"]
    for side, row in (("pixel", pixel), ("latent", latent)):
        for key in ("train_img_s", "sample_step_s_per_img", "sample_img_s"):
            assert positive(row[key]) and math.isfinite(row[key]), (side, key)
    assert positive(latent["decode_s_per_img"]) and positive(latent["encode_s_per_img"])
    # the latent model's sampling pays for its decoder: steps x step + decode, per image
    assert latent["sample_img_s"] < 1 / (comparison["sample_steps"] * latent["sample_step_s_per_img"])
    for key, side_key in (("latent_train_speedup", "train_img_s"), ("latent_sample_speedup", "sample_img_s")):
        assert positive(report[key]) and math.isfinite(report[key]) and report[key] == comparison[key], key
        assert report[key] == pytest.approx(latent[side_key] / pixel[side_key], rel=0.02), key


def test_bench_json_has_every_field():
    done = run_bench(*TINY, "--json", "--blas-compare")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("machine", "mlx", "device", "blas", "flops_counted"):
        assert isinstance(report[key], str) and report[key]
    assert report["threads"] == 1 and report["repeats"] == 1 and report["headline_preset"] == "smoke"
    assert report["mlx_streams"] == 1  # one core each: one MLX stream, one PyTorch thread
    assert "openblas" not in report["blas"] or report["blas_threads"] == 1
    assert positive(report["sgemm_gflops"])
    row = report["presets"]["smoke"]
    for key in PRESET_FIELDS:
        assert key in row, key
    for key in PRESET_FIELDS[4:]:
        assert positive(row[key]), key
    assert row["batch_size"] == 2 and row["sample_batch"] == 2
    assert report["mlx_train_img_s"] == row["mlx_train_img_s"]  # headline fields repeat the first preset
    assert positive(report["blas_off_train_img_s"]) and positive(report["blas_speedup"])
    if HAS_TORCH:
        assert report["torch_skipped"] is None and report["torch"]
        for key in TORCH_FIELDS:
            assert positive(row[key]) and report[key] == row[key], key
    else:
        assert "PyTorch" in report["torch_skipped"]
    check_latent_vs_pixel(report, batch=2, sample_batch=2)
    assert "| smoke |" in done.stdout  # the human-readable table comes first
    assert "| latent | [16, 16, 4] |" in done.stdout and "cheaper per trained image" in done.stdout


def test_bench_without_torch_reports_mlx_and_says_the_comparison_was_skipped():
    done = run_bench(*TINY, "--no-torch", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch_skipped"] == "disabled (--no-torch)" and report["blas_speedup"] is None
    row = report["presets"]["smoke"]
    assert positive(row["mlx_train_img_s"]) and not any(key in row for key in TORCH_FIELDS)
    assert "PyTorch comparison skipped" in done.stdout


def test_pixel_twin_is_the_latent_unet_on_pixels_with_attention_at_the_same_levels():
    from diffusion_utils import train
    from diffusion_utils.unet import UNet, parameter_count

    latent = train.get_preset("latent64")
    pixel = bench.pixel_twin(latent, factor=4)
    assert pixel.image_size == 64 and pixel.unet.image_size == 64 and pixel.unet.in_channels == 3
    assert pixel.batch_size == latent.batch_size and pixel.prediction == latent.prediction
    for field in ("base_channels", "channel_mults", "num_res_blocks", "num_classes", "num_heads"):
        assert getattr(pixel.unet, field) == getattr(latent.unet, field), field
    attending = [[i for i in range(c.levels) if c.resolution(i) in c.attention_resolutions]
                 for c in (latent.unet, pixel.unet)]
    assert attending[0] == attending[1] == [1, 2]
    # only the first and last convs see the channel count: 3 x 3 x (4 - 3) x 48 weights in, 48 x 3 x 3 + 1 out
    difference = parameter_count(UNet(latent.unet)) - parameter_count(UNet(pixel.unet))
    assert difference == 9 * 48 + (9 * 48 + 1)


@pytest.mark.parametrize("args,message", [(["--repeats", "0"], "--repeats"),
                                          (["--threads", "0"], "--threads")])
def test_bench_bad_values_give_a_one_line_error(args, message):
    done = run_bench("--preset", "smoke", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and message in done.stderr and "Traceback" not in done.stderr


def test_time_interleaved_runs_every_variant_warmup_plus_repeats_times():
    calls = {"a": 0, "b": 0}

    def count(name):
        def fn():
            calls[name] += 1
        return fn

    timed = bench.time_interleaved({"a": count("a"), "b": count("b")}, repeats=3, warmup=2)
    assert calls == {"a": 5, "b": 5}
    assert set(timed) == {"a", "b"} and all(set(t) == {"wall", "cpu"} for t in timed.values())
    assert all(t["wall"] >= 0 and t["cpu"] >= 0 for t in timed.values())


def test_bench_without_the_harness_file_is_a_one_line_error(monkeypatch, capsys):
    """A non-editable install has no benchmarks/ folder: `bench` says so instead of a traceback."""
    from diffusion_utils import cli, paths

    monkeypatch.setattr(paths, "BENCHMARKS_DIR", paths.REPO_DIR / "no-such-benchmarks")
    assert cli.main(["bench", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bench needs") and "harness.py" in err and len(err.splitlines()) == 1
