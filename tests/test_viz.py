"""viz: grid layout and value mapping, PNG/GIF files, noising strips, schedule and loss plots."""

import io

from diffusion_utils import schedules, viz

import matplotlib
import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

matplotlib.use("Agg")


def _batch(b=5, h=4, w=6, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(b, h, w, c), dtype=np.uint8)


def test_grid_shape_layout_and_padding():
    images = _batch(b=5)
    grid = viz.image_grid(images, nrow=3, padding=1)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * (4 + 1) + 1, 3 * (6 + 1) + 1, 3)  # 2 rows of 3
    # image i sits at row i // 3, column i % 3, inside a 1-pixel border
    for i, image in enumerate(images):
        top, left = 1 + (i // 3) * 5, 1 + (i % 3) * 7
        np.testing.assert_array_equal(grid[top : top + 4, left : left + 6], image)
    assert np.all(grid[0] == 255) and np.all(grid[:, 0] == 255)  # border
    assert np.all(grid[6:10, 15:21] == 255)  # the empty sixth cell


def test_grid_default_is_square_and_padding_zero():
    grid = viz.image_grid(_batch(b=16), padding=0)
    assert grid.shape == (4 * 4, 4 * 6, 3)
    assert viz.image_grid(_batch(b=3), nrow=10, padding=0).shape == (4, 18, 3)  # nrow capped at B


def test_float_model_range_maps_to_uint8_and_clips():
    images = np.array([-1.0, 0.0, 1.0, 3.0, -7.0], dtype=np.float32).reshape(1, 1, 5, 1)
    grid = viz.image_grid(images, padding=0)
    assert grid.shape == (1, 5, 3)  # greyscale repeated to RGB
    np.testing.assert_array_equal(grid[0, :, 0], [0, 128, 255, 255, 0])


def test_mlx_float_input_matches_numpy_input():
    x = np.random.default_rng(1).uniform(-1, 1, size=(4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(viz.image_grid(mx.array(x)), viz.image_grid(x))
    np.testing.assert_array_equal(viz.as_uint8(x[0]), viz.as_uint8(x[:1]))  # one (H, W, C) image


def test_bad_shape_is_a_value_error():
    with pytest.raises(ValueError, match="C = 1 or 3"):
        viz.image_grid(np.zeros((2, 8, 8, 4), np.uint8))


def test_save_grid_writes_upscaled_png(tmp_path):
    images = _batch(b=6)
    path = viz.save_grid(images, tmp_path / "sub" / "grid.png", nrow=3, upscale=4)
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == ((3 * 7 + 1) * 4, (2 * 5 + 1) * 4)
        pixels = np.asarray(png.convert("RGB"))
    # nearest upscaling: every source pixel becomes a 4x4 block of the same colour
    np.testing.assert_array_equal(pixels[::4, ::4], viz.image_grid(images, nrow=3))


def test_save_gif_has_one_frame_per_step(tmp_path):
    frames = [np.full((2, 8, 8, 3), 30 * k, np.uint8) for k in range(5)]  # distinct batches
    path = viz.save_gif(frames, tmp_path / "anim.gif", duration_ms=80, upscale=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size == ((2 * 9 + 1) * 2, (8 + 2) * 2)
        assert gif.info["duration"] == 80
    with pytest.raises(ValueError, match="at least one frame"):
        viz.save_gif([], tmp_path / "empty.gif")


def test_save_gif_captions_sit_in_a_band_above_each_frame(tmp_path):
    frames = [np.full((2, 8, 8, 3), 30 * k, np.uint8) for k in range(3)]
    captions = [f"t = {k}\nsecond line" for k in range(3)]
    path = viz.save_gif(frames, tmp_path / "anim.gif", upscale=2, captions=captions)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        width, height = gif.size
        assert width == (2 * 9 + 1) * 2 and height > (8 + 2) * 2  # the frame plus a caption band
        gif.seek(2)
        pixels = np.asarray(gif.convert("RGB"))
    band = height - (8 + 2) * 2
    assert (pixels[:band] < 128).any() and (pixels[:band] > 128).any()  # dark text on white
    np.testing.assert_array_equal(pixels[band::2, ::2], viz.image_grid(frames[2]))  # the frame, unchanged
    with pytest.raises(ValueError, match="2 captions for 3 frames"):
        viz.save_gif(frames, tmp_path / "bad.gif", captions=["a", "b"])


def test_labelled_grid_puts_a_label_at_each_row_and_column_centre():
    images = _batch(b=6, h=4, w=6)
    fig = viz.show_labelled_grid(images, nrow=3, row_labels=["x_t", "x0"], col_labels=["a", "b", "c"],
                                 title="grid")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x_t", "x0"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    np.testing.assert_allclose(ax.get_yticks(), [1 + 2, 1 + 5 + 2])  # padding + row * (h + padding) + h / 2
    np.testing.assert_allclose(ax.get_xticks(), [1 + 3, 1 + 7 + 3, 1 + 14 + 3])
    np.testing.assert_array_equal(ax.images[0].get_array(), viz.image_grid(images, nrow=3))
    assert ax.get_title() == "grid"
    unlabelled = viz.show_labelled_grid(images, nrow=3).axes[0]
    assert len(unlabelled.get_xticks()) == 0 and len(unlabelled.get_yticks()) == 0
    with pytest.raises(ValueError, match="got 3 labels for 2 grid rows"):
        viz.show_labelled_grid(images, nrow=3, row_labels=["a", "b", "c"])


def test_noising_strip_matches_closed_form():
    schedule = schedules.make_schedule("linear", 100)
    x0 = _batch(b=2, h=8, w=8)
    steps = [0, 49, 99]
    strip = viz.noising_strip(x0, schedule, steps, seed=3)
    assert strip.shape == (6, 8, 8, 3) and strip.dtype == np.float32
    x = x0.astype(np.float32) / 127.5 - 1.0
    noise = np.array(mx.random.normal(x.shape, key=mx.random.key(3)))
    abar = np.array(schedule.alphas_cumprod)
    for b in range(2):
        for k, t in enumerate(steps):
            expected = np.sqrt(abar[t]) * x[b] + np.sqrt(1 - abar[t]) * noise[b]
            np.testing.assert_allclose(strip[b * 3 + k], expected, atol=1e-5)
    np.testing.assert_array_equal(strip, viz.noising_strip(x0, schedule, steps, seed=3))  # seeded


def test_plot_schedules_draws_one_curve_per_schedule_per_panel():
    named = {kind: schedules.make_schedule(kind, 50) for kind in schedules.SCHEDULE_KINDS}
    fig = viz.plot_schedules(named, mark_t=0.5)
    ax_bar, ax_snr = fig.axes
    for panel, field in ((ax_bar, "alphas_cumprod"), (ax_snr, "log_snr")):
        curves = [line for line in panel.get_lines() if line.get_label() in named]
        assert [line.get_label() for line in curves] == list(named)
        for line in curves:
            x, y = line.get_data()
            np.testing.assert_allclose(x, np.arange(1, 51) / 50)
            np.testing.assert_allclose(y, np.array(getattr(named[line.get_label()], field)))
        assert any(tuple(line.get_xdata()) == (0.5, 0.5) for line in panel.get_lines())  # the marker
    fig.savefig(io.BytesIO(), format="png")  # renders without pyplot


def test_show_images_panels_titles_and_given_axes():
    images = _batch(b=5)
    fig = viz.show_images(images, titles=list("abcde"), nrow=3)
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:5]] == list("abcde")
    fig = viz.show_images(images, titles="one grid")
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "one grid"
    ax = viz.show_images(images[:2]).axes[0]
    assert viz.show_images(images, ax=ax) is ax.figure
    with pytest.raises(ValueError, match="titles"):
        viz.show_images(images, titles=["a", "b"])


def test_plot_loss_smooths_a_noisy_curve():
    rng = np.random.default_rng(0)
    losses = 1.0 + 0.3 * rng.standard_normal(500)
    fig = viz.plot_loss(list(enumerate(losses)), smoothing=0.9)
    raw, smoothed = fig.axes[0].get_lines()
    np.testing.assert_array_equal(raw.get_ydata(), losses)
    assert np.std(smoothed.get_ydata()[100:]) < 0.5 * np.std(losses)
    assert abs(smoothed.get_ydata()[0] - losses[0]) < 1e-12  # debiased: starts at the first loss
    with pytest.raises(ValueError, match="smoothing"):
        viz.plot_loss(losses, smoothing=1.0)


def test_timestep_index_matches_plot_axis():
    assert viz.timestep_index(0.0, 1000) == 0
    assert viz.timestep_index(1.0, 1000) == 999
    np.testing.assert_array_equal(viz.timestep_index([0.25, 0.5], 100), [24, 49])  # (index + 1) / T = t/T


def _unet_stages():
    """A two-level UNet trace: conv_in and one block kept at 8x8, a pooled map kept at 4x4."""
    def stage(name, size, channels, **flags):
        return {"name": name, "shape": (2, size, size, channels), **flags}
    return [stage("conv_in", 8, 4, pushes=True), stage("down res", 8, 4, pushes=True, emb=True),
            stage("pool", 4, 4, pushes=True), stage("mid", 4, 8, emb=True),
            stage("up res0", 4, 8, pops=True, emb=True), stage("upsample", 8, 8),
            stage("up res1", 8, 4, pops=True, emb=True), stage("up res2", 8, 4, pops=True, emb=True),
            stage("conv_out", 8, 3)]


def test_plot_unet_draws_a_box_per_stage_lower_per_halving_and_one_arc_per_skip():
    stages = _unet_stages()
    ax = viz.plot_unet(stages, title="toy").axes[0]
    boxes = [p for p in ax.patches if p.get_gid() == "stage"]
    assert len(boxes) == len(stages)
    centres = [box.get_x() + box.get_width() / 2 for box in boxes]
    np.testing.assert_allclose(centres, np.arange(len(stages)), atol=0.05)  # forward order, left to right
    rows = [box.get_y() for box in boxes]
    assert rows[2] == rows[3] == rows[4] < rows[0] == rows[5] == rows[8]  # 4x4 stages sit one row lower
    arcs = [a for a in ax.texts if a.get_gid() == "skip"]
    # last in, first out: the pool feeds up res0, the down block up res1, conv_in up res2
    assert sorted((a.xyann[0], a.xy[0]) for a in arcs) == [(0, 7), (1, 6), (2, 4)]
    labels = [t.get_text() for t in ax.texts if t.get_gid() != "skip"]
    assert "pool\n4×4×4" in labels and [t.get_text() for t in ax.get_yticklabels()] == ["8×8", "4×4"]


def test_plot_unet_rejects_unmatched_skips():
    stages = _unet_stages()
    with pytest.raises(ValueError, match="'up res2' concatenates a skip, but none is kept"):
        viz.plot_unet([{**s, "pushes": False} if s["name"] == "conv_in" else s for s in stages])
    with pytest.raises(ValueError, match="1 skip.*never concatenated.*'conv_in'"):
        viz.plot_unet(stages[:-2] + stages[-1:])
