"""A PyTorch copy of `diffusion_utils.unet.UNet`, layer for layer, for the side-by-side benchmark.

Same blocks, channels, attention, skips and parameter count as the MLX network (asserted by
`tests/test_torch_reference.py`, which also loads MLX weights here and compares outputs), so
`python -m diffusion_utils bench` times the same function in both frameworks. PyTorch works
channels-first, `(B, C, H, W)`; `load_mlx_weights` transposes conv kernels from MLX's
`(O, kh, kw, I)` to PyTorch's `(O, I, kh, kw)`. Parameter names follow the MLX ones, so the
two state dicts match key for key (MLX's `time_embed.layers.i` is `time_embed.i` here).

Requires `torch` (the optional `bench` extra); nothing in `diffusion_utils` imports this file
unless PyTorch is installed.
"""

from __future__ import annotations

import math

from diffusion_utils.unet import UNetConfig

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, dim): `[sin(t f_i)..., cos(t f_i)...]`, as `diffusion_utils.unet.timestep_embedding`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, in_channels, out_channels, emb_dim, groups, dropout=0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + (self.skip(x) if self.skip is not None else x)


class AttentionBlock(nn.Module):
    def __init__(self, channels, num_heads, groups):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x):
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, L, C)
        qkv = self.qkv(tokens).reshape(B, H * W, 3, heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, L, d)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))  # (B, L, C)
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x):
        return self.conv(F.avg_pool2d(x, 2))


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class DownLevel(nn.Module):
    def __init__(self, in_channels, out_channels, emb_dim, config, attention, downsample):
        super().__init__()
        n = config.num_res_blocks
        self.res_blocks = nn.ModuleList(
            ResBlock(in_channels if i == 0 else out_channels, out_channels, emb_dim, config.groups,
                     config.dropout)
            for i in range(n)
        )
        blocks = n if attention else 0
        self.attentions = nn.ModuleList(
            AttentionBlock(out_channels, config.num_heads, config.groups) for _ in range(blocks)
        )
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, h, emb, skips):
        for i, block in enumerate(self.res_blocks):
            h = block(h, emb)
            if len(self.attentions):
                h = self.attentions[i](h)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h)
            skips.append(h)
        return h


class UpLevel(nn.Module):
    def __init__(self, in_channels, out_channels, skip_channels, emb_dim, config, attention, upsample):
        super().__init__()
        blocks = []
        for skip in skip_channels:
            blocks.append(ResBlock(in_channels + skip, out_channels, emb_dim, config.groups, config.dropout))
            in_channels = out_channels
        self.res_blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(
            AttentionBlock(out_channels, config.num_heads, config.groups)
            for _ in range(len(skip_channels) if attention else 0)
        )
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, h, emb, skips):
        for i, block in enumerate(self.res_blocks):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if len(self.attentions):
                h = self.attentions[i](h)
        if self.upsample is not None:
            h = self.upsample(h)
        return h


class MiddleBlock(nn.Module):
    def __init__(self, channels, emb_dim, config):
        super().__init__()
        self.res1 = ResBlock(channels, channels, emb_dim, config.groups, config.dropout)
        self.attention = AttentionBlock(channels, config.num_heads, config.groups)
        self.res2 = ResBlock(channels, channels, emb_dim, config.groups, config.dropout)

    def forward(self, h, emb):
        return self.res2(self.attention(self.res1(h, emb)), emb)


class TorchUNet(nn.Module):
    """`model(x, t, y=None)` with x (B, C, H, W): the MLX `UNet` of the same `UNetConfig`."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.base_channels
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes > 0 else None
        self.conv_in = _conv3x3(config.in_channels, ch)

        level_channels = [ch * m for m in config.channel_mults]
        skip_channels = [ch]
        down, in_ch = [], ch
        for i, out_ch in enumerate(level_channels):
            last = i == config.levels - 1
            attention = config.resolution(i) in config.attention_resolutions
            down.append(DownLevel(in_ch, out_ch, emb_dim, config, attention, not last))
            skip_channels += [out_ch] * (config.num_res_blocks + (0 if last else 1))
            in_ch = out_ch
        self.down = nn.ModuleList(down)
        self.mid = MiddleBlock(in_ch, emb_dim, config)
        up = []
        for i in reversed(range(config.levels)):
            out_ch = level_channels[i]
            pops = [skip_channels.pop() for _ in range(config.num_res_blocks + 1)]
            attention = config.resolution(i) in config.attention_resolutions
            up.append(UpLevel(in_ch, out_ch, pops, emb_dim, config, attention, i > 0))
            in_ch = out_ch
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(config.groups, in_ch)
        self.conv_out = _conv3x3(in_ch, config.in_channels)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, y=None):
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.config.num_classes, dtype=torch.long)
            emb = emb + self.label_embed(y)
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            h = level(h, emb, skips)
        h = self.mid(h, emb)
        for level in self.up:
            h = level(h, emb, skips)
        return self.conv_out(F.silu(self.norm_out(h)))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mlx_state_dict(mlx_model) -> dict[str, np.ndarray]:
    """The MLX model's parameters as numpy arrays under this module's names and layouts."""
    from mlx.utils import tree_flatten

    state = {}
    for name, value in tree_flatten(mlx_model.parameters()):
        array = np.array(value)
        if array.ndim == 4:  # conv kernel (O, kh, kw, I) -> (O, I, kh, kw)
            array = array.transpose(0, 3, 1, 2)
        state[name.replace("time_embed.layers.", "time_embed.")] = array
    return state


def load_mlx_weights(model: TorchUNet, mlx_model) -> TorchUNet:
    """Copy the weights of an MLX `UNet` into `model` (same config); every key must match."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in mlx_state_dict(mlx_model).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"MLX and PyTorch UNets differ: missing {missing}, unexpected {unexpected}")
    return model
