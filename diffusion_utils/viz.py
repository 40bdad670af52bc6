"""Pictures for the notebooks: image grids, noising strips, schedule and loss plots, GIFs.

Images come in channels-last batches `(B, H, W, C)` (C = 1 or 3), either uint8 or float in
[-1, 1] (the model range), as numpy or MLX arrays. Plot functions take an optional `ax`
and return the matplotlib Figure; they never touch pyplot's global state, so they work the
same in a notebook, a test (Agg backend) or a script. Files are written with Pillow, atomically
(`files.atomic_write`), in the format their extension names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from diffusion_utils.data import to_model_range, to_uint8
from diffusion_utils.files import atomic_write
from diffusion_utils.schedules import NoiseSchedule

import mlx.core as mx
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, Patch
from PIL import Image, ImageDraw


def as_uint8(images) -> np.ndarray:
    """uint8 `(B, H, W, 3)` from a uint8 or [-1, 1] float batch `(B, H, W, C)` or one image `(H, W, C)`."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]  # (1, H, W, C)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (B, H, W, C) with C = 1 or 3, got shape {images.shape}")
    if images.dtype != np.uint8:
        images = to_uint8(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images  # (B, H, W, 3)


def image_grid(images, nrow: int | None = None, padding: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile a batch into one uint8 image `(H', W', 3)`, `nrow` images per row (default ~sqrt(B)).

    With R rows and N = nrow columns: H' = R (H + padding) + padding, W' = N (W + padding) + padding.
    Empty cells of the last row stay at `pad_value`.
    """
    images = as_uint8(images)  # (B, H, W, 3)
    b, h, w, _ = images.shape
    ncol = _columns(b, nrow)
    nrows = math.ceil(b / ncol)
    grid = np.full((nrows * (h + padding) + padding, ncol * (w + padding) + padding, 3), pad_value, np.uint8)
    for i, image in enumerate(images):
        top, left = padding + (i // ncol) * (h + padding), padding + (i % ncol) * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def _columns(count: int, nrow: int | None) -> int:
    """Images per row: `nrow`, else about sqrt(count); at least 1 and at most `count`."""
    return max(1, min(nrow or math.ceil(math.sqrt(count)), count))


def show_images(images, titles=None, nrow: int | None = None, ax=None, scale: float = 1.2) -> Figure:
    """Show a batch with `nrow` images per row (default ~sqrt(B)); returns the Figure.

    `titles`: one string for the whole grid, or one string per image ("" for none), which
    draws one panel per image. With `ax`, the batch is drawn as a single grid into that axes
    (so `titles` must be one string). `scale`: inches per image.
    """
    images = as_uint8(images)  # (B, H, W, 3)
    ncol = _columns(len(images), nrow)
    nrows = math.ceil(len(images) / ncol)
    if titles is None or isinstance(titles, str):
        if ax is None:
            ax = Figure(figsize=(scale * ncol, scale * nrows + 0.3), layout="constrained").add_subplot()
        ax.imshow(image_grid(images, ncol), interpolation="nearest")
        ax.set_axis_off()
        if titles:
            ax.set_title(titles)
        return ax.figure
    if ax is not None:
        raise ValueError("per-image titles need one panel per image: call show_images without ax")
    if len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    fig = Figure(figsize=(scale * ncol, (scale + 0.25) * nrows), layout="constrained")
    panels = fig.subplots(nrows, ncol, squeeze=False).flat  # nrows * ncol >= B
    for panel, image, title in zip(panels, images, titles, strict=False):
        panel.imshow(image, interpolation="nearest")
        panel.set_title(title, fontsize=8)
    for panel in fig.axes:
        panel.set_axis_off()
    return fig


def show_labelled_grid(images, nrow: int, row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
                       title: str | None = None, ax=None, scale: float = 1.2, padding: int = 1) -> Figure:
    """Show a batch as one grid, `nrow` images per row, with a label left of each row and above each column.

    images: `(B, H, W, C)`; `row_labels` (one per grid row) and `col_labels` (one per column) may be
    empty. Draws into `ax` if given (e.g. one panel of a larger figure); returns the Figure.
    """
    grid = image_grid(images, nrow, padding)  # (H', W', 3)
    h, w = as_uint8(images).shape[1:3]
    ncol = _columns(len(images), nrow)
    nrows = math.ceil(len(images) / ncol)
    for labels, count, what in ((row_labels, nrows, "rows"), (col_labels, ncol, "columns")):
        if labels and len(labels) != count:
            raise ValueError(f"got {len(labels)} labels for {count} grid {what}")
    if ax is None:
        ax = Figure(figsize=(scale * ncol + 1.2, scale * nrows + 0.5), layout="constrained").add_subplot()
    ax.imshow(grid, interpolation="nearest")
    row_centres = padding + np.arange(nrows) * (h + padding) + h / 2  # in grid pixels
    col_centres = padding + np.arange(ncol) * (w + padding) + w / 2
    ax.set_yticks(row_centres if row_labels else [], list(row_labels))
    ax.set_xticks(col_centres if col_labels else [], list(col_labels))
    ax.xaxis.tick_top()
    ax.tick_params(length=0, labelsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}  # extension -> Pillow format written


_CONDITIONED, _PLAIN = "#fdd9b5", "#dbe5f5"  # box colours of plot_unet


def _skip_pairs(stages: Sequence[Mapping]) -> list[tuple[int, int]]:
    """(stage that keeps a skip, stage that concatenates it) pairs, last in first out."""
    kept, pairs = [], []
    for i, stage in enumerate(stages):
        if stage.get("pops"):
            if not kept:
                raise ValueError(f"stage {stage['name']!r} concatenates a skip, but none is kept")
            pairs.append((kept.pop(), i))
        if stage.get("pushes"):
            kept.append(i)
    if kept:
        first = stages[kept[0]]["name"]
        raise ValueError(f"{len(kept)} skip(s) never concatenated, the first kept by {first!r}")
    return pairs


def plot_unet(stages: Sequence[Mapping], ax=None, title: str | None = None) -> Figure:
    """Draw a UNet forward pass as a U: one box per stage, left to right in forward order and one
    row lower per halving of the resolution, with the skip connections as arcs; returns the Figure.

    stages: in forward order, each a mapping with `name` (str), `shape` (B, H, W, C) of the stage's
    output, and optional flags `pushes` (its output is kept as a skip), `pops` (it first concatenates
    the newest kept skip: last in, first out) and `emb` (the time/style vector enters it). A pop with
    no skip kept, or skips left over at the end, raise ValueError. Each box shows the name and H×W×C.
    """
    pairs = _skip_pairs(stages)
    top = max(stage["shape"][1] for stage in stages)
    rows = [-round(math.log2(top / stage["shape"][1])) for stage in stages]  # 0, -1, -2, ... per halving
    if ax is None:
        size = (0.95 * len(stages) + 1.0, 1.3 * (1 - min(rows)) + 1.6)
        ax = Figure(figsize=size, layout="constrained").add_subplot()
    for i, (stage, row) in enumerate(zip(stages, rows, strict=True)):
        ax.add_patch(FancyBboxPatch((i - 0.42, row - 0.3), 0.84, 0.6, boxstyle="round,pad=0.02", gid="stage",
                                    facecolor=_CONDITIONED if stage.get("emb") else _PLAIN, edgecolor="0.3"))
        _, h, w, c = stage["shape"]
        ax.text(i, row, f"{stage['name']}\n{h}×{w}×{c}", ha="center", va="center", fontsize=6.5)
        if i:
            ax.annotate("", xy=(i - 0.44, row), xytext=(i - 0.56, rows[i - 1]),
                        arrowprops={"arrowstyle": "->", "linewidth": 0.8, "shrinkA": 0, "shrinkB": 0})
    arc_top = 0.3
    for start, end in pairs:
        height = 0.35 + 0.07 * (end - start)  # longer skips arc higher, so nested arcs do not cross
        arc_top = max(arc_top, rows[start] + 0.3 + height)
        bend = f"arc3,rad={-2 * height / (end - start):.3f}"
        ax.annotate("", xy=(end, rows[end] + 0.32), xytext=(start, rows[start] + 0.32), gid="skip",
                    arrowprops={"arrowstyle": "->", "color": "tab:green", "shrinkA": 0, "shrinkB": 0,
                                "connectionstyle": bend})
    levels = sorted(set(rows), reverse=True)
    ax.set(xlim=(-0.6, len(stages) - 0.4), ylim=(min(rows) - 0.5, arc_top + 0.1), xticks=[],
           yticks=levels, yticklabels=[f"{top >> -row}×{top >> -row}" for row in levels])
    ax.tick_params(length=0, labelsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    legend = [Patch(facecolor=_CONDITIONED, edgecolor="0.3", label="time + style vector added (ResBlocks)"),
              Patch(facecolor=_PLAIN, edgecolor="0.3", label="no conditioning"),
              Line2D([], [], color="tab:green", label="skip: kept, later concatenated")]
    ax.legend(handles=legend, loc="lower left", fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def save_grid(images, path, nrow: int | None = None, upscale: int = 4, padding: int = 1) -> Path:
    """Write `image_grid(images, nrow, padding)`, enlarged `upscale` times (nearest pixels), atomically.

    The format is the one the extension names (`GRID_FORMATS`: PNG, or JPEG at quality 95);
    any other extension raises ValueError. The folder is created if missing.
    """
    path = Path(path)
    format = _format_of(path, GRID_FORMATS)
    grid = Image.fromarray(image_grid(images, nrow, padding))
    grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if format == "JPEG" else {}
    return atomic_write(path, lambda tmp: grid.save(tmp, format=format, **options))


def save_gif(frames, path, duration_ms: int = 100, nrow: int | None = None, upscale: int = 4,
             captions: Sequence[str] | None = None) -> Path:
    """Write an animated, looping GIF atomically; each frame is one image `(H, W, C)` or a batch shown
    as a grid.

    Frames must share a shape. `captions`: one text per frame (lines split by "\\n"), written in a
    white band above it. Pillow merges identical consecutive frames into one longer frame.
    """
    path = Path(path)
    _format_of(path, {".gif": "GIF"})
    frames = [Image.fromarray(image_grid(frame, nrow)) for frame in frames]
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    if captions is not None and len(captions) != len(frames):
        raise ValueError(f"got {len(captions)} captions for {len(frames)} frames")
    size = (frames[0].width * upscale, frames[0].height * upscale)
    frames = [frame.resize(size, Image.Resampling.NEAREST) for frame in frames]
    if captions is not None:
        frames = [_captioned(frame, caption) for frame, caption in zip(frames, captions, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: frames[0].save(
        tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0))


def _captioned(frame: Image.Image, caption: str) -> Image.Image:
    """`frame` below a white band holding `caption` in black (Pillow's built-in font)."""
    band = 4 + 12 * (caption.count("\n") + 1)  # the built-in font is ~11 px high
    out = Image.new("RGB", (frame.width, frame.height + band), "white")
    out.paste(frame, (0, band))
    ImageDraw.Draw(out).multiline_text((4, 2), caption, fill="black", spacing=1)
    return out


def _format_of(path: Path, formats: dict[str, str]) -> str:
    """The Pillow format that `path`'s extension names, or a one-line ValueError."""
    if path.suffix.lower() not in formats:
        raise ValueError(f"{path}: the file name must end in {' or '.join(formats)} (the format written)")
    return formats[path.suffix.lower()]


def timestep_index(t_frac, num_steps: int):
    """Index into a schedule's arrays for a fraction t/T in [0, 1] (index 0 is the paper's t = 1)."""
    return np.clip(np.round(np.asarray(t_frac) * num_steps).astype(int) - 1, 0, num_steps - 1)


def noising_strip(x0, schedule: NoiseSchedule, timesteps: Sequence[int], seed: int = 0) -> np.ndarray:
    """q_sample of each image at each timestep, float32 in [-1, 1], shape `(B * K, H, W, C)`.

    x0: `(B, H, W, C)` uint8 or [-1, 1]; K = len(timesteps). Row b holds image b at every t
    (use `image_grid(strip, nrow=K)`). One noise draw per image (from `seed`) is reused at every
    t, so a strip shows the same noise growing and two schedules with the same seed differ only
    by their alpha-bar.
    """
    x0 = np.asarray(x0)
    x0 = to_model_range(x0) if x0.dtype == np.uint8 else mx.array(x0, dtype=mx.float32)  # (B, H, W, C)
    b, k = x0.shape[0], len(timesteps)
    noise = mx.random.normal(x0.shape, key=mx.random.key(seed))  # (B, H, W, C)
    t = mx.tile(mx.array(np.asarray(timesteps, dtype=np.int32)), b)  # (B * K,)
    x_t = schedule.q_sample(mx.repeat(x0, k, axis=0), t, mx.repeat(noise, k, axis=0))
    return np.array(x_t)  # (B * K, H, W, C)


def plot_schedules(schedules: Mapping[str, NoiseSchedule], ax=None, mark_t: float | None = None) -> Figure:
    """alpha-bar (left) and log-SNR (right) against t/T for each named schedule; returns the Figure.

    `ax`: a pair of axes to draw into (default: a new 2-panel figure). `mark_t`: a fraction of T
    marked with a vertical line on both panels.
    """
    if ax is None:
        fig = Figure(figsize=(10, 3.6), layout="constrained")
        ax = fig.subplots(1, 2)
    ax_bar, ax_snr = ax
    for name, schedule in schedules.items():
        frac = (np.arange(schedule.num_steps) + 1) / schedule.num_steps  # index 0 is the paper's t = 1
        ax_bar.plot(frac, np.array(schedule.alphas_cumprod), label=name)
        ax_snr.plot(frac, np.array(schedule.log_snr), label=name)
    ax_bar.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title=r"signal kept: $\bar\alpha_t$", ylim=(0, 1.02))
    ax_snr.set(
        xlabel="t / T",
        ylabel=r"$\log \mathrm{SNR} = \log \bar\alpha_t / (1 - \bar\alpha_t)$",
        title="log signal-to-noise ratio",
    )
    for panel in (ax_bar, ax_snr):
        if mark_t is not None:
            panel.axvline(mark_t, color="k", linestyle=":", linewidth=1)
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8)
    return ax_bar.figure


def plot_loss(history, ax=None, smoothing: float = 0.98) -> Figure:
    """Training loss, raw (faint) and smoothed; returns the Figure.

    history: losses, one per step, or (step, loss) pairs. The smoothed curve is a debiased
    exponential moving average with factor `smoothing` (0 = none), as TensorBoard draws it.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
    values = np.asarray(history, dtype=np.float64)
    steps, losses = (values[:, 0], values[:, 1]) if values.ndim == 2 else (np.arange(len(values)), values)
    smoothed, average = np.empty_like(losses), 0.0
    for i, loss in enumerate(losses):
        average = smoothing * average + (1.0 - smoothing) * loss
        smoothed[i] = average / (1.0 - smoothing ** (i + 1))  # debias the zero start
    if ax is None:
        ax = Figure(figsize=(6, 3.5), layout="constrained").add_subplot()
    ax.plot(steps, losses, alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(steps, smoothed, linewidth=1.5, label=f"smoothed ({smoothing})")
    if len(losses) and np.all(losses > 0):
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax.figure
