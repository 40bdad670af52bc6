"""Safe output (issue 11) as a library: atomic writes survive failures and a full disk, paths are
checked before work, a run folder has one writer, and checkpoints load consistently while saved."""

import os
import subprocess
import sys
import textwrap
import warnings

from diffusion_utils import checkpoint, data, files, tutorial, viz

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image


def test_atomic_write_failure_keeps_the_old_file_byte_for_byte(tmp_path):
    target = tmp_path / "keep.png"
    target.write_bytes(b"old bytes")

    def fail(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.atomic_write(target, fail)
    assert target.read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]  # no temporary left


def test_mlx_write_failure_becomes_one_line_oserror(tmp_path):
    def fail(tmp):
        raise RuntimeError("[write] Unable to write 100 bytes to file.")

    with pytest.raises(OSError, match="could not write .*Unable to write"):
        files.atomic_write(tmp_path / "w.safetensors", fail)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 kB tmpfs (needs root and permission to mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_keeps_the_existing_grid_and_leaves_no_temporary(small_tmpfs):
    keep = small_tmpfs / "keep.png"
    rng = np.random.default_rng(0)
    viz.save_grid(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), keep)
    before = keep.read_bytes()
    fd = os.open(small_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk up
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        os.close(fd)
    noise = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)  # incompressible: ~1 MB of PNG
    with pytest.raises(OSError):
        viz.save_grid(noise, keep)
    assert keep.read_bytes() == before
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "keep.png"]


@pytest.mark.parametrize("name, fragment", [
    ("", "give a file name"), (".", "give a file name"), ("grid.txt", "must end in .png"),
    ("missing/grid.png", "does not exist"),
])  # fmt: skip
def test_check_output_path_refuses_before_any_work(tmp_path, name, fragment):
    with pytest.raises(ValueError, match=fragment):
        files.check_output_path(str(tmp_path / name) if name else name, viz.GRID_FORMATS)
    with pytest.raises(ValueError, match="is a folder"):
        files.check_output_path(tmp_path, (".png",))
    assert files.check_output_path(tmp_path / "g.JPG", viz.GRID_FORMATS) == tmp_path / "g.JPG"


def test_save_grid_writes_the_format_its_extension_names(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    assert viz.save_grid(images, tmp_path / "g.jpg").read_bytes()[:2] == b"\xff\xd8"  # JPEG
    assert viz.save_grid(images, tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="must end in"):
        viz.save_grid(images, tmp_path / "g.bmp")


def test_run_lock_refuses_a_second_writer_and_takes_over_a_dead_one(tmp_path, capfd):
    with files.RunLock(tmp_path):
        with pytest.raises(files.RunLockedError, match=f"process {os.getpid()}"):
            files.RunLock(tmp_path).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / files.LOCK_FILE).write_text(f"{dead.pid}\n")  # left by a killed run
    with files.RunLock(tmp_path):
        assert (tmp_path / files.LOCK_FILE).read_text().strip() == str(os.getpid())
    assert f"from process {dead.pid}, which is no longer running" in capfd.readouterr().err


def _meta(step):
    return {"train_config": {}, "schedule": {}, "class_names": ["a"], "step": step}


def _arrays(step):
    return {name: {"w": mx.full((64, 64), float(step))} for name in
            (checkpoint.MODEL_FILE, checkpoint.EMA_FILE, checkpoint.OPTIMIZER_FILE)}


SAVER = textwrap.dedent("""
    import sys, time
    import mlx.core as mx
    from diffusion_utils import checkpoint
    names = (checkpoint.MODEL_FILE, checkpoint.EMA_FILE, checkpoint.OPTIMIZER_FILE)
    step, end = 1, time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        meta = {"train_config": {}, "schedule": {}, "class_names": ["a"], "step": step}
        arrays = {n: {"w": mx.full((64, 64), float(step))} for n in names}
        checkpoint.save_checkpoint(sys.argv[1], arrays, meta)
        step += 1
    print(step)
""")


def test_500_loads_while_another_process_saves_see_only_consistent_checkpoints(tmp_path):
    target = tmp_path / "checkpoint"
    checkpoint.save_checkpoint(target, _arrays(0), _meta(0))
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(target), "60"])

    def load_all(directory, config):
        names = config["files"]
        return config["step"], [checkpoint.load_arrays(directory, config, name)["w"] for name in names]

    try:
        steps = set()
        for _ in range(500):
            step, arrays = checkpoint.read_consistently(tmp_path, load_all)
            assert all(mx.all(a == step).item() for a in arrays)  # every file from the same save
            steps.add(step)
    finally:
        saver.kill()
        saver.wait()
    assert len(steps) > 10, steps  # the loads really overlapped many saves


def test_nan_tensor_and_bad_entries_are_refused(tmp_path):
    arrays = _arrays(1)
    arrays[checkpoint.EMA_FILE]["w"] = mx.array([1.0, float("nan")])
    checkpoint.save_checkpoint(tmp_path / "c", arrays, _meta(1))
    directory, config = checkpoint.read_config(tmp_path / "c")
    with pytest.raises(ValueError, match="tensor w holds NaN"):
        checkpoint.load_arrays(directory, config, checkpoint.EMA_FILE)
    for bad, fragment in (({"step": -5}, "'step' must be"), ({"files": None}, "'files' must"),
                          ({"class_names": None}, "'class_names' must")):
        checkpoint.save_checkpoint(tmp_path / "d", _arrays(1), {**_meta(1), **bad})
        if "files" in bad:  # save_checkpoint writes its own files entry: overwrite config.json
            file = tmp_path / "d" / checkpoint.CONFIG_FILE
            file.write_text(file.read_text().replace('"files": {', '"files": null, "x": {'))
        with pytest.raises(ValueError, match=fragment):
            checkpoint.read_config(tmp_path / "d")


def test_image_folder_skips_bombs_loops_and_names_non_utf8_classes(tmp_path, monkeypatch):
    for name in ("ok", os.fsdecode(b"caf\xe9")):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), "red").save(tmp_path / name / "a.png")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "ok" / "huge.png")
    (tmp_path / "loop").symlink_to(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 > 2x the limit: a "bomb"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load_image_folder(tmp_path, size=8)
    messages = " ".join(str(w.message) for w in caught)
    assert "huge.png (DecompressionBombError)" in messages and "a loop, not a class" in messages
    assert ds.class_names == ("caf\ufffd", "ok") and len(ds) == 2
    "".join(ds.class_names).encode("utf-8")  # printable, writable to train.log


def test_unknown_tutorial_fast_value_is_refused(monkeypatch):
    monkeypatch.setenv(tutorial.FAST_ENV, "maybe")
    with pytest.raises(ValueError, match="TUTORIAL_FAST='maybe' is not understood"):
        tutorial.fast_mode()
    monkeypatch.setenv(tutorial.FAST_ENV, "Off")
    assert tutorial.fast_mode() is False


def test_blas_override_without_sgemm_warns_clearly():
    env = {**os.environ, "DIFFUSION_UTILS_BLAS": "libc.so.6"}
    code = "import diffusion_utils; from diffusion_utils.cpu import blas; print(blas.blas_in_use())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if not sys.platform.startswith("linux"):
        pytest.skip("the BLAS override is Linux-only")
    assert "has no cblas_sgemm, so MLX keeps its slow reference BLAS" in done.stderr
    assert "could not be loaded as a BLAS" in done.stdout
