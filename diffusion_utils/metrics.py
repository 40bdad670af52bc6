"""Honest evaluation of generated art: KID with its real-vs-real floor, memorisation, the report.

Features come from this project's style classifier (`classifier.py`), **not Inception**: the
numbers compare runs of *this* project with each other (samplers, step counts, guidance
scales, checkpoints); they are not comparable with FID/KID values in papers.

- Style accuracy (`classifier.style_accuracy`): the fraction of conditional samples that the
  classifier assigns to the style they were asked for.
- Structure accuracy: the same with the structure classifier (`classifier.py`, luminance only,
  trained on randomly recoloured images). The style classifier rewards a right palette; this
  one asks whether the sample has its style's shapes (stripes, rings, lead lines, trails). It
  can also answer "none of these" (a maze, speckle, blobs, a swirl: `negatives.py`), which
  counts as wrong: a sample scores only when the judge's top class is the style asked for.
  Both are reported overall and per style (`per_style`): an average hides a style that fails.
- KID, the Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs"): the
  unbiased estimator of the squared maximum mean discrepancy (Gretton et al. 2012, eq. 3) with
  the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets. KID is noisy
  and depends on the sample count, so it is always reported next to `kid_real_floor`: the KID
  between two disjoint sets of real held-out images of the same size as the generated set.
  The estimator is unbiased, so the floor is 0 in expectation (it can come out slightly
  negative) and its spread over subsets, `kid_real_floor_std`, is the noise level: a KID within
  a few of those of the floor cannot be told apart from real data at this sample count.
  Measured on real images at 32 px, n = 500: floor -0.01 +- 0.05; the same images blurred by a
  5-pixel cross 0.07; all of a single style 12.9. The classifier's features see styles and
  composition, not fine pixel noise (+-20 grey levels of uniform noise go unnoticed).
- Memorisation: for each sample, the distance to its nearest training image, compared with the
  same distance for real held-out images (which the model never saw). Distances are taken in
  pixel space, as the root-mean-square difference per value in [0, 1] (0 = an exact copy): a
  copy shows up there directly, whereas the style features would call any two images of one
  style close. A model that copies has samples much closer to the training set than held-out
  images are (cf. Carlini et al. 2023, "Extracting training data from diffusion models").

The `evaluate` command's pipeline (`evaluate_checkpoint`: load, sample, score, and
`format_report`) lives here too, at the end: it is these metrics put together, and keeping it
next to them means `classifier.py` stays about the network alone.
"""

from __future__ import annotations

import os
import time

from diffusion_utils import checkpoint, data, pipeline, styles
from diffusion_utils.classifier import (
    StyleClassifier,
    check_images,
    embed,
    load_or_train_classifier,
    predict,
)

import numpy as np

# --------------------------------------------------------------------------- KID


