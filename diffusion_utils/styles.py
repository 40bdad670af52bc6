"""Procedural art styles: eight labelled painters drawn with vectorised numpy.

Each style is a function `(child generator, size s) -> float32 (s, s, 3)` in [0, 1],
anti-aliased: hard-edged styles draw at twice the size, then 2x2-average; the others
soften edges over one pixel. Image `i` of a draw uses its own child generator
`np.random.default_rng([seed, i])`, so it depends only on `(seed, i)`: the same seed
gives identical bytes, and a longer draw starts with the shorter one. `held_out_styles`
draws from a disjoint stream, for evaluation. About 4000 images per CPU-second at
32 px, 2000 at 64 px. (`data.STYLES` and `data.make_styles` are the same objects:
the course's data API names them there.)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

STYLES = (
    "de_stijl",  # Mondrian: black grid lines, a few primary-coloured cells on off-white
    "color_field",  # Rothko: soft-edged stacked rectangles on a deep ground
    "concentric",  # Kandinsky's "Squares with Concentric Circles"
    "pointillism",  # Seurat: a landscape made of jittered colour dots
    "op_art",  # Bridget Riley: warped high-contrast stripes
    "drip",  # Pollock: tangled paint trails and splatters on canvas
    "stained_glass",  # Voronoi cells of jewel colours between dark lead lines
    "ink_landscape",  # shan shui: misty ink mountain ridges on paper, a red seal
)

_HELD_OUT_STREAM = 0x4E1D  # extra seed word: held-out images come from a disjoint stream


# --------------------------------------------------------------------------- drawing helpers
@lru_cache(maxsize=32)
def _grid(r: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): v (r, 1) down the rows, u (1, r) across."""
    c = ((np.arange(r) + 0.5) / r).astype(np.float32)
    c.flags.writeable = False
    return c[:, None], c[None, :]


