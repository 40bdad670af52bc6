"""Profile formulations of the UNet's 3x3 'same' conv in MLX, forward and forward+backward.

    .venv/bin/python benchmarks/profile_conv.py [--batch 64] [--size 32] [--channels 32 64 128]
"""

from __future__ import annotations

import argparse

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
import mlx.core as mx
import numpy as np

from _timing import interleaved, report


def conv_ref(x, w, b):
    return mx.conv2d(x, w, padding=1) + b


def _pad(x):
    return mx.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def _shifts(xp, H, W):
    return [xp[:, i:i + H, j:j + W, :] for i in range(3) for j in range(3)]


def conv_im2col_concat(x, w, b):
    B, H, W, C = x.shape
    cols = mx.concatenate(_shifts(_pad(x), H, W), axis=-1).reshape(B * H * W, 9 * C)
    return (cols @ w.reshape(w.shape[0], -1).T + b).reshape(B, H, W, -1)


def conv_im2col_stack(x, w, b):
    B, H, W, C = x.shape
    cols = mx.stack(_shifts(_pad(x), H, W), axis=3).reshape(B * H * W, 9 * C)
    return (cols @ w.reshape(w.shape[0], -1).T + b).reshape(B, H, W, -1)


def conv_shifted_matmuls(x, w, b):
    B, H, W, C = x.shape
    y = b
    for k, s in enumerate(_shifts(_pad(x), H, W)):
        y = y + s.reshape(B * H * W, C) @ w[:, k // 3, k % 3, :].T
    return y.reshape(B, H, W, -1)


def conv_matmul_then_shift(x, w, b):
    B, H, W, C = x.shape
    O = w.shape[0]
    xp = _pad(x)
    z = (xp.reshape(-1, C) @ w.transpose(3, 1, 2, 0).reshape(C, 9 * O)).reshape(B, H + 2, W + 2, 9, O)
    y = b
    for k in range(9):
        i, j = divmod(k, 3)
        y = y + z[:, i:i + H, j:j + W, k, :]
    return y


def _im2col(x):
    B, H, W, C = x.shape
    return mx.concatenate(_shifts(_pad(x), H, W), axis=-1).reshape(B * H * W, 9 * C)


@mx.custom_function
def conv_im2col_custom(x, w, b):
    B, H, W, _ = x.shape
    return (_im2col(x) @ w.reshape(w.shape[0], -1).T + b).reshape(B, H, W, -1)


@conv_im2col_custom.vjp
def _conv_im2col_custom_vjp(primals, cotangent, output):
    x, w, b = primals
    B, H, W, C = x.shape
    O = w.shape[0]
    g = cotangent.reshape(B * H * W, O)
    # input gradient: a 'same' conv of the cotangent with the flipped, transposed kernel
    w_t = w[:, ::-1, ::-1, :].transpose(1, 2, 0, 3).reshape(9 * O, C)  # (9*O, C)
    dx = (_im2col(cotangent) @ w_t).reshape(B, H, W, C)
    dw = (g.T @ _im2col(x)).reshape(w.shape)
    db = g.sum(axis=0)
    return dx, dw, db


VARIANTS = {
    "mx.conv2d": conv_ref,
    "im2col concat + 1 matmul": conv_im2col_concat,
    "im2col stack + 1 matmul": conv_im2col_stack,
    "9 shifted matmuls": conv_shifted_matmuls,
    "1 matmul, then 9 shifted adds": conv_matmul_then_shift,
    "im2col + custom vjp": conv_im2col_custom,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args()
    for C in args.channels:
        size = args.size if C <= 32 else args.size // 2 if C <= 64 else args.size // 4
        for H in sorted({args.size, size}, reverse=True):
            k = iter(mx.random.split(mx.random.key(0), 4))
            x = mx.random.normal((args.batch, H, H, C), key=next(k))
            w = mx.random.normal((C, 3, 3, C), key=next(k)) * 0.05
            b = mx.random.normal((C,), key=next(k))
            g = mx.random.normal((args.batch, H, H, C), key=next(k))
            mx.eval(x, w, b, g)
            flops = 2.0 * args.batch * H * H * 9 * C * C
            names = [n for n in VARIANTS if args.only is None or n in args.only or n == "mx.conv2d"]
            # numerical equivalence, forward and gradients
            ref = conv_ref(x, w, b)
            ref_g = mx.grad(lambda x, w, b: (conv_ref(x, w, b) * g).sum(), argnums=(0, 1, 2))(x, w, b)
            for n in names:
                f = VARIANTS[n]
                out = f(x, w, b)
                grads = mx.grad(lambda x, w, b, f=f: (f(x, w, b) * g).sum(), argnums=(0, 1, 2))(x, w, b)
                err = max(float(mx.abs(out - ref).max()),
                          *[float(mx.abs(a - r).max() / (mx.abs(r).max() + 1e-12)) for a, r in zip(grads, ref_g)])
                assert err < 1e-3, (n, err)
            fwd = {n: (lambda f=VARIANTS[n]: f(x, w, b)) for n in names}
            fwd_c = {n + " [compiled]": (lambda f=mx.compile(VARIANTS[n]): f(x, w, b)) for n in names}
            report(f"forward, x={tuple(x.shape)}, 3x3 {C}->{C}", interleaved({**fwd, **fwd_c}, args.rounds), flops)
            vg = {}
            for n in names:
                f = VARIANTS[n]
                grad_fn = mx.value_and_grad(lambda x, w, b, f=f: (f(x, w, b) * g).sum(), argnums=(0, 1, 2))
                vg[n] = (lambda gf=grad_fn: gf(x, w, b))
                vg[n + " [compiled]"] = (lambda gf=mx.compile(grad_fn): gf(x, w, b))
            report(f"forward+backward (value_and_grad wrt x, w, b), x={tuple(x.shape)}, 3x3 {C}->{C}",
                   interleaved(vg, args.rounds), 3 * flops)


if __name__ == "__main__":
    main()
