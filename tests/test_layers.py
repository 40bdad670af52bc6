"""cpu/layers.py: each fast layer computes what the mlx.nn layer computes (values, gradients), and
`use_fast_cpu_layers` swaps them into a network without changing its parameters or outputs."""

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils.cpu import layers
from diffusion_utils.unet import UNet, UNetConfig

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten


def normal(shape, seed, scale=1.0, shift=0.0):
    return shift + scale * mx.random.normal(shape, key=mx.random.key(seed))


def assert_close(actual, expected, rtol=1e-5, atol=None):
    actual, expected = np.array(actual), np.array(expected)
    atol = 1e-5 * max(1.0, np.abs(expected).max()) if atol is None else atol
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def grads(fn, params, x, cotangent):
    """Gradients of sum(fn(params, x) * cotangent) w.r.t. params (a list of arrays) and x."""
    return mx.grad(lambda p, a: (fn(p, a) * cotangent).sum(), argnums=(0, 1))(params, x)


def test_exp_matches_mx_exp_to_float32_rounding():
    x = mx.concatenate([mx.linspace(-87, 88, 200001), mx.array([0.0, -1e-30, 1e-30])])
    rel = np.abs(np.array(layers._exp(x)) / np.array(mx.exp(x)) - 1.0)
    assert rel.max() < 3e-7


@pytest.mark.parametrize("shape,channels", [((2, 8, 8, 5), 7), ((3, 6, 10, 16), 16), ((1, 3, 5, 4), 2),
                                            ((2, 1, 1, 3), 4)])
def test_conv3x3_matches_nn_conv2d_values_and_gradients(shape, channels):
    fast = layers.Conv2d(shape[-1], channels, 3, padding=1)
    reference = nn.Conv2d(shape[-1], channels, 3, padding=1)
    fast.bias = normal((channels,), 3)
    reference.update(fast.parameters())
    x, cot = normal(shape, 1, 2.0), normal(shape[:3] + (channels,), 2)
    assert_close(fast(x), reference(x))

    def apply(module):
        def fn(p, a):
            module.update({"weight": p[0], "bias": p[1]})
            return module(a)
        return fn

    params = [fast.weight, fast.bias]
    (dw, db), dx = grads(apply(fast), params, x, cot)
    (rw, rb), rx = grads(apply(reference), params, x, cot)
    for got, want in ((dw, rw), (db, rb), (dx, rx)):
        assert_close(got, want)


def test_conv3x3_compiled_matches_eager():
    x, w, b, cot = normal((2, 6, 6, 4), 1), normal((5, 3, 3, 4), 2), normal((5,), 3), normal((2, 6, 6, 5), 4)

    def loss(x, w, b):
        return (layers.conv3x3(x, w, b) * cot).sum()

    eager = mx.grad(loss, argnums=(0, 1, 2))(x, w, b)
    compiled = mx.compile(mx.grad(loss, argnums=(0, 1, 2)))(x, w, b)
    for got, want in zip(compiled, eager, strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("kwargs", [{"kernel_size": 1}, {"kernel_size": 3, "stride": 2, "padding": 1},
                                    {"kernel_size": 3}, {"kernel_size": 3, "padding": 1, "bias": False}])
def test_conv2d_other_configurations_match_nn_conv2d(kwargs):
    fast, reference = layers.Conv2d(6, 4, **kwargs), nn.Conv2d(6, 4, **kwargs)
    reference.update(fast.parameters())
    x = normal((2, 8, 8, 6), 5)
    assert_close(fast(x), reference(x))


def test_layers_keep_the_parameter_names_and_shapes_of_mlx_nn():
    pairs = [(layers.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)),
             (layers.GroupNorm(2, 8), nn.GroupNorm(2, 8, pytorch_compatible=True))]
    for fast, reference in pairs:
        shapes = {k: v.shape for k, v in tree_flatten(fast.parameters())}
        assert shapes == {k: v.shape for k, v in tree_flatten(reference.parameters())}


