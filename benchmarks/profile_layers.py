"""Profile the UNet's building blocks on this machine: plain MLX, `diffusion_utils.cpu.layers`, PyTorch.

    .venv/bin/python benchmarks/profile_layers.py [--threads 1] [--batch 64] [--rounds 7] [--only conv ...]

For each op at the shapes the presets use, times the forward pass (eager, as in sampling) and
forward+backward (value_and_grad under mx.compile, as in the train step; PyTorch: backward())
of every variant, interleaved round by round
(`harness.time_interleaved`), and prints the median CPU time of this process
(robust to load from other processes) next to the wall time. Every MLX variant is first
checked against the plain MLX op (values and gradients). `--model quick` adds a per-layer
CPU-time breakdown of one eager forward pass of that preset's UNet.
"""

from __future__ import annotations

import argparse
import collections
import time
from dataclasses import replace

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils import styles, train, unet
from diffusion_utils.cpu import blas, layers, streams

import harness as bench
import mlx.core as mx
import mlx.nn as nn
import numpy as np


def im2col_conv(x, w, b):
    """3x3 'same' conv as one matmul on a 9x larger copy (pad + 9 shifted slices, concatenated)."""
    batch, height, width, channels = x.shape
    xp = mx.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = mx.concatenate([xp[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)], axis=-1)
    y = cols.reshape(-1, 9 * channels) @ w.reshape(w.shape[0], -1).T + b
    return y.reshape(batch, height, width, -1)


def group_norm_transposed(x, w, b):
    """What `nn.GroupNorm(8, C, pytorch_compatible=True)` computes: transpose, layer_norm, transpose back."""
    module = nn.GroupNorm(8, x.shape[-1], pytorch_compatible=True)
    return module._pytorch_compatible_group_norm(x) * w + b


def group_norm_fast(x, w, b):
    return layers._group_norm(x, w, b, 8, 1e-5)


def mlx_cases(batch):
    """name -> (flop count or None, args, {variant: fn(*args)}); variant 0 is the reference."""
    rng = np.random.default_rng(0)

    def arr(*shape, scale=1.0):
        return mx.array(scale * rng.standard_normal(shape), dtype=mx.float32)

    cases = {}
    for size, cin, cout in [(32, 32, 32), (16, 64, 64), (16, 96, 64), (8, 64, 64)]:
        args = (arr(batch, size, size, cin), arr(cout, 3, 3, cin, scale=0.05), arr(cout))
        cases[f"conv3x3 {size}x{size} {cin}->{cout}"] = (2.0 * batch * size * size * 9 * cin * cout, args, {
            "mx.conv2d": lambda x, w, b: mx.conv2d(x, w, padding=1) + b,
            "im2col + 1 matmul": im2col_conv,
            "layers.conv3x3 (9 shifted matmuls)": layers.conv3x3,
        })
    for size, channels in [(32, 32), (16, 64)]:
        args = (arr(batch, size, size, channels, scale=2.0) + 0.5, arr(channels), arr(channels))
        cases[f"GroupNorm(8) {size}x{size}x{channels}"] = (None, args, {
            "nn.GroupNorm(pytorch_compatible)": group_norm_transposed,
            "layers.GroupNorm": group_norm_fast,
        })
        cases[f"SiLU {size}x{size}x{channels}"] = (None, args[:1], {
            "nn.silu": nn.silu, "layers.silu": layers.silu})
        cases[f"GroupNorm+SiLU {size}x{size}x{channels}"] = (None, args, {
            "nn": lambda x, w, b: nn.silu(group_norm_transposed(x, w, b)),
            "layers": lambda x, w, b: layers.silu(group_norm_fast(x, w, b)),
        })
    scores = (arr(batch, 4, 64, 64, scale=3.0),)
    cases["softmax (B,4,64,64)"] = (None, scores, {
        "mx.softmax": lambda s: mx.softmax(s, axis=-1), "layers.softmax": layers.softmax})
    q = tuple(arr(batch, 4, 64, 16) for _ in range(3))
    cases["attention core (B,4,64,16)"] = (None, q, {
        "softmax(q k^T / sqrt d) v": lambda q, k, v: mx.softmax((q * 0.25) @ k.swapaxes(-1, -2), axis=-1) @ v,
        "mx.fast.scaled_dot_product_attention": lambda q, k, v: mx.fast.scaled_dot_product_attention(
            q, k, v, scale=0.25),
        "layers.softmax": lambda q, k, v: layers.softmax((q * 0.25) @ k.swapaxes(-1, -2)) @ v,
    })
    x = (arr(batch, 16, 16, 64),)
    cases["2x2 average pool 16x16x64"] = (None, x, {
        "reshape + mean": lambda x: x.reshape(batch, 8, 2, 8, 2, 64).mean(axis=(2, 4)),
        "4 strided slices": lambda x: 0.25 * (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2]
                                              + x[:, 1::2, 1::2]),
    })
    x = (arr(batch, 8, 8, 64),)
    cases["nearest 2x upsample 8x8x64"] = (None, x, {
        "broadcast + reshape": lambda x: mx.broadcast_to(
            x[:, :, None, :, None, :], (batch, 8, 2, 8, 2, 64)).reshape(batch, 16, 16, 64),
        "nn.Upsample(nearest)": nn.Upsample(2.0, mode="nearest"),
        "repeat twice": lambda x: mx.repeat(mx.repeat(x, 2, axis=1), 2, axis=2),
    })
    return cases


