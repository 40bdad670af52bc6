"""Tests for diffusion_utils.data: art styles, image loaders, model range, batch iterator."""

import json
import warnings

import diffusion_utils  # noqa: F401  (sets up the BLAS before mlx.core)
from diffusion_utils import data

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

SIZES = (16, 32, 64)


# --------------------------------------------------------------------------- art styles
@pytest.mark.parametrize("size", SIZES)
def test_styles_shapes_dtypes_and_every_style_present(size):
    images, labels = data.make_styles(24, size=size, seed=1)
    assert images.shape == (24, size, size, 3) and images.dtype == np.uint8
    assert labels.shape == (24,) and labels.dtype == np.int64
    assert np.array_equal(np.bincount(labels, minlength=len(data.STYLES)), np.full(8, 3))
    for img in images:  # every image is a picture, not a flat or blank canvas
        assert int(img.max()) - int(img.min()) > 60


def test_styles_balanced_and_labels_cycle():
    _, labels = data.make_styles(80, size=16)
    assert np.array_equal(labels, np.arange(80) % len(data.STYLES))


def test_same_seed_same_bytes_other_seed_other_images():
    a, la = data.make_styles(16, size=32, seed=7)
    b, lb = data.make_styles(16, size=32, seed=7)
    c, _ = data.make_styles(16, size=32, seed=8)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert all((a[i] != c[i]).any() for i in range(16))


@pytest.mark.parametrize("style", [None, "drip", 3])
def test_image_i_does_not_depend_on_n(style):
    long, long_labels = data.make_styles(10, size=32, seed=4, style=style)
    short, short_labels = data.make_styles(5, size=32, seed=4, style=style)
    assert np.array_equal(long[:5], short) and np.array_equal(long_labels[:5], short_labels)


def test_style_by_name_or_index_is_the_same():
    by_name, labels = data.make_styles(6, size=16, seed=2, style="stained_glass")
    by_index, _ = data.make_styles(6, size=16, seed=2, style=data.STYLES.index("stained_glass"))
    assert np.array_equal(by_name, by_index)
    assert (labels == data.STYLES.index("stained_glass")).all()


@pytest.mark.parametrize("bad", ["picasso", 8, -1, "De Stijl"])
def test_unknown_style_lists_the_valid_names(bad):
    with pytest.raises(ValueError) as err:
        data.make_styles(4, style=bad)
    assert all(name in str(err.value) for name in data.STYLES)


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 4, "size": 4}, {"n": 4, "seed": -3}])
def test_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        data.make_styles(**kwargs)


def test_held_out_stream_is_deterministic_and_disjoint_from_training():
    train, _ = data.make_styles(64, size=16, seed=0)
    held, held_labels = data.held_out_styles(64, size=16, seed=0)
    again, _ = data.held_out_styles(64, size=16, seed=0)
    assert np.array_equal(held, again)
    assert np.array_equal(held_labels, np.arange(64) % len(data.STYLES))
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
    train, train_labels = data.make_styles(240, size=size, seed=0)
    test, test_labels = data.held_out_styles(240, size=size, seed=0)
    f_train, f_test = _features(train), _features(test)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    nearest = ((f_test[:, None] - f_train[None]) ** 2).sum(-1).argmin(1)
    predicted = train_labels[nearest]
    assert (predicted == test_labels).mean() >= 0.92
    for k in range(len(data.STYLES)):  # and no single style is a muddle
        assert (predicted[test_labels == k] == k).mean() >= 0.75, data.STYLES[k]


# --------------------------------------------------------------------------- image folders
def _write_folder(root):
    (root / "cats").mkdir()
    (root / "dogs").mkdir()
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent: must come out white
    Image.fromarray(rgba, "RGBA").save(root / "cats" / "transparent.png")
    Image.fromarray(np.full((30, 30), 128, np.uint8), "L").save(root / "cats" / "grey.png")
    odd = np.zeros((23, 37, 3), np.uint8)
    odd[:, 7:30] = (0, 0, 255)  # blue centre square, black side bands that the crop removes
    Image.fromarray(odd).save(root / "cats" / "odd.bmp")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L").convert("P").save(
        root / "dogs" / "palette.gif")
    Image.fromarray(np.full((12, 12), 65535, np.uint16)).save(root / "dogs" / "deep.png")
    (root / "dogs" / "broken.png").write_bytes(b"this is not a png")
    (root / "dogs" / "notes.txt").write_text("not an image, ignored silently")


