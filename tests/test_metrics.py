"""Tests for diffusion_utils.metrics: KID against its formula, nearest neighbours, memorisation,
and every metric together on real style images."""

import json

from diffusion_utils import classifier, metrics, styles

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
    assert metrics.mmd2_unbiased(a, b) == pytest.approx(9.5)


def test_kid_matches_direct_double_sum():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)), rng.normal(0.5, 1.0, size=(5, 4))
    assert metrics.mmd2_unbiased(a, b) == pytest.approx(_kid_reference(a, b), rel=1e-12)
    assert metrics.mmd2_unbiased(a, b, degree=2) == pytest.approx(
        _kid_reference(a, b, degree=2), rel=1e-12
    )
    # subsets as large as the sets: every round sees the same points, so KID is that value
    a6 = rng.normal(size=(6, 4))
    mean, std = metrics.kid(a6, a6 + 0.3, subset_size=6, n_subsets=5)
    assert mean == pytest.approx(_kid_reference(a6, a6 + 0.3), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_near_zero_for_one_distribution_and_larger_when_shifted():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, same_std = metrics.kid(a, b, n_subsets=30)
    shifted, _ = metrics.kid(a, rng.normal(0.3, 1.0, size=(400, 16)), n_subsets=30)
    wider, _ = metrics.kid(a, rng.normal(0.0, 1.5, size=(400, 16)), n_subsets=30)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * max(abs(same), same_std)
    assert wider > 10 * max(abs(same), same_std)
    assert metrics.kid(a, b, n_subsets=5, seed=3) == metrics.kid(a, b, n_subsets=5, seed=3)


def test_kid_of_a_set_with_itself():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8))
    # With the whole set on both sides the unbiased estimate is 2(S - mD) / (m^2 (m-1)), where
    # S sums all kernel values and D the diagonal; by Cauchy-Schwarz S <= mD, so it is <= 0.
    m = len(x)
    kernel = (x @ x.T / x.shape[1] + 1.0) ** 3
    expected = 2 * (kernel.sum() - m * np.trace(kernel)) / (m**2 * (m - 1))
    full, _ = metrics.kid(x, x, subset_size=m, n_subsets=2)
    assert full == pytest.approx(expected, rel=1e-9)
    assert full <= 0
    # random half-size subsets of one set overlap, and shared points pull the estimate below 0
    itself, _ = metrics.kid(x, x)
    shifted, _ = metrics.kid(x, x + 0.5)
    assert -0.1 * shifted < itself < 0


def test_kid_real_floor_uses_two_disjoint_halves():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(200, 8))
    assert metrics.kid_real_floor(real, 100) == metrics.kid(real[100:], real[:100])
    with pytest.raises(ValueError, match="needs 400 real"):
        metrics.kid_real_floor(real, 200)


def test_kid_rejects_bad_input():
    with pytest.raises(ValueError, match="feature arrays"):
        metrics.kid(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(np.zeros((10, 3)), np.zeros((10, 3)), subset_size=11)


# --------------------------------------------------------------------------- memorisation


def test_nearest_neighbour_distances_hand_example():
    train = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    queries = np.array([[3.0, 4.0], [1.0, 0.0], [9.0, 1.0]])
    # nearest: [3,4] itself (0); [0,0] at 1; [10,0] at sqrt(2). RMS = distance / sqrt(D=2)
    for chunk in (1, 2, 100):
        dist, index = metrics.nearest_neighbour_distances(queries, train, chunk=chunk)
        np.testing.assert_allclose(dist, [0.0, 1 / np.sqrt(2), 1.0], atol=1e-7)
        np.testing.assert_array_equal(index, [1, 0, 2])
    # uint8 images are read in [0, 1]: black vs white is distance 1, a copy is exactly 0
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] = 255
    dist, index = metrics.nearest_neighbour_distances(images[1:], images[:1])
    assert dist[0] == pytest.approx(1.0) and index[0] == 0
    assert metrics.nearest_neighbour_distances(images, images)[0].tolist() == [0.0, 0.0]


def _smooth_images(n, seed, size=16):
    """Random smooth colour images: 4x4 noise upsampled, so neighbours are not all equidistant."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(n, 4, 4, 3))
    return np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2).astype(np.uint8)


def test_memorisation_report_flags_copies():
    train, held_out = _smooth_images(300, 0), _smooth_images(200, 1)
    copies = train[:100]
    report = metrics.memorisation_report(copies, train, held_out)
    assert report["samples"]["min"] == 0.0 and report["samples"]["median"] == 0.0
    assert report["fraction_closer_than_held_out_p5"] == 1.0
    assert report["held_out"]["min"] > 0.05
    fresh = metrics.memorisation_report(_smooth_images(100, 2), train, held_out)
    assert fresh["fraction_closer_than_held_out_p5"] < 0.25
    assert fresh["samples"]["median"] == pytest.approx(fresh["held_out"]["median"], rel=0.2)
    json.dumps(fresh)


# --------------------------------------------------------------------------- all together


@pytest.fixture(scope="module")
def tiny_classifier():
    """A quickly trained 16 px style classifier (no cache): good enough to tell styles apart."""
    images, labels = styles.make_styles(512, size=16, seed=0)
    return classifier.train_style_classifier(images, labels, len(styles.STYLES), steps=60)


def test_evaluate_samples_real_images_sit_at_the_floor_and_copies_are_caught(tiny_classifier):
    train, _ = styles.make_styles(400, size=16, seed=0)
    held_out, _ = styles.make_styles(128, size=16, seed=11)
    real, real_labels = styles.make_styles(64, size=16, seed=12)
    result = metrics.evaluate_samples(tiny_classifier, real, real_labels, train, held_out, n_subsets=20)
    json.loads(json.dumps(result))  # JSON-safe
    for key in ("style_accuracy", "kid", "kid_std", "kid_real_floor", "n", "memorisation"):
        assert key in result
    assert result["n"] == 64 and result["n_labelled"] == 64
    assert result["style_accuracy"] > 0.7
    assert abs(result["kid"]) < abs(result["kid_real_floor"]) + 3 * result["kid_real_floor_std"]
    assert result["memorisation"]["fraction_closer_than_held_out_p5"] < 0.3

    copies = metrics.evaluate_samples(tiny_classifier, train[:64], None, train, held_out, n_subsets=20)
    assert copies["style_accuracy"] is None
    assert copies["memorisation"]["fraction_closer_than_held_out_p5"] == 1.0

    with pytest.raises(ValueError, match="needs 128 held-out"):
        metrics.evaluate_samples(tiny_classifier, real, real_labels, train, held_out[:100])
    with pytest.raises(ValueError, match="uint8"):
        metrics.evaluate_samples(tiny_classifier, real / 255.0, real_labels, train, held_out)
