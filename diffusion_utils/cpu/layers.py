"""Faster CPU versions of the mlx.nn layers the networks use, `use_fast_cpu_layers(model)` and
`use_fast_cpu_sampling(model)`.

The networks (`unet.py`, ...) are written with plain `mlx.nn` layers. On MLX's CPU backend some
of those are slow, so the trainer and the sampler call `use_fast_cpu_layers(model)`, which
swaps each `nn.Conv2d`, `nn.GroupNorm`, `nn.SiLU` and `nn.Softmax` in place for the subclass
below: same parameter names and shapes (checkpoints load either way), the same function to
float32 rounding (tests/test_layers.py compares values and gradients). What each trick buys was
measured with `benchmarks/profile_layers.py` on a 2-core x86_64 Linux machine (MLX 0.32.4
with OpenBLAS, batch 64, 32x32); see `benchmarks/PROFILE.md`.

Why MLX needs help on CPU: its 3x3 convolution copies a 9x larger im2col matrix before the
matmul and differentiates through a slow generic path; its transcendental element-wise ops
(`exp`, `sigmoid`, `tanh`) run a scalar polynomial with library calls per element; and
`GroupNorm(pytorch_compatible=True)` transposes the tensor twice. On a GPU (Metal or CUDA)
none of that holds and the plain mlx ops are the fast path: `use_fast_cpu_layers` does nothing
there, and every layer here also falls back to the mlx op when it runs on a GPU.
"""

from __future__ import annotations

from diffusion_utils.cpu import streams

import mlx.core as mx
import mlx.nn as nn


def _compiled(fn):
    """`mx.compile(fn)`, traced once per stream (see `streams.per_stream`)."""
    return streams.per_stream(lambda: mx.compile(fn))


def _on_gpu() -> bool:
    """True when MLX computes on a GPU, where the plain mlx ops are already fast."""
    return mx.default_device().type == mx.DeviceType.gpu


# --- exp, SiLU, softmax ------------------------------------------------------------------
# MLX's CPU `exp` (and `sigmoid`, `softmax`, which use it) evaluates a polynomial one element
# at a time through library calls: ~10 ns per element, 20x a multiply. The same polynomial
# written with plain array ops is fused by `mx.compile` into one vectorised loop: `exp` ~6x,
# SiLU ~4x, softmax ~3.5x faster, with the same relative error (~1e-7). Being made of
# rounding and bit tricks it has no useful autodiff, so SiLU and softmax carry their own
# (exact) gradients.

_ROUND = 12582912.0  # 1.5 * 2**23: (v + _ROUND) - _ROUND rounds a float32 |v| < 2**22 to an integer
_EXP2_POLY = (1.0, 6.931472028550421e-1, 2.402264791363012e-1, 5.550332471162809e-2,
              9.618437357674640e-3, 1.339887440266574e-3, 1.535336188319500e-4)  # 2**f, |f| <= 1/2


def _exp(x: mx.array) -> mx.array:
    """e**x = 2**n * 2**f with n = round(x log2 e): the polynomial for 2**f, the bits of 2**n."""
    t = mx.clip(x, -87.0, 88.0) * 1.4426950408889634  # x log2(e), clamped to float32's range
    n = (t + _ROUND) - _ROUND  # nearest integer
    p = _EXP2_POLY[-1]
    for c in _EXP2_POLY[-2::-1]:
        p = p * (t - n) + c  # Horner, f = t - n in [-1/2, 1/2]
    two_n = mx.left_shift(n.astype(mx.int32) + 127, 23).view(mx.float32)  # exponent bits of 2**n
    return p * two_n


@_compiled
def _silu_forward(x: mx.array) -> mx.array:
    return x / (1.0 + _exp(-x))


@_compiled
def _silu_backward(x: mx.array, cotangent: mx.array) -> mx.array:
    s = 1.0 / (1.0 + _exp(-x))  # sigmoid(x)
    return cotangent * (s + x * s * (1.0 - s))  # d/dx [x s(x)] = s + x s (1 - s)


@mx.custom_function
def _silu_fast(x: mx.array) -> mx.array:
    return _silu_forward(x)


@_silu_fast.vjp
def _silu_fast_vjp(x, cotangent, output):  # a single primal arrives as the array itself
    return _silu_backward(x, cotangent)


def silu(x: mx.array) -> mx.array:
    """SiLU / swish, `x * sigmoid(x)` (Elfwing et al. 2018); the values of `nn.silu`."""
    return nn.silu(x) if _on_gpu() else _silu_fast(x)


@_compiled
def _softmax_last(x: mx.array) -> mx.array:
    e = _exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@_compiled
def _softmax_last_backward(p: mx.array, cotangent: mx.array) -> mx.array:
    return p * (cotangent - (cotangent * p).sum(axis=-1, keepdims=True))


