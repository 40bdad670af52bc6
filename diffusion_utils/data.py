"""Data for the course: data sets and loaders (art styles, real paintings, your own images), batches.

Every image leaves this module as uint8 `(N, H, W, 3)`, channels last; `to_model_range`
and `to_uint8` convert to and from the float32 `[-1, 1]` range the models work in.

- **Art styles** (`STYLES`, `make_styles`): drawn by the procedural painters of
  `styles.py`; the two names are re-exported here because they are the course's data API.
- **Paintings** (`load_paintings`): 128x128 thumbnails of the 174 public-domain paintings of
  the Met's Open Access collection, committed under `data/paintings/` (built by
  `data/build_paintings.py`; see `data/README.md` for sources and licences).
- **Styles plus paintings** (`load_dataset("styles+paintings")`): the 8 styles and one extra
  class "painting" made of seeded random crops of the paintings (`painting_crops`).
- **Your own images** (`load_image_folder`): a folder whose subfolders are the classes.
- **A photograph** (`load_photo`): matplotlib's bundled `grace_hopper.jpg`, for image-to-image.
- **Batches** (`BatchIterator`): infinite, seeded, reshuffled every epoch, random
  horizontal flips, resumable from a JSON-serialisable `state_dict()`.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from diffusion_utils import styles
from diffusion_utils.paths import PAINTINGS_DIR

# `data.STYLES` and `data.make_styles` are the course's data API (DESIGN.md contract): re-exported
from diffusion_utils.styles import STYLES, make_styles  # noqa: F401

import mlx.core as mx
import numpy as np
from PIL import Image, ImageOps

DEFAULT_STYLES_N = 8192  # default "styles" training set: 1024 per style, ~3 s to draw at 32 px
PAINTINGS_ERAS = ("before_1500", "1500_1699", "1700_onwards")  # labels of the paintings set
STYLES_PLUS_PAINTINGS = "styles+paintings"  # data set name: the 8 styles + one class of painting crops
PAINTING_CLASS = "painting"  # that class's name, after `STYLES`


# --------------------------------------------------------------------------- image files
def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited over white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit greyscale
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def read_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read one image file -> uint8 (size, size, 3): centre-cropped square, Lanczos-resized.

    Handles greyscale, palette, 16-bit, CMYK and transparent images (over white).
    Raises whatever Pillow raises for an unreadable file.
    """
    with Image.open(path) as img:
        rgb = _to_rgb(img)
    w, h = rgb.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    rgb = rgb.crop(box).resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


