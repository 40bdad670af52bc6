"""Tests for diffusion_utils.evaluate: KID against its formula, nearest neighbours, memorisation,
the style classifier (real, tiny training) and its cache."""

import json
import warnings

from diffusion_utils import data, evaluate

import numpy as np
import pytest


def _kid_reference(a, b, degree=3):
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^degree, written as the plain double sums."""
    d = a.shape[1]

    def k(x, y):
        return (sum(xi * yi for xi, yi in zip(x, y, strict=True)) / d + 1.0) ** degree

    m, n = len(a), len(b)
    aa = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    bb = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    ab = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return aa + bb - 2 * ab


# --------------------------------------------------------------------------- KID


def test_mmd_hand_example():
    # a = {0, 1}, b = {1, 2} in 1-D: k(x, y) = (xy + 1)^3.
    # aa = k(0,1) = 1; bb = k(1,2) = 27; ab = (k(0,1) + k(0,2) + k(1,1) + k(1,2)) / 4 = 37/4.
    # MMD^2 = 1 + 27 - 2 * 37/4 = 9.5
    a, b = np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])
    assert evaluate.mmd2_unbiased(a, b) == pytest.approx(9.5)


def test_kid_matches_direct_double_sum():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)), rng.normal(0.5, 1.0, size=(5, 4))
    assert evaluate.mmd2_unbiased(a, b) == pytest.approx(_kid_reference(a, b), rel=1e-12)
    assert evaluate.mmd2_unbiased(a, b, degree=2) == pytest.approx(
        _kid_reference(a, b, degree=2), rel=1e-12
    )
    # subsets as large as the sets: every round sees the same points, so KID is that value
    a6 = rng.normal(size=(6, 4))
    mean, std = evaluate.kid(a6, a6 + 0.3, subset_size=6, n_subsets=5)
    assert mean == pytest.approx(_kid_reference(a6, a6 + 0.3), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_near_zero_for_one_distribution_and_larger_when_shifted():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, same_std = evaluate.kid(a, b, n_subsets=30)
    shifted, _ = evaluate.kid(a, rng.normal(0.3, 1.0, size=(400, 16)), n_subsets=30)
    wider, _ = evaluate.kid(a, rng.normal(0.0, 1.5, size=(400, 16)), n_subsets=30)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * max(abs(same), same_std)
    assert wider > 10 * max(abs(same), same_std)
    assert evaluate.kid(a, b, n_subsets=5, seed=3) == evaluate.kid(a, b, n_subsets=5, seed=3)


def test_kid_of_a_set_with_itself():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8))
    # With the whole set on both sides the unbiased estimate is 2(S - mD) / (m^2 (m-1)), where
    # S sums all kernel values and D the diagonal; by Cauchy-Schwarz S <= mD, so it is <= 0.
    m = len(x)
    kernel = (x @ x.T / x.shape[1] + 1.0) ** 3
    expected = 2 * (kernel.sum() - m * np.trace(kernel)) / (m**2 * (m - 1))
    full, _ = evaluate.kid(x, x, subset_size=m, n_subsets=2)
    assert full == pytest.approx(expected, rel=1e-9)
    assert full <= 0
    # random half-size subsets of one set overlap, and shared points pull the estimate below 0
    itself, _ = evaluate.kid(x, x)
    shifted, _ = evaluate.kid(x, x + 0.5)
    assert -0.1 * shifted < itself < 0


def test_kid_real_floor_uses_two_disjoint_halves():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(200, 8))
    assert evaluate.kid_real_floor(real, 100) == evaluate.kid(real[100:], real[:100])
    with pytest.raises(ValueError, match="needs 400 real"):
        evaluate.kid_real_floor(real, 200)


def test_kid_rejects_bad_input():
    with pytest.raises(ValueError, match="feature arrays"):
        evaluate.kid(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="subset_size"):
        evaluate.kid(np.zeros((10, 3)), np.zeros((10, 3)), subset_size=11)


# --------------------------------------------------------------------------- memorisation


def test_nearest_neighbour_distances_hand_example():
    train = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    queries = np.array([[3.0, 4.0], [1.0, 0.0], [9.0, 1.0]])
    # nearest: [3,4] itself (0); [0,0] at 1; [10,0] at sqrt(2). RMS = distance / sqrt(D=2)
    for chunk in (1, 2, 100):
        dist, index = evaluate.nearest_neighbour_distances(queries, train, chunk=chunk)
        np.testing.assert_allclose(dist, [0.0, 1 / np.sqrt(2), 1.0], atol=1e-7)
        np.testing.assert_array_equal(index, [1, 0, 2])
    # uint8 images are read in [0, 1]: black vs white is distance 1, a copy is exactly 0
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] = 255
    dist, index = evaluate.nearest_neighbour_distances(images[1:], images[:1])
    assert dist[0] == pytest.approx(1.0) and index[0] == 0
    assert evaluate.nearest_neighbour_distances(images, images)[0].tolist() == [0.0, 0.0]


def _smooth_images(n, seed, size=16):
    """Random smooth colour images: 4x4 noise upsampled, so neighbours are not all equidistant."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(n, 4, 4, 3))
    return np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2).astype(np.uint8)


def test_memorisation_report_flags_copies():
    train, held_out = _smooth_images(300, 0), _smooth_images(200, 1)
    copies = train[:100]
    report = evaluate.memorisation_report(copies, train, held_out)
    assert report["samples"]["min"] == 0.0 and report["samples"]["median"] == 0.0
    assert report["fraction_closer_than_held_out_p5"] == 1.0
    assert report["held_out"]["min"] > 0.05
    fresh = evaluate.memorisation_report(_smooth_images(100, 2), train, held_out)
    assert fresh["fraction_closer_than_held_out_p5"] < 0.25
    assert fresh["samples"]["median"] == pytest.approx(fresh["held_out"]["median"], rel=0.2)
    json.dumps(fresh)