@mx.custom_function
def _softmax_fast(x: mx.array) -> mx.array:
    return _softmax_last(x)


@_softmax_fast.vjp
def _softmax_fast_vjp(x, cotangent, output):
    return _softmax_last_backward(output, cotangent)


def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis; the values of `mx.softmax(x, axis=-1)`."""
    return mx.softmax(x, axis=-1) if _on_gpu() else _softmax_fast(x)


# --- GroupNorm --------------------------------------------------------------------------
# `nn.GroupNorm(pytorch_compatible=True)` transposes (B, HW, G, C/G) to (B, G, HW, C/G) and
# back around `mx.fast.layer_norm`. Reducing over H and W first (a fast strided sum) and
# then over the channels of each group needs no transpose: ~3x faster forward, 2.5-5x
# forward+backward.


@_compiled
def _group_norm(x: mx.array, weight: mx.array, bias: mx.array, groups: int, eps: float) -> mx.array:
    batch, height, width, channels = x.shape
    size = channels // groups
    count = height * width * size  # elements per (image, group)

    def per_channel(stat):  # (B, G) -> (B, 1, 1, C), each group's value on its channels
        return mx.repeat(stat, size, axis=-1)[:, None, None, :]

    mean = x.sum(axis=(1, 2)).reshape(batch, groups, size).sum(-1) / count  # (B, G)
    centred = x - per_channel(mean)  # (B, H, W, C)
    var = (centred * centred).sum(axis=(1, 2)).reshape(batch, groups, size).sum(-1) / count
    return centred * (per_channel(mx.rsqrt(var + eps)) * weight) + bias


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` with the same parameters (`weight`, `bias`) and results.

    Group normalisation (Wu & He 2018) of channels-last maps. Unlike `nn.GroupNorm` it defaults
    to `pytorch_compatible=True`, the grouping of PyTorch and of every diffusion UNet: group g
    holds the adjacent channels `[g C/G, (g + 1) C/G)`. Then, with an affine transform, CPU
    uses the transpose-free formulation above; otherwise, and on a GPU, it is `nn.GroupNorm`.
    """

    def __init__(self, num_groups: int, dims: int, eps: float = 1e-5, affine: bool = True,
                 pytorch_compatible: bool = True):
        super().__init__(num_groups, dims, eps=eps, affine=affine, pytorch_compatible=pytorch_compatible)

    def __call__(self, x: mx.array) -> mx.array:
        if _on_gpu() or not self.pytorch_compatible or "weight" not in self or x.ndim != 4:
            return super().__call__(x)
        return _group_norm(x, self.weight, self.bias, self.num_groups, self.eps)


# --- Conv2d -----------------------------------------------------------------------------
# A 3x3 'same' conv as 9 matmuls on row-shifted slices of the zero-padded input, instead of
# `mx.conv2d`'s im2col copy (9x the input) and its slow generic backward. Flatten the batch to
# rows with a zero row below and a zero column right of every image, and a zero image before
# and after the batch: pixel (b, i, j) is row r = ((b + 1) (H + 1) + i) (W + 1) + j, and its
# neighbour (i + di, j + dj) is row r + di (W + 1) + dj, which is a zero when it falls outside
# the image (the zero column right of a row is also left of the next one; the zero row below
# an image is also above the next). So tap (di, dj) of the kernel multiplies one contiguous
# block of rows, a plain sgemm on a view, for every pixel at once; the rows of the zero row
# and column compute garbage that is sliced off (13% more rows at 16x16, 27% at 8x8). The
# backward pass is the same 9 shifted matmuls with the transposed kernel (input gradient)
# and 9 transposed matmuls (kernel gradient). Measured forward+backward: 2x `mx.conv2d`
# (benchmarks/PROFILE.md). A 1x1 conv is a single matmul.

_TAPS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)]  # kernel index (di + 1, dj + 1)


def _padded_rows(x: mx.array) -> mx.array:
    """(B, H, W, C) -> ((B+2)(H+1)(W+1), C): zero image before and after, zero row and column after each."""
    return mx.pad(x, ((1, 1), (0, 1), (0, 1), (0, 0))).reshape(-1, x.shape[-1])