@dataclass
class Dataset:
    """Labelled images: uint8 (N, H, W, 3) (or float32 latents, see `latent.py`), int64 labels (N,),
    names indexed by label."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def _image_files(folder: Path) -> list[Path]:
    exts = {e.lower() for e in Image.registered_extensions()}
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in exts
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _loops_back(folder: Path, root: Path) -> bool:
    """True (with a warning) for a symlinked subfolder that points at `root` or above it: a loop."""
    target = folder.resolve()
    if folder.is_symlink() and (target == root.resolve() or target in root.resolve().parents):
        warnings.warn(f"{folder}: ignoring a link back to {target} (a loop, not a class)", stacklevel=3)
        return True
    return False


def _class_name(name: str) -> str:
    """A folder name as a printable class name: bytes that are not UTF-8 become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def load_image_folder(path: str | os.PathLike, size: int = 32) -> Dataset:
    """Load a folder of images as a labelled `Dataset` of (size, size) RGB images.

    Each subfolder is a class (its name the class name; images may sit deeper inside);
    a folder with images but no subfolders is one class named after the folder. Files
    Pillow cannot read (including images over Pillow's decompression-bomb limit) are skipped
    with one warning naming them; hidden files, files without an image extension and links back
    up the tree are ignored. Folder names that are not UTF-8 are shown with U+FFFD.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"not a folder: {root} (give a folder of images, subfolders = classes)")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    subdirs = [d for d in subdirs if not _loops_back(d, root)]
    groups = [(_class_name(d.name), _image_files(d)) for d in subdirs]
    groups = [(name, files) for name, files in groups if files]
    loose = [p for p in _image_files(root) if p.parent == root]
    if not groups:
        groups = [(_class_name(root.resolve().name) or "images", loose)] if loose else []
    elif loose:
        warnings.warn(f"{root}: ignoring {len(loose)} image(s) outside the class subfolders "
                      f"(e.g. {loose[0].name}); move them into a subfolder", stacklevel=2)
    if not groups:
        raise ValueError(f"no images found in {root} (expected image files, or subfolders of "
                         "them, one per class)")
    images, labels, bad = [], [], []
    for label, (_, files) in enumerate(groups):
        for f in files:
            try:
                images.append(read_image(f, size))
                labels.append(label)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # unreadable
                bad.append(f"{f} ({type(e).__name__})")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image file(s): {'; '.join(bad)}",
                      stacklevel=2)
    if not images:
        raise ValueError(f"no readable images in {root}")
    return Dataset(np.stack(images), np.array(labels, np.int64),
                   tuple(name for name, _ in groups))


def _paintings_index() -> tuple[list[dict[str, str]], int]:
    """The rows of `data/paintings/metadata.csv` and the side of the stored thumbnails in pixels."""
    meta = PAINTINGS_DIR / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(
            f"paintings not found at {PAINTINGS_DIR}: they ship in the repository's data/ "
            "folder; install from a clone with `pip install -e .`, or rebuild them with "
            "`python data/build_paintings.py`")
    with open(meta, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with Image.open(PAINTINGS_DIR / rows[0]["file"]) as first:
        stored = first.size[0]
    return rows, stored


def _check_paintings_size(size: int, stored: int) -> None:
    if not 8 <= size <= stored:
        raise ValueError(f"paintings size must be between 8 and {stored} (the thumbnail size), "
                         f"got {size}")


def load_paintings(size: int = 32) -> tuple[np.ndarray, list[dict[str, str]]]:
    """The committed Met paintings: uint8 (N, size, size, 3) and one metadata dict per image.

    Reads `data/paintings/metadata.csv` and its 128x128 thumbnails from the repository
    (present in a clone / editable install). `size` must be at most the thumbnail size;
    smaller sizes are Lanczos-downsized from the thumbnails (`read_image`).
    """
    rows, stored = _paintings_index()
    _check_paintings_size(size, stored)
    images = np.stack([read_image(PAINTINGS_DIR / row["file"], size) for row in rows])
    return images, rows


def painting_crops(size: int, per_painting: int, seed: int = 0) -> np.ndarray:
    """`per_painting` seeded random crops of each painting: uint8 (N * per_painting, size, size, 3),
    grouped by painting (painting i gives rows i * per_painting ... (i + 1) * per_painting - 1).

    Each painting is taken at side `min(2 * size, thumbnail side)` (at size 64: the stored 128 px
    thumbnail itself, so every crop is a true sub-window of it) and cut at top-left corners drawn
    uniformly by `np.random.default_rng(seed)`. At twice the crop's side a crop covers a quarter of
    the painting: brush strokes and passages rather than whole compositions, and many different
    windows from few paintings. At size 128 (the thumbnail side) every crop is the whole painting.
    """
    if isinstance(per_painting, bool) or per_painting < 1:
        raise ValueError(f"per_painting must be at least 1, got {per_painting}")
    stored = _paintings_index()[1]
    _check_paintings_size(size, stored)
    paintings, _ = load_paintings(min(2 * size, stored))
    spare = paintings.shape[1] - size + 1
    corners = np.random.default_rng(seed).integers(0, spare, size=(len(paintings), per_painting, 2))
    return np.stack([painting[r:r + size, c:c + size]
                     for painting, where in zip(paintings, corners, strict=True) for r, c in where])


def load_photo(size: int = 64) -> np.ndarray:
    """matplotlib's sample photograph of Grace Hopper -> uint8 (size, size, 3), for image-to-image."""
    from matplotlib import cbook  # imported here: only this function needs matplotlib

    return read_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), size)


def painting_era(begin_year: int) -> int:
    """Label of a painting by the year it was begun: index into `PAINTINGS_ERAS`."""
    return 0 if begin_year < 1500 else 1 if begin_year < 1700 else 2


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    keep = np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
    return Dataset(ds.images[keep], ds.labels[keep], ds.class_names)


def _styles_plus_paintings(size: int, seed: int, n: int | None) -> Dataset:
    """"styles" (n images) + `painting_crops` labelled `PAINTING_CLASS`; see `load_dataset`."""
    images, labels = styles.make_styles(DEFAULT_STYLES_N if n is None else n, size, seed)
    per_style = len(images) / len(styles.STYLES)
    per_painting = max(1, round(per_style / len(_paintings_index()[0])))
    crops = painting_crops(size, per_painting, seed)
    return Dataset(np.concatenate([images, crops]),
                   np.concatenate([labels, np.full(len(crops), len(styles.STYLES), np.int64)]),
                   styles.STYLES + (PAINTING_CLASS,))


