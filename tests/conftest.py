"""Import diffusion_utils before anything imports mlx.core: it loads the fast BLAS first.

`benchmarks/` goes on the import path: `harness.py` there is the `bench` command's code, which
tests/test_bench.py and tests/test_torch_reference.py import as `harness`. Fixtures several test
files share live here.
"""

import sys

import diffusion_utils  # noqa: F401
from diffusion_utils.paths import BENCHMARKS_DIR
from diffusion_utils.unet import UNet, UNetConfig

import matplotlib
import mlx.core as mx
import pytest

matplotlib.use("Agg")  # tests draw figures without a screen
sys.path.insert(0, str(BENCHMARKS_DIR))


@pytest.fixture(scope="session")
def make_tiny_unet():
    """`make_tiny_unet(num_classes)`: a random 8x8 UNet (two levels of 8 and 16 channels, attention at
    4x4) with weights drawn from seed 0, evaluated: a stand-in for a trained model, cheap to sample."""
    def make(num_classes: int) -> UNet:
        mx.random.seed(0)
        model = UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                attention_resolutions=(4,), groups=4, num_heads=2, num_classes=num_classes))
        mx.eval(model.parameters())
        return model

    return make
