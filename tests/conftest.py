"""Import diffusion_utils before anything imports mlx.core: it loads the fast BLAS first."""

import diffusion_utils  # noqa: F401

import matplotlib

matplotlib.use("Agg")  # tests draw figures without a screen