def test_group_norm_matches_nn_group_norm_values_and_gradients():
    fast, reference = layers.GroupNorm(4, 16), nn.GroupNorm(4, 16, pytorch_compatible=True)
    assert fast.pytorch_compatible  # PyTorch's grouping by default, as the UNet needs
    weight, bias = normal((16,), 1), normal((16,), 2)
    x, cot = normal((3, 5, 7, 16), 3, scale=2.0, shift=50.0), normal((3, 5, 7, 16), 4)  # large mean

    def apply(module):
        def fn(p, a):
            module.update({"weight": p[0], "bias": p[1]})
            return module(a)
        return fn

    assert_close(apply(fast)([weight, bias], x), apply(reference)([weight, bias], x))
    (dw, db), dx = grads(apply(fast), [weight, bias], x, cot)
    (rw, rb), rx = grads(apply(reference), [weight, bias], x, cot)
    for got, want in ((dw, rw), (db, rb), (dx, rx)):
        assert_close(got, want, rtol=1e-4)


def test_group_norm_without_pytorch_grouping_is_nn_group_norm():
    fast, reference = layers.GroupNorm(4, 16, pytorch_compatible=False), nn.GroupNorm(4, 16)
    x = normal((2, 3, 3, 16), 6)
    assert_close(fast(x), reference(x))


def test_silu_matches_nn_silu_values_and_gradient():
    x = mx.concatenate([mx.linspace(-100, 100, 20001), mx.array([0.0, 1e-30, -88.7, 88.7])])
    assert_close(layers.silu(x), nn.silu(x), atol=1e-6)
    got = mx.grad(lambda a: layers.silu(a).sum())(x)
    assert_close(got, mx.grad(lambda a: nn.silu(a).sum())(x), atol=1e-6)


def test_softmax_matches_mx_softmax_values_and_gradient():
    x, cot = normal((2, 3, 9, 17), 1, scale=20.0), normal((2, 3, 9, 17), 2)
    assert_close(layers.softmax(x), mx.softmax(x, axis=-1), atol=1e-6)
    got = mx.grad(lambda a: (layers.softmax(a) * cot).sum())(x)
    assert_close(got, mx.grad(lambda a: (mx.softmax(a, axis=-1) * cot).sum())(x), atol=1e-6)


def test_gpu_guard_falls_back_to_the_plain_mlx_layers(monkeypatch):
    monkeypatch.setattr(layers, "_on_gpu", lambda: True)
    conv = layers.Conv2d(4, 4, 3, padding=1)
    monkeypatch.setattr(layers, "conv3x3", None)  # would raise if the fast path were taken
    x = normal((1, 5, 5, 4), 1)
    assert_close(conv(x), nn.Conv2d.__call__(conv, x))
    assert_close(layers.silu(x), nn.silu(x), atol=0)
    assert_close(layers.softmax(x), mx.softmax(x, axis=-1), atol=0)


def tiny_unet():
    config = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(4,), groups=4, num_heads=2, num_classes=2)
    model = UNet(config)
    model.conv_out.weight = normal(model.conv_out.weight.shape, 9, scale=0.1)  # a non-zero output
    return model


def test_use_fast_cpu_layers_keeps_parameters_and_outputs(monkeypatch):
    model = tiny_unet()
    x, t, y = normal((4, 8, 8, 3), 1), mx.array([0, 10, 500, 999]), mx.array([0, 1, 2, 1])
    before, params = model(x, t, y), dict(tree_flatten(model.parameters()))
    monkeypatch.setattr(layers, "_on_gpu", lambda: False)  # the swap as it happens on a CPU
    assert layers.use_fast_cpu_layers(model) is model
    kinds = {type(m) for _, m in model.named_modules()}
    assert {layers.Conv2d, layers.GroupNorm, layers.SiLU, layers.Softmax} <= kinds
    assert not kinds & {nn.Conv2d, nn.GroupNorm, nn.SiLU, nn.Softmax}  # every one was swapped
    after = dict(tree_flatten(model.parameters()))
    assert after.keys() == params.keys() and all(after[k] is params[k] for k in params)  # same arrays
    assert_close(model(x, t, y), before, rtol=1e-4)


def test_use_fast_cpu_layers_does_nothing_on_a_gpu(monkeypatch):
    monkeypatch.setattr(layers, "_on_gpu", lambda: True)
    model = layers.use_fast_cpu_layers(tiny_unet())
    assert not {type(m) for _, m in model.named_modules()} & set(layers.FAST_LAYERS.values())
