"""Tests for diffusion_utils.data: image loaders, paintings, data sets, model range, batch iterator."""

import json
import warnings

import diffusion_utils  # noqa: F401  (sets up the BLAS before mlx.core)
from diffusion_utils import data, paths, styles

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image


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
        assert (paths.PAINTINGS_DIR / row["file"]).is_file()
        assert row["title"] and row["artist"] and row["department"]
        assert row["object_url"].startswith("https://www.metmuseum.org/")
        assert row["licence"].startswith("CC0")
    assert images.std() > 20  # real pictures, not blanks


def test_paintings_are_stored_at_128_px_and_downsized_on_load():
    big, rows = data.load_paintings(size=128)
    assert big.shape == (174, 128, 128, 3)
    with Image.open(paths.PAINTINGS_DIR / rows[0]["file"]) as stored:
        assert stored.size == (128, 128)
        assert np.array_equal(big[0], np.asarray(stored.convert("RGB")))
    small, _ = data.load_paintings(size=64)
    assert small.shape == (174, 64, 64, 3)
    assert np.array_equal(small[0], data.read_image(paths.PAINTINGS_DIR / rows[0]["file"], 64))
    # Lanczos downsizing keeps each painting's mean colour (to within rounding and ringing)
    assert np.abs(small.mean(axis=(1, 2)) - big.mean(axis=(1, 2))).max() < 2


def test_paintings_dataset_labels_are_eras():
    ds = data.load_dataset("paintings", size=16)
    assert ds.class_names == data.PAINTINGS_ERAS
    assert np.array_equal(np.bincount(ds.labels), [51, 58, 65])
    small = data.load_dataset("paintings", size=16, n=20, seed=1)
    assert len(small) == 20 and small.images.shape[1:] == (16, 16, 3)
    with pytest.raises(ValueError, match="thumbnail size"):
        data.load_paintings(size=129)


def test_styles_dataset():
    ds = data.load_dataset("styles", size=16, n=40, seed=3)
    images, labels = styles.make_styles(40, size=16, seed=3)
    assert ds.class_names == styles.STYLES
    assert np.array_equal(ds.images, images) and np.array_equal(ds.labels, labels)


def test_styles_plus_paintings_adds_one_painting_class_as_large_as_a_style():
    ds = data.load_dataset("styles+paintings", size=16)  # default n: 1024 images per style
    assert ds.class_names == data.STYLES + ("painting",) and len(ds.class_names) == 9
    assert data.STYLES == styles.STYLES and len(data.STYLES) == 8  # the styles stay 8
    assert np.array_equal(np.bincount(ds.labels), [1024] * 8 + [6 * 174])
    assert ds.images.shape == (9236, 16, 16, 3) and ds.images.dtype == np.uint8
    small = data.load_dataset("styles+paintings", size=16, n=40, seed=3)
    images, labels = styles.make_styles(40, size=16, seed=3)  # the styles part is "styles"
    assert np.array_equal(small.images[:40], images) and np.array_equal(small.labels[:40], labels)
    assert np.array_equal(np.bincount(small.labels), [5] * 8 + [174])  # at least one crop each


def test_painting_crops_are_seeded_sub_windows_of_the_128_px_paintings():
    paintings, _ = data.load_paintings(size=128)
    crops = data.painting_crops(64, per_painting=3, seed=5)
    assert crops.shape == (174 * 3, 64, 64, 3)
    windows = np.lib.stride_tricks.sliding_window_view(paintings, (64, 64), axis=(1, 2))
    for i in (0, 100, 173):  # crop j of painting i equals some 64x64 slice of painting i
        for crop in crops[3 * i:3 * i + 3]:
            match = (windows[i] == crop.transpose(2, 0, 1)).all(axis=(2, 3, 4))
            assert match.any()
    assert np.array_equal(crops, data.painting_crops(64, per_painting=3, seed=5))
    assert not np.array_equal(crops, data.painting_crops(64, per_painting=3, seed=6))
    assert np.array_equal(data.painting_crops(128, per_painting=2)[::2], paintings)  # whole paintings
    with pytest.raises(ValueError, match="per_painting"):
        data.painting_crops(64, per_painting=0)
    with pytest.raises(ValueError, match="thumbnail size"):
        data.painting_crops(256, per_painting=1)


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


def test_crops_are_seeded_sub_windows_and_resume_exactly():
    images, labels = _distinct_images(n=12, size=10)
    full = _take(data.BatchIterator(images, labels, batch_size=4, seed=2, crop=6), 9)
    again = _take(data.BatchIterator(images, labels, batch_size=4, seed=2, crop=6), 9)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(full, again, strict=True))
    corners = set()
    for x, y in full:
        assert x.shape == (4, 6, 6, 3)
        for img, label in zip(data.to_uint8(x), y, strict=True):
            found = [(r, c) for source in (images[label], images[label][:, ::-1])
                     for r in range(5) for c in range(5)
                     if np.array_equal(img, source[r:r + 6, c:c + 6])]
            assert found  # a 6x6 window of its (possibly mirrored) image
            corners.update(found)
    assert len(corners) > 5  # the windows move
    first = data.BatchIterator(images, labels, batch_size=4, seed=2, crop=6)
    _take(first, 4)
    resumed = data.BatchIterator(images, labels, batch_size=4, seed=0, crop=6)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for (xa, ya), (xb, yb) in zip(full[4:], _take(resumed, 5), strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    with pytest.raises(ValueError, match="crop"):
        data.BatchIterator(images, labels, batch_size=4, crop=11)


@pytest.mark.parametrize("batch_size", [0, -2, 21])
def test_bad_batch_size(batch_size):
    images, labels = _distinct_images()
    with pytest.raises(ValueError, match="batch_size"):
        data.BatchIterator(images, labels, batch_size=batch_size)
