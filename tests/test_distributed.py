"""Data-parallel training (`distributed.py`): two ranks on localhost, started the way a user does.

`mlx.launch -n 2 --backend ring --python <this python> -m diffusion_utils ...`; the killed-rank
and silent-rank cases start the ranks by hand (MLX_RANK + a ring hostfile), so that no launcher
cleans up for them and the ranks must end on their own.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from diffusion_utils import checkpoint, distributed, train
from diffusion_utils.paths import NOTEBOOK_DIR, REPO_DIR

import mlx.core as mx
import pytest

LAUNCH = Path(sys.executable).with_name("mlx.launch")
# one CPU stream per rank: two ranks already fill the two cores of the test machine
ENV = {**os.environ, "DIFFUSION_UTILS_WORKERS": "1", "DIFFUSION_UTILS_PEER_TIMEOUT": "60"}
pytestmark = pytest.mark.skipif(not LAUNCH.exists(), reason="mlx.launch is not installed next to python")


def _free_ports(count: int = 2) -> int:
    """A first port such that it and the next count-1 are free (the ring listens on port + rank)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count < 65536 and all(_is_free(first + i) for i in range(count)):
            return first
    raise RuntimeError("no free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _launch(*args: str) -> subprocess.CompletedProcess:
    command = [str(LAUNCH), "-n", "2", "--backend", "ring", "--starting-port", str(_free_ports()),
               "--python", sys.executable, "-m", "diffusion_utils", *args]
    return subprocess.run(command, cwd=REPO_DIR, env=ENV, capture_output=True, text=True, timeout=300)


def _train(out: Path, *args: str) -> subprocess.CompletedProcess:
    result = _launch("train", "--preset", "smoke", "--batch-size", "8", "--out", str(out), *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _arrays(run: Path) -> dict:
    directory = checkpoint.find_checkpoint(run)
    return {f: mx.load(str(directory / f)) for f in (checkpoint.MODEL_FILE, checkpoint.EMA_FILE,
                                                      checkpoint.OPTIMIZER_FILE)}


def _max_difference(a: dict, b: dict) -> float:
    return max(float(mx.max(mx.abs(a[f][k] - b[f][k]))) for f in a for k in a[f])


def test_shards_are_disjoint_and_cover_the_global_batch():
    for size in (1, 2, 3, 5):
        parts = [distributed.World(rank, size).shard(13) for rank in range(size)]
        assert [i for s in parts for i in range(s.start, s.stop)] == list(range(13))
        assert max(s.stop - s.start for s in parts) - min(s.stop - s.start for s in parts) <= 1
    with pytest.raises(ValueError, match="at least one image per rank"):
        distributed.World(0, 4).shard(3)


def test_two_ranks_equal_one_process_only_rank0_writes_and_resume_is_exact(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    result = _train(whole, "--steps", "3")
    assert result.stdout.count("step 3: checkpoint in") == 1  # rank 1 prints nothing
    log = (whole / "train.log").read_text()
    assert log.count("# run started") == 1 and log.count("checkpoint at step 3") == 1
    assert "global batch 8 = 4 + 4 per rank" in log
    stored = json.loads((whole / "checkpoint" / "config.json").read_text())
    assert stored["world_size"] == 2 and stored["batch_per_rank"] == [4, 4]
    assert sorted(p.name for p in whole.iterdir() if p.name != ".lock") == ["checkpoint", "train.log"]

    # one process, same global batch: the same weights up to float32 rounding
    config = train.get_preset("smoke", steps=3, batch_size=8)
    single = train.train(config, tmp_path / "single", progress=False)
    assert json.loads((tmp_path / "single/checkpoint/config.json").read_text())["world_size"] == 1
    assert _max_difference(_arrays(whole), _arrays(single.out_dir)) < 1e-4
    assert [round(v, 4) for _, v in single.history] == [round(v, 4) for _, v in stored["loss_history"]]

    # two ranks: 2 steps, then --resume to 3 is bit-exact
    _train(split, "--steps", "2")
    shutil.copytree(split, tmp_path / "to_one_rank")
    _train(split, "--steps", "3", "--resume")
    assert _max_difference(_arrays(whole), _arrays(split)) == 0.0

    # resumed by one process: continues with a note, equal up to rounding
    one = train.train(config, tmp_path / "to_one_rank", resume=True, progress=False)
    assert "resuming a run trained on 2 rank(s) with 1" in (one.out_dir / "train.log").read_text()
    assert _max_difference(_arrays(whole), _arrays(one.out_dir)) < 1e-4


def test_doctor_reports_rank_and_world_size():
    result = _launch("doctor", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted((r["rank"], r["world_size"]) for r in reports) == [(0, 2), (1, 2)]


def _start_rank(rank: int, hostfile: Path, args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diffusion_utils", *args], cwd=REPO_DIR,
                            env={**ENV, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _hostfile(tmp_path: Path) -> Path:
    port = _free_ports()
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    return path


def test_a_killed_rank_makes_the_other_exit_with_an_error(tmp_path):
    out, hostfile = tmp_path / "run", _hostfile(tmp_path)
    args = ["train", "--preset", "smoke", "--steps", "10000", "--checkpoint-every", "2", "--out", str(out)]
    ranks = [_start_rank(rank, hostfile, args) for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint" / "config.json").exists():
            assert time.monotonic() < deadline and ranks[0].poll() is None, "no checkpoint was written"
            time.sleep(0.2)
        ranks[1].send_signal(signal.SIGKILL)
        _, stderr = ranks[0].communicate(timeout=90)  # the bound: it must not hang
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    assert ranks[0].returncode == 1
    assert "error: rank 0 of 2: lost contact with the other ranks" in stderr and "is intact" in stderr
    assert "Traceback" not in stderr
    checkpoint.load_model(out)  # the last checkpoint is complete


def test_a_silent_peer_ends_the_wait_in_bounded_time(tmp_path):
    rank0 = _start_rank(0, _hostfile(tmp_path), ["doctor"], DIFFUSION_UTILS_PEER_TIMEOUT="2")
    _, stderr = rank0.communicate(timeout=60)  # rank 1 never starts
    assert rank0.returncode != 0
    assert "the other ranks did not join within 2 s" in stderr


def test_appendix_notebook_runs_in_fast_mode(tmp_path):
    from diffusion_utils import tutorial

    executed = tutorial.run_notebook(NOTEBOOK_DIR / "appendix_data_parallel.ipynb", tmp_path, fast=True,
                                     timeout=300)
    assert "largest gradient difference" in executed.read_text()