def _hsv(h, s, v) -> np.ndarray:
    """HSV in [0, 1] (any broadcastable shapes) -> RGB (..., 3) float32."""
    h, s, v = (np.asarray(a, dtype=np.float32)[..., None] for a in (h, s, v))
    k = (np.array([5.0, 3.0, 1.0], dtype=np.float32) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


@lru_cache(maxsize=32)
def _interp_matrix(r: int, cells: int) -> np.ndarray:
    """(r, cells+1) bilinear weights from a (cells+1)-point lattice to r pixel centres."""
    t = (np.arange(r) + 0.5) * (cells / r)
    i = np.minimum(t.astype(np.int64), cells - 1)
    w = np.zeros((r, cells + 1), np.float32)
    w[np.arange(r), i] = 1 - (t - i)
    w[np.arange(r), i + 1] = t - i
    return w


def _smooth_noise(rng: np.random.Generator, r: int, cells: int) -> np.ndarray:
    """Smooth random field (r, r), unit-ish scale, `cells` wiggles across the canvas."""
    w = _interp_matrix(r, cells)
    return w @ rng.standard_normal((cells + 1, cells + 1), dtype=np.float32) @ w.T


def _down2(img: np.ndarray) -> np.ndarray:
    """(2s, 2s, 3) -> (s, s, 3) by averaging 2x2 blocks: supersampled anti-aliasing."""
    rows = img[0::2] + img[1::2]
    return (rows[:, 0::2] + rows[:, 1::2]) * 0.25


def _soft(d, px: float) -> np.ndarray:
    """Coverage of a pixel of width `px` by the region d > 0 (d a distance): analytic AA."""
    return np.clip(d / px + 0.5, 0.0, 1.0)


# --------------------------------------------------------------------------- the eight styles
# Each takes a child generator and the output size s and returns a float32 (s, s, 3)
# image in [0, 1]. Lengths are fractions of the canvas, so a style looks the same at
# every size. Hard-edged styles draw at 2s and average down; the others draw at s with
# edges softened over one pixel (`_soft`), which costs a quarter as much.


def _de_stijl(rng: np.random.Generator, s: int) -> np.ndarray:
    v, u = _grid(2 * s)
    xs = np.sort(rng.uniform(0.1, 0.9, rng.integers(2, 5)))  # vertical line positions
    ys = np.sort(rng.uniform(0.1, 0.9, rng.integers(2, 5)))
    n_cells = (len(ys) + 1) * (len(xs) + 1)
    palette = np.empty((n_cells + 1, 3), np.float32)  # one colour per cell, then the lines'
    palette[:] = np.array([0.95, 0.94, 0.9]) + rng.uniform(-0.04, 0.03, 3)  # off-white ground
    palette[-1] = 0.06
    primaries = np.array([[0.85, 0.1, 0.1], [0.95, 0.8, 0.1], [0.1, 0.2, 0.65], [0.1, 0.1, 0.1]])
    n_col = rng.integers(2, 5)
    kinds = rng.choice(4, n_col, p=[0.35, 0.3, 0.3, 0.05])
    palette[rng.choice(n_cells, n_col, replace=False)] = np.clip(
        primaries[kinds] + rng.normal(0, 0.04, (n_col, 3)), 0, 1)
    cell = np.searchsorted(ys, v[:, 0])[:, None] * (len(xs) + 1) + np.searchsorted(xs, u[0])
    half = rng.uniform(0.016, 0.028)  # half the line width
    line = (np.abs(u[..., None] - xs).min(-1) < half) | (np.abs(v[..., None] - ys).min(-1) < half)
    return _down2(palette.take(np.where(line, n_cells, cell), axis=0))


def _color_field(rng: np.random.Generator, s: int) -> np.ndarray:
    v, u = _grid(s)
    hue = rng.random()
    ground = _hsv(hue, rng.uniform(0.4, 0.85), rng.uniform(0.15, 0.5))
    img = ground * (1 + 0.06 * _smooth_noise(rng, s, 6))[..., None]  # (s, s, 3)
    k = rng.integers(2, 4)  # stacked rectangles
    side, top, gap = rng.uniform(0.07, 0.14), rng.uniform(0.05, 0.1), rng.uniform(0.03, 0.07)
    heights = rng.dirichlet(np.full(k, 3.0)) * (1 - 2 * top - (k - 1) * gap)
    y0 = top + np.concatenate([[0], np.cumsum(heights[:-1] + gap)])
    hues = (hue + rng.uniform(-0.08, 0.08, k)) % 1  # analogous colours, as in Rothko
    colours = _hsv(hues, rng.uniform(0.4, 0.85, k), rng.uniform(0.45, 0.9, k))  # (k, 3)
    soft = max(rng.uniform(0.012, 0.03), 1 / s)  # blurred edges, at least a pixel wide
    du = np.minimum(u - side, 1 - side - u)  # (1, s) distance inside the left/right edges
    ragged = 0.012 * _smooth_noise(rng, s, 10)
    brush = (1 + 0.05 * _smooth_noise(rng, s, 8))[..., None]
    for j in range(k):
        d = np.minimum(du, np.minimum(v - y0[j], y0[j] + heights[j] - v)) + ragged  # (s, s)
        a = _soft(d, soft)[..., None]
        img += a * (colours[j] * brush - img)
    return img


def _concentric(rng: np.random.Generator, s: int) -> np.ndarray:
    r = 2 * s
    g = 2  # 2 x 2 squares, each with its own rings (r is even, so g divides it)
    k = rng.integers(3, 6)  # rings per square
    c, _ = _grid(r // g)  # coordinates inside one square
    img = np.empty((r, r, 3), np.float32)
    for i in range(g):
        for j in range(g):
            cy, cx = 0.5 + rng.uniform(-0.08, 0.08, 2)
            outer = rng.uniform(0.36, 0.48)
            radii = outer * np.sort(np.append(rng.uniform(0.15, 1.0, k - 1), 1.0))  # ascending
            colours = _hsv(rng.random(k + 1), rng.uniform(0.45, 1, k + 1),
                           rng.uniform(0.35, 1, k + 1))  # (k+1, 3): ground, then outer->inner
            dist = np.sqrt((c - cy) ** 2 + (c.T - cx) ** 2)  # (r/g, r/g)
            inside = np.searchsorted(radii, dist, side="right")  # radii <= dist, 0..k
            img[i * r // g:(i + 1) * r // g, j * r // g:(j + 1) * r // g] = colours.take(
                np.where(inside == k, 0, k - inside), axis=0)
    return _down2(img)


def _pointillism(rng: np.random.Generator, s: int) -> np.ndarray:
    v, u = _grid(s)
    horizon = rng.uniform(0.4, 0.7)
    sunset = rng.random() < 0.4
    sky_top = _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.3, 0.6), rng.uniform(0.8, 1))
    sky_low = _hsv(rng.uniform(0.05, 0.14) if sunset else rng.uniform(0.45, 0.6),
                   rng.uniform(0.25, 0.55), 1.0)
    ground_hue = rng.uniform(0.52, 0.62) if rng.random() < 0.4 else rng.uniform(0.18, 0.38)
    ground = _hsv(ground_hue, rng.uniform(0.4, 0.75), rng.uniform(0.5, 0.8))
    ground_far = _hsv(ground_hue + 0.04, rng.uniform(0.2, 0.5), rng.uniform(0.7, 0.95))
    img = np.empty((s, s, 3), np.float32)
    img[:] = np.array([0.96, 0.94, 0.88])  # the canvas between the dots
    n = rng.uniform(10, 15)  # dots per side
    px = n / s  # one pixel, in dot-lattice units
    m = int(n) + 2
    for off in (0.0, 0.5):  # two staggered lattices of dots
        ti, tj = v[:, 0] * n + off, u[0] * n + off  # lattice coordinates of pixel centres
        ii, jj = ti.astype(np.int64), tj.astype(np.int64)
        cy = (ii + 0.5 - off) / n  # (s,) image row of each pixel's dot centre
        t = np.clip(cy / horizon, 0, 1)[:, None]
        b = np.clip((cy - horizon) / (1 - horizon), 0, 1)[:, None]
        scene = np.where((cy < horizon)[:, None], sky_top * (1 - t) + sky_low * t,
                         ground_far * (1 - b) + ground * b)[:, None]  # (s, 1, 3)
        per_dot = rng.normal(0, 1, (m, m, 5)).astype(np.float32)  # colour jitter, position
        p = per_dot.take(ii, axis=0).take(jj, axis=1)  # (s, s, 5)
        dy = (ti - ii - 0.5)[:, None] - 0.15 * p[..., 3]
        dx = (tj - jj - 0.5)[None, :] - 0.15 * p[..., 4]
        a = _soft(rng.uniform(0.35, 0.45) - np.sqrt(dy**2 + dx**2), px)[..., None]
        img += a * (np.clip(scene + 0.11 * p[..., :3], 0, 1) - img)
    return img


