"""The style and structure classifiers: the judges behind this project's style accuracy and KID.

A small network trained by this project on its own procedural art styles (`styles.py`): a few
conv layers, global average pooling, a linear head. Its penultimate layer, divided by its RMS
over the classifier's training images (so x.y/d ~ 1 in KID's kernel), is the embedding that
`metrics.py` compares. **These features are not Inception's**: the numbers they give compare
runs of *this* project with each other, not with FID/KID values in papers. The classifier's
features see styles and composition, not fine pixel noise.

The same network and training also make the **structure classifier** (`input="structure"`): it
sees only luminance, normalised per image (`luminance_structure`), and trains on images whose
palette is randomised (`random_palette`), so colour cannot carry its decision. A style model
that gets the palette right but draws a maze instead of warped stripes fools the style
classifier, not this one; an image of a style's pixels shuffled in place scores near chance.
It has a ninth class, "none" (`NONE`): trained on images that are no style but share the
styles' pixels, palettes and textures (`negatives.py`: shuffled pixels, mazes, blobs, speckle,
swirls, blends of two styles...), it rejects a sample instead of calling it the nearest style.

`load_or_train_classifier` keeps one trained classifier per input kind and image size in
`data/pretrained/style_classifier/` and `data/pretrained/structure_classifier/`
(`{style|structure}_classifier_{size}px.safetensors` + `.json`), and retrains, with a warning,
a cache that is stale or unreadable.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from diffusion_utils import data, negatives, styles
from diffusion_utils.cpu import streams
from diffusion_utils.files import atomic_write, atomic_write_text
from diffusion_utils.paths import STRUCTURE_CLASSIFIER_DIR, STYLE_CLASSIFIER_DIR

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten
from tqdm.auto import tqdm

CACHE_FORMAT = 1  # bump when the cache layout or the architecture code changes meaning
SPOT_CHECK_N = 128  # held-out images a cached classifier must still recognise when loaded
INPUTS = ("rgb", "structure")  # what the network sees: colour images, or palette-blind luminance
CACHE_NAMES = {"rgb": "style_classifier", "structure": "structure_classifier"}  # file stems
DEFAULT_CACHE_DIRS = {"rgb": STYLE_CLASSIFIER_DIR, "structure": STRUCTURE_CLASSIFIER_DIR}
DEFAULT_STEPS = {"rgb": 400, "structure": 3000}  # batch-64 steps to > 0.99 / > 0.95 per style, held out
NOTES = {  # stored with each cache: what the classifier is for
    "rgb": "features for this project's KID; not Inception, not comparable with papers",
    "structure": "luminance only, trained on randomly recoloured images and on negatives (class 'none'): "
                 "judges shapes, not palettes, and may reject an image as no style",
}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights
NONE = "none"  # the structure classifier's last class: an image that is none of the styles
CLASS_NAMES = {"rgb": styles.STYLES, "structure": (*styles.STYLES, NONE)}
NEGATIVES_FRACTION = 4  # the structure classifier trains on n_train // 4 negatives (20% of its images)


# --------------------------------------------------------------------------- the classifier


@dataclass
class ClassifierConfig:
    num_classes: int
    widths: tuple[int, ...] = (16, 32, 64, 128)  # channels per stage; each later stage halves H, W
    input: str = "rgb"  # one of INPUTS: "structure" sees luminance_structure(x), 1 channel


class StyleClassifier(nn.Module):
    """conv3x3-ReLU stages with 2x2 average pooling between them, global average pool, linear.

    Average pooling (not strided or transposed convolutions) keeps MLX's CPU backward pass on
    its fast paths. Input: NHWC float32 RGB in [-1, 1], any H, W divisible by 2**(stages - 1);
    with `config.input == "structure"` the network first reduces it to `luminance_structure`.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if config.input not in INPUTS:
            raise ValueError(f"classifier input must be one of {INPUTS}, got {config.input!r}")
        self.config = config
        channels = (3 if config.input == "rgb" else 1, *config.widths)
        self.convs = [
            nn.Conv2d(c_in, c_out, 3, padding=1)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        ]
        he = nn.init.he_normal()  # He et al. 2015: keeps the scale through ReLUs; trains ~2x faster
        for conv in self.convs:
            conv.weight = he(conv.weight, gain=math.sqrt(2.0))
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(config.widths[-1], config.num_classes)
        # Set after training to the features' RMS on the training images, so that x.y/d ~ 1 in
        # KID's kernel; saved with the weights, never trained.
        self.feature_scale = mx.array(1.0)
        self.freeze(keys=["feature_scale"], recurse=False)

    def _pooled(self, x: mx.array) -> mx.array:
        if self.config.input == "structure":
            x = luminance_structure(x)  # (B, H, W, 1)
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = self.pool(x)  # (B, H/2^i, W/2^i, C)
            x = nn.relu(conv(x))
        return x.mean(axis=(1, 2))  # (B, C)

    def features(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) in [-1, 1] -> (B, widths[-1]): the embedding used for KID."""
        return self._pooled(x) / self.feature_scale

    def __call__(self, x: mx.array) -> mx.array:
        return self.head(self._pooled(x))  # (B, num_classes) logits

    def predict(self, x: mx.array) -> mx.array:
        """(B, H, W, 3) in [-1, 1] -> (B,) int32 predicted class."""
        return mx.argmax(self(x), axis=-1)


def luminance_structure(x: mx.array) -> mx.array:
    """(B, H, W, 3) RGB -> (B, H, W, 1) luma with zero mean and unit std per image.

    What is left of an image once colour and absolute brightness are gone: where it is light
    and dark relative to itself. (A flat image stays flat: its std is floored.)
    """
    y = x @ mx.array(LUMA)[:, None]  # (B, H, W, 1)
    y = y - y.mean(axis=(1, 2, 3), keepdims=True)
    return y / mx.maximum(mx.sqrt((y**2).mean(axis=(1, 2, 3), keepdims=True)), 1e-3)


def random_palette(x: mx.array) -> mx.array:
    """Recolour each image of (B, H, W, 3) in [-1, 1] at random; same shape and range out.

    Per image: a random gamma per channel (exp of U(-1, 1)), then a random 3x3 colour mixing
    matrix with N(0, 1) entries (channel permutations, hue rotations and inversions are all
    special cases), then stretched to the full range. Which colours an image has, and how
    bright each is, becomes noise; where its edges and regions are stays. The structure
    classifier trains on these, so no palette can carry its decision.
    """
    b = x.shape[0]
    gamma = mx.exp(mx.random.uniform(-1.0, 1.0, (b, 1, 1, 3)))
    c = ((x + 1) / 2) ** gamma  # (B, H, W, 3) in [0, 1]
    mixed = mx.einsum("bhwc,bcd->bhwd", c, mx.random.normal((b, 3, 3)))
    low = mixed.min(axis=(1, 2, 3), keepdims=True)
    high = mixed.max(axis=(1, 2, 3), keepdims=True)
    return 2 * (mixed - low) / mx.maximum(high - low, 1e-6) - 1


def check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    """`images` as numpy, or a ValueError naming `name` unless it is uint8 (N, H, W, 3)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def _in_batches(fn, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Apply `fn` (float NHWC in [-1, 1] -> mx.array) to uint8 images in batches; numpy out."""
    images = check_images(images)
    fn = streams.batch_parallel(fn)  # on a multi-core CPU, a slice of each batch per core
    outs = []
    for start in range(0, len(images), batch_size):
        out = fn(data.to_model_range(images[start : start + batch_size]))
        outs.append(np.array(out))
    return np.concatenate(outs)


def _compiled_step(model: StyleClassifier, optimizer: optim.Optimizer) -> tuple[Callable, list]:
    """A compiled cross-entropy Adam step `step(x, y) -> loss`, and the state it updates."""

    def loss_fn(model, x, y):
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        optimizer.update(model, grads)
        return loss

    return step, state


def _shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless (batch_size,) index batches; a fresh permutation of range(n) joins when one runs low."""
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    while True:
        if len(order) < batch_size:  # a fresh shuffled epoch
            order = np.concatenate([order, rng.permutation(n)])
        yield order[:batch_size]
        order = order[batch_size:]


def train_style_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    steps: int = 400,  # ~6 epochs of 4096 images at batch 64: > 99% held-out accuracy at 32 px
    seed: int = 0,
    batch_size: int = 64,
    learning_rate: float = 3e-3,  # Adam, cosine-decayed to 0 over `steps`
    widths: tuple[int, ...] = ClassifierConfig.widths,
    input: str = "rgb",
    progress: bool = False,
) -> StyleClassifier:
    """Train a `StyleClassifier` on uint8 images (N, H, W, 3) with int labels (N,) in [0, C).

    `input="structure"`: a structure classifier, each batch recoloured by `random_palette`.
    """
    images = check_images(images)
    labels = np.asarray(labels).astype(np.int32)
    if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be ints in [0, {num_classes}) with one per image")
    mx.random.seed(seed)
    model = StyleClassifier(ClassifierConfig(num_classes, tuple(widths), input))
    recolour = random_palette if input == "structure" else (lambda x: x)
    optimizer = optim.Adam(learning_rate=optim.cosine_decay(learning_rate, steps))
    step, state = _compiled_step(model, optimizer)
    x_all, y_all = data.to_model_range(images), mx.array(labels)  # (N, H, W, 3), (N,)
    batches = _shuffled_batches(len(images), batch_size, seed)
    for _ in tqdm(range(steps), desc=f"{CACHE_NAMES[input]}".replace("_", " "), disable=not progress):
        idx = mx.array(next(batches))
        step(recolour(x_all[idx]), y_all[idx])
        mx.eval(state)
    pooled = _in_batches(model._pooled, images[:2048])  # (<=2048, C)
    model.feature_scale = mx.array(np.sqrt(np.mean(pooled**2)), dtype=mx.float32)
    return model


