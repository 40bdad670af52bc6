"""`python -m diffusion_utils train` as a user types it: exit codes, messages, resume."""

import subprocess
import sys

from diffusion_utils import checkpoint


def _train(*args, cwd):
    return subprocess.run([sys.executable, "-m", "diffusion_utils", "train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_train_then_refuse_overwrite_then_resume(tmp_path):
    done = _train("--preset", "smoke", "--out", "run", "--steps", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "step 3: checkpoint in run/checkpoint" in done.stdout
    assert checkpoint.load_model(tmp_path / "run")[2].step == 3
    assert (tmp_path / "run" / "train.log").is_file()

    again = _train("--preset", "smoke", "--out", "run", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip() == "error: run already holds a checkpoint; resume it (--resume) or choose " \
                                   "another output folder"

    resumed = _train("--preset", "smoke", "--out", "run", "--resume", "--steps", "5", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load_model(tmp_path / "run")[2].step == 5

    back = _train("--preset", "smoke", "--out", "run", "--resume", "--steps", "4", cwd=tmp_path)
    assert back.returncode == 2 and "already at step 5" in back.stderr and "Traceback" not in back.stderr


def test_bad_input_is_one_line_error(tmp_path):
    smoke = ["--preset", "smoke", "--out", "r"]
    cases = [
        ([*smoke, "--steps", "0"], "error: --steps must be >= 1, got 0"),
        ([*smoke, "--dataset", "no/such/folder"], "error: dataset 'no/such/folder' not found"),
        ([*smoke, "--resume"], "error: no checkpoint to resume in r"),
        (["--preset", "huge", "--out", "r"], "invalid choice: 'huge'"),
    ]
    for args, message in cases:
        result = _train(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