def torch_variant(name, args):
    """The PyTorch counterparts of case `name`: {variant: (tensors, fn)} (NCHW; NHWC too for convs)."""
    import torch
    import torch.nn.functional as F

    def tensor(a):
        a = torch.from_numpy(np.array(a))
        images = a.ndim == 4 and not name.startswith(("softmax", "att"))  # (B, H, W, C) -> (B, C, H, W)
        return a.permute(0, 3, 1, 2).contiguous() if images else a

    t = [tensor(a) for a in args]
    if name.startswith("conv3x3"):
        t[1] = torch.from_numpy(np.array(args[1])).permute(0, 3, 1, 2).contiguous()  # (O, I, kh, kw)
        last = [t[0].contiguous(memory_format=torch.channels_last), *t[1:]]
        return {"torch NCHW": (t, lambda x, w, b: F.conv2d(x, w, b, padding=1)),
                "torch channels_last": (last, lambda x, w, b: F.conv2d(x, w, b, padding=1))}
    functions = {
        "GroupNorm+SiLU": lambda x, w, b: F.silu(F.group_norm(x, 8, w, b)),
        "GroupNorm": lambda x, w, b: F.group_norm(x, 8, w, b),
        "SiLU": F.silu,
        "softmax": lambda s: torch.softmax(s, -1),
        "attention": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.25),
        "2x2": lambda x: F.avg_pool2d(x, 2),
        "nearest": lambda x: F.interpolate(x, scale_factor=2),
    }
    prefix = next(p for p in functions if name.startswith(p))
    return {"torch": (t, functions[prefix])}


def check(reference, fn, args):
    """Largest deviation of fn from reference, values and gradients, relative to the reference's scale."""
    ref_out, got_out = reference(*args), fn(*args)
    cot = mx.random.normal(ref_out.shape, key=mx.random.key(1))
    argnums = tuple(range(len(args)))
    ref_g = mx.grad(lambda *a: (reference(*a) * cot).sum(), argnums=argnums)(*args)
    got_g = mx.grad(lambda *a: (fn(*a) * cot).sum(), argnums=argnums)(*args)
    pairs = [(got_out, ref_out), *zip(got_g, ref_g, strict=True)]
    return max(float(mx.abs(g - r).max() / (mx.abs(r).max() + 1e-12)) for g, r in pairs)


def profile_ops(batch, rounds, only):
    has_torch = not isinstance(bench.load_torch_reference(), str)
    if has_torch:
        import torch
    for name, (flops, args, variants) in mlx_cases(batch).items():
        if only and not any(word in name for word in only):
            continue
        mx.eval(args)
        reference = next(iter(variants.values()))
        errors = {v: check(reference, fn, args) for v, fn in variants.items()}
        forward, both = {}, {}
        argnums = tuple(range(len(args)))
        for v, fn in variants.items():  # gradients w.r.t. every input; compiled, as in the train step
            grad = mx.compile(mx.value_and_grad(lambda *a, fn=fn: fn(*a).square().sum(), argnums=argnums))
            forward[v] = lambda fn=fn, args=args: mx.eval(fn(*args))
            both[v] = lambda grad=grad, args=args: mx.eval(grad(*args))
        for v, (tensors, fn) in (torch_variant(name, args).items() if has_torch else []):
            leaves = [a.clone().requires_grad_() for a in tensors]

            def run_forward(fn=fn, tensors=tensors):
                with torch.no_grad():
                    fn(*tensors)

            def run_both(fn=fn, leaves=leaves):
                fn(*leaves).square().sum().backward()

            forward[v], both[v] = run_forward, run_both
        for label, group, factor in (("forward", forward, 1), ("forward+backward", both, 3)):
            timed = bench.time_interleaved(group, rounds, 2)
            base = timed[next(iter(timed))]["cpu"]
            print(f"\n{name}, {label} (batch {batch})")
            for v, t in timed.items():
                rate = f"{factor * flops / t['cpu'] / 1e9:7.1f} GFLOP/cpu-s" if flops else ""
                err = f"max rel. err {errors[v]:.1e}" if v in errors else ""
                print(f"  {v:38s} cpu {t['cpu'] * 1e3:8.2f} ms  x{base / t['cpu']:5.2f}  "
                      f"wall {t['wall'] * 1e3:8.2f} ms  {rate}  {err}")


