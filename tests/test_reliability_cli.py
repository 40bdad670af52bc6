"""Issue 11 as a user meets it: bad values, bad paths, broken checkpoints, two runs in one folder,
Ctrl-C and kill. Every case must end in a one-line `error: ...` (no traceback) or be handled."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from diffusion_utils import checkpoint, files

import mlx.core as mx
import pytest
from PIL import Image


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "diffusion_utils", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_line_error(result, fragment, code=2):
    assert result.returncode == code, (result.returncode, result.stderr[-1000:])
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, last


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("smoke") / "run"
    result = run_cli("train", "--preset", "smoke", "--out", run, "--steps", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    return run


@pytest.mark.parametrize("args, fragment", [
    (["--out", "."], "give a file name"),
    (["--out", ""], "give a file name"),
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/g.gif"], "must end in .png or .jpg or .jpeg"),
    (["--out", "{tmp}/g.png", "--save-npz", "{tmp}/x"], "must end in .npz"),
    (["--out", "{tmp}/g.png", "--seed", str(2**64)], "--seed must be between 0 and"),
    (["--out", "{tmp}/g.png", "--sampler", "ddim", "--eta", "2"], "--eta must be between 0 and 1"),
    (["--out", "{tmp}/g.png", "--n", "100000000"], "--n must be between 1 and 10,000"),
])  # fmt: skip
def test_sample_refuses_bad_values_and_paths_before_sampling(ckpt, tmp_path, args, fragment):
    result = run_cli("sample", "--checkpoint", ckpt, "--steps", 2, *(a.format(tmp=tmp_path) for a in args))
    assert_one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []  # nothing written: the PNG is not made before the npz fails


def test_sample_checkpoint_dot_is_a_plain_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "diffusion_utils", "sample", "--checkpoint", ".", "--out",
                             "g.png"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert_one_line_error(result, f"no checkpoint in {tmp_path}")


def test_sample_writes_jpeg_for_jpg_and_npz_atomically(ckpt, tmp_path):
    result = run_cli("sample", "--checkpoint", ckpt, "--steps", 2, "--n", 2, "--out", tmp_path / "g.jpg",
                     "--save-npz", tmp_path / "s.npz")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "g.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.jpg", "s.npz"]  # no temporaries left


def _broken_copy(ckpt, tmp_path, edit):
    copy = tmp_path / "broken"
    directory, config = checkpoint.read_config(ckpt)
    arrays = {name: checkpoint.load_arrays(directory, config, name) for name in config["files"]}
    meta = {k: v for k, v in config.items() if k not in ("format", "format_version", "files")}
    edit(arrays, meta)
    checkpoint.save_checkpoint(copy / checkpoint.CHECKPOINT_DIR, arrays, meta)
    return copy


def test_nan_weights_and_negative_step_are_refused_by_sample_and_resume(ckpt, tmp_path):
    def poison(arrays, meta):
        ema = arrays[checkpoint.EMA_FILE]
        name = sorted(ema)[0]
        ema[name] = mx.full(ema[name].shape, float("nan"))

    nan_run = _broken_copy(ckpt, tmp_path / "nan", poison)
    assert_one_line_error(run_cli("sample", "--checkpoint", nan_run, "--out", tmp_path / "g.png"),
                          "holds NaN or infinite values")
    negative = _broken_copy(ckpt, tmp_path / "neg", lambda arrays, meta: meta.update(step=-5))
    assert_one_line_error(run_cli("train", "--preset", "smoke", "--out", negative, "--resume"),
                          "'step' must be an integer >= 0")


@pytest.mark.parametrize("args, fragment", [
    (["--out", ""], "--out is empty"),
    (["--out", "{tmp}/r", "--seed", str(2**64)], "--seed must be between 0 and"),
    (["--out", "{tmp}/r", "--checkpoint-minutes", "-1"], "--checkpoint-minutes must be >= 0"),
])  # fmt: skip
def test_train_refuses_bad_values(tmp_path, args, fragment):
    result = run_cli("train", "--preset", "smoke", *(a.format(tmp=tmp_path) for a in args))
    assert_one_line_error(result, fragment)


def test_train_into_a_read_only_folder_is_one_line(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        result = run_cli("train", "--preset", "smoke", "--steps", 1, "--out", mount / "run")
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert_one_line_error(result, "Read-only file system", code=1)


def _start_run(out, steps=2000, env=None):
    """A smoke run in the background; returns once it trains (it holds the run lock from before its data
    loads, so the first loss line in train.log marks the loop)."""
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_utils", "train", "--preset", "smoke", "--out",
                             str(out), "--steps", str(steps)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    log = Path(out) / "train.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "\nstep " in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    assert (Path(out) / files.LOCK_FILE).read_text().strip() == str(proc.pid)
    return proc


def test_second_writer_is_refused_and_sigint_saves_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "run"
    first = _start_run(out, env={"DIFFUSION_UTILS_WORKERS": "1"})
    try:
        second = run_cli("train", "--preset", "smoke", "--out", out, "--steps", 5)
        assert_one_line_error(second, f"in use by another run (process {first.pid})")
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "resume with: python -m diffusion_utils train" in stderr
    step = json.loads((out / "checkpoint" / "config.json").read_text())["step"]
    assert 1 <= step < 2000
    resumed = run_cli("train", "--preset", "smoke", "--out", out, "--steps", step + 1, "--resume",
                      env={"DIFFUSION_UTILS_WORKERS": "2"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "using 1 CPU streams as the stored run did" in resumed.stderr
    assert json.loads((out / "checkpoint" / "config.json").read_text())["step"] == step + 1


@pytest.mark.parametrize("command", [("train", "--preset", "smoke", "--dataset"),
                                     ("train-autoencoder", "--data")])
def test_a_held_run_lock_refuses_a_second_writer_before_its_data_loads(tmp_path, command):
    out = tmp_path / "run"
    with files.RunLock(out):  # this test's process is the first writer
        second = run_cli(*command, tmp_path / "no-such-images", "--out", out, "--steps", 1)
    assert_one_line_error(second, f"{out} is in use by another run (process {os.getpid()})")
    assert sorted(p.name for p in out.iterdir()) == [files.LOCK_FILE]  # no latents, log or checkpoint


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    run = _start_run(tmp_path / "run")
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr
    assert checkpoint.has_checkpoint(tmp_path / "run")


def test_bench_refuses_more_threads_than_cores():
    assert_one_line_error(run_cli("bench", "--threads", 1000, "--no-torch"), "--threads between 1 and")


def test_notebooks_refuse_an_unknown_tutorial_fast(tmp_path):
    result = run_cli("notebooks", "--out", tmp_path, "--only", "01", env={"TUTORIAL_FAST": "maybe"})
    assert_one_line_error(result, "TUTORIAL_FAST='maybe' is not understood")


def _png_claiming(width, height):
    """A tiny PNG whose header claims width x height pixels (a decompression bomb to Pillow)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_train_on_a_folder_skips_a_bomb_and_a_loop_and_prints_non_utf8_classes(tmp_path):
    images = tmp_path / "art"
    for name in ("ok", os.fsdecode(b"caf\xe9")):
        (images / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20, 20), (60 * i, 0, 200)).save(images / name / f"{i}.png")
    (images / "ok" / "bomb.png").write_bytes(_png_claiming(20000, 20000))  # 400 megapixels
    (images / "loop").symlink_to(images)
    result = run_cli("train", "--preset", "smoke", "--dataset", images, "--out", tmp_path / "run",
                     "--steps", 1)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bomb.png" in result.stderr and "a loop, not a class" in result.stderr
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "8 images, classes caf\ufffd, ok" in log


