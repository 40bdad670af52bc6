"""Import diffusion_utils before anything imports mlx.core: it loads the fast BLAS first.

`benchmarks/` goes on the import path: `harness.py` there is the `bench` command's code, which
tests/test_bench.py and tests/test_torch_reference.py import as `harness`.
"""

import sys

import diffusion_utils  # noqa: F401
from diffusion_utils.paths import BENCHMARKS_DIR

import matplotlib

matplotlib.use("Agg")  # tests draw figures without a screen
sys.path.insert(0, str(BENCHMARKS_DIR))