def _real_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(first, count): the block of rows of `_padded_rows` that holds the B real images."""
    batch, height, width = shape
    return (height + 1) * (width + 1), batch * (height + 1) * (width + 1)


def _shifted_matmuls(rows: mx.array, kernels: list[mx.array], shape: tuple[int, ...],
                     sign: int, init: mx.array | None = None) -> mx.array:
    """For every real row r: sum over taps of rows[r + sign * offset(tap)] @ kernels[tap], plus `init`.

    Returns (B (H+1) (W+1), out) rows.
    """
    first, count = _real_rows(shape)
    out = init
    for (di, dj), kernel in zip(_TAPS, kernels, strict=True):
        start = first + sign * (di * (shape[2] + 1) + dj)
        block = rows[start:start + count]  # (count, in), a contiguous view
        out = block @ kernel if out is None else mx.addmm(out, block, kernel)
    return out


def _interior(rows: mx.array, shape: tuple[int, ...]) -> mx.array:
    """(B (H+1) (W+1), C) rows -> (B, H, W, C), without the zero row and column."""
    batch, height, width = shape
    return rows.reshape(batch, height + 1, width + 1, -1)[:, :height, :width, :]


@mx.custom_function
def conv3x3(x: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
    """'same' 3x3 conv, stride 1: x (B, H, W, C), weight (O, 3, 3, C), bias (O,) -> (B, H, W, O)."""
    shape = x.shape[:3]
    kernels = [weight[:, di + 1, dj + 1, :].T for di, dj in _TAPS]  # (C, O) each
    return _interior(_shifted_matmuls(_padded_rows(x), kernels, shape, +1, init=bias), shape)


@conv3x3.vjp
def _conv3x3_vjp(primals, cotangent, output):
    x, weight, _ = primals
    shape = x.shape[:3]
    first, count = _real_rows(shape)
    grad_rows = _padded_rows(cotangent)  # zero where the forward pass computed garbage
    kernels = [weight[:, di + 1, dj + 1, :] for di, dj in _TAPS]  # (O, C) each
    dx = _interior(_shifted_matmuls(grad_rows, kernels, shape, -1), shape)  # (B, H, W, C)
    rows, g = _padded_rows(x), grad_rows[first:first + count]  # g: (count, O)
    starts = [first + di * (shape[2] + 1) + dj for di, dj in _TAPS]
    dw = [g.T @ rows[start:start + count] for start in starts]  # (O, C) each
    dw = mx.stack(dw, axis=1).reshape(weight.shape)  # (O, 3, 3, C)
    return dx, dw, cotangent.sum(axis=(0, 1, 2))


def _pair(value) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` with the same parameters (`weight` (O, kh, kw, I), `bias` (O,)) and results.

    On CPU a 3x3 stride-1 padding-1 conv runs as `conv3x3` and a 1x1 conv as one matmul;
    everything else, and everything on a GPU, is `nn.Conv2d` itself.
    """

    def __call__(self, x: mx.array) -> mx.array:
        out_channels, kh, kw, _ = self.weight.shape
        plain = (_on_gpu() or "bias" not in self or self.groups != 1 or x.ndim != 4
                 or _pair(self.stride) != (1, 1) or _pair(self.dilation) != (1, 1))
        if not plain and (kh, kw) == (3, 3) and _pair(self.padding) == (1, 1):
            return conv3x3(x, self.weight, self.bias)
        if not plain and (kh, kw) == (1, 1) and _pair(self.padding) == (0, 0):
            return x @ self.weight.reshape(out_channels, -1).T + self.bias
        return super().__call__(x)


class SiLU(nn.SiLU):
    """`nn.SiLU` computed with `silu` above."""

    def __call__(self, x: mx.array) -> mx.array:
        return silu(x)


class Softmax(nn.Softmax):
    """`nn.Softmax` (over the last axis) computed with `softmax` above."""

    def __call__(self, x: mx.array) -> mx.array:
        return softmax(x)


FAST_LAYERS = {nn.Conv2d: Conv2d, nn.GroupNorm: GroupNorm, nn.SiLU: SiLU, nn.Softmax: Softmax}


def use_fast_cpu_layers(model: nn.Module) -> nn.Module:
    """Swap, in place, every plain mlx.nn layer of `model` that has a faster CPU version; returns it.

    Only the layers' classes change (their parameters are the same arrays under the same names),
    so weights, optimizer state and checkpoints are untouched, and the outputs agree to float32
    rounding. Does nothing on a GPU, where the plain layers are the fast ones.
    """
    if _on_gpu():
        return model
    for _, module in model.named_modules():
        fast = FAST_LAYERS.get(type(module))
        if fast is not None:
            module.__class__ = fast
    return model


def use_fast_cpu_sampling(model: nn.Module) -> nn.Module:
    """Prepare a network for sampling on a CPU, in place: `use_fast_cpu_layers(model)`, and each call
    split across the CPU streams (`streams.split_batches`); returns it. Does nothing on a GPU.

    The checkpoint loader and the trainer's previews apply it, so that the samplers, which call
    any `model(x, t, y)`, stay plain maths. Not for a model being trained: the train step splits
    its batch itself (`train_step.py`).
    """
    return streams.split_batches(use_fast_cpu_layers(model))