def _default_subset_size(n_a: int, n_b: int) -> int:
    return min(1000, min(n_a, n_b) // 2)  # half the smaller set: subsets differ, std is informative


def _polynomial_kernel(a: np.ndarray, b: np.ndarray, degree: int) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** degree  # (m, n)


def mmd2_unbiased(a: np.ndarray, b: np.ndarray, degree: int = 3) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) of features a (m, d), b (n, d), m, n >= 2.

    sum_{i!=j} k(a_i, a_j) / (m(m-1)) + sum_{i!=j} k(b_i, b_j) / (n(n-1))
    - 2 sum_{i,j} k(a_i, b_j) / (mn), with the polynomial kernel (a.b / d + 1)^degree.
    """
    m, n = len(a), len(b)
    ab = np.concatenate([a, b])  # (m+n, d): one matmul gives all three kernel blocks
    k = _polynomial_kernel(ab, ab, degree)  # (m+n, m+n)
    k_aa, k_bb, k_ab = k[:m, :m], k[m:, m:], k[:m, m:]
    return float(
        (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
        + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
        - 2.0 * k_ab.mean()
    )


def kid(
    features_a: np.ndarray,
    features_b: np.ndarray,
    degree: int = 3,
    subset_size: int | None = None,
    n_subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and std of the unbiased MMD^2 over random subsets.

    features_a (m, d), features_b (n, d). Each of `n_subsets` rounds draws `subset_size` rows
    from each set without replacement (default: half the smaller set, at most 1000, so the
    subsets differ and `std` shows the spread) and computes `mmd2_unbiased`. Unbiased, so
    the mean can be slightly negative when both sets come from one distribution.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs two (N, d) feature arrays, got {a.shape} and {b.shape}")
    smaller = min(len(a), len(b))
    subset_size = subset_size or _default_subset_size(len(a), len(b))
    if not 2 <= subset_size <= smaller:
        raise ValueError(f"KID subset_size must be in [2, {smaller}], got {subset_size}")
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            a[rng.choice(len(a), subset_size, replace=False)],
            b[rng.choice(len(b), subset_size, replace=False)],
            degree,
        )
        for _ in range(n_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def kid_real_floor(real_features: np.ndarray, n: int, **kid_kwargs) -> tuple[float, float]:
    """KID between real_features[n:2n] and real_features[:n]: the noise floor for n samples.

    Compare a generated set of n with `kid(generated, real_features[:n])`; both then use the
    same reference set and the same sample count. Needs at least 2n real (held-out) rows.
    """
    if len(real_features) < 2 * n:
        raise ValueError(f"the KID floor for n={n} needs {2 * n} real images, got {len(real_features)}")
    return kid(real_features[n : 2 * n], real_features[:n], **kid_kwargs)


# --------------------------------------------------------------------------- memorisation


def _as_points(x: np.ndarray) -> np.ndarray:
    """(N, ...) -> float32 (N, D); uint8 images are read as values in [0, 1]."""
    x = np.asarray(x)
    points = x.reshape(len(x), -1).astype(np.float32)
    return points / 255.0 if x.dtype == np.uint8 else points


def nearest_neighbour_distances(
    queries: np.ndarray, train: np.ndarray, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the distance to its nearest row of `train` and that row's index.

    queries (Q, ...) and train (M, ...) are flattened to vectors (uint8 images read as [0, 1]).
    Distance = root-mean-square difference per value, ||q - t|| / sqrt(D), so it does not grow
    with image size. Returns float64 distances (Q,) and int64 indices (Q,).
    """
    q = _as_points(queries)  # (Q, D)
    if len(train) == 0 or np.asarray(train)[0].size != q.shape[1]:
        raise ValueError("nearest-neighbour search needs a non-empty train set of the queries' shape")
    q_sq = (q**2).sum(axis=1)  # (Q,)
    best = np.full(len(q), np.inf)
    index = np.zeros(len(q), dtype=np.int64)
    for start in range(0, len(train), chunk):
        t = _as_points(train[start : start + chunk])  # (c, D)
        d2 = q_sq[:, None] - 2.0 * q @ t.T + (t**2).sum(axis=1)[None]  # (Q, c)
        j = d2.argmin(axis=1)
        closer = d2[np.arange(len(q)), j] < best
        best[closer] = d2[np.arange(len(q)), j][closer]
        index[closer] = j[closer] + start
    # The expansion above cancels badly near 0; recompute the winners' distances directly.
    diff = q.astype(np.float64) - _as_points(np.asarray(train)[index]).astype(np.float64)
    return np.sqrt((diff**2).mean(axis=1)), index


def memorisation_report(samples: np.ndarray, train: np.ndarray, held_out: np.ndarray) -> dict:
    """Nearest-training-image distances of samples vs real held-out images (all (N, ...)).

    Returns min / 5th percentile / median of both, and the fraction of samples closer to the
    training set than the held-out 5th percentile: about 0.05 for a model that generalises,
    near 1 for one that copies.
    """
    d_samples, _ = nearest_neighbour_distances(samples, train)
    d_held_out, _ = nearest_neighbour_distances(held_out, train)

    def summary(d):
        return {
            "min": float(d.min()),
            "p5": float(np.percentile(d, 5)),
            "median": float(np.median(d)),
        }

    held_out_p5 = np.percentile(d_held_out, 5)
    return {
        "distance": "RMS pixel difference in [0, 1] to the nearest training image",
        "samples": summary(d_samples),
        "held_out": summary(d_held_out),
        "fraction_closer_than_held_out_p5": float(np.mean(d_samples < held_out_p5)),
    }


