"""widgets: the explorers' update callbacks (numbers, pictures, bad input) and the widgets that show them,
from the main thread and from another one (JupyterLab runs widget callbacks on another thread)."""

import io
import re
import threading

from diffusion_utils import schedules, widgets
from diffusion_utils.checkpoint import ModelInfo
from diffusion_utils.cpu import streams

import matplotlib
import mlx.core as mx
import numpy as np
import pytest
from matplotlib.figure import Figure

matplotlib.use("Agg")

IMAGES = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)


def _title_numbers(fig: Figure) -> dict[str, float]:
    title = fig._suptitle.get_text()
    found = re.search(
        r"T = (\d+), t = (\d+) .*\$\\bar\\alpha_t\$ = ([-\d.e+]+),\s+SNR\$_t\$ = ([-\d.e+]+)", title
    )
    assert found, title
    return dict(zip(("T", "t", "alpha_bar", "snr"), map(float, found.groups()), strict=True))


@pytest.mark.parametrize(
    "kind, params",
    [
        ("linear", {"beta_start": 1e-4, "beta_end": 0.02}),
        ("linear", {"beta_start": 1e-3, "beta_end": 0.05}),
        ("cosine", {"s": 0.008}),
        ("cosine", {"s": 0.1}),
        ("sigmoid", {"start": -3.0, "end": 3.0, "tau": 1.0}),
        ("sigmoid", {"start": 0.0, "end": 3.0, "tau": 0.7}),
    ],
)
@pytest.mark.parametrize("num_steps, t_frac", [(1000, 0.3), (200, 1.0), (50, 0.0)])
def test_title_reports_the_schedule_at_t(kind, params, num_steps, t_frac):
    names = {"s": "cosine_s", "start": "sigmoid_start", "end": "sigmoid_end", "tau": "sigmoid_tau"}
    fig = widgets.update_schedule_view(
        kind, num_steps, t_frac=t_frac, **{names.get(k, k): v for k, v in params.items()}
    )
    numbers = _title_numbers(fig)
    schedule = schedules.make_schedule(kind, num_steps, **params)
    t = min(max(round(t_frac * num_steps), 1), num_steps)  # the paper's 1-based t
    assert numbers["T"] == num_steps and numbers["t"] == t
    abar = float(schedule.alphas_cumprod[t - 1])
    assert numbers["alpha_bar"] == pytest.approx(abar, rel=1e-3, abs=1e-9)
    assert numbers["snr"] == pytest.approx(abar / (1 - abar), rel=2e-3, abs=1e-9)
    assert [ax.get_label() for ax in fig.axes] == ["bar", "snr"]  # no images, no strip


def test_linear_default_matches_ho_et_al():
    # alpha_bar at the paper's t = 500 of the DDPM schedule: prod(1 - linspace(1e-4, 0.02, 1000)[:500])
    expected = np.prod(1 - np.linspace(1e-4, 0.02, 1000)[:500])
    numbers = _title_numbers(widgets.update_schedule_view("linear", 1000, t_frac=0.5))
    assert numbers["alpha_bar"] == pytest.approx(expected, rel=1e-3)


def test_strip_shows_every_image_at_every_column():
    fig = widgets.update_schedule_view("cosine", 100, t_frac=0.42, images=IMAGES)
    strip = next(ax for ax in fig.axes if ax.get_label() == "strip")
    grid = strip.get_images()[0].get_array()
    columns = len(widgets.STRIP_FRACTIONS) + 2  # x_0, the fixed fractions, the chosen t
    assert grid.shape[:2] == (2 * 17 + 1, columns * 17 + 1)
    np.testing.assert_array_equal(grid[1:17, 1:17], IMAGES[0])  # first column: the clean image
    labels = [label.get_text() for label in strip.get_xticklabels()]
    assert labels[0] == "$x_0$" and labels[-1] == "t = 42" and len(labels) == columns


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "linear", "beta_start": 0.05, "beta_end": 0.01}, "beta_start"),
        ({"kind": "linear", "beta_start": 0.5, "beta_end": 1.5}, "(0, 1)"),
        ({"kind": "sigmoid", "sigmoid_start": 1.0, "sigmoid_end": 1.0}, "start < end"),
        ({"kind": "cosine", "num_steps": 0}, "num_steps"),
        ({"kind": "quadratic"}, "linear, cosine, sigmoid"),
    ],
)
def test_bad_settings_give_a_message_not_an_exception(kwargs, message):
    fig = widgets.update_schedule_view(**kwargs, images=IMAGES)
    texts = " ".join(text.get_text() for text in fig.texts)
    assert "no valid schedule" in texts and message in texts
    assert not fig.axes