def profile_model(preset, batch):
    """CPU time per layer type of one eager forward pass of `preset`'s UNet (each layer evaluated alone)."""
    config = replace(train.PRESETS[preset].unet, num_classes=len(styles.STYLES))
    totals, counts = collections.Counter(), collections.Counter()

    def timed(kind, fn):
        def wrapper(self, *args):
            mx.eval([a for a in args if isinstance(a, mx.array)])
            start = time.process_time()
            out = fn(self, *args)
            mx.eval(out)
            totals[kind] += time.process_time() - start
            counts[kind] += 1
            return out
        return wrapper

    patched = {layers.Conv2d: "conv", layers.GroupNorm: "group norm", unet.AttentionBlock: "attention (all)",
               unet.Downsample: "downsample (pool+conv)", unet.Upsample: "upsample (repeat+conv)"}
    originals = {cls: cls.__call__ for cls in patched}
    for cls, kind in patched.items():
        cls.__call__ = timed(kind, cls.__call__)
    silu = unet.silu
    unet.silu = lambda x: timed("silu", lambda _, a: silu(a))(None, x)
    try:
        model = layers.use_fast_cpu_layers(unet.UNet(config))
        mx.eval(model.parameters())
        size = config.image_size
        x = mx.random.normal((batch, size, size, config.in_channels))
        t, y = mx.zeros((batch,), dtype=mx.int32), mx.zeros((batch,), dtype=mx.int32)
        for _ in range(2):
            mx.eval(model(x, t, y))
        totals.clear(), counts.clear()
        start = time.process_time()
        mx.eval(model(x, t, y))
        total = time.process_time() - start
    finally:
        for cls, call in originals.items():
            cls.__call__ = call
        unet.silu = silu
    print(f"\n{preset} UNet, one eager forward pass, batch {batch}: {total * 1e3:.1f} ms CPU "
          f"(layers nested in attention/up/downsample are counted in both)")
    for kind, seconds in totals.most_common():
        share = 100 * seconds / total
        print(f"  {kind:24s} {counts[kind]:3d} calls  {seconds * 1e3:8.1f} ms  {share:5.1f} %")


def compare_model(preset, rounds):
    """The preset's train step (compiled and not) and sampling forward, with `layers` vs the plain mlx ops.

    The plain variant is the same code with the layers' GPU guard forced on, i.e. exactly the
    mlx.nn layers (and `mx.softmax`); CPU time medians.
    """
    unet_config = replace(train.PRESETS[preset].unet, num_classes=len(styles.STYLES))
    config = train.get_preset(preset, unet=unet_config)
    variants = {}
    for plain in (False, True):
        def with_mode(fn, plain=plain):
            def run():
                original = layers._on_gpu
                layers._on_gpu = (lambda: True) if plain else original
                try:
                    fn()
                finally:
                    layers._on_gpu = original
            return run

        label = "plain mlx" if plain else "layers"
        mx.random.seed(0)
        case = bench._MLXCase(config, 64)
        eager = train.make_train_step(case.model, case.optimizer, case.schedule, compiled=False)
        variants[f"train step, compiled, {label}"] = with_mode(case.train_step)
        variants[f"train step, uncompiled, {label}"] = with_mode(
            lambda eager=eager, case=case: mx.eval(eager(case.x0, case.y), case.state))
        variants[f"sampling forward (64), {label}"] = with_mode(case.sample_step)
    timed = bench.time_interleaved(variants, rounds, 2)
    print(f"\n{preset} preset (train batch {config.batch_size}), median CPU time")
    for name, t in timed.items():
        print(f"  {name:40s} cpu {t['cpu'] * 1e3:8.1f} ms  wall {t['wall'] * 1e3:8.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, help="OpenBLAS and PyTorch threads")
    parser.add_argument("--only", nargs="*", help="substrings of the case names to run")
    parser.add_argument("--model", help="also break down one forward pass of this preset's UNet, and "
                        "time its train step and sampling forward with and without `layers`")
    args = parser.parse_args()
    threads = blas.set_blas_threads(args.threads) if args.threads else blas.blas_threads()
    streams.set_workers(1)  # one stream: these tables time single ops
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    print(f"MLX {mx.__version__} on {mx.default_device()}, BLAS {blas.blas_in_use()}, "
          f"{threads} threads, sgemm {blas.sgemm_gflops():.0f} GFLOP/s")
    profile_ops(args.batch, args.rounds, args.only)
    if args.model:
        profile_model(args.model, args.batch)
        compare_model(args.model, args.rounds)


if __name__ == "__main__":
    main()
