"""cpu/blas.py: the fast-BLAS set-up and `python -m diffusion_utils doctor`, each in a fresh interpreter."""

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEM_OPENBLAS = ctypes.util.find_library("openblas")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_doctor_json_reports_platform_and_blas():
    result = subprocess.run(
        [sys.executable, "-m", "diffusion_utils", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) >= {"os", "python", "mlx", "device", "blas", "sgemm_gflops", "streams"}
    assert report["sgemm_gflops"] > 0 and report["streams"] >= 1


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS set-up only acts on Linux")
@pytest.mark.skipif(SYSTEM_OPENBLAS is None, reason="no system OpenBLAS installed (set-up not run as root)")
def test_fast_blas_is_in_use_when_installed():
    result = run_python("import diffusion_utils.cpu.blas as b; print(b.blas_in_use())")
    assert result.returncode == 0, result.stderr
    assert "openblas" in Path(result.stdout.strip()).name.lower()
    assert "RuntimeWarning" not in result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS set-up only acts on Linux")
@pytest.mark.skipif(SYSTEM_OPENBLAS is None, reason="no system OpenBLAS installed (set-up not run as root)")
@pytest.mark.parametrize("module", ["diffusion_utils", "diffusion_utils.cpu.blas", "diffusion_utils.train"])
def test_openblas_is_loaded_before_anything_imports_mlx(module):
    """`diffusion_utils/__init__.py` and `cpu/__init__.py` must not import mlx.core before the BLAS set-up."""
    code = (
        "import sys\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mlx.core' and 'seen' not in globals():\n"
        "            blas = sys.modules.get('diffusion_utils.cpu.blas')\n"
        "            globals()['seen'] = blas._state['loaded'] if blas else 'no set-up yet'\n"
        "sys.meta_path.insert(0, Watch())\n"
        f"import {module}\n"
        "print(seen)\n"
    )
    result = run_python(code, DIFFUSION_UTILS_BLAS="")
    assert result.returncode == 0, result.stderr
    assert "openblas" in result.stdout.lower(), result.stdout  # the library loaded when mlx.core came
    assert "RuntimeWarning" not in result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS set-up only acts on Linux")
def test_importing_mlx_first_warns_once_with_the_fix():
    code = (
        "import mlx.core\n"
        "import diffusion_utils\n"
        "from diffusion_utils.cpu import blas\n"
        "blas.setup_blas(); blas.setup_blas()\n"
    )
    result = run_python(code, DIFFUSION_UTILS_BLAS="")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("RuntimeWarning") == 1
    assert "import diffusion_utils first" in result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS set-up only acts on Linux")
def test_environment_variable_turns_it_off():
    result = run_python(
        "import diffusion_utils.cpu.blas as b; print(b.blas_in_use())", DIFFUSION_UTILS_BLAS="off"
    )
    assert result.returncode == 0, result.stderr
    assert "disabled by DIFFUSION_UTILS_BLAS=off" in result.stdout
    assert "RuntimeWarning" not in result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS set-up only acts on Linux")
def test_unloadable_library_is_one_clear_warning():
    result = run_python("import diffusion_utils", DIFFUSION_UTILS_BLAS="/nonexistent/libfoo.so")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("RuntimeWarning") == 1
    assert "/nonexistent/libfoo.so could not be loaded" in result.stderr
    assert "libopenblas0-pthread" in result.stderr


def test_cpu_buffer_cache_is_raised_never_lowered():
    from diffusion_utils.cpu import blas

    import mlx.core as mx

    if mx.default_device().type != mx.DeviceType.cpu:
        pytest.skip("the buffer cache is only tuned on the CPU")
    limit = mx.set_cache_limit(4 * blas.CPU_BUFFER_CACHE_BYTES)
    assert limit >= blas.CPU_BUFFER_CACHE_BYTES  # importing diffusion_utils raised the 32 MB default
    blas.keep_cpu_buffers()
    assert mx.set_cache_limit(limit) == 4 * blas.CPU_BUFFER_CACHE_BYTES  # a larger limit is kept