def _op_art(rng: np.random.Generator, s: int) -> np.ndarray:
    v, u = _grid(s)
    th = rng.uniform(0, np.pi)
    x = u * np.cos(th) + v * np.sin(th)  # across the stripes
    y = -u * np.sin(th) + v * np.cos(th)  # along them
    x = x + rng.uniform(0.03, 0.09) * np.sin(2 * np.pi * (rng.uniform(0.6, 1.8) * y + rng.random()))
    cy, cx = rng.uniform(0.2, 0.8, 2)
    x = x + rng.uniform(-0.12, 0.12) * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / 0.06)  # bulge
    f = rng.uniform(3.0, 5.0)  # stripe pairs across the canvas
    wave = np.sin(2 * np.pi * f * x * (1 + rng.uniform(-0.3, 0.3) * (y - 0.5)))  # chirped
    a = _soft(wave, 2 * np.pi * f / s)[..., None]  # |d wave / d pixel| <= 2 pi f / s
    if rng.random() < 0.7:
        dark, light = np.full(3, rng.uniform(0.0, 0.08)), np.full(3, rng.uniform(0.9, 1.0))
    else:  # a complementary colour pair
        h = rng.random()
        dark, light = _hsv(h, rng.uniform(0.7, 1), rng.uniform(0.6, 0.9)), _hsv(h + 0.5, 0.15, 0.97)
    return (light + a * (dark - light)).astype(np.float32)


