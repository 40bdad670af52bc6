"""Train the latent-diffusion autoencoder for a wall-time budget, then measure held-out PSNR.

    .venv/bin/python benchmarks/autoencoder_psnr.py [--minutes 10] [--n-train 4096] [--out runs/ae_psnr]
    .venv/bin/python benchmarks/autoencoder_psnr.py --checkpoint data/pretrained/autoencoder64 --out DIR

Trains `autoencoder.AutoencoderConfig()` (f = 4, 4 latent channels) on `--n-train` 64 px procedural
images of all 8 styles, then reconstructs (through the posterior mean) images it never saw: 24 per
style from `styles.held_out_styles` and the 174 paintings at 64 px. Prints PSNR per style, on
paintings, the scale factor and the training speed; writes `results.json` and `reconstructions.png`
(for each style and for paintings: originals above their reconstructions) into `--out`.
`--resume` continues the run in `--out` for another budget; `--checkpoint` only measures a trained
autoencoder (e.g. one made by `train-autoencoder`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils import autoencoder, data, files, styles, viz

import mlx.core as mx
import numpy as np

PER_STYLE = 24  # held-out images per style
SHOWN = 4  # images per group in the grid


def held_out_sets() -> dict[str, np.ndarray]:
    """{style name or "paintings": uint8 (n, 64, 64, 3)} of images no training run sees."""
    images, labels = styles.held_out_styles(PER_STYLE * len(styles.STYLES), size=64, seed=0)
    sets = {name: images[labels == i] for i, name in enumerate(styles.STYLES)}
    try:
        sets["paintings"], _ = data.load_paintings(64)
    except (FileNotFoundError, ValueError) as err:
        print(f"paintings skipped: {err}")
    return sets


def save_reconstruction_grid(sets, recons, psnrs, path: Path) -> None:
    """Two rows per group (originals, reconstructions), SHOWN images each, labelled with the PSNR."""
    rows, labels = [], []
    for name, images in sets.items():
        rows += [images[:SHOWN], recons[name][:SHOWN]]
        labels += [f"{name}", f"recon {psnrs[name]:.1f} dB"]
    figure = viz.show_labelled_grid(np.concatenate(rows), nrow=SHOWN, row_labels=labels,
                                    title="held-out originals (odd rows) and reconstructions", scale=1.4)
    files.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def report(model: autoencoder.Autoencoder, out: Path, results: dict) -> None:
    """Reconstruct the held-out sets, print PSNR per group, write results.json and reconstructions.png."""
    sets = held_out_sets()
    recons = {name: autoencoder.reconstruct(model, images) for name, images in sets.items()}
    psnrs = {name: autoencoder.psnr(images, recons[name]) for name, images in sets.items()}
    style_psnrs = [psnrs[name] for name in styles.STYLES]
    for name, value in psnrs.items():
        print(f"  {name:>15s}  {value:5.2f} dB")
    print(f"  {'styles (mean)':>15s}  {np.mean(style_psnrs):5.2f} dB; scale {model.config.scale_factor:.4f}")
    results = {**results, "psnr_db": {k: round(v, 2) for k, v in psnrs.items()},
               "psnr_styles_mean_db": round(float(np.mean(style_psnrs)), 2),
               "scale_factor": model.config.scale_factor, "device": str(mx.default_device())}
    out.mkdir(parents=True, exist_ok=True)
    files.atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    save_reconstruction_grid(sets, recons, psnrs, out / "reconstructions.png")
    print(f"wrote {out / 'results.json'} and {out / 'reconstructions.png'}")


def train(args) -> tuple[autoencoder.Autoencoder, dict]:
    """Train for the wall-time budget; (model, what to record of the run)."""
    config = autoencoder.AutoencoderConfig()
    train_images, _ = styles.make_styles(args.n_train, size=64, seed=0)
    start = time.perf_counter()
    model, history = autoencoder.train_autoencoder(config, train_images, args.steps, args.out,
                                                   resume=args.resume, max_seconds=60 * args.minutes)
    seconds = time.perf_counter() - start
    steps = history[-1][0]
    print(f"trained to step {steps} ({steps * config.batch_size} images) in {seconds:.0f} s this run; "
          f"device {mx.default_device()}; last rec (L1) {np.mean([r[2] for r in history[-20:]]):.4f}")
    return model, {"step": steps, "train_images": args.n_train, "batch_size": config.batch_size,
                   "seconds_this_run": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall-time budget")
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=100_000, help="upper bound; the budget stops first")
    parser.add_argument("--out", type=Path, default=Path("runs/ae_psnr"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint", type=Path, help="measure this trained autoencoder; no training")
    args = parser.parse_args()
    if args.checkpoint is None:
        model, results = train(args)
    else:
        model = autoencoder.load_autoencoder(args.checkpoint)
        step = autoencoder.read_checkpoint(args.checkpoint)[1]["step"]
        results = {"checkpoint": str(args.checkpoint), "step": step}
    report(model, args.out, results)


if __name__ == "__main__":
    main()
