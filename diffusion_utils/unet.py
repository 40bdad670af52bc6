"""The UNet noise predictor: `model(x, t, y=None)` -> a tensor shaped like `x`.

The architecture of DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
appendix B) with the refinements of Nichol & Dhariwal 2021 ("Improved DDPM", and
Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", the ADM network): a sinusoidal
embedding of the timestep (Vaswani et al. 2017) fed through an MLP; residual blocks
(GroupNorm, SiLU, 3x3 conv) that add the time embedding between their two convs;
self-attention at the lowest resolution(s); skip connections from every encoder block to
the decoder; an optional class (style) embedding added to the time embedding, with one
extra "null" class for classifier-free guidance (Ho & Salimans 2022); and an output conv
initialised to zero, so that the untrained network predicts exactly zero.

Images are channels-last, `(B, H, W, C)`. The network knows nothing about noise or
schedules: it maps `(x, t, y)` to a tensor of the same shape as `x`.

Every layer is plain `mlx.nn` (Conv2d, GroupNorm with PyTorch's grouping, SiLU, Softmax).
Downsampling is a 2x2 average pool followed by a 3x3 conv, and upsampling a nearest-neighbour
repeat followed by a 3x3 conv: transposed and stride-2 convs would be the textbook choice, but
their gradients take a slow path in MLX on CPU. On a CPU the trainer and the sampler swap these
layers for faster ones with the same parameters (`diffusion_utils.cpu.use_fast_cpu_layers`);
nothing in this file depends on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from diffusion_utils.checks import Row, check_fields, int_at_least, is_number, known_keys

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


def timestep_embedding(t: mx.array, dim: int, max_period: float = 10000.0) -> mx.array:
    """Sinusoidal embedding of timesteps (Vaswani et al. 2017, as used by Ho et al. 2020).

    Args:
        t: (B,) timesteps, int or float (fractional t is fine).
        dim: embedding size, even.
        max_period: the slowest frequency's period, in timesteps.

    Returns:
        (B, dim) float32: `[sin(t * f_0), ..., sin(t * f_{k-1}), cos(t * f_0), ..., cos(t * f_{k-1})]`
        with `k = dim // 2` and frequencies `f_i = max_period ** (-i / k)`, from 1 down to
        about `1 / max_period`. Every entry lies in [-1, 1], and t = 0 gives `k` zeros
        followed by `k` ones.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"timestep_embedding: dim must be an even number >= 2, got {dim}")
    half = dim // 2
    freqs = mx.exp(-math.log(max_period) * mx.arange(half, dtype=mx.float32) / half)  # (k,)
    args = t.astype(mx.float32)[:, None] * freqs[None, :]  # (B, k)
    return mx.concatenate([mx.sin(args), mx.cos(args)], axis=-1)  # (B, dim)


_POSITIVE = int_at_least(1)
# UNetConfig's fields, one row each: (name, test, what it must be)
_UNET_FIELD_CHECKS: tuple[Row, ...] = (
    *((name, _POSITIVE, "a positive integer")
      for name in ("image_size", "in_channels", "base_channels", "num_res_blocks", "groups", "num_heads")),
    ("channel_mults", lambda mults: bool(mults) and all(map(_POSITIVE, mults)),
     "a non-empty list of positive integers"),
    ("num_classes", int_at_least(0), "an integer >= 0"),
    ("dropout", lambda p: is_number(p) and 0.0 <= p < 1.0, "in [0, 1)"),
)


