"""The structure classifier: a judge that sees shapes, not palettes (issue 13).

Uses the shipped 32 px caches in data/pretrained/ (loading them spot-checks them, no training),
except where a test needs its own tiny classifier.
"""

import json
import subprocess
import sys
import warnings

from diffusion_utils import classifier, metrics, negatives, styles

import mlx.core as mx
import numpy as np
import pytest

SIZE = 32  # the shipped model's size; both classifiers are cached for it
# Tolerance for "near chance" (1/8): a judge that sends every structureless image to one class
# scores exactly 1/8 on balanced labels; we allow one more style's worth (2/8). Measured: 0.14
# and 0.18 on two seeds of shuffled held-out images.
NEAR_CHANCE = 2 / len(styles.STYLES)
NONE = len(styles.STYLES)  # the structure classifier's "none of these" class


@pytest.fixture(scope="module")
def judges():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped caches must load, not retrain
        return {kind: classifier.load_or_train_classifier(image_size=SIZE, input=kind, progress=False)[0]
                for kind in classifier.INPUTS}


@pytest.fixture(scope="module")
def real():
    return styles.held_out_styles(256, size=SIZE, seed=3)  # 32 per style


def shuffle_pixels(images, seed=0):
    """Each image's own pixels in a random order: its palette exactly, no structure."""
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1, 3)
    return np.stack([f[rng.permutation(len(f))] for f in flat]).reshape(images.shape)


def test_structure_classifier_recognises_real_styles(judges, real):
    images, labels = real
    assert classifier.style_accuracy(judges["structure"], images, labels) >= 0.95
    hits = classifier.predict(judges["structure"], images) == labels  # "none" would be a miss
    assert min(hits[labels == k].mean() for k in range(len(styles.STYLES))) >= 0.9  # every style


def test_shuffled_pixels_fool_the_style_classifier_not_the_structure_one(judges, real):
    images, labels = real
    shuffled = shuffle_pixels(images)
    chance = 1 / len(styles.STYLES)
    # the colour-only fake of the issue: the palette alone buys the style classifier > 3x chance
    assert classifier.style_accuracy(judges["rgb"], shuffled, labels) > 3 * chance
    assert classifier.style_accuracy(judges["structure"], shuffled, labels) <= NEAR_CHANCE
    # ... and the structure classifier does not merely guess: it says "none of these"
    assert np.mean(classifier.predict(judges["structure"], shuffled) == NONE) >= 0.8


def test_held_out_negatives_are_judged_none(judges, real):
    images, labels = real
    fakes, kinds = negatives.make_negatives(len(negatives.KINDS) * 24, images, labels, seed=7)
    judged_none = classifier.predict(judges["structure"], fakes) == NONE
    # measured with the shipped 32 px judge: 0.85 overall; per kind 0.71 (mazes) to 1.0, and 0.46 for
    # blends of two styles, which half-show one of them
    assert judged_none.mean() >= 0.8  # chance: 1/9
    per_kind = {negatives.KINDS[k]: judged_none[kinds == k].mean() for k in range(len(negatives.KINDS))}
    assert min(per_kind.values()) >= 0.4, per_kind
    # the style classifier has no such class: it must call each of them some style
    assert classifier.predict(judges["rgb"], fakes).max() < NONE


def test_none_counts_as_wrong_in_structure_accuracy(judges, real):
    images, labels = real
    fakes, _ = negatives.make_negatives(len(images), images, labels, seed=8)
    result = metrics.style_and_structure_accuracy(judges["rgb"], judges["structure"], fakes, labels)
    assert result["structure_accuracy"] <= 0.15


