"""`python -m diffusion_utils bench`: the report has every field, as a user runs it (no timing assertions)."""

import importlib.util
import json
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
    assert "| smoke |" in done.stdout  # the human-readable table comes first


def test_bench_without_torch_reports_mlx_and_says_the_comparison_was_skipped():
    done = run_bench(*TINY, "--no-torch", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch_skipped"] == "disabled (--no-torch)" and report["blas_speedup"] is None
    row = report["presets"]["smoke"]
    assert positive(row["mlx_train_img_s"]) and not any(key in row for key in TORCH_FIELDS)
    assert "PyTorch comparison skipped" in done.stdout


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