def test_folder_loader_handles_modes_sizes_and_skips_a_corrupt_file_with_one_warning(tmp_path):
    _write_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load_image_folder(tmp_path, size=16)
    assert len(caught) == 1 and "broken.png" in str(caught[0].message)
    assert ds.class_names == ("cats", "dogs")
    assert ds.images.shape == (5, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and list(ds.labels) == [0, 0, 0, 1, 1]
    grey, odd, transparent, deep, palette = ds.images  # files are read in sorted order
    assert (transparent == 255).all()
    assert (grey == 128).all()
    assert (odd == (0, 0, 255)).all()  # centre crop: the black side bands are gone
    assert (deep == 255).all()  # 16-bit white stays white
    assert (palette[..., 0] == palette[..., 2]).all() and palette.max() - palette.min() > 40


def test_loose_images_form_one_class_named_after_the_folder(tmp_path):
    folder = tmp_path / "my_art"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((10, 10, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    ds = data.load_dataset(folder, size=8)
    assert ds.class_names == ("my_art",) and len(ds) == 3 and (ds.labels == 0).all()


def test_empty_missing_and_unreadable_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no images found in .*empty"):
        (tmp_path / "empty").mkdir()
        data.load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_image_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_dataset(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="x.jpg"), pytest.raises(ValueError, match="no readable"):
        data.load_image_folder(bad)


# --------------------------------------------------------------------------- paintings
def test_paintings_are_the_committed_thumbnails_with_metadata():
    images, rows = data.load_paintings(size=32)
    assert images.shape == (174, 32, 32, 3) and images.dtype == np.uint8
    assert len(rows) == 174 and len({r["object_id"] for r in rows}) == 174
    for row in rows:
        assert (data.PAINTINGS_DIR / row["file"]).is_file()
        assert row["title"] and row["artist"] and row["department"]
        assert row["object_url"].startswith("https://www.metmuseum.org/")
        assert row["licence"].startswith("CC0")
    assert images.std() > 20  # real pictures, not blanks


def test_paintings_dataset_labels_are_eras():
    ds = data.load_dataset("paintings", size=16)
    assert ds.class_names == data.PAINTINGS_ERAS
    assert np.array_equal(np.bincount(ds.labels), [51, 58, 65])
    small = data.load_dataset("paintings", size=16, n=20, seed=1)
    assert len(small) == 20 and small.images.shape[1:] == (16, 16, 3)
    with pytest.raises(ValueError, match="thumbnail size"):
        data.load_paintings(size=128)


def test_styles_dataset():
    ds = data.load_dataset("styles", size=16, n=40, seed=3)
    images, labels = data.make_styles(40, size=16, seed=3)
    assert ds.class_names == data.STYLES
    assert np.array_equal(ds.images, images) and np.array_equal(ds.labels, labels)


def test_photo_is_an_rgb_square():
    photo = data.load_photo(48)
    assert photo.shape == (48, 48, 3) and photo.dtype == np.uint8 and photo.std() > 20


# --------------------------------------------------------------------------- model range
def test_model_range_round_trip():
    all_values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = data.to_model_range(all_values)
    assert isinstance(x, mx.array) and x.dtype == mx.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert np.array_equal(data.to_uint8(x), all_values)
    assert np.array_equal(data.to_uint8(np.array([-3.0, -1.0, 0.0, 1.0, 2.5])),
                          [0, 0, 128, 255, 255])
    with pytest.raises(ValueError, match="uint8"):
        data.to_model_range(np.zeros((2, 4, 4, 3), np.float32))


# --------------------------------------------------------------------------- batches
def _distinct_images(n=20, size=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n)


def _take(it, k):
    return [(np.array(x), np.array(y)) for x, y in (next(it) for _ in range(k))]


def test_batches_are_seeded_shuffled_and_cover_each_epoch():
    images, labels = _distinct_images()
    it = data.BatchIterator(images, labels, batch_size=5, seed=3)
    batches = _take(it, 8)  # two epochs of 4 batches
    again = _take(data.BatchIterator(images, labels, batch_size=5, seed=3), 8)
    other = _take(data.BatchIterator(images, labels, batch_size=5, seed=4), 8)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(batches, again, strict=True))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(batches, other, strict=True))
    x, y = batches[0]
    assert x.shape == (5, 8, 8, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() >= -1 and x.max() <= 1
    epoch0 = np.concatenate([y for _, y in batches[:4]])
    epoch1 = np.concatenate([y for _, y in batches[4:]])
    assert sorted(epoch0) == list(range(20)) and sorted(epoch1) == list(range(20))
    assert not np.array_equal(epoch0, epoch1)  # reshuffled


def test_flips_are_horizontal_mirrors_of_the_right_images():
    images, labels = _distinct_images()
    for flip in (True, False):
        it = data.BatchIterator(images, labels, batch_size=4, seed=0, flip=flip)
        n_flipped = 0
        for x, y in _take(it, 25):
            for img, label in zip(data.to_uint8(x), y, strict=True):
                mirrored = np.array_equal(img, images[label][:, ::-1])
                assert mirrored or np.array_equal(img, images[label])
                n_flipped += mirrored
        assert (20 < n_flipped < 80) if flip else n_flipped == 0  # about half of 100


def test_resumed_iterator_sees_exactly_the_same_batches():
    images, labels = _distinct_images(n=23)
    full = _take(data.BatchIterator(images, labels, batch_size=6, seed=9), 12)
    first = data.BatchIterator(images, labels, batch_size=6, seed=9)
    _take(first, 5)  # stop mid-epoch (3 batches per epoch; 5 leftover images are dropped)
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"seed": 9, "epoch": 1, "position": 12}
    resumed = data.BatchIterator(images, labels, batch_size=6, seed=0)
    resumed.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(full[5:], _take(resumed, 7), strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


@pytest.mark.parametrize("batch_size", [0, -2, 21])
def test_bad_batch_size(batch_size):
    images, labels = _distinct_images()
    with pytest.raises(ValueError, match="batch_size"):
        data.BatchIterator(images, labels, batch_size=batch_size)