def test_explorer_builds_and_redraws():
    explorer = widgets.schedule_explorer(IMAGES)
    controls = {child.description: child for child in explorer.children[:-1]}
    assert {"schedule", "T (steps)", "t / T", "cosine s", "linear beta_start", "sigmoid tau"} <= set(controls)
    assert controls["linear beta_start"].disabled and not controls["cosine s"].disabled  # cosine first
    controls["schedule"].value = "linear"  # a change redraws through update_schedule_view
    assert not controls["linear beta_start"].disabled and controls["cosine s"].disabled
    assert isinstance(explorer.result, Figure)
    assert _title_numbers(explorer.result)["t"] == 500
    assert explorer.result._suptitle.get_text().startswith("linear")


def test_default_images_are_a_style_image_and_a_painting():
    from diffusion_utils import data

    images = widgets.default_explorer_images(size=32, painting="wheat field")
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    paintings, rows = data.load_paintings(32)
    index = next(i for i, row in enumerate(rows) if row["title"] == "Wheat Field with Cypresses")
    np.testing.assert_array_equal(images[1], paintings[index])
    with pytest.raises(ValueError, match="no painting title"):
        widgets.default_explorer_images(painting="no such painting")


def _png_pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_explorer_shows_its_figure_and_a_new_one_after_a_change():
    explorer = widgets.schedule_explorer(IMAGES)
    controls = {child.description: child for child in explorer.children[:-1]}
    assert explorer.children[-1] is explorer.image  # the picture sits under the controls
    first = _png_pixels(explorer.image.value)
    assert first.shape[0] > 100 and first.std() > 10  # a real picture, not a blank
    np.testing.assert_array_equal(first, _png_pixels(widgets.figure_png(explorer.result)))
    controls["t / T"].value = 0.9  # as a learner's slider move arrives
    assert _title_numbers(explorer.result)["t"] == 900
    second = _png_pixels(explorer.image.value)
    assert first.shape != second.shape or np.abs(first.astype(int) - second).max() > 0


def test_an_update_that_raises_shows_the_error_in_place_of_the_figure():
    import ipywidgets as w

    def update(n, offset):
        if n == 3:
            raise RuntimeError("three is not allowed")
        return widgets.update_schedule_view("cosine", 10 * n + offset)

    slider = w.IntSlider(value=2, min=1, max=5)
    explorer = widgets.figure_explorer(update, {"n": slider}, offset=5)
    assert explorer.error is None and _title_numbers(explorer.result)["T"] == 25
    slider.value = 3
    texts = " ".join(text.get_text() for text in explorer.result.texts)
    assert "RuntimeError: three is not allowed" in texts and isinstance(explorer.error, RuntimeError)
    assert widgets.ERROR_CLASS in explorer.image._dom_classes
    assert _png_pixels(explorer.image.value).std() > 0
    slider.value = 4  # and it recovers on the next change
    assert explorer.error is None and _title_numbers(explorer.result)["T"] == 45
    assert widgets.ERROR_CLASS not in explorer.image._dom_classes


def _in_a_new_thread(fn):
    """fn() on a fresh thread (as JupyterLab runs widget callbacks); its result or its exception."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except Exception as err:  # handed back to the test
            outcome["error"] = err
        finally:
            mx.clear_streams()  # this thread's MLX streams go with it

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=300)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture()
def tiny_model(make_tiny_unet):
    model = make_tiny_unet(num_classes=2)
    info = ModelInfo(class_names=("a", "b"), prediction="v", image_size=8, step=0, num_classes=2,
                     train_config={})
    streams.set_workers(2)  # the batch split across streams, which belong to their thread
    yield streams.split_batches(model), schedules.make_schedule("cosine", 50), info
    streams.set_workers()


def test_sampler_view_runs_from_another_thread_after_the_main_one(tiny_model):
    model, schedule, info = tiny_model
    settings = {"sampler": "ddim", "steps": 3, "guidance": 2.0, "seed": 1, "n": 8}
    here = widgets.update_sampler_view(model, schedule, info, **settings)
    there = _in_a_new_thread(lambda: widgets.update_sampler_view(model, schedule, info, **settings))
    assert there.axes, [t.get_text() for t in there.texts]  # samples, not a message
    grids = [fig.axes[0].images[0].get_array() for fig in (here, there)]
    np.testing.assert_allclose(grids[1], grids[0], atol=1)


def test_sampler_explorer_redraws_when_the_change_arrives_on_another_thread(tiny_model):
    model, schedule, info = tiny_model
    explorer = widgets.sampler_explorer(model, schedule, info, n=4, steps=2)
    steps = next(child for child in explorer.children if child.description == "steps")
    first = explorer.image.value
    _in_a_new_thread(lambda: setattr(steps, "value", 4))
    assert explorer.error is None, explorer.error
    assert "4 steps" in explorer.result._suptitle.get_text() and explorer.image.value != first
