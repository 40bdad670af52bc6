"""diffusion_utils: the MLX helper package behind the diffusion notebook series.

The BLAS set-up must run before anything imports `mlx.core` (see `backend.py`), so it
comes first here; every other module imports MLX after it.
`keep_cpu_buffers` lets MLX's CPU allocator reuse a step's buffers instead of page-faulting.
"""

from diffusion_utils.backend import keep_cpu_buffers, setup_blas

setup_blas()
keep_cpu_buffers()

__version__ = "0.1.0"
