"""diffusion_utils: the MLX helper package behind the diffusion notebook series.

The BLAS set-up must run before anything imports `mlx.core` (see `backend.py`), so it
comes first here; every other module imports MLX after it.
"""

from diffusion_utils.backend import setup_blas

setup_blas()

__version__ = "0.1.0"
