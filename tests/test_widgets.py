"""widgets: the schedule explorer's update callback (numbers, pictures, bad input) and the widget."""

import re

from diffusion_utils import schedules, widgets

import matplotlib
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