@dataclass
class UNetConfig:
    """Everything needed to rebuild a `UNet` (stored as JSON in checkpoints)."""

    image_size: int = 32  # training resolution; other sizes divisible by 2**(levels-1) also run
    in_channels: int = 3  # RGB
    base_channels: int = 32  # channels of the first level; ~1.7M parameters with the defaults
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level per entry: 32x32, 16x16, 8x8
    num_res_blocks: int = 2  # residual blocks per encoder level (the decoder has one more)
    attention_resolutions: tuple[int, ...] = (8,)  # resolutions (pixels) with self-attention
    num_classes: int = 0  # styles; 0 = unconditional
    dropout: float = 0.0  # inside residual blocks; helps on small data sets (Nichol & Dhariwal)
    groups: int = 8  # GroupNorm groups; must divide every channel count
    num_heads: int = 4  # attention heads; must divide the channels of attention levels

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)
        self.validate()

    @property
    def levels(self) -> int:
        return len(self.channel_mults)

    def resolution(self, level: int) -> int:
        """Side length of feature maps at `level` when the input is `image_size` wide."""
        return self.image_size // 2**level

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad field: the table, then across fields."""
        check_fields(self, _UNET_FIELD_CHECKS)
        factor = 2 ** (self.levels - 1)
        if self.image_size % factor:
            raise ValueError(f"UNetConfig.image_size={self.image_size} must be divisible by {factor} "
                             f"(2**(levels-1) for {self.levels} levels)")
        level_sizes = [self.resolution(i) for i in range(self.levels)]
        for r in self.attention_resolutions:
            if r not in level_sizes:
                raise ValueError(f"UNetConfig.attention_resolutions: {r!r} is not one of the level "
                                 f"resolutions {level_sizes}")
        for i, m in enumerate(self.channel_mults):
            channels = self.base_channels * m
            if channels % self.groups:
                raise ValueError(f"UNetConfig.groups={self.groups} must divide every level's channels, "
                                 f"but not {channels}")
            attends = self.resolution(i) in self.attention_resolutions or i == self.levels - 1
            if attends and channels % self.num_heads:
                raise ValueError(f"UNetConfig.num_heads={self.num_heads} must divide the channels of every "
                                 f"attention level, but not {channels}")

    def to_dict(self) -> dict:
        """A JSON-safe dict (tuples become lists)."""
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of `to_dict`; unknown keys or bad values raise a one-line ValueError."""
        d = dict(known_keys(cls, d))
        for key in ("channel_mults", "attention_resolutions"):
            if key in d:
                if not isinstance(d[key], (list, tuple)):
                    raise ValueError(f"UNetConfig.{key} must be a list, got {d[key]!r}")
                d[key] = tuple(d[key])
        return cls(**d)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def _group_norm(groups: int, channels: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with PyTorch's grouping, as in every diffusion UNet: group g holds
    the adjacent channels [g C/G, (g + 1) C/G)."""
    return nn.GroupNorm(groups, channels, pytorch_compatible=True)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> + time embedding -> GroupNorm -> SiLU -> dropout -> conv3x3,
    added to the input (through a 1x1 conv when the channel count changes). Ho et al. 2020.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1 = _group_norm(groups, in_channels)
        self.act = nn.SiLU()
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = _group_norm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def __call__(self, x: mx.array, emb: mx.array) -> mx.array:
        h = self.conv1(self.act(self.norm1(x)))  # (B, H, W, C_out)
        h = h + self.emb_proj(self.act(emb))[:, None, None, :]  # (B, 1, 1, C_out) broadcast
        h = self.conv2(self.dropout(self.act(self.norm2(h))))  # (B, H, W, C_out)
        return h + (self.skip(x) if "skip" in self else x)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection.

    GroupNorm, then q, k, v from one linear layer (a 1x1 conv in the papers),
    softmax(q k^T / sqrt(d)) v per head, an output projection, added to the input.
    """

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _group_norm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.softmax = nn.Softmax()  # over the last axis
        self.proj = nn.Linear(channels, channels)

    def __call__(self, x: mx.array) -> mx.array:
        B, H, W, C = x.shape
        heads, d = self.num_heads, C // self.num_heads
        qkv = self.qkv(self.norm(x).reshape(B, H * W, C))  # (B, L, 3C)
        qkv = qkv.reshape(B, H * W, 3 * heads, d).transpose(0, 2, 1, 3)  # (B, 3 * heads, L, d)
        q, k, v = mx.split(qkv, 3, axis=1)  # (B, heads, L, d) each; views (qkv[i] would copy, slowly)
        scores = (q * d**-0.5) @ k.swapaxes(-1, -2)  # (B, heads, L, L)
        out = self.softmax(scores) @ v  # (B, heads, L, d)
        out = out.transpose(0, 2, 1, 3).reshape(B, H, W, C)  # (B, H, W, C)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W: 2x2 average pool, then a 3x3 conv (channels unchanged)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def __call__(self, x: mx.array) -> mx.array:
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).mean(axis=(2, 4))  # (B, H/2, W/2, C)
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour repeat, then a 3x3 conv (channels unchanged)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def __call__(self, x: mx.array) -> mx.array:
        B, H, W, C = x.shape
        x = mx.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C))
        return self.conv(x.reshape(B, 2 * H, 2 * W, C))  # (B, 2H, 2W, C)


