"""Tests for diffusion_utils.styles: the procedural painters (shapes, seeding, streams, distinctness)."""

import diffusion_utils  # noqa: F401  (sets up the BLAS before mlx.core)
from diffusion_utils import data, styles

import numpy as np
import pytest

SIZES = (16, 32, 64)


def test_the_data_api_names_the_same_painters():
    """`data.STYLES` and `data.make_styles` are the course's data API (DESIGN.md): the same objects."""
    assert data.STYLES is styles.STYLES and data.make_styles is styles.make_styles
    assert data.make_styles(3, size=16, seed=5)[0].tobytes() == styles.make_styles(3, 16, 5)[0].tobytes()


@pytest.mark.parametrize("size", SIZES)
def test_styles_shapes_dtypes_and_every_style_present(size):
    images, labels = styles.make_styles(24, size=size, seed=1)
    assert images.shape == (24, size, size, 3) and images.dtype == np.uint8
    assert labels.shape == (24,) and labels.dtype == np.int64
    assert np.array_equal(np.bincount(labels, minlength=len(styles.STYLES)), np.full(8, 3))
    for img in images:  # every image is a picture, not a flat or blank canvas
        assert int(img.max()) - int(img.min()) > 60


def test_styles_balanced_and_labels_cycle():
    _, labels = styles.make_styles(80, size=16)
    assert np.array_equal(labels, np.arange(80) % len(styles.STYLES))


def test_same_seed_same_bytes_other_seed_other_images():
    a, la = styles.make_styles(16, size=32, seed=7)
    b, lb = styles.make_styles(16, size=32, seed=7)
    c, _ = styles.make_styles(16, size=32, seed=8)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert all((a[i] != c[i]).any() for i in range(16))


@pytest.mark.parametrize("style", [None, "drip", 3])
def test_image_i_does_not_depend_on_n(style):
    long, long_labels = styles.make_styles(10, size=32, seed=4, style=style)
    short, short_labels = styles.make_styles(5, size=32, seed=4, style=style)
    assert np.array_equal(long[:5], short) and np.array_equal(long_labels[:5], short_labels)


def test_style_by_name_or_index_is_the_same():
    by_name, labels = styles.make_styles(6, size=16, seed=2, style="stained_glass")
    by_index, _ = styles.make_styles(6, size=16, seed=2, style=styles.STYLES.index("stained_glass"))
    assert np.array_equal(by_name, by_index)
    assert (labels == styles.STYLES.index("stained_glass")).all()


@pytest.mark.parametrize("bad", ["picasso", 8, -1, "De Stijl"])
def test_unknown_style_lists_the_valid_names(bad):
    with pytest.raises(ValueError) as err:
        styles.make_styles(4, style=bad)
    assert all(name in str(err.value) for name in styles.STYLES)


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 4, "size": 4}, {"n": 4, "seed": -3}])
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        styles.make_styles(**kwargs)


def test_held_out_stream_is_deterministic_and_disjoint_from_training():
    train, _ = styles.make_styles(64, size=16, seed=0)
    held, held_labels = styles.held_out_styles(64, size=16, seed=0)
    again, _ = styles.held_out_styles(64, size=16, seed=0)
    assert np.array_equal(held, again)
    assert np.array_equal(held_labels, np.arange(64) % len(styles.STYLES))
    flat_train = train.reshape(64, -1)
    for img in held.reshape(64, -1):  # no held-out image is a training image
        assert not (flat_train == img).all(axis=1).any()


def _features(images):
    """Simple per-image colour and gradient statistics (no learning)."""
    x = images.astype(np.float32) / 255
    grey = x.mean(-1)
    rg, yb = x[..., 0] - x[..., 1], (x[..., 0] + x[..., 1]) / 2 - x[..., 2]  # opponent colours
    gx = np.abs(np.diff(grey, axis=2)).mean((1, 2))
    gy = np.abs(np.diff(grey, axis=1)).mean((1, 2))
    return np.column_stack([
        x.mean((1, 2)), x.std((1, 2)), (x.max(-1) - x.min(-1)).mean((1, 2)),
        rg.std((1, 2)), yb.std((1, 2)), np.log(gx + 1e-3), np.log(gy + 1e-3),
        (grey < 0.15).mean((1, 2)), (grey > 0.85).mean((1, 2)),
    ])


@pytest.mark.parametrize("size", SIZES)
def test_styles_are_distinguishable_by_simple_features(size):
    """A 1-nearest-neighbour classifier on colour/gradient statistics tells the styles apart."""
    train, train_labels = styles.make_styles(240, size=size, seed=0)
    test, test_labels = styles.held_out_styles(240, size=size, seed=0)
    f_train, f_test = _features(train), _features(test)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    nearest = ((f_test[:, None] - f_train[None]) ** 2).sum(-1).argmin(1)
    predicted = train_labels[nearest]
    assert (predicted == test_labels).mean() >= 0.92
    for k in range(len(styles.STYLES)):  # and no single style is a muddle
        assert (predicted[test_labels == k] == k).mean() >= 0.75, styles.STYLES[k]
