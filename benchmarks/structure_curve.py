"""Follow a training run and measure structure accuracy as it goes: the curve the issue asks for.

    .venv/bin/python benchmarks/structure_curve.py --run runs/ldm64 --out runs/ldm64_curve [--every 1000]

Every time the run's checkpoint passes another multiple of `--every` steps, it is copied to
`--out/step_<N>/` (the Trainer keeps only its newest checkpoint) and measured with
`metrics.evaluate_checkpoint` (style and structure accuracy, per style) on `--n` samples. Each
measurement is one JSON line appended to `--out/curve.jsonl`; `--once` measures the snapshots
already in `--out` that have no line yet and exits (e.g. after the structure judge changed);
`--snapshot-only` copies checkpoints without measuring them (while the judges are not ready).
Stops when the run's checkpoint reaches `--until` steps.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils import checkpoint, files, metrics


def checkpoint_step(run: Path) -> int | None:
    """The step of the run's current checkpoint, or None while there is none (or it is being swapped)."""
    try:
        return int(checkpoint.read_config(run)[1]["step"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def snapshot(run: Path, out: Path, step: int) -> Path | None:
    """Copy the run's checkpoint folder to out/step_<step>/ (atomically: copy, then rename)."""
    target = out / f"step_{step:06d}"
    if target.exists():
        return target
    tmp = out / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / checkpoint.CHECKPOINT_DIR, tmp)
    if checkpoint_step(tmp) != step:  # the trainer saved again while we copied: try next time
        shutil.rmtree(tmp)
        return None
    tmp.rename(target)
    return target


def measure(folder: Path, args) -> dict:
    report = metrics.evaluate_checkpoint(folder, n=args.n, sampler_name=args.sampler, steps=args.steps,
                                         guidance=args.guidance, seed=0)
    keep = ("step", "style_accuracy", "structure_accuracy", "kid", "per_style", "seconds")
    return {"snapshot": folder.name, **{k: report[k] for k in keep if k in report}}


def append(out: Path, row: dict) -> None:
    path = out / "curve.jsonl"
    old = path.read_text() if path.exists() else ""
    files.atomic_write_text(path, old + json.dumps(row) + "\n")
    print(f"step {row['step']}: style {row['style_accuracy']:.3f}, structure {row['structure_accuracy']:.3f}",
          flush=True)


def measured(out: Path) -> set[str]:
    path = out / "curve.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {json.loads(line)["snapshot"] for line in lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--until", type=int, default=10**9)
    parser.add_argument("--n", type=int, default=72)
    parser.add_argument("--sampler", default="dpm++")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--snapshot-only", action="store_true", help="copy checkpoints; measure with --once")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    while True:
        step = checkpoint_step(args.run)
        if step is not None and step % args.every == 0:
            snapshot(args.run, args.out, step)
        for folder in [] if args.snapshot_only else sorted(args.out.glob("step_*")):
            if folder.name not in measured(args.out):
                try:
                    append(args.out, measure(folder, args))
                except ValueError as err:  # e.g. the judges cannot score this model yet: kept for --once
                    print(f"{folder.name} not measured: {err}", flush=True)
                    break
        if args.once or (step is not None and step >= args.until):
            return
        time.sleep(20)


if __name__ == "__main__":
    main()