class DownLevel(nn.Module):
    """One encoder resolution: `n` x (ResBlock [+ attention]), then optionally Downsample.

    Every block's output is pushed onto `skips` (and so is the downsampled map), for the
    decoder to concatenate back in.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, config: UNetConfig,
                 attention: bool, downsample: bool):
        super().__init__()
        n = config.num_res_blocks
        self.res_blocks = [
            ResBlock(in_channels if i == 0 else out_channels, out_channels, emb_dim,
                     config.groups, config.dropout)
            for i in range(n)
        ]
        self.attentions = (
            [AttentionBlock(out_channels, config.num_heads, config.groups) for _ in range(n)]
            if attention else []
        )
        self.downsample = Downsample(out_channels) if downsample else None

    def __call__(self, h: mx.array, emb: mx.array, skips: list) -> mx.array:
        for i, block in enumerate(self.res_blocks):
            h = block(h, emb)
            if self.attentions:
                h = self.attentions[i](h)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h)
            skips.append(h)
        return h


class UpLevel(nn.Module):
    """One decoder resolution: `n + 1` x (concat skip -> ResBlock [+ attention]), then
    optionally Upsample. `skip_channels` lists the channels of the skips it pops, in order.
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: list[int],
                 emb_dim: int, config: UNetConfig, attention: bool, upsample: bool):
        super().__init__()
        self.res_blocks = []
        for skip in skip_channels:
            self.res_blocks.append(
                ResBlock(in_channels + skip, out_channels, emb_dim, config.groups, config.dropout)
            )
            in_channels = out_channels
        self.attentions = (
            [AttentionBlock(out_channels, config.num_heads, config.groups) for _ in skip_channels]
            if attention else []
        )
        self.upsample = Upsample(out_channels) if upsample else None

    def __call__(self, h: mx.array, emb: mx.array, skips: list) -> mx.array:
        for i, block in enumerate(self.res_blocks):
            h = block(mx.concatenate([h, skips.pop()], axis=-1), emb)  # (B, H, W, C + C_skip)
            if self.attentions:
                h = self.attentions[i](h)
        if self.upsample is not None:
            h = self.upsample(h)
        return h


class MiddleBlock(nn.Module):
    """At the lowest resolution: ResBlock -> self-attention -> ResBlock."""

    def __init__(self, channels: int, emb_dim: int, config: UNetConfig):
        super().__init__()
        self.res1 = ResBlock(channels, channels, emb_dim, config.groups, config.dropout)
        self.attention = AttentionBlock(channels, config.num_heads, config.groups)
        self.res2 = ResBlock(channels, channels, emb_dim, config.groups, config.dropout)

    def __call__(self, h: mx.array, emb: mx.array) -> mx.array:
        return self.res2(self.attention(self.res1(h, emb)), emb)


