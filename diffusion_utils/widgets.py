"""Interactive explorers for the notebooks (ipywidgets).

Each explorer wires a plain update function to controls with `figure_explorer`: the function
takes the control values and returns a matplotlib Figure, so tests and scripts can call it
directly. The explorer shows that figure as a PNG in an `ipywidgets.Image` when it is built and
after every change. Setting a widget's value works from any thread, which matters because
JupyterLab 4.6 (ipykernel 7) runs widget callbacks on a thread other than the cells'
(`ipywidgets.interactive` prints its figure into an output area that a callback on another
thread never reaches). The explorers hold no maths of their own: schedules come from
`diffusion_utils.schedules`, pictures from `diffusion_utils.viz`.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

from diffusion_utils import data, pipeline, samplers, schedules, styles, viz
from diffusion_utils.checkpoint import ModelInfo

import numpy as np
from matplotlib.figure import Figure

ERROR_CLASS = "explorer-error"  # CSS class of an explorer image that shows an error instead of its figure
STRIP_FRACTIONS = np.linspace(0.125, 1.0, 8)  # t/T of the fixed columns of the noising strip


def _message_figure(title: str, message: str) -> Figure:
    """A small figure that shows a message instead of plots (for slider values that make no schedule)."""
    fig = Figure(figsize=(10, 2))
    fig.text(0.5, 0.6, title, ha="center", fontsize=13, color="tab:red")
    fig.text(0.5, 0.3, message, ha="center", fontsize=10, wrap=True)
    return fig


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure rendered to PNG bytes (Agg, no pyplot)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def figure_explorer(update: Callable[..., Figure], controls: dict, **fixed):
    """A widget: the `controls` (name -> ipywidgets control) above the figure `update(**values, **fixed)`.

    The figure is drawn when the widget is built and again after any control changes, from
    whichever thread reports the change. `.result` holds the last Figure, `.image` the
    `ipywidgets.Image` showing it, `.refresh()` redraws. An exception in `update` shows as a
    message figure in place of the plot, kept in `.error`, and marks the image with the CSS
    class `ERROR_CLASS` (for the browser test); never silently.
    """
    import ipywidgets as w

    image = w.Image(format="png", layout=w.Layout(max_width="100%"))
    explorer = w.VBox([*controls.values(), image])
    explorer.image, explorer.error = image, None
    lock = threading.Lock()  # one redraw at a time, whichever threads the changes come from

    def refresh(change=None):
        with lock:
            try:
                explorer.result = update(**{n: c.value for n, c in controls.items()}, **fixed)
                explorer.error = None
                image.remove_class(ERROR_CLASS)
            except Exception as err:  # shown to the learner in place of the figure
                explorer.error = err
                explorer.result = _message_figure("The update failed", f"{type(err).__name__}: {err}")
                image.add_class(ERROR_CLASS)
            image.value = figure_png(explorer.result)

    for control in controls.values():
        control.observe(refresh, names="value")
    explorer.refresh = refresh
    refresh()
    return explorer


def update_schedule_view(
    kind: str = "cosine",
    num_steps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    sigmoid_start: float = -3.0,
    sigmoid_end: float = 3.0,
    sigmoid_tau: float = 1.0,
    t_frac: float = 0.5,
    images=None,
    seed: int = 0,
) -> Figure:
    """Curves of one schedule with timestep t marked, and `images` noised along it.

    Top: alpha-bar and log-SNR against t/T, with t = `t_frac` T marked. Bottom (when `images`,
    a `(B, H, W, C)` uint8 or [-1, 1] batch, is given): one row per image with x_0, x_t at
    t/T = 1/8 ... 8/8 and x_t at the chosen t, all with the same noise (`seed`). The title gives
    t, alpha-bar_t and SNR_t. Parameters that make no valid schedule give a figure that says
    why instead of raising.
    """
    params = {
        "linear": {"beta_start": beta_start, "beta_end": beta_end},
        "cosine": {"s": cosine_s},
        "sigmoid": {"start": sigmoid_start, "end": sigmoid_end, "tau": sigmoid_tau},
    }.get(kind, {})
    try:
        schedule = schedules.make_schedule(kind, int(num_steps), **params)
    except ValueError as err:
        return _message_figure("These settings make no valid schedule", str(err))

    t = int(viz.timestep_index(t_frac, schedule.num_steps))
    abar, snr = float(schedule.alphas_cumprod[t]), float(schedule.snr[t])
    mosaic = [["bar", "snr"]] + ([["strip", "strip"]] if images is not None else [])
    n_rows = 0 if images is None else len(images)
    fig = Figure(figsize=(11, 3.6 + 1.0 * n_rows), layout="constrained")
    axes = fig.subplot_mosaic(mosaic, height_ratios=[3.2] + ([1.0 * n_rows] if n_rows else []))
    viz.plot_schedules({kind: schedule}, ax=(axes["bar"], axes["snr"]), mark_t=(t + 1) / schedule.num_steps)
    fig.suptitle(
        f"{kind}, T = {schedule.num_steps}, t = {t + 1} (t/T = {(t + 1) / schedule.num_steps:.3f}):  "
        rf"$\bar\alpha_t$ = {abar:.4g},  SNR$_t$ = {snr:.4g}"
    )
    if images is not None:
        steps = [*viz.timestep_index(STRIP_FRACTIONS, schedule.num_steps), t]
        x0 = viz.as_uint8(images)  # (B, H, W, 3)
        noised = viz.noising_strip(x0, schedule, steps, seed).reshape(len(x0), len(steps), *x0.shape[1:])
        x0 = np.asarray(data.to_model_range(x0))[:, None]  # (B, 1, H, W, 3)
        rows = np.concatenate([x0, noised], axis=1).reshape(-1, *x0.shape[2:])  # (B * (K + 2), H, W, 3)
        ax = axes["strip"]
        ax.imshow(viz.image_grid(rows, nrow=len(steps) + 1), interpolation="nearest")
        labels = ["$x_0$"] + [f"{f:.3g}" for f in STRIP_FRACTIONS] + [f"t = {t + 1}"]
        ax.set_xticks(1 + (x0.shape[3] + 1) * np.arange(len(labels)) + (x0.shape[3] - 1) / 2, labels)
        ax.set_yticks([])
        ax.set_xlabel("t / T (same noise in every column; last column: the chosen t)")
    return fig


def schedule_explorer(images=None, seed: int = 0):
    """Sliders for a noise schedule that redraw `update_schedule_view`; returns the widget
    (`figure_explorer`: `.result` is the Figure shown).

    `images`: the batch to noise, default one style image and one real painting
    (`default_explorer_images`).
    """
    import ipywidgets as w

    if images is None:
        images = default_explorer_images()
    style = {"description_width": "9em"}
    layout = w.Layout(width="34em")

    def slider(cls, value, lo, hi, step, description, **extra):
        return cls(
            value=value, min=lo, max=hi, step=step, description=description,
            continuous_update=False, style=style, layout=layout, **extra,
        )  # fmt: skip

    controls = {
        "kind": w.Dropdown(
            options=schedules.SCHEDULE_KINDS, value="cosine", description="schedule", style=style
        ),
        "num_steps": slider(w.IntSlider, 1000, 10, 2000, 10, "T (steps)"),
        "beta_start": slider(w.FloatLogSlider, 1e-4, -5, -1, 0.1, "linear beta_start", base=10),
        "beta_end": slider(w.FloatLogSlider, 0.02, -3, -0.3, 0.1, "linear beta_end", base=10),
        "cosine_s": slider(w.FloatSlider, 0.008, 0.0, 0.2, 0.001, "cosine s", readout_format=".3f"),
        "sigmoid_start": slider(w.FloatSlider, -3.0, -10.0, 3.0, 0.5, "sigmoid start"),
        "sigmoid_end": slider(w.FloatSlider, 3.0, -3.0, 10.0, 0.5, "sigmoid end"),
        "sigmoid_tau": slider(w.FloatSlider, 1.0, 0.1, 3.0, 0.1, "sigmoid tau"),
        "t_frac": slider(w.FloatSlider, 0.5, 0.0, 1.0, 0.01, "t / T"),
    }
    owner = {"beta_start": "linear", "beta_end": "linear", "cosine_s": "cosine"}
    owner.update({name: "sigmoid" for name in ("sigmoid_start", "sigmoid_end", "sigmoid_tau")})

    def grey_out_other_kinds(change=None):
        for name, kind in owner.items():
            controls[name].disabled = controls["kind"].value != kind

    controls["kind"].observe(grey_out_other_kinds, names="value")
    grey_out_other_kinds()
    return figure_explorer(update_schedule_view, controls, images=images, seed=seed)


def default_explorer_images(size: int = 32, painting: str = "Wheat Field with Cypresses") -> np.ndarray:
    """A procedural style image and the first painting whose title contains `painting` (any case).

    Returns uint8 `(2, size, size, 3)`: the style image, then the painting.
    """
    style_image, _ = styles.make_styles(1, size, seed=0, style="concentric")
    paintings, rows = data.load_paintings(size)
    matches = [i for i, row in enumerate(rows) if painting.lower() in row["title"].lower()]
    if not matches:
        raise ValueError(f"no painting title contains {painting!r}; see data/paintings/metadata.csv")
    return np.concatenate([style_image, paintings[matches[0]][None]])


ALL_STYLES = "(every style)"  # the style menu's entry for one image of each style


def update_sampler_view(
    model,
    schedule: schedules.NoiseSchedule,
    info: ModelInfo,
    sampler: str = pipeline.DEFAULT_SAMPLER,
    steps: int = pipeline.DEFAULT_STEPS[pipeline.DEFAULT_SAMPLER],
    eta: float = 0.0,
    guidance: float = pipeline.DEFAULT_GUIDANCE,
    style: str = ALL_STYLES,
    seed: int = 0,
    n: int = 8,
) -> Figure:
    """A grid of `n` fresh samples from a loaded checkpoint with the given settings; returns the Figure.

    `model, schedule, info` come from `checkpoint.load_model`. `style`: a class name, or
    `ALL_STYLES` for the classes evenly. `eta` only matters for "ddim" and is ignored by the
    other samplers (the explorer greys its slider out). The title gives the settings, the
    number of network evaluations and the wall time. Bad settings give a figure saying why.
    """
    start = time.perf_counter()
    try:
        images, _ = pipeline.sample_model(
            model, schedule, info, n=int(n), style=None if style == ALL_STYLES else style,
            sampler_name=sampler, steps=int(steps), eta=eta if sampler == "ddim" else 0.0,
            guidance=guidance, seed=int(seed),
        )  # fmt: skip
    except ValueError as err:
        return _message_figure("These settings make no samples", str(err))
    seconds = time.perf_counter() - start
    evaluations = int(steps) * (2 if guidance not in (0, 1) and info.num_classes else 1)
    fig = viz.show_images(images, nrow=min(int(n), 8), scale=1.4)
    fig.suptitle(
        f"{sampler}, {int(steps)} steps" + (f", eta {eta:g}" if sampler == "ddim" else "")
        + f", guidance w = {guidance:g}, {style}, seed {int(seed)}: {evaluations} network "
        f"evaluations per image, {seconds:.1f} s", fontsize=9,
    )  # fmt: skip
    return fig


def sampler_explorer(model, schedule: schedules.NoiseSchedule, info: ModelInfo, n: int = 8,
                     steps: int = pipeline.DEFAULT_STEPS[pipeline.DEFAULT_SAMPLER]):
    """Controls for sampler, steps, eta, guidance, style and seed that redraw `update_sampler_view`.

    `n` images per view; `steps` is the slider's starting value. Sampling takes seconds, so the
    view is redrawn when a slider is released, not while it moves.
    """
    import ipywidgets as w

    style = {"description_width": "7em"}
    layout = w.Layout(width="30em")
    names = list(info.styles)
    controls = {
        "sampler": w.Dropdown(options=list(samplers.SAMPLERS), value=pipeline.DEFAULT_SAMPLER,
                              description="sampler", style=style),
        "steps": w.IntSlider(value=steps, min=1, max=100,
                             description="steps", continuous_update=False, style=style, layout=layout),
        "eta": w.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="eta (ddim)",
                             continuous_update=False, style=style, layout=layout),
        "guidance": w.FloatSlider(value=pipeline.DEFAULT_GUIDANCE if names else 1.0, min=0.0, max=8.0,
                                  step=0.5, description="guidance w", continuous_update=False,
                                  style=style, layout=layout, disabled=not names),
        "style": w.Dropdown(options=[ALL_STYLES, *names], value=ALL_STYLES, description="style",
                            style=style, disabled=not names),
        "seed": w.BoundedIntText(value=0, min=0, max=2**31 - 1, description="seed", style=style),
    }  # fmt: skip

    def grey_out_eta(change=None):
        controls["eta"].disabled = controls["sampler"].value != "ddim"

    controls["sampler"].observe(grey_out_eta, names="value")
    grey_out_eta()
    return figure_explorer(update_sampler_view, controls, model=model, schedule=schedule, info=info, n=n)
