"""benchmarks/torch_unet.py is the same network as diffusion_utils.unet.UNet: same parameter count,
same outputs for the same weights. This is what makes the PyTorch timings of `bench` comparable."""

from dataclasses import replace

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils import train
from diffusion_utils.unet import UNet, UNetConfig, parameter_count

import harness as bench  # benchmarks/harness.py (on the path: conftest.py)
import mlx.core as mx
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch==2.13.0)")
reference = bench.load_torch_reference()
if isinstance(reference, str):
    pytest.skip(reference, allow_module_level=True)

CONFIGS = {
    "default, 6 classes": UNetConfig(num_classes=6),
    "unconditional, attention at 16": UNetConfig(image_size=16, base_channels=16, channel_mults=(1, 2),
                                                 num_res_blocks=1, attention_resolutions=(16, 8), groups=4),
    **{f"preset {name}": replace(train.PRESETS[name].unet, num_classes=6) for name in train.PRESETS},
}


def mlx_model(config: UNetConfig, seed: int = 0) -> UNet:
    mx.random.seed(seed)
    model = UNet(config)
    model.conv_out.weight = 0.1 * mx.random.normal(model.conv_out.weight.shape)  # not the zero init
    model.conv_out.bias = 0.1 * mx.random.normal(model.conv_out.bias.shape)
    mx.eval(model.parameters())
    return model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameter_count(name):
    config = CONFIGS[name]
    assert reference.parameter_count(reference.TorchUNet(config)) == parameter_count(UNet(config))


@pytest.mark.parametrize("name", ["default, 6 classes", "unconditional, attention at 16"])
def test_same_output_for_the_same_weights(name):
    config = CONFIGS[name]
    model = mlx_model(config)
    torch_model = reference.load_mlx_weights(reference.TorchUNet(config), model).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, config.image_size, config.image_size, config.in_channels)).astype(np.float32)
    t = np.array([0, 417, 999])
    labels = [None, np.array([0, 5, 6])] if config.num_classes else [None]
    for y in labels:
        expected = np.array(model(mx.array(x), mx.array(t), None if y is None else mx.array(y)))
        with torch.no_grad():
            got = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t),
                              None if y is None else torch.from_numpy(y)).permute(0, 2, 3, 1).numpy()
        assert np.abs(expected).max() > 0.1  # a real comparison, not zeros against zeros
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)


def test_weights_of_another_architecture_are_refused():
    small = mlx_model(CONFIGS["unconditional, attention at 16"])
    with pytest.raises((ValueError, RuntimeError)):
        reference.load_mlx_weights(reference.TorchUNet(CONFIGS["default, 6 classes"]), small)