class UNet(nn.Module):
    """Noise predictor `model(x, t, y=None)`: x (B, H, W, C), t (B,), y (B,) int or None.

    Parameter groups (attribute names): `time_embed` (MLP on the sinusoidal embedding),
    `label_embed` (only when `num_classes > 0`), `conv_in`, `down` (one `DownLevel` per
    resolution), `mid`, `up` (one `UpLevel` per resolution, lowest first), `norm_out`,
    `conv_out` (zero at initialisation).
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        config = config if config is not None else UNetConfig()
        self.config = config
        ch = config.base_channels
        emb_dim = 4 * ch  # time embedding width, as in Ho et al. 2020
        # nn.silu as a function, not a layer: use_fast_cpu_layers leaves this (B, E) MLP as it is
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.silu, nn.Linear(emb_dim, emb_dim))
        if config.num_classes > 0:
            # one row per class plus the "null" class (label = num_classes) for guidance
            self.label_embed = nn.Embedding(config.num_classes + 1, emb_dim)
        self.conv_in = _conv3x3(config.in_channels, ch)

        level_channels = [ch * m for m in config.channel_mults]
        skip_channels = [ch]  # conv_in's output is the first skip
        self.down = []
        in_ch = ch
        for i, out_ch in enumerate(level_channels):
            last = i == config.levels - 1
            attention = config.resolution(i) in config.attention_resolutions
            self.down.append(DownLevel(in_ch, out_ch, emb_dim, config, attention, not last))
            skip_channels += [out_ch] * (config.num_res_blocks + (0 if last else 1))
            in_ch = out_ch

        self.mid = MiddleBlock(in_ch, emb_dim, config)

        self.up = []
        for i in reversed(range(config.levels)):
            out_ch = level_channels[i]
            pops = [skip_channels.pop() for _ in range(config.num_res_blocks + 1)]
            attention = config.resolution(i) in config.attention_resolutions
            self.up.append(UpLevel(in_ch, out_ch, pops, emb_dim, config, attention, i > 0))
            in_ch = out_ch

        self.norm_out = _group_norm(config.groups, in_ch)
        self.act_out = nn.SiLU()
        self.conv_out = _conv3x3(in_ch, config.in_channels)
        # Zero output conv: the untrained network predicts exactly 0 (Nichol & Dhariwal 2021).
        self.conv_out.weight = mx.zeros_like(self.conv_out.weight)
        self.conv_out.bias = mx.zeros_like(self.conv_out.bias)

    def _check_inputs(self, x: mx.array, t: mx.array, y: mx.array | None) -> None:
        cfg = self.config
        factor = 2 ** (cfg.levels - 1)
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(
                f"UNet expects x of shape (B, H, W, {cfg.in_channels}), got {tuple(x.shape)}"
            )
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"UNet: image height and width must be divisible by {factor} for "
                f"{cfg.levels} levels, got {x.shape[1]}x{x.shape[2]}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"UNet expects t of shape ({x.shape[0]},), got {tuple(t.shape)}")
        if y is not None:
            if cfg.num_classes == 0:
                raise ValueError("UNet: got class labels y but the model has num_classes=0")
            if y.shape != (x.shape[0],):
                raise ValueError(f"UNet expects y of shape ({x.shape[0]},), got {tuple(y.shape)}")

    def embed(self, t: mx.array, y: mx.array | None = None) -> mx.array:
        """The conditioning vector fed to every ResBlock: (B, 4 * base_channels).

        time MLP(sinusoidal(t)) plus, for a class-conditional model, the label embedding;
        `y=None` means the null class `num_classes` for every sample.
        """
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))  # (B, E)
        if "label_embed" in self:
            if y is None:
                y = mx.full((t.shape[0],), self.config.num_classes, dtype=mx.int32)
            emb = emb + self.label_embed(y)  # (B, E)
        return emb

    def __call__(self, x: mx.array, t: mx.array, y: mx.array | None = None) -> mx.array:
        return self._forward(x, t, y, shapes=None)

    def level_shapes(self, x: mx.array, t: mx.array,
                     y: mx.array | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """Run the network and return `(stage name, output shape)` after every stage.

        MLX has no forward hooks; this walks the same path as `__call__` and notes shapes.
        """
        shapes: list[tuple[str, tuple[int, ...]]] = []
        self._forward(x, t, y, shapes=shapes)
        return shapes

    def _forward(self, x, t, y, shapes):
        self._check_inputs(x, t, y)

        def note(name, h):
            if shapes is not None:
                shapes.append((name, tuple(h.shape)))

        emb = self.embed(t, y)  # (B, E)
        note("embedding", emb)
        h = self.conv_in(x)  # (B, H, W, C0)
        note("conv_in", h)
        skips = [h]
        for i, level in enumerate(self.down):
            h = level(h, emb, skips)  # (B, H / 2**(i+1), W / 2**(i+1), C_i), last level unpooled
            note(f"down.{i}", h)
        h = self.mid(h, emb)
        note("mid", h)
        for i, level in enumerate(self.up):
            h = level(h, emb, skips)
            note(f"up.{i}", h)
        out = self.conv_out(self.act_out(self.norm_out(h)))  # (B, H, W, in_channels)
        note("conv_out", out)
        return out


def parameter_count(model: nn.Module) -> int:
    """Total number of trainable scalars in `model`."""
    return sum(p.size for _, p in tree_flatten(model.trainable_parameters()))


def parameter_breakdown(model: UNet) -> dict[str, int]:
    """Parameters per part, in forward order: `time_embed`, `label_embed`, `conv_in`,
    `down.0`, `down.1`, ..., `mid`, `up.0`, ..., `out` (norm_out + conv_out)."""
    counts: dict[str, int] = {}
    for name, p in tree_flatten(model.trainable_parameters()):
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] in ("down", "up") else parts[0]
        key = "out" if key in ("norm_out", "conv_out") else key
        counts[key] = counts.get(key, 0) + p.size
    order = ["time_embed", "label_embed", "conv_in",
             *[f"down.{i}" for i in range(len(model.down))], "mid",
             *[f"up.{i}" for i in range(len(model.up))], "out"]
    return {k: counts[k] for k in order if k in counts}