def _drip(rng: np.random.Generator, s: int) -> np.ndarray:
    r = 2 * s
    canvases = np.array([[0.86, 0.8, 0.68], [0.72, 0.7, 0.66], [0.3, 0.25, 0.2], [0.82, 0.74, 0.74]])
    paints = np.array([[0.05, 0.05, 0.05], [0.95, 0.95, 0.92], [0.8, 0.6, 0.2], [0.55, 0.55, 0.55],
                       [0.6, 0.2, 0.12], [0.2, 0.4, 0.45]], np.float32)
    canvas = np.clip(canvases[rng.choice(4, p=[0.5, 0.2, 0.15, 0.15])] + rng.normal(0, 0.03, 3), 0, 1)
    img = (canvas * (1 + 0.04 * _smooth_noise(rng, r, 8))[..., None]).astype(np.float32)
    palette = paints[rng.choice(6, rng.integers(3, 5), replace=False)]
    n_strokes, n_pts = rng.integers(10, 18), 3 * r
    step = rng.uniform(1.0, 3.0, (n_strokes, 1)) / n_pts  # strokes 1-3 canvas widths long
    turn = rng.standard_normal((n_strokes, n_pts), np.float32) * rng.uniform(0.1, 0.35, (n_strokes, 1))
    heading = np.exp(1j * (np.float32(2 * np.pi) * rng.random((n_strokes, 1), np.float32)
                           + np.cumsum(turn, 1)))  # (S, N) complex64 unit steps
    start = rng.random((n_strokes, 1), np.float32) + 1j * rng.random((n_strokes, 1), np.float32)
    z = start + np.cumsum(step.astype(np.float32) * heading, 1)  # random walks x + iy
    n_drops = rng.integers(15, 40)
    pos = np.concatenate([np.stack([z.real.ravel(), z.imag.ravel()], -1),
                          rng.random((n_drops, 2), np.float32)])  # (P, 2): the stroke paths, then drops
    pos = 1 - np.abs(1 - pos % 2)  # reflect at the canvas edges
    owner = np.concatenate([np.repeat(np.arange(n_strokes), n_pts),
                            n_strokes + np.arange(n_drops)])  # which stroke/drop each point is
    colour = palette[rng.integers(0, len(palette), n_strokes + n_drops)][owner]
    width = np.maximum(1, np.rint(np.concatenate([rng.uniform(0.006, 0.022, n_strokes),
                                                  rng.uniform(0.01, 0.03, n_drops)]) * r))
    width = width.astype(np.int64)[owner]  # pixels, at the 2x drawing size
    ij = np.minimum((pos * r).astype(np.int64), r - width[:, None])  # top-left pixel
    flat, pixels = ij[:, 0] * r + ij[:, 1], img.reshape(-1, 3)
    for dy in range(width.max()):
        for dx in range(width.max()):
            sel = (dy < width) & (dx < width)
            pixels[flat[sel] + dy * r + dx] = colour[sel]
    return _down2(img)


def _stained_glass(rng: np.random.Generator, s: int) -> np.ndarray:
    v, u = _grid(s)
    k = rng.integers(9, 20)
    seeds = rng.random((k, 2)).astype(np.float32)
    near = np.full((s, s), np.inf, np.float32)  # squared distance to the nearest seed
    second = near.copy()  # ... and to the second nearest
    cell = np.zeros((s, s), np.int64)
    for j, (sy, sx) in enumerate(seeds):
        d = (v - sy) ** 2 + (u - sx) ** 2
        second = np.minimum(second, np.maximum(near, d))
        cell[d < near] = j
        near = np.minimum(near, d)
    near, second = np.sqrt(near), np.sqrt(second)
    hues = rng.choice([0.0, 0.08, 0.15, 0.33, 0.55, 0.62, 0.75, 0.9], k) + rng.normal(0, 0.02, k)
    colours = _hsv(hues % 1, rng.uniform(0.65, 1, k), rng.uniform(0.5, 0.95, k))  # (k, 3)
    glow = np.clip(1.25 - 2.5 * np.sqrt(k) * near, 0.6, 1.25)[..., None]  # light at centres
    img = np.clip(colours.take(cell, axis=0) * glow, 0, 1)
    # second - near grows by ~2 per unit of distance from the cell border
    lead = _soft(rng.uniform(0.018, 0.03) - (second - near), 2 / s)[..., None]
    return img + lead * (np.array([0.08, 0.07, 0.07]) + rng.uniform(0, 0.05) - img)


