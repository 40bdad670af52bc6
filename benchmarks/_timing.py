"""Interleaved timing for the profiling scripts: each round runs every variant once, in a fresh
random order, so a burst of load from other processes hits all variants alike; medians are reported."""

from __future__ import annotations

import random
import time

import mlx.core as mx


def interleaved(variants: dict, rounds: int = 7, warmup: int = 2, seed: int = 0) -> dict[str, float]:
    """Median seconds per call of each zero-argument callable in `variants` (its outputs are evaluated)."""
    for fn in variants.values():
        for _ in range(warmup):
            mx.eval(fn())
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            mx.eval(variants[name]())
            times[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def report(title: str, medians: dict[str, float], flops: float | None = None) -> None:
    """Print one table: median ms, ratio to the first variant, and GFLOP/s when `flops` is given."""
    base = next(iter(medians.values()))
    print(f"\n## {title}")
    for name, sec in medians.items():
        rate = f"  {flops / sec / 1e9:7.1f} GFLOP/s" if flops else ""
        print(f"  {name:<34} {sec * 1e3:9.2f} ms  x{base / sec:5.2f}{rate}")