def load_dataset(name_or_path: str | os.PathLike, size: int = 32, seed: int = 0,
                 n: int | None = None) -> Dataset:
    """A training set by name: "styles", "paintings", "styles+paintings", or a path to an image folder.

    - "styles": `styles.make_styles(n or DEFAULT_STYLES_N, size, seed)`, labels = `styles.STYLES`.
    - "paintings": the 174 Met paintings, labelled by era (`PAINTINGS_ERAS`: begun before
      1500 / 1500-1699 / 1700 onwards: 51 / 58 / 65 paintings).
    - "styles+paintings" (`STYLES_PLUS_PAINTINGS`): "styles" plus a 9th class "painting"
      (`class_names = STYLES + ("painting",)`). 174 paintings are few, so each gives
      K = round(n / 8 / 174) (at least 1) seeded random crops of side `size` from the painting
      at twice that side (`painting_crops`: at size 64, crops of the stored 128 px thumbnails),
      so the class is about as large as one style: with the default n = 8192, K = 6 and
      1044 painting crops beside 1024 images per style (9236 in all). `n` counts the styles'
      images; sizes above 64 crop from the 128 px thumbnail (at 128: the whole painting).
    - a folder: `load_image_folder(path, size)`.
    For paintings and folders, `n` keeps a seeded random subset of n images.
    """
    if name_or_path == "styles":
        images, labels = styles.make_styles(DEFAULT_STYLES_N if n is None else n, size, seed)
        return Dataset(images, labels, styles.STYLES)
    if name_or_path == STYLES_PLUS_PAINTINGS:
        return _styles_plus_paintings(size, seed, n)
    if name_or_path == "paintings":
        images, rows = load_paintings(size)
        labels = np.array([painting_era(int(row["begin_year"])) for row in rows], np.int64)
        return _subset(Dataset(images, labels, PAINTINGS_ERAS), n, seed)
    if not Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"dataset {str(name_or_path)!r} not found: use 'styles', 'paintings', "
                                f"{STYLES_PLUS_PAINTINGS!r} or the path of an image folder")
    return _subset(load_image_folder(name_or_path, size), n, seed)


# --------------------------------------------------------------------------- model range
def to_model_range(images) -> mx.array:
    """uint8 images (..., H, W, C) -> float32 mx.array in [-1, 1] (0 -> -1, 255 -> 1)."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"to_model_range expects uint8 images, got dtype {a.dtype}")
    return mx.array(a.astype(np.float32) / 127.5 - 1.0)


def to_uint8(x) -> np.ndarray:
    """Float images in [-1, 1] (mx.array or numpy) -> uint8 numpy; values outside are clipped."""
    a = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint((a + 1.0) * 127.5), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- batches
class BatchIterator:
    """Infinite, seeded mini-batches: yields (x (B, H, W, C) float32, y (B,) int32).

    uint8 images are converted to [-1, 1] (`to_model_range`); float32 arrays (e.g. the scaled
    latents of `latent.py`) pass through unchanged.

    Epoch `e` visits the images in the order `default_rng([seed, e]).permutation(N)` and
    flips each one horizontally with probability 1/2 (decided by the same generator); with
    `crop` set, each image is cut to a random `crop` x `crop` square (corner from the same
    generator), so an autoencoder can train on small windows of large images.
    The last `N % B` images of an epoch's order are dropped so every batch is full.
    Because an epoch's order depends only on `(seed, epoch)`, `state_dict()` =
    {seed, epoch, position} is enough to resume the exact same stream of batches.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0,
                 flip: bool = True, crop: int | None = None):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype not in (np.uint8, np.float32):
            raise ValueError(f"images must be uint8 or float32 (N, H, W, C), got {images.dtype} "
                             f"{images.shape}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        if isinstance(batch_size, bool) or not 1 <= batch_size <= len(images):
            raise ValueError(f"batch_size must be between 1 and the number of images "
                             f"({len(images)}), got {batch_size}")
        if crop is not None and not 1 <= crop <= min(images.shape[1:3]):
            raise ValueError(f"crop must be between 1 and the image side {min(images.shape[1:3])}, "
                             f"got {crop}")
        self.images, self.labels = images, labels.astype(np.int32)
        self.batch_size, self.seed, self.flip, self.crop = int(batch_size), int(seed), bool(flip), crop
        self.epoch, self.position = 0, 0
        self._order = self._flips = self._corners = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.images) // self.batch_size

    def _epoch_plan(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        self._order = rng.permutation(len(self.images))
        self._flips = rng.random(len(self.images)) < 0.5
        if self.crop is not None:  # (N, 2) top-left corners, drawn after the flips
            spare = np.array(self.images.shape[1:3]) - self.crop + 1
            self._corners = (rng.random((len(self.images), 2)) * spare).astype(np.int64)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> tuple[mx.array, mx.array]:
        if self.position + self.batch_size > len(self.images):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._epoch_plan()
        sel = slice(self.position, self.position + self.batch_size)
        idx = self._order[sel]
        x = self.images[idx]  # (B, H, W, C), a copy
        if self.flip:
            f = self._flips[sel]
            x[f] = x[f, :, ::-1]
        if self.crop is not None:
            x = np.stack([image[r:r + self.crop, c:c + self.crop] for image, (r, c)
                          in zip(x, self._corners[sel], strict=True)])
        self.position += self.batch_size
        x = to_model_range(x) if x.dtype == np.uint8 else mx.array(x)
        return x, mx.array(self.labels[idx])

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: JSON-serialisable {seed, epoch, position}."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state_dict()` was taken."""
        if not 0 <= int(state["position"]) <= len(self.images) or int(state["epoch"]) < 0:
            raise ValueError(f"bad iterator state {state} for {len(self.images)} images")
        self.seed, self.epoch, self.position = (int(state[k]) for k in ("seed", "epoch",
                                                                         "position"))
        self._order = None
