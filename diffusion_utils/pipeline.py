"""From a trained checkpoint to labelled images: what the `sample` and `evaluate` commands, the
sampler explorer, training previews and notebooks 03-04 share.

`checkpoint.load_model(path)` gives `(model, schedule, info)`; `sample_model` turns them into
images with a sampler named as on the command line, one class per row, with the measured
defaults below. The samplers themselves (the maths) are in `samplers.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

from diffusion_utils import samplers
from diffusion_utils.checkpoint import ModelInfo
from diffusion_utils.data import to_uint8
from diffusion_utils.schedules import NoiseSchedule

import numpy as np

# Defaults of the `sample` and `evaluate` commands and of notebook 04's gallery, from `evaluate`-style
# measurements (n = 256, w = 2) on a `quick`-preset model: DPM-Solver++(2M) at 10 or 20 steps reached
# KID at its real-vs-real floor with style accuracy 0.96, DDIM at 50 steps not yet (KID 0.28 +- 0.30);
# DDPM at 100 steps did as well as DPM-Solver++ at five times the cost. Notebook 04 plots the sweep.
DEFAULT_SAMPLER = "dpm++"
DEFAULT_STEPS = {"ddpm": 100, "ddim": 50, "dpm++": 20}
DEFAULT_GUIDANCE = 3.0  # w: style accuracy 0.98 against 0.96 at w = 2 and 0.95 at 1.5, KID within noise


class SamplingSettings(NamedTuple):
    """A sampler by name, its number of steps and the guidance scale w, defaults filled in."""

    sampler: str
    steps: int
    guidance: float


def style_labels(n: int, num_classes: int, style: int | None = None) -> np.ndarray:
    """Labels (n,) int64 to sample a model with `num_classes` classes (0 = unconditional).

    `style` given: n copies of it. Otherwise every class evenly, in blocks in class order (the
    first n % C classes get one image more), so with n a multiple of C a grid of n / C images
    per row shows one class per row. An unconditional model gets -1 ("no label") everywhere.
    """
    if num_classes == 0:
        return np.full(n, -1, np.int64)
    if style is not None:
        return np.full(n, style, np.int64)
    return np.sort(np.arange(n) % num_classes).astype(np.int64)


def style_index(style: str | int, class_names: Sequence[str]) -> int:
    """A class name (or index) of a model -> its label; ValueError listing the valid names."""
    if not class_names:
        raise ValueError("this model is unconditional (trained without styles): sample it without a style")
    if isinstance(style, str) and style in class_names:
        return list(class_names).index(style)
    if isinstance(style, (int, np.integer)) and not isinstance(style, bool) and 0 <= style < len(class_names):
        return int(style)
    raise ValueError(f"unknown style {style!r}; this model knows {', '.join(class_names)}")


def sampling_settings(info: ModelInfo, sampler_name: str = DEFAULT_SAMPLER, steps: int | None = None,
                      guidance: float | None = None) -> SamplingSettings:
    """The settings `sample_model` uses, with defaults filled in.

    `steps=None` is `DEFAULT_STEPS[sampler_name]`; `guidance=None` is `DEFAULT_GUIDANCE` for a
    class-conditional checkpoint and 1 (no guidance) for an unconditional one, which cannot be guided.
    """
    if sampler_name not in samplers.SAMPLERS:
        raise ValueError(f"unknown sampler {sampler_name!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    conditional = info.num_classes > 0
    if not conditional and guidance not in (None, 1, 1.0):
        raise ValueError("classifier-free guidance needs a model trained with styles; this one has none")
    return SamplingSettings(
        sampler=sampler_name,
        steps=DEFAULT_STEPS[sampler_name] if steps is None else steps,
        guidance=(DEFAULT_GUIDANCE if conditional else 1.0) if guidance is None else guidance,
    )


def make_model_sampler(schedule: NoiseSchedule, info: ModelInfo, settings: SamplingSettings,
                       eta: float = 0.0) -> samplers.Sampler:
    """The sampler `settings` name, for a model predicting `info.prediction`; `eta` is DDIM's.

    x0 is clipped to [-1, 1] in pixel space only: scaled latents have unit variance, not that range
    (Rombach et al. 2022 sample latents unclipped)."""
    if settings.sampler != "ddim" and eta != 0:
        raise ValueError(f"eta applies only to the ddim sampler, not {settings.sampler!r}")
    kwargs = {"eta": eta} if settings.sampler == "ddim" else {}
    return samplers.make_sampler(settings.sampler, schedule, settings.steps, prediction=info.prediction,
                                 clip_x0=not info.latent, **kwargs)


def sample_model(
    model: Callable,
    schedule: NoiseSchedule,
    info: ModelInfo,
    n: int = 16,
    style: str | int | Sequence[str | int] | None = None,
    sampler_name: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    eta: float = 0.0,
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Images from a loaded checkpoint: uint8 (n, S, S, 3) and their labels (n,) int64.

    `model, schedule, info` are what `checkpoint.load_model` returns. A latent model samples
    `info.sample_shape` latents and each batch is decoded to pixels after the sampler. `style`: a
    class name or index, a list of them (n spread evenly over those, in their order), or None for every
    class evenly (`style_labels`); labels are the model's class indices, -1 for an unconditional model.
    `steps=None` and `guidance=None` take the defaults of `sampling_settings`. The same arguments give
    the same images.
    """
    settings = sampling_settings(info, sampler_name, steps, guidance)
    for name, value, low in (("n", n, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    labels = style_labels(n, len(info.styles))
    if style is not None:
        chosen = [style_index(s, info.styles) for s in ([style] if isinstance(style, (str, int, np.integer))
                                                         else style)]  # fmt: skip
        labels = np.array(chosen, np.int64)[style_labels(n, len(chosen))]
    sampler = make_model_sampler(schedule, info, settings, eta)
    finish = to_uint8
    if info.latent:
        from diffusion_utils.latent import decode_to_images

        finish = partial(decode_to_images, info.autoencoder)
    images = samplers.sample(model, sampler, (n, *info.sample_shape), labels if info.styles else None,
                             settings.guidance, info.null_label, seed, batch_size, progress, finish)
    return images, labels
