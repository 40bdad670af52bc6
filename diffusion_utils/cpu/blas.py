"""Make MLX use a fast BLAS on Linux, and report what it uses.

MLX's Linux CPU wheel (`mlx[cpu]`) bundles a reference BLAS: a 512x512 float32
matmul runs at a few GFLOP/s. MLX only calls `cblas_sgemm`, and the dynamic linker
resolves that symbol through the global scope first, so loading an optimised BLAS
with `RTLD_GLOBAL` *before* `mlx.core` is imported makes every matmul and
convolution use it, with identical results (~125 vs ~3 GFLOP/s measured on a
2-core x86_64 machine). Loading it after `mlx.core` is too late: MLX has already
bound its own copy.

Set `DIFFUSION_UTILS_BLAS` to a library path to choose one, or to `off` to keep the
wheel's own. macOS (Accelerate/Metal) and conda-forge's `mlx` (linked against the
environment's BLAS) need nothing, and this module does nothing there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
import warnings
from pathlib import Path

ENV_VAR = "DIFFUSION_UTILS_BLAS"
_OFF_VALUES = {"0", "off", "none", "false", "no"}

# Tried in order: Debian/Ubuntu's threaded OpenBLAS, then whatever the linker finds.
_CANDIDATES = (
    "libopenblas.so.0",
    "libopenblasp.so.0",
    "libmkl_rt.so.2",
    "libmkl_rt.so",
    "libblis.so.4",
)

_FIX_HINT = (
    "install an optimised BLAS (Debian/Ubuntu: `sudo apt-get install libopenblas0-pthread`; "
    f"or use the conda environment.yml), or point {ENV_VAR}=/path/to/libopenblas.so.0 at one"
)

_state: dict = {"loaded": None, "warned": False, "reason": None}


def _warn_once(message: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _conda_candidates() -> list[str]:
    prefix = os.environ.get("CONDA_PREFIX") or sys.prefix
    lib = Path(prefix) / "lib"
    return [str(p) for p in sorted(lib.glob("libopenblas*.so*"))] if lib.is_dir() else []


def _try_load(name: str) -> str | None:
    """Load `name` globally; its name, or None when it cannot be loaded or is no BLAS (no cblas_sgemm)."""
    try:
        library = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    return name if hasattr(library, "cblas_sgemm") else None


def setup_blas() -> str | None:
    """Load a fast BLAS globally before `mlx.core`; return its name, or None.

    Called once by `diffusion_utils/__init__.py`. Warns once (never raises) when no
    fast BLAS can be used on Linux, saying how to fix it.
    """
    if _state["loaded"] or not sys.platform.startswith("linux"):
        return _state["loaded"]
    choice = os.environ.get(ENV_VAR, "").strip()
    if choice.lower() in _OFF_VALUES and choice:
        _state["reason"] = f"disabled by {ENV_VAR}={choice}"
        return None
    if "mlx.core" in sys.modules:
        _state["reason"] = "mlx.core was imported before diffusion_utils"
        _warn_once(
            "diffusion_utils: mlx.core was imported before diffusion_utils, so MLX keeps "
            "its slow reference BLAS; import diffusion_utils first (restart the kernel)."
        )
        return None
    if choice:
        loaded = _try_load(choice)
        if loaded is None:
            _state["reason"] = f"{ENV_VAR}={choice} could not be loaded as a BLAS"
            _warn_once(f"diffusion_utils: {ENV_VAR}={choice} could not be loaded or has no cblas_sgemm, "
                       f"so MLX keeps its slow reference BLAS; {_FIX_HINT}.")
        _state["loaded"] = loaded
        return loaded
    found = ctypes.util.find_library("openblas")
    for name in (*_CANDIDATES, *_conda_candidates(), *([found] if found else [])):
        loaded = _try_load(name)
        if loaded is not None:
            _state["loaded"] = loaded
            return loaded
    _state["reason"] = "no optimised BLAS library found"
    _warn_once(f"diffusion_utils: MLX is using its slow reference BLAS on Linux; {_FIX_HINT}.")
    return None


def _library_of_symbol(symbol: str) -> str | None:
    """Path of the shared library that the global scope resolves `symbol` to."""

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        process = ctypes.CDLL(None)
        address = ctypes.cast(getattr(process, symbol), ctypes.c_void_p)
        dladdr = process.dladdr
    except (AttributeError, OSError):
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    info = DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode())


def blas_in_use() -> str:
    """A short description of the BLAS behind MLX's float32 matmul on this machine."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    library = _library_of_symbol("cblas_sgemm")
    if library is not None:
        return library
    reason = f" ({_state['reason']})" if _state["reason"] else ""
    return f"MLX's bundled BLAS{reason}"


CPU_BUFFER_CACHE_BYTES = 1 << 30


def keep_cpu_buffers(limit: int = CPU_BUFFER_CACHE_BYTES) -> None:
    """When MLX computes on the CPU, let it keep up to `limit` bytes of freed buffers for reuse.

    Its CPU default is 32 MB, less than the intermediates of one training step, so every step
    handed its buffers back to the OS and faulted fresh pages in again: raising it made a
    two-stream training step 10-15% faster on a 2-core machine. Only ever raises the limit,
    and leaves GPUs alone (Metal's default is already most of the memory).
    """
    import mlx.core as mx

    if mx.default_device().type != mx.DeviceType.cpu:
        return
    previous = mx.set_cache_limit(limit)
    if previous > limit:
        mx.set_cache_limit(previous)


def blas_threads() -> int:
    """Threads OpenBLAS uses per call (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS or the core count
    when another BLAS is in use)."""
    try:
        return int(ctypes.CDLL(None).openblas_get_num_threads())
    except (AttributeError, OSError):
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            if os.environ.get(var, "").isdigit():
                return int(os.environ[var])
        return os.cpu_count() or 1


def set_blas_threads(threads: int) -> int:
    """Make OpenBLAS use `threads` threads per call from now on; returns the count in use.

    Does nothing for another BLAS (it keeps its environment variables' setting).
    """
    try:
        ctypes.CDLL(None).openblas_set_num_threads(int(threads))
    except (AttributeError, OSError):
        pass
    return blas_threads()


def sgemm_gflops(n: int = 512, repeats: int = 10) -> float:
    """Measured float32 matmul speed of MLX's default device, GFLOP/s (median of repeats)."""
    import mlx.core as mx

    a = mx.random.normal((n, n), key=mx.random.key(0))
    b = mx.random.normal((n, n), key=mx.random.key(1))
    mx.eval(a, b)
    for _ in range(3):  # warm-up: first calls allocate and, on Metal, compile kernels
        mx.eval(a @ b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(a @ b)
        times.append(time.perf_counter() - start)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e9