def style_accuracy(classifier: StyleClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of uint8 images (N, H, W, 3) that the classifier assigns to `labels` (N,)."""
    labels = np.asarray(labels)
    if len(labels) == 0 or labels.shape != (len(images),):
        raise ValueError("style_accuracy needs one label per image and at least one image")
    return float(np.mean(predict(classifier, images) == labels))


def predict(classifier: StyleClassifier, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> int (N,) the class the classifier assigns to each."""
    return _in_batches(classifier.predict, images)


def class_probabilities(classifier: StyleClassifier, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> float32 (N, C): the softmax over the classifier's classes."""
    return _in_batches(lambda x: mx.softmax(classifier(x), axis=-1), images)


def embed(classifier: StyleClassifier, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> float64 features (N, F) from the classifier's penultimate layer."""
    return _in_batches(classifier.features, images).astype(np.float64)


# --------------------------------------------------------------------------- the cache


def _cache_paths(cache_dir: Path, key: dict) -> tuple[Path, Path]:
    stem = Path(cache_dir) / f"{CACHE_NAMES[key['input']]}_{key['image_size']}px"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _cache_key(image_size: int, n_train: int, steps: int, seed: int, input: str) -> dict:
    """The settings a cached classifier must have been trained with to be reused."""
    key = {
        "format": CACHE_FORMAT,
        "input": input,
        "image_size": int(image_size),
        "class_names": list(CLASS_NAMES[input]),
        "num_classes": len(CLASS_NAMES[input]),
        "widths": list(ClassifierConfig.widths),
        "n_train": n_train,
        "steps": steps,
        "seed": seed,
    }
    if input == "structure":
        key["negatives"] = {"n": n_train // NEGATIVES_FRACTION, "kinds": list(negatives.KINDS)}
    return key


def _with_negatives(images: np.ndarray, labels: np.ndarray, n: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Style images (N, H, W, 3), labels (N,) plus `n` negatives made from them, labelled NONE."""
    fakes, _ = negatives.make_negatives(n, images, labels, seed=seed)
    none = np.full(n, len(styles.STYLES), dtype=labels.dtype)
    return np.concatenate([images, fakes]), np.concatenate([labels, none])


def _load_cached(
    weights_path: Path, config_path: Path, key: dict
) -> tuple[StyleClassifier, dict] | None:
    """The cached classifier, or None when there is none or it is stale (with a warning).

    Stale: trained with other settings, or it no longer recognises freshly drawn held-out
    images as well as it did (the style generator has changed since it was trained).
    """
    if not config_path.exists():
        return None
    info = json.loads(config_path.read_text())
    model = StyleClassifier(ClassifierConfig(key["num_classes"], tuple(key["widths"]), key["input"]))
    if info["key"] == key:
        model.load_weights(str(weights_path), strict=True)  # raises on missing/misshaped weights
        images, labels = styles.held_out_styles(SPOT_CHECK_N, key["image_size"], seed=key["seed"])
        if style_accuracy(model, images, labels) >= info["held_out_accuracy"] - 0.1:
            return model, info
    warnings.warn(
        f"{CACHE_NAMES[key['input']]} cache {config_path} was trained with other settings or on other "
        "styles; retraining",
        RuntimeWarning,
        stacklevel=4,
    )
    return None


def _load_cached_or_none(cache_dir: Path, key: dict) -> tuple[StyleClassifier, dict] | None:
    """`_load_cached`, with any unreadable cache turned into a warning and None."""
    try:
        return _load_cached(*_cache_paths(cache_dir, key), key)
    except Exception as err:  # noqa: BLE001  (any unreadable cache is retrained, never fatal)
        warnings.warn(
            f"ignoring unreadable {CACHE_NAMES[key['input']]} cache in {cache_dir} ({err!r}); retraining",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def _train_and_measure(key: dict, n_test: int, progress: bool) -> tuple[StyleClassifier, dict]:
    """Train a classifier with `key`'s settings; info = key + its held-out accuracy + time.

    Held out: accuracy overall and per style on real images and, for the structure classifier,
    the fraction of negatives made from held-out images that it calls "none".
    """
    size, seed = key["image_size"], key["seed"]
    start = time.perf_counter()
    images, labels = styles.make_styles(key["n_train"], size=size, seed=seed)
    if "negatives" in key:
        images, labels = _with_negatives(images, labels, key["negatives"]["n"], seed)
    model = train_style_classifier(
        images, labels, key["num_classes"], steps=key["steps"], seed=seed, input=key["input"],
        progress=progress,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    test_images, test_labels = styles.held_out_styles(n_test, size=size, seed=seed)
    hits = predict(model, test_images) == test_labels  # (n_test,)
    info = {
        "key": key,
        "held_out_accuracy": float(hits.mean()),
        "held_out_per_style": {s: float(hits[test_labels == k].mean()) for k, s in enumerate(styles.STYLES)},
        "n_test": n_test,
        "train_seconds": round(train_seconds, 1),
        "note": NOTES[key["input"]],
    }
    if "negatives" in key:
        fakes, _ = negatives.make_negatives(n_test, test_images, test_labels, seed=seed)
        info["held_out_negatives_judged_none"] = float(np.mean(predict(model, fakes) == len(styles.STYLES)))
    return model, info


def _save_cache(model: StyleClassifier, info: dict, cache_dir: Path) -> None:
    """Write the weights and info atomically; a folder that cannot be written only warns."""
    weights_path, config_path = _cache_paths(cache_dir, info["key"])
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        weights = dict(tree_flatten(model.parameters()))
        atomic_write(weights_path, lambda tmp: mx.save_safetensors(tmp, weights))
        atomic_write_text(config_path, json.dumps(info, indent=2))
    except OSError as err:
        warnings.warn(f"could not cache the {CACHE_NAMES[info['key']['input']]} in {cache_dir}: {err}",
                      stacklevel=3)


def load_or_train_classifier(
    cache_dir: str | Path | None = None,
    image_size: int = 32,
    n_train: int = 4096,
    n_test: int = 1024,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    input: str = "rgb",
) -> tuple[StyleClassifier, dict]:
    """The style classifier for `image_size`, from `cache_dir` or freshly trained and cached there.

    `input="structure"` gives the structure classifier instead (see the module docstring). The
    default `cache_dir` is `DEFAULT_CACHE_DIRS[input]`; `steps` defaults to `DEFAULT_STEPS[input]`.

    Trains on `styles.make_styles(n_train, image_size, seed)` and measures accuracy on
    `styles.held_out_styles(n_test, image_size, seed)`. The cache is
    `style_classifier_{size}px.safetensors` plus a `.json` holding the settings (image size,
    class names, widths, training knobs) and the measured accuracy. A stale cache (other
    settings, or it fails a spot check on freshly drawn held-out images because the styles
    changed) or an unreadable one is retrained, with a warning, never an error. Returns
    `(classifier, info)` where `info["held_out_accuracy"]` is the measured accuracy.
    """
    if input not in INPUTS:
        raise ValueError(f"classifier input must be one of {INPUTS}, got {input!r}")
    cache_dir = Path(DEFAULT_CACHE_DIRS[input] if cache_dir is None else cache_dir)
    key = _cache_key(image_size, n_train, DEFAULT_STEPS[input] if steps is None else steps, seed, input)
    cached = _load_cached_or_none(cache_dir, key)
    if cached is not None:
        return cached
    model, info = _train_and_measure(key, n_test, progress)
    _save_cache(model, info, cache_dir)
    return model, info
