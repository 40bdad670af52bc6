"""Tests for the UNet denoiser (`diffusion_utils.unet`), on tiny configs."""

import json
import math

from diffusion_utils.flops import count_flops, unet_flops
from diffusion_utils.unet import (
    UNet,
    UNetConfig,
    parameter_breakdown,
    parameter_count,
    timestep_embedding,
)

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, groups=4, num_heads=2)


def tiny(image_size=16, **kw):
    return UNetConfig(**{**TINY, "image_size": image_size,
                         "attention_resolutions": (image_size // 2,), **kw})


def with_random_output_conv(model, seed=0):
    """Make the zero-initialised output conv non-zero, so outputs depend on the input."""
    key = mx.random.key(seed)
    model.conv_out.weight = 0.1 * mx.random.normal(model.conv_out.weight.shape, key=key)
    return model


def inputs(batch, size, channels=3, seed=0):
    x = mx.random.normal((batch, size, size, channels), key=mx.random.key(seed))
    t = mx.array(np.linspace(0, 999, batch).astype(np.int32))
    return x, t


# ---- time embedding ---------------------------------------------------------------------

def test_timestep_embedding_shape_range_and_layout():
    t = mx.array([0, 1, 10, 500, 999])
    emb = np.array(timestep_embedding(t, 32))
    assert emb.shape == (5, 32)
    assert np.all(np.abs(emb) <= 1.0)
    np.testing.assert_allclose(emb[0], [0.0] * 16 + [1.0] * 16, atol=0)  # sin(0)..., cos(0)...
    # first half sin, second half cos of the same arguments: sin^2 + cos^2 = 1
    np.testing.assert_allclose(emb[:, :16] ** 2 + emb[:, 16:] ** 2, 1.0, atol=1e-5)
    # the fastest frequency is 1: column 0 is sin(t), column 16 is cos(t)
    np.testing.assert_allclose(emb[:, 0], np.sin([0, 1, 10, 500, 999]), atol=1e-4)
    np.testing.assert_allclose(emb[:, 16], np.cos([0, 1, 10, 500, 999]), atol=1e-4)
    # the slowest frequency is 10000 ** (-15 / 16)
    np.testing.assert_allclose(emb[:, 15], np.sin(np.array([0, 1, 10, 500, 999]) *
                                                  10000 ** (-15 / 16)), atol=1e-5)


def test_timestep_embedding_distinct_and_accepts_float_t():
    emb = np.array(timestep_embedding(mx.arange(1000), 64))
    dists = np.linalg.norm(emb[1:] - emb[:-1], axis=1)
    assert dists.min() > 0.1  # neighbouring steps are clearly distinguishable
    half = np.array(timestep_embedding(mx.array([2.5]), 64))[0]
    assert not np.allclose(half, emb[2]) and not np.allclose(half, emb[3])


def test_timestep_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(mx.array([1]), 7)


# ---- shapes and initial output ----------------------------------------------------------

@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_output_shape_matches_input(size, num_classes):
    model = UNet(tiny(size, num_classes=num_classes))
    x, t = inputs(3, size)
    y = mx.array([0, 4, 5]) if num_classes else None
    assert model(x, t, y).shape == x.shape
    assert model(x, t).shape == x.shape


def test_output_shape_other_sizes_and_channels():
    model = UNet(tiny(16, in_channels=1, channel_mults=(1, 2, 2), attention_resolutions=(4,)))
    for size in (16, 64):  # trained size and a larger one
        x, t = inputs(2, size, channels=1)
        assert model(x, t).shape == (2, size, size, 1)


def test_untrained_model_predicts_exactly_zero():
    model = UNet(tiny(16, num_classes=3))
    x, t = inputs(4, 16)
    out = np.array(model(x, t, mx.array([0, 1, 2, 3])))
    assert np.all(out == 0.0)


def test_level_shapes_walks_every_stage():
    model = UNet(tiny(16, channel_mults=(1, 2, 2), attention_resolutions=(4,)))
    x, t = inputs(2, 16)
    shapes = dict(model.level_shapes(x, t))
    assert shapes == {
        "embedding": (2, 32),
        "conv_in": (2, 16, 16, 8),
        "down.0": (2, 8, 8, 8),
        "down.1": (2, 4, 4, 16),
        "down.2": (2, 4, 4, 16),
        "mid": (2, 4, 4, 16),
        "up.0": (2, 8, 8, 16),
        "up.1": (2, 16, 16, 16),
        "up.2": (2, 16, 16, 8),
        "conv_out": (2, 16, 16, 3),
    }


# ---- conditioning ------------------------------------------------------------------------

def test_conditioning_changes_output_and_none_means_null_class():
    model = with_random_output_conv(UNet(tiny(16, num_classes=4)))
    x, t = inputs(2, 16)
    out_a = np.array(model(x, t, mx.array([0, 0])))
    out_b = np.array(model(x, t, mx.array([3, 3])))
    assert np.abs(out_a - out_b).max() > 1e-4
    out_none = np.array(model(x, t, None))
    out_null = np.array(model(x, t, mx.array([4, 4])))  # label num_classes = null
    np.testing.assert_array_equal(out_none, out_null)


def test_timestep_changes_output():
    model = with_random_output_conv(UNet(tiny(16)))
    x, _ = inputs(1, 16)
    out_0 = np.array(model(x, mx.array([0])))
    out_1 = np.array(model(x, mx.array([900])))
    assert np.abs(out_0 - out_1).max() > 1e-4


def test_batch_elements_are_independent():
    model = with_random_output_conv(UNet(tiny(16, num_classes=2)))
    x, t = inputs(3, 16)
    y = mx.array([0, 1, 2])
    full = np.array(model(x, t, y))
    single = np.array(model(x[1:2], t[1:2], y[1:2]))
    np.testing.assert_allclose(full[1:2], single, atol=1e-5)


# ---- config ------------------------------------------------------------------------------

def test_config_round_trip_through_json():
    cfg = UNetConfig(image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(8,), num_classes=6, dropout=0.1, groups=4)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert UNetConfig.from_dict(d) == cfg
    assert d["channel_mults"] == [1, 2]


@pytest.mark.parametrize("bad, message", [
    ({"depth": 3}, "unknown key"),
    ({"base_channels": 0}, "base_channels"),
    ({"base_channels": 3.5}, "base_channels"),
    ({"channel_mults": []}, "channel_mults"),
    ({"channel_mults": "12"}, "channel_mults"),
    ({"image_size": 36, "channel_mults": [1, 2, 2, 2]}, "divisible by 8"),
    ({"attention_resolutions": [5]}, "attention_resolutions"),
    ({"groups": 5}, "groups"),
    ({"num_heads": 3}, "num_heads"),
    ({"num_classes": -1}, "num_classes"),
    ({"dropout": 1.0}, "dropout"),
])
def test_config_rejects_bad_values_with_one_line_error(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        UNetConfig.from_dict({**UNetConfig().to_dict(), **bad})
    assert "\n" not in str(info.value)


def test_bad_inputs_raise_clear_errors():
    model = UNet(tiny(16))
    x, t = inputs(2, 16)
    with pytest.raises(ValueError, match="divisible by 2"):
        model(x[:, :15, :15], t)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model(x[..., :1], t)
    with pytest.raises(ValueError, match="t of shape"):
        model(x, t[:1])
    with pytest.raises(ValueError, match="num_classes=0"):
        model(x, t, mx.array([0, 1]))


# ---- size: parameters and FLOPs ----------------------------------------------------------

def conv(h, w, c_in, c_out, k=3):
    return 2 * h * w * k * k * c_in * c_out


def resblock(h, w, c_in, c_out, emb):
    skip = conv(h, w, c_in, c_out, k=1) if c_in != c_out else 0
    return conv(h, w, c_in, c_out) + conv(h, w, c_out, c_out) + 2 * emb * c_out + skip


def attention(h, w, c):
    tokens = h * w
    return 2 * tokens * c * 3 * c + 2 * 2 * tokens * tokens * c + 2 * tokens * c * c


def test_count_flops_matches_hand_count():
    # 8x8 RGB, channels 4 -> 8, one res block per level, attention at 4x4, embedding 16
    cfg = UNetConfig(image_size=8, base_channels=4, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), groups=2, num_heads=1)
    hand = (
        2 * (4 * 16 + 16 * 16)  # time MLP
        + conv(8, 8, 3, 4)  # conv_in                       skips: [4]
        + resblock(8, 8, 4, 4, 16)  # down.0                      [4, 4]
        + conv(4, 4, 4, 4)  # down.0 downsample at 4x4          [4, 4, 4]
        + resblock(4, 4, 4, 8, 16) + attention(4, 4, 8)  # down.1  [4, 4, 4, 8]
        + 2 * resblock(4, 4, 8, 8, 16) + attention(4, 4, 8)  # mid
        + resblock(4, 4, 8 + 8, 8, 16) + resblock(4, 4, 8 + 4, 8, 16)  # up.0 pops 8, 4
        + 2 * attention(4, 4, 8)
        + conv(8, 8, 8, 8)  # up.0 upsample
        + resblock(8, 8, 8 + 4, 4, 16) + resblock(8, 8, 4 + 4, 4, 16)  # up.1 pops 4, 4
        + conv(8, 8, 4, 3)  # conv_out
    )
    assert count_flops(cfg) == hand
    # the same model run at twice the resolution costs about 4x (attention grows faster)
    model = UNet(cfg)
    assert 4 * unet_flops(model) < unet_flops(model, 16, 16) < 5 * unet_flops(model)


def test_parameter_count_and_breakdown():
    cfg = UNetConfig(image_size=8, base_channels=4, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), groups=2, num_heads=1, num_classes=3)
    model = UNet(cfg)
    parts = parameter_breakdown(model)
    assert list(parts) == ["time_embed", "label_embed", "conv_in", "down.0", "down.1", "mid",
                           "up.0", "up.1", "out"]
    assert sum(parts.values()) == parameter_count(model)
    assert parts["time_embed"] == (4 * 16 + 16) + (16 * 16 + 16)
    assert parts["label_embed"] == 4 * 16  # 3 classes + null
    assert parts["conv_in"] == 3 * 9 * 4 + 4
    assert parts["out"] == 2 * 4 + 4 * 9 * 3 + 3  # GroupNorm scale+shift, conv_out


def test_default_config_is_a_small_model():
    n = parameter_count(UNet(UNetConfig(num_classes=8)))
    assert 0.5e6 < n < 3e6
    assert math.isclose(count_flops(UNetConfig()), count_flops(UNetConfig(num_classes=8)))


# ---- gradients ---------------------------------------------------------------------------

def test_gradient_reaches_every_parameter():
    model = with_random_output_conv(UNet(tiny(16, num_classes=3, dropout=0.1)))
    model.train()
    x, t = inputs(4, 16)
    y = mx.array([0, 1, 2, 3])

    def loss_fn(m):
        return ((m(x, t, y) - x) ** 2).mean()

    loss, grads = nn.value_and_grad(model, loss_fn)(model)
    assert np.isfinite(loss.item())
    flat = tree_flatten(grads)
    assert len(flat) == len(tree_flatten(model.trainable_parameters()))
    dead = [name for name, g in flat if not np.any(np.array(g) != 0)]
    assert dead == []


def test_the_unet_is_built_from_plain_mlx_layers():
    """A reader of unet.py meets mlx.nn only: the CPU speed-ups are swapped in by the trainer/sampler."""
    layer_types = {type(m) for _, m in UNet(tiny(16, num_classes=2)).named_modules()}
    assert all(t.__module__.startswith("mlx.") or t.__module__ == "diffusion_utils.unet" for t in layer_types)
    assert {nn.Conv2d, nn.GroupNorm, nn.SiLU, nn.Softmax} <= layer_types
