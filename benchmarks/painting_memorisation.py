"""How closely a model's "painting" samples copy its training crops: each sample beside its nearest one.

    .venv/bin/python benchmarks/painting_memorisation.py --checkpoint data/pretrained/latent64 \
        [--n 16] [--out data/pretrained/latent64/painting_memorisation.png]

174 paintings, as 6 crops each, are few enough for a model to memorise. This samples `--n` images
of the class "painting" (DPM-Solver++, the pipeline's defaults), finds each one's nearest training
image by RMS pixel distance (`metrics.nearest_neighbour_distances`, mirrors included since training
flips), and draws sample / nearest training image pairs labelled with the distance. For scale it
prints the same distances for 8 samples of each other class against that class's training images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils import checkpoint, data, files, metrics, pipeline, viz

import numpy as np


def nearest_of_class(model, schedule, info, trained: data.Dataset, name: str, n: int):
    """(samples, their nearest training images of class `name` (with mirrors), distances)."""
    samples, _ = pipeline.sample_model(model, schedule, info, n=n, style=name, seed=0)
    own = trained.images[trained.labels == trained.class_names.index(name)]
    seen = np.concatenate([own, own[:, :, ::-1]])
    distances, index = metrics.nearest_neighbour_distances(samples, seen)
    return samples, seen[index], distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model, schedule, info = checkpoint.load_model(args.checkpoint)
    if "painting" not in info.class_names:
        raise SystemExit(f"{args.checkpoint} has no class 'painting' "
                         f"(classes: {', '.join(info.class_names)})")
    trained = data.load_dataset(info.train_config["dataset"], size=info.image_size,
                                seed=info.train_config["seed"])
    samples, nearest, distances = nearest_of_class(model, schedule, info, trained, "painting", args.n)
    print(f"painting: nearest-training RMS distance median {np.median(distances):.3f}, "
          f"min {distances.min():.3f} over {args.n} samples")
    for name in info.class_names[:-1]:
        _, _, d = nearest_of_class(model, schedule, info, trained, name, 8)
        print(f"  {name:>15s}: median {np.median(d):.3f}")
    pairs = np.stack([samples, nearest], axis=1).reshape(-1, *samples.shape[1:])
    figure = viz.show_labelled_grid(
        pairs, nrow=8, col_labels=["sample", "nearest"] * 4,
        title=f"'painting' samples beside their nearest training crop (RMS distance median "
              f"{np.median(distances):.3f})")
    out = args.out or args.checkpoint / "painting_memorisation.png"
    files.atomic_write(out, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