def test_negatives_are_seeded_balanced_and_checked(real):
    images, labels = real
    a, kinds = negatives.make_negatives(20, images, labels, seed=1)
    b, _ = negatives.make_negatives(20, images, labels, seed=1)
    c, _ = negatives.make_negatives(20, images, labels, seed=2)
    assert a.dtype == np.uint8 and a.shape == (20, SIZE, SIZE, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert list(kinds[: len(negatives.KINDS)]) == list(range(len(negatives.KINDS)))
    longer, _ = negatives.make_negatives(30, images, labels, seed=1)
    assert np.array_equal(longer[:20], a)  # image i depends on (seed, i) only
    assert a.std(axis=(1, 2, 3)).min() > 5  # none is flat: each has light and dark to judge
    with pytest.raises(ValueError, match="two styles"):
        negatives.make_negatives(4, images[labels == 0], labels[labels == 0])


@pytest.mark.parametrize("recolour", ["gbr", "brg", "bgr", "invert"])
def test_recolouring_keeps_the_structure_prediction(judges, real, recolour):
    images, _ = real
    recoloured = {"gbr": images[..., [1, 2, 0]], "brg": images[..., [2, 0, 1]],
                  "bgr": images[..., ::-1], "invert": 255 - images}[recolour]
    before = classifier.predict(judges["structure"], images)
    assert np.mean(classifier.predict(judges["structure"], recoloured) == before) >= 0.95


def test_class_probabilities_are_a_distribution_that_predict_agrees_with(judges, real):
    images, _ = real
    probs = classifier.class_probabilities(judges["structure"], images[:32])
    assert probs.shape == (32, judges["structure"].config.num_classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(axis=1), classifier.predict(judges["structure"], images[:32]))


def test_luminance_structure_ignores_brightness_and_contrast():
    x = mx.random.uniform(-0.5, 0.5, (3, 8, 8, 3))
    y = classifier.luminance_structure(x)
    assert y.shape == (3, 8, 8, 1)
    np.testing.assert_allclose(np.array(y.mean(axis=(1, 2, 3))), 0, atol=1e-5)
    dimmer = classifier.luminance_structure(0.4 * x + 0.3)
    np.testing.assert_allclose(np.array(dimmer), np.array(y), atol=1e-4)


def test_random_palette_keeps_shape_and_range_and_changes_colours():
    mx.random.seed(0)
    x = mx.array(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32))
    y = np.array(classifier.random_palette(x))
    assert y.shape == (4, 8, 8, 3) and y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
    assert np.abs(y - np.array(x)).mean() > 0.1


def test_per_style_accuracy_counts_each_style_and_skips_unlabelled(judges, real):
    images, labels = real
    labels = labels.copy()
    labels[:8] = -1  # unconditional samples are left out
    result = metrics.style_and_structure_accuracy(judges["rgb"], judges["structure"], images, labels)
    assert result["n_labelled"] == 248
    assert set(result["per_style"]) == set(styles.STYLES)
    assert sum(s["n"] for s in result["per_style"].values()) == 248
    assert all(s["structure_accuracy"] >= 0.8 for s in result["per_style"].values())
    none = metrics.style_and_structure_accuracy(judges["rgb"], None, images, np.full(len(images), -1))
    assert none == {"style_accuracy": None, "structure_accuracy": None, "n_labelled": 0, "per_style": {}}


def test_both_caches_share_a_folder_under_their_own_names(tmp_path):
    tiny = dict(image_size=16, n_train=256, n_test=64, steps=20, progress=False)
    _, style_info = classifier.load_or_train_classifier(tmp_path, **tiny)
    trained, structure_info = classifier.load_or_train_classifier(tmp_path, input="structure", **tiny)
    assert (style_info["key"]["input"], structure_info["key"]["input"]) == ("rgb", "structure")
    assert {p.name for p in tmp_path.iterdir()} == {
        "style_classifier_16px.json", "style_classifier_16px.safetensors",
        "structure_classifier_16px.json", "structure_classifier_16px.safetensors"}
    assert structure_info["key"]["class_names"] == [*styles.STYLES, "none"]
    assert 0 <= structure_info["held_out_negatives_judged_none"] <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a round trip, not a retraining
        model, _ = classifier.load_or_train_classifier(tmp_path, input="structure", **tiny)
    assert model.config.input == "structure" and model.config.num_classes == len(styles.STYLES) + 1
    probe = styles.held_out_styles(16, size=16, seed=1)[0]
    np.testing.assert_allclose(classifier.class_probabilities(model, probe),
                               classifier.class_probabilities(trained, probe), atol=1e-6)
    with pytest.raises(ValueError, match="input must be one of"):
        classifier.load_or_train_classifier(tmp_path, input="grey", **tiny)


def test_evaluate_json_reports_structure_per_style(tmp_path):
    """Also for a model with a class beyond the styles ("painting"): evaluate samples only the styles."""
    run = tmp_path / "smoke"
    cli = [sys.executable, "-m", "diffusion_utils"]
    trained = subprocess.run([*cli, "train", "--preset", "smoke", "--dataset", "styles+paintings",
                              "--out", run, "--steps", "5"], capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = subprocess.run([*cli, "evaluate", "--checkpoint", run, "--n", "16", "--steps", "2", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"style_accuracy", "structure_accuracy", "per_style", "kid", "memorisation"} <= set(report)
    assert set(report["per_style"]) == set(styles.STYLES) and report["n_labelled"] == 16
    for style in report["per_style"].values():
        assert 0 <= style["style_accuracy"] <= 1 and 0 <= style["structure_accuracy"] <= 1
    assert "structure acc." in result.stdout and "per style" in result.stdout  # the table
