"""Check the structure judge by eye: its verdicts under real images and under a model's samples.

    .venv/bin/python benchmarks/structure_judge_check.py [--checkpoint data/pretrained/styles32]
        [--per-style 4] [--out structure_judge_check.png]

For each style, one row: `--per-style` real held-out images (`styles.held_out_styles`), then as
many samples of the checkpoint asked for that style (dpm++, 20 steps, its default guidance), and
under each the structure classifier's verdict: the class it picks (a style or "none") and its
probability, in red where that is not the style the image is meant to be. A number is only worth
what a person looking at the same images would say: open the PNG and check that the verdicts
agree with your eyes (a maze is not op art, uniform speckle is not drip).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils import checkpoint, classifier, files, paths, pipeline, styles, viz

import numpy as np


def verdicts(judge: classifier.StyleClassifier, images: np.ndarray) -> list[tuple[str, float]]:
    """uint8 images (N, H, W, 3) -> [(the judge's class name, its probability)] per image."""
    probs = classifier.class_probabilities(judge, images)  # (N, C)
    names = (*styles.STYLES, "none")[: judge.config.num_classes]  # a judge with a 9th class can reject
    return [(names[k], float(p[k])) for k, p in zip(probs.argmax(axis=1), probs, strict=True)]


def verdict_grid(judge, real: np.ndarray, samples: np.ndarray, per_style: int):
    """A figure: per style a row of `per_style` real images then `per_style` samples, verdicts beneath.

    real and samples: uint8 (8 * per_style, H, W, 3), grouped by style in `styles.STYLES` order.
    """
    rows = [
        np.concatenate(
            [real[k * per_style : (k + 1) * per_style], samples[k * per_style : (k + 1) * per_style]]
        )
        for k in range(len(styles.STYLES))
    ]
    images = np.concatenate(rows)  # (8 * 2 * per_style, H, W, 3)
    wanted = np.repeat(styles.STYLES, 2 * per_style)
    kinds = np.tile(np.repeat(["real", "model"], per_style), len(styles.STYLES))
    judged = verdicts(judge, images)
    titles = [
        f"{kind} {want}\n-> {name} {p:.2f}"
        for kind, want, (name, p) in zip(kinds, wanted, judged, strict=True)
    ]
    figure = viz.show_images(images, titles, nrow=2 * per_style, scale=1.25)
    for panel, want, (name, _) in zip(figure.axes, wanted, judged, strict=False):
        panel.title.set_color("black" if name == want else "red")
    figure.suptitle("structure judge: real (left half) | model (right half)", fontsize=9)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(paths.SHIPPED_MODEL_DIR))
    parser.add_argument("--per-style", type=int, default=4, help="real images and samples per style")
    parser.add_argument("--out", default="structure_judge_check.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = files.check_output_path(args.out, [".png"], "--out")
    model, schedule, info = checkpoint.load_model(args.checkpoint)
    per, size = args.per_style, info.image_size
    samples = np.concatenate(
        [
            pipeline.sample_model(
                model, schedule, info, n=per, style=name, sampler_name="dpm++", steps=20, seed=args.seed
            )[0]
            for name in styles.STYLES
        ]
    )
    real = np.concatenate(
        [styles.held_out_styles(per, size, args.seed, style=name)[0] for name in styles.STYLES]
    )
    judge, _ = classifier.load_or_train_classifier(image_size=info.image_size, input="structure")
    figure = verdict_grid(judge, real, samples, args.per_style)
    files.atomic_write(Path(out), lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    print(f"wrote {out}: open it and compare the verdicts with what you see")


if __name__ == "__main__":
    main()