@pytest.mark.parametrize("entry", ["files", "class_names"])
def test_sample_refuses_a_config_with_a_null_entry(ckpt, tmp_path, entry):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(ckpt), str(copy)], check=True)
    config = copy / checkpoint.CHECKPOINT_DIR / checkpoint.CONFIG_FILE
    config.write_text(json.dumps({**json.loads(config.read_text()), entry: None}))
    assert_one_line_error(run_cli("sample", "--checkpoint", copy, "--out", tmp_path / "g.png"), entry)


def test_train_out_dot_trains_in_the_current_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "diffusion_utils", "train", "--preset", "smoke",
                             "--out", ".", "--steps", "1"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert checkpoint.has_checkpoint(tmp_path)


def test_checkpoint_minutes_saves_during_a_run_without_a_step_cadence(tmp_path):
    result = run_cli("train", "--preset", "smoke", "--out", tmp_path / "run", "--steps", 30,
                     "--checkpoint-every", 0, "--checkpoint-minutes", 0.0001)  # every 6 ms: after every step
    assert result.returncode == 0, result.stderr[-2000:]
    saves = [line for line in (tmp_path / "run" / "train.log").read_text().splitlines()
             if line.startswith("checkpoint at step")]
    assert len(saves) >= 5 and saves[0] != saves[-1]  # not only the final one