def _ink_landscape(rng: np.random.Generator, s: int) -> np.ndarray:
    v, u = _grid(s)
    paper = np.array([0.93, 0.89, 0.8]) + rng.normal(0, 0.025, 3)
    ink = np.array([0.08, 0.08, 0.1]) + rng.normal(0, 0.02, 3)
    img = (paper * (1 + 0.03 * _smooth_noise(rng, s, 12))[..., None]).astype(np.float32)
    n = rng.integers(2, 5)
    bases = np.sort(rng.uniform(0.45, 0.95, n))  # far (high on the page) to near
    for j, base in enumerate(bases):
        amps = np.array([1.0, 0.5, 0.25, 0.12]) * rng.uniform(0.5, 1.5, 4)  # ~1/f spectrum
        freqs = np.array([1.0, 2.5, 5.0, 11.0]) * rng.uniform(0.7, 1.4, 4)
        h = (amps * np.sin(2 * np.pi * (freqs * u[..., None] + rng.random(4)))).sum(-1)  # (1, s)
        h = (h - h.min()) / (h.max() - h.min())
        ridge = base - rng.uniform(0.2, 0.45) * h**1.5  # steep peaks, round valleys
        depth = rng.uniform(0.1, 0.3)  # the mist swallows the mountain's foot
        tone = 0.2 + 0.7 * (j + 1) / n  # nearer ridges are darker
        a = tone * np.clip(1 - (v - ridge) / depth, 0.12, 1) * _soft(v - ridge, 1 / s)
        img += a[..., None] * (ink - img)
    if rng.random() < 0.7:  # a red seal stamp
        size = rng.uniform(0.07, 0.11)
        y0 = rng.uniform(0.05, 0.3)
        x0 = rng.choice([rng.uniform(0.05, 0.2), rng.uniform(0.7, 0.85)])
        a = _soft(np.minimum(np.minimum(v - y0, y0 + size - v), np.minimum(u - x0, x0 + size - u)),
                  1 / s)[..., None]
        img += a * (np.array([0.75, 0.12, 0.1]) + rng.normal(0, 0.03, 3) - img)
    return img


_DRAW: tuple[Callable[[np.random.Generator, int], np.ndarray], ...] = (
    _de_stijl, _color_field, _concentric, _pointillism, _op_art, _drip, _stained_glass,
    _ink_landscape,
)


def style_index(style: str | int) -> int:
    """A style name or index -> its label; ValueError listing the valid names otherwise."""
    if isinstance(style, (int, np.integer)) and not isinstance(style, bool):
        if 0 <= style < len(STYLES):
            return int(style)
    elif isinstance(style, str) and style in STYLES:
        return STYLES.index(style)
    raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLES)} "
                     f"(or an index 0-{len(STYLES) - 1})")


def _draw_styles(n: int, size: int, key: tuple[int, ...], style) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0 for k in key):
        raise ValueError(f"seed must be a non-negative integer, got {key[0]!r}")
    labels = (np.arange(n) % len(STYLES) if style is None
              else np.full(n, style_index(style))).astype(np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, lab in enumerate(labels):
        img = _DRAW[lab](np.random.default_rng([*key, i]), int(size))
        images[i] = np.clip(img * 255 + 0.5, 0, 255)
    return images, labels


def make_styles(n: int, size: int = 32, seed: int = 0, style: str | int | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw `n` art-style images: uint8 (n, size, size, 3) and int64 labels (n,).

    `style=None` cycles through all styles (label `i % len(STYLES)`, balanced);
    a name or index from `STYLES` draws only that style. Image `i` comes from
    `np.random.default_rng([seed, i])`, so it depends only on `(seed, i)`.
    """
    return _draw_styles(n, size, (seed,), style)


def held_out_styles(n: int, size: int = 32, seed: int = 0, style: str | int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Like `make_styles`, but from a stream disjoint from every training seed.

    Image `i` comes from `np.random.default_rng([seed, 0x4E1D, i])`, a different seed
    sequence from any `make_styles` draw: use it for the "real" side of evaluations.
    """
    return _draw_styles(n, size, (seed, _HELD_OUT_STREAM), style)
