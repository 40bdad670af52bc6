"""One stream with a multi-threaded OpenBLAS vs a stream per core (`cpu/streams.py`), in one run.

    .venv/bin/python benchmarks/streams.py [--preset quick full] [--repeats 7]

Times the compiled train step and the sampling forward pass (batch 64) of each preset both ways,
in blocks (A B A B, each `--repeats` calls after two untimed ones: OpenBLAS's threads keep
spinning for a while after a call, which would slow whatever runs right after a multi-threaded
call), and prints images/s (median of each block, mean of the two blocks) and the speed-up.
"""

from __future__ import annotations

import argparse

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils import train
from diffusion_utils.cpu import streams

import harness as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["quick", "full"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    cores = streams.cpu_cores()
    print(f"{cores} cores; images/s")
    print("| preset | phase | 1 stream, OpenBLAS on all cores | a stream per core | speed-up |")
    print("|---|---|---|---|---|")
    for name in args.preset:
        config = train.get_preset(name)
        cases = {}
        for count in (1, cores):
            streams.set_workers(count)  # make_fastest_train_step picks its form when built
            cases[count] = bench._MLXCase(config, bench.SAMPLE_BATCH)
        for phase, batch in (("train", config.batch_size), ("sample", bench.SAMPLE_BATCH)):
            def variant(count, fn):
                def run():
                    streams.set_workers(count)
                    fn()
                return run

            seconds = {c: [] for c in cases}
            for _ in range(2):
                for count, case in cases.items():
                    timed = bench.time_interleaved({count: variant(count, getattr(case, f"{phase}_step"))},
                                                   args.repeats, warmup=2)
                    seconds[count].append(timed[count]["wall"])
            one, many = (2 * batch / sum(seconds[c]) for c in (1, cores))
            print(f"| {name} | {phase} | {one:.1f} | {many:.1f} | {many / one:.2f}x |")
    streams.set_workers()


if __name__ == "__main__":
    main()