# --------------------------------------------------------------------------- the classifier


TINY = dict(n_train=512, n_test=256, steps=60)  # a quick classifier for the tests


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("classifier")
    classifier, info = evaluate.load_or_train_classifier(
        cache_dir, image_size=16, progress=False, **TINY
    )
    return cache_dir, classifier, info


def test_classifier_learns_real_styles_quickly(tiny_classifier):
    _, classifier, info = tiny_classifier
    chance = 1 / len(data.STYLES)
    images, labels = data.make_styles(256, size=16, seed=7)
    accuracy = evaluate.style_accuracy(classifier, images, labels)
    assert accuracy > max(0.7, 4 * chance)
    assert info["held_out_accuracy"] > max(0.7, 4 * chance)
    features = evaluate.embed(classifier, images[:5])
    assert features.shape == (5, classifier.config.widths[-1]) and np.isfinite(features).all()


def test_classifier_cache_round_trip(tiny_classifier, monkeypatch):
    cache_dir, classifier, info = tiny_classifier

    def no_training(*args, **kwargs):
        raise AssertionError("a valid cache must not be retrained")

    monkeypatch.setattr(evaluate, "train_style_classifier", no_training)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, loaded_info = evaluate.load_or_train_classifier(
            cache_dir, image_size=16, progress=False, **TINY
        )
    assert loaded_info == info
    images, _ = data.make_styles(16, size=16, seed=9)
    np.testing.assert_array_equal(evaluate.embed(loaded, images), evaluate.embed(classifier, images))
    assert not list(cache_dir.glob(".*"))  # no temporary files left behind


def _copy_cache(src, dst):
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())


def test_stale_cache_is_retrained(tiny_classifier, tmp_path):
    _copy_cache(tiny_classifier[0], tmp_path)
    config_path = tmp_path / "style_classifier_16px.json"
    info = json.loads(config_path.read_text())
    info["key"]["class_names"] = ["not", "these", "styles"]
    config_path.write_text(json.dumps(info))
    with pytest.warns(RuntimeWarning, match="other settings"):
        _, new_info = evaluate.load_or_train_classifier(
            tmp_path, image_size=16, progress=False, **TINY
        )
    assert new_info["key"]["class_names"] == list(data.STYLES)
    assert json.loads(config_path.read_text())["key"]["class_names"] == list(data.STYLES)


def test_cache_is_retrained_when_the_styles_change(tiny_classifier, tmp_path, monkeypatch):
    _copy_cache(tiny_classifier[0], tmp_path)
    draw = data.held_out_styles

    def relabelled(*args, **kwargs):  # as if the generator now drew other pictures per label
        images, labels = draw(*args, **kwargs)
        return images, (labels + 1) % len(data.STYLES)

    monkeypatch.setattr(data, "held_out_styles", relabelled)
    with pytest.warns(RuntimeWarning, match="other styles"):
        evaluate.load_or_train_classifier(tmp_path, image_size=16, progress=False, **TINY)


@pytest.mark.parametrize("broken", ["weights", "config", "missing_weights"])
def test_corrupt_cache_is_retrained_with_a_warning(tiny_classifier, tmp_path, broken):
    _copy_cache(tiny_classifier[0], tmp_path)
    weights = tmp_path / "style_classifier_16px.safetensors"
    if broken == "weights":
        weights.write_bytes(b"not a safetensors file")
    elif broken == "config":
        (tmp_path / "style_classifier_16px.json").write_text("{ truncated")
    else:
        weights.unlink()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        classifier, _ = evaluate.load_or_train_classifier(
            tmp_path, image_size=16, progress=False, **TINY
        )
    with warnings.catch_warnings():  # the rewritten cache is valid again
        warnings.simplefilter("error")
        evaluate.load_or_train_classifier(tmp_path, image_size=16, progress=False, **TINY)
    images, _ = data.make_styles(8, size=16, seed=9)
    assert np.isfinite(evaluate.embed(classifier, images)).all()


# --------------------------------------------------------------------------- all together


def test_evaluate_samples_real_images_sit_at_the_floor_and_copies_are_caught(tiny_classifier):
    _, classifier, _ = tiny_classifier
    train, _ = data.make_styles(400, size=16, seed=0)
    held_out, _ = data.make_styles(128, size=16, seed=11)
    real, real_labels = data.make_styles(64, size=16, seed=12)
    result = evaluate.evaluate_samples(classifier, real, real_labels, train, held_out, n_subsets=20)
    json.loads(json.dumps(result))  # JSON-safe
    for key in ("style_accuracy", "kid", "kid_std", "kid_real_floor", "n", "memorisation"):
        assert key in result
    assert result["n"] == 64 and result["n_labelled"] == 64
    assert result["style_accuracy"] > 0.7
    assert abs(result["kid"]) < abs(result["kid_real_floor"]) + 3 * result["kid_real_floor_std"]
    assert result["memorisation"]["fraction_closer_than_held_out_p5"] < 0.3

    copies = evaluate.evaluate_samples(classifier, train[:64], None, train, held_out, n_subsets=20)
    assert copies["style_accuracy"] is None
    assert copies["memorisation"]["fraction_closer_than_held_out_p5"] == 1.0

    with pytest.raises(ValueError, match="needs 128 held-out"):
        evaluate.evaluate_samples(classifier, real, real_labels, train, held_out[:100])
    with pytest.raises(ValueError, match="uint8"):
        evaluate.evaluate_samples(classifier, real / 255.0, real_labels, train, held_out)