# --------------------------------------------------------------------------- all together


def _checked_inputs(samples, train_images, held_out_images) -> tuple[np.ndarray, np.ndarray]:
    """`evaluate_samples`' images checked: (samples (n, ...), the first 2n held-out images)."""
    samples = check_images(samples, "samples")
    held_out = check_images(held_out_images, "held_out_images")
    check_images(train_images, "train_images")
    n = len(samples)
    if n < 4:
        raise ValueError(f"evaluation needs at least 4 samples, got {n}")
    if len(held_out) < 2 * n:
        raise ValueError(f"evaluating {n} samples needs {2 * n} held-out images, got {len(held_out)}")
    if samples.shape[1:] != held_out.shape[1:] or samples.shape[1:] != train_images.shape[1:]:
        raise ValueError("samples, training and held-out images must have the same size")
    return samples, held_out[: 2 * n]


def _mean_or_none(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if len(hits) else None


def style_and_structure_accuracy(
    classifier: StyleClassifier, structure_classifier: StyleClassifier | None,
    samples: np.ndarray, labels: np.ndarray,
) -> dict:  # fmt: skip
    """Style and structure accuracy of uint8 samples (n, H, W, 3) asked for `labels` (n,).

    Overall and per style. Labels index `styles.STYLES`; -1 (unconditional) samples are left out. Returns
    {"style_accuracy", "structure_accuracy", "n_labelled", "per_style": {style: {"style_accuracy",
    "structure_accuracy", "n"}}} with None where there is nothing to measure (no labelled
    samples, or no structure classifier).
    """
    labelled = np.asarray(labels) >= 0
    samples, labels = samples[labelled], np.asarray(labels)[labelled]
    judges = {"style_accuracy": classifier, "structure_accuracy": structure_classifier}
    hits = {
        name: predict(judge, samples) == labels if judge is not None and len(labels) else None
        for name, judge in judges.items()
    }  # (n_labelled,) bool each
    per_style = {
        style: {name: None if h is None else _mean_or_none(h[labels == k]) for name, h in hits.items()}
        | {"n": int((labels == k).sum())}
        for k, style in enumerate(styles.STYLES)
        if (labels == k).any()
    }
    overall = {name: None if h is None else _mean_or_none(h) for name, h in hits.items()}
    return {**overall, "n_labelled": int(labelled.sum()), "per_style": per_style}


def evaluate_samples(
    classifier: StyleClassifier,
    samples: np.ndarray,
    labels: np.ndarray | None,
    train_images: np.ndarray,
    held_out_images: np.ndarray,
    n_subsets: int = 100,
    seed: int = 0,
    structure_classifier: StyleClassifier | None = None,
) -> dict:
    """Every metric for n generated images, as a JSON-safe dict.

    samples uint8 (n, H, W, 3); labels (n,) the style each sample was asked for, -1 (or None)
    for unconditional ones; `structure_classifier` (optional) gives `structure_accuracy`;
    train_images uint8 (M, H, W, 3) the model's training set (searched
    with their mirror images too, as training sees random horizontal flips);
    held_out_images uint8 (>= 2n, H, W, 3) real images the model never saw: the first n are the
    KID reference, the next n give the real-vs-real floor, all 2n the memorisation baseline.
    """
    samples, held_out = _checked_inputs(samples, train_images, held_out_images)
    n = len(samples)
    seen = np.concatenate([train_images, train_images[:, :, ::-1]])  # (2M, H, W, 3) with flips

    real = embed(classifier, held_out)  # (2n, F)
    kid_mean, kid_std = kid(embed(classifier, samples), real[:n], n_subsets=n_subsets, seed=seed)
    floor_mean, floor_std = kid_real_floor(real, n, n_subsets=n_subsets, seed=seed)
    labels = np.full(n, -1) if labels is None else np.asarray(labels)
    return {
        "n": n,
        **style_and_structure_accuracy(classifier, structure_classifier, samples, labels),
        "kid": kid_mean,
        "kid_std": kid_std,
        "kid_real_floor": floor_mean,
        "kid_real_floor_std": floor_std,
        "kid_subset_size": _default_subset_size(n, n),
        "kid_n_subsets": n_subsets,
        "features": "this project's style classifier (not Inception): compare runs, not papers",
        "memorisation": memorisation_report(samples, seen, held_out),
    }


def _require_style_model(info: checkpoint.ModelInfo) -> None:
    """ValueError unless the checkpoint's model knows every art style (`styles.STYLES`; it may know more)."""
    if not set(styles.STYLES) <= set(info.class_names):
        trained_on = ", ".join(info.class_names) or "no classes"
        raise ValueError(f"evaluate needs a model trained on the art styles; {info.path} knows "
                         f"{trained_on}")


def _stage_seconds(clock: dict[str, float]) -> dict[str, float]:
    """Timestamps {stage: perf_counter} in order -> seconds each stage took, plus "total"."""
    stages = list(clock)
    seconds = {b: round(clock[b] - clock[a], 2) for a, b in zip(stages[:-1], stages[1:], strict=True)}
    return {**seconds, "total": round(clock[stages[-1]] - clock[stages[0]], 2)}


def _score_against_real(judges: dict, images: np.ndarray, labels: np.ndarray,
                        info: checkpoint.ModelInfo, seed: int) -> dict:
    """`evaluate_samples` against the checkpoint's training set and 2n fresh held-out style images."""
    size, n = info.image_size, len(images)
    trained = data.load_dataset(info.train_config["dataset"], size=size, seed=info.train_config["seed"])
    held_out, _ = styles.held_out_styles(2 * n, size=size, seed=seed)
    return evaluate_samples(judges["rgb"][0], images, labels, trained.images, held_out, seed=seed,
                            structure_classifier=judges["structure"][0])


def load_judges(image_size: int, cache_dir: str | os.PathLike | None = None,
                progress: bool = False) -> dict[str, tuple[StyleClassifier, dict]]:
    """{"rgb": style classifier, "structure": structure classifier}, each `(model, info)`.

    From `cache_dir` (both caches there) or, when None, each from its default folder under
    `data/pretrained/`; trained and cached there when missing (see `load_or_train_classifier`).
    """
    return {
        kind: load_or_train_classifier(cache_dir, image_size=image_size, progress=progress, input=kind)
        for kind in ("rgb", "structure")
    }


def evaluate_checkpoint(
    path: str | os.PathLike,
    n: int = 128,
    sampler_name: str = pipeline.DEFAULT_SAMPLER,
    steps: int | None = None,
    guidance: float | None = None,
    eta: float = 0.0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict:
    """The `evaluate` command: sample n images evenly over the styles from a checkpoint, measure them.

    Loads the EMA weights (`checkpoint.load_model`), samples with `pipeline.sample_model`
    (`steps`/`guidance` None: its defaults), and scores with `evaluate_samples` against the
    model's training set (rebuilt from its stored config) and 2n held-out images
    (`styles.held_out_styles`). Only for models trained on the art styles, and only their samples
    of those (a model's extra classes, e.g. "painting", are not sampled): the classifiers
    (`load_judges(size, cache_dir)`) know no other classes. Returns `evaluate_samples`' dict
    (with structure accuracy) plus checkpoint, step, sampler, steps, guidance, eta, seed, both
    classifiers' own held-out accuracy and wall times ("seconds").
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4:
        raise ValueError(f"n must be an integer >= 4 (KID needs pairs of subsets), got {n!r}")
    clock = {"start": time.perf_counter()}
    model, schedule, info = checkpoint.load_model(path)
    _require_style_model(info)
    settings = pipeline.sampling_settings(info, sampler_name, steps, guidance)
    size = info.image_size
    clock["load"] = time.perf_counter()
    images, labels = pipeline.sample_model(
        model, schedule, info, n=n, style=list(styles.STYLES), sampler_name=sampler_name,
        steps=settings.steps, eta=eta, guidance=settings.guidance, seed=seed, progress=progress,
    )  # fmt: skip
    labels = np.array([styles.STYLES.index(info.class_names[k]) for k in labels])  # model's -> STYLES
    clock["sample"] = time.perf_counter()
    judges = load_judges(size, cache_dir, progress)
    clock["classifier"] = time.perf_counter()
    report = _score_against_real(judges, images, labels, info, seed)
    clock["metrics"] = time.perf_counter()
    run = {"eta": float(eta), "seed": seed, "checkpoint": str(info.path), "step": info.step,
           "image_size": size}
    return {**report, **settings._asdict(), **run, "seconds": _stage_seconds(clock),
            "classifier_held_out_accuracy": judges["rgb"][1]["held_out_accuracy"],
            "structure_classifier_held_out_accuracy": judges["structure"][1]["held_out_accuracy"]}


def format_report(report: dict) -> str:
    """`evaluate_checkpoint`'s dict as a short human-readable table (one metric per line)."""
    memo, s = report["memorisation"], report["seconds"]
    accuracy = report["style_accuracy"]
    lines = [
        ("checkpoint", f"{report['checkpoint']} (training step {report['step']})"),
        ("sampling", f"{report['n']} images, {report['sampler']} {report['steps']} steps, guidance "
                     f"{report['guidance']:g}, eta {report['eta']:g}, seed {report['seed']}"),
        ("style accuracy", "n/a (unconditional)" if accuracy is None else
         f"{accuracy:.3f} of {report['n_labelled']} (the classifier itself: "
         f"{report['classifier_held_out_accuracy']:.3f} on real held-out images)"),
        ("structure acc.", "n/a (unconditional)" if accuracy is None else
         f"{report['structure_accuracy']:.3f} of {report['n_labelled']} (luminance only, palette-blind; "
         f"itself: {report['structure_classifier_held_out_accuracy']:.3f} on real held-out images)"),
        ("KID", f"{report['kid']:.4f} +- {report['kid_std']:.4f}   real-vs-real floor "
                f"{report['kid_real_floor']:.4f} +- {report['kid_real_floor_std']:.4f}   "
                f"(n = {report['n']}, {report['kid_n_subsets']} subsets of {report['kid_subset_size']})"),
        ("nearest train", f"median RMS distance: samples {memo['samples']['median']:.3f}, held-out real "
                          f"{memo['held_out']['median']:.3f}; min {memo['samples']['min']:.3f} vs "
                          f"{memo['held_out']['min']:.3f}"),
        ("memorisation", f"{memo['fraction_closer_than_held_out_p5']:.1%} of samples closer to the "
                         "training set than the held-out 5th percentile (~5% if none copied)"),
        ("features", report["features"]),
        ("time", f"{s['total']:.1f} s (load {s['load']:.1f}, sample {s['sample']:.1f}, classifier "
                 f"{s['classifier']:.1f}, metrics {s['metrics']:.1f})"),
    ]  # fmt: skip
    table = "\n".join(f"{name:>15}  {value}" for name, value in lines)
    return "\n".join([table, *_per_style_table(report["per_style"])])


def _per_style_table(per_style: dict) -> list[str]:
    """Lines of a per-style table: style accuracy beside structure accuracy (empty if unconditional)."""
    if not per_style:
        return []

    def cell(x):
        return "   n/a" if x is None else f"{x:6.3f}"

    rows = [f"{style:>15}  {cell(a['style_accuracy'])}  {cell(a['structure_accuracy'])}     {a['n']:3d}"
            for style, a in per_style.items()]
    return [f"{'per style':>15}  {'style':>6}  {'structure':>9}  {'n':>3}", *rows]
