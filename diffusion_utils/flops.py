"""Forward FLOPs of the UNet, counted analytically from its layers' weight shapes.

2 FLOPs per multiply-add of every conv (`2 * H * W * k * k * C_in * C_out`), linear layer
(`2 * tokens * in * out`; the time MLP and the embedding projections count one token per
image) and attention matmul (`q k^T` and `softmax(.) v`, each `2 * L * L * C` for L = H * W
positions). Norms, activations, pooling, softmax and additions are not counted (they are
O(H * W * C), a few percent). A training step (forward + backward) costs about 3x this
(Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1).

The count walks the network's blocks in forward order, knowing each level's resolution: the
encoder halves it after every level that downsamples, the decoder doubles it back.
"""

from __future__ import annotations

from diffusion_utils.unet import AttentionBlock, DownLevel, MiddleBlock, ResBlock, UNet, UNetConfig, UpLevel

import mlx.nn as nn


def conv_flops(conv: nn.Conv2d, h: int, w: int) -> float:
    """Multiply-adds x 2 of a stride-1 'same' conv on an (h, w) map."""
    out_channels, kh, kw, in_channels = conv.weight.shape
    return 2.0 * h * w * kh * kw * in_channels * out_channels


def linear_flops(linear: nn.Linear, tokens: int) -> float:
    """Multiply-adds x 2 of a linear layer applied to `tokens` vectors."""
    out_features, in_features = linear.weight.shape
    return 2.0 * tokens * in_features * out_features


def res_block_flops(block: ResBlock, h: int, w: int) -> float:
    """Both 3x3 convs, the time-embedding projection and the 1x1 skip conv if there is one."""
    total = conv_flops(block.conv1, h, w) + conv_flops(block.conv2, h, w)
    total += linear_flops(block.emb_proj, 1)
    return total + (conv_flops(block.skip, h, w) if "skip" in block else 0.0)


def attention_flops(block: AttentionBlock, h: int, w: int) -> float:
    """The qkv and output projections over h * w tokens, and the two (L, L) matmuls of all heads."""
    tokens = h * w
    channels = block.proj.weight.shape[0]
    matmuls = 2 * (2.0 * tokens * tokens * channels)  # q k^T and (weights) v, all heads
    return linear_flops(block.qkv, tokens) + matmuls + linear_flops(block.proj, tokens)


def _blocks_flops(level: DownLevel | UpLevel | MiddleBlock, h: int, w: int) -> float:
    """The res blocks and attention blocks of one level, all at resolution (h, w)."""
    res_blocks = [level.res1, level.res2] if isinstance(level, MiddleBlock) else level.res_blocks
    attentions = [level.attention] if isinstance(level, MiddleBlock) else level.attentions
    return (sum(res_block_flops(b, h, w) for b in res_blocks)
            + sum(attention_flops(a, h, w) for a in attentions))


def unet_flops(model: UNet, height: int | None = None, width: int | None = None) -> float:
    """Forward FLOPs for ONE image of size (height, width), default `model.config.image_size`."""
    h = height if height is not None else model.config.image_size
    w = width if width is not None else h
    total = sum(linear_flops(layer, 1) for layer in model.time_embed.layers if isinstance(layer, nn.Linear))
    total += conv_flops(model.conv_in, h, w)
    for level in model.down:
        total += _blocks_flops(level, h, w)
        if level.downsample is not None:
            h, w = h // 2, w // 2
            total += conv_flops(level.downsample.conv, h, w)  # pool first, then the conv
    total += _blocks_flops(model.mid, h, w)
    for level in model.up:
        total += _blocks_flops(level, h, w)
        if level.upsample is not None:
            h, w = h * 2, w * 2
            total += conv_flops(level.upsample.conv, h, w)  # repeat first, then the conv
    return total + conv_flops(model.conv_out, h, w)


def count_flops(config: UNetConfig) -> float:
    """Forward FLOPs of one `config.image_size` image of a `UNet(config)` (see the module docstring)."""
    return unet_flops(UNet(config))
