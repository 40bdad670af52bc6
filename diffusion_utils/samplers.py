"""Samplers: turn a trained noise (or v) predictor back into images.

Three ways to run the reverse process, each a small object with `set_timesteps`,
`timesteps` and one `step`, plus classifier-free guidance and a generator API:

- `DDPMSampler`: ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic
  Models", arXiv:2006.11239, eq. 11 / Algorithm 2), on any subsequence of the T steps
  (Nichol & Dhariwal 2021, "Improved DDPM", arXiv:2102.09672, sec. 4 "respacing").
- `DDIMSampler`: the non-Markovian family of Song et al. 2021 ("Denoising Diffusion
  Implicit Models", arXiv:2010.02502, eqs. 12 and 16); `eta=0` is deterministic,
  `eta=1` is DDPM again. `ddim_invert` runs eta=0 backwards (x0 -> x_T).
- `DPMSolverPP2MSampler`: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++",
  arXiv:2211.01095, Algorithm 2), a second-order multistep ODE solver in log-SNR time,
  good at 10-20 steps.
- `classifier_free_guidance`, `guided_output`: classifier-free guidance (Ho & Salimans 2022,
  arXiv:2207.12598).
- `generate` yields every step lazily; `sample` returns uint8 images.

Notation (index t = 0 .. T-1 is the paper's t = 1 .. T; "t = -1" is clean data, abar = 1):

    abar_t     alpha_bar_t = prod_{s<=t} (1 - beta_s)     schedule.alphas_cumprod[t]
    a_t, s_t   sqrt(abar_t), sqrt(1 - abar_t)             x_t = a_t x0 + s_t eps   (DDPM eq. 4)
    t, p       the current timestep and the next one visited (p < t; p = -1 is the end)
    beta_t     1 - abar_t / abar_p, the beta of the respaced chain (= betas[t] when p = t-1)
    lambda_t   log(a_t / s_t) = log_snr / 2                (DPM-Solver's time variable)
    v          a_t eps - s_t x0                            (Salimans & Ho 2022, sec. 4)
    w          guidance scale: eps = eps_uncond + w (eps_cond - eps_uncond)

Every sampler visits `timesteps` (descending ints); `step(model_output, t, x_t)` maps
x_t to x_p and also returns the predicted x0. Arrays are channels-last (B, H, W, C).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from diffusion_utils.data import to_uint8
from diffusion_utils.schedules import PREDICTIONS, NoiseSchedule

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

# Timestep spacings: the first three are those of Lin et al. 2023 ("Common Diffusion Noise
# Schedules and Sample Steps are Flawed", arXiv:2305.08891, table 2), "logsnr" is DPM-Solver's
# (Lu et al. 2022, arXiv:2206.00927: equal steps in log-SNR). See `make_timesteps`.
SPACINGS = ("trailing", "leading", "linspace", "logsnr")


class StepOutput(NamedTuple):
    """What one sampler step returns: x at the next timestep, and the x0 it predicted."""

    prev_sample: mx.array  # (B, H, W, C)
    pred_x0: mx.array  # (B, H, W, C)


def make_timesteps(alphas_cumprod, num_steps: int, spacing: str = "trailing") -> list[int]:
    """`num_steps` distinct indices in [0, T-1], descending, spread over the T training steps.

    `alphas_cumprod` (T,) is the schedule's abar (only "logsnr" looks at its values).
    With T = 1000 and 10 steps:
      "trailing"  999, 899, ..., 99   round(T - i T / n) - 1. Always starts at t = T-1, the
                                      pure-noise prior the model was trained on (Lin et al.'s
                                      fix); the last step jumps from t = T/n - 1 to clean.
      "leading"   900, 800, ..., 0    i * (T // n): DDIM's and old Stable Diffusion's choice;
                                      never visits t = T-1, so it starts from a state the model
                                      never saw (x_T is not quite pure noise there).
      "linspace"  999, 888, ..., 0    round(linspace(T-1, 0, n)): both ends.
      "logsnr"    999, 886, 757, 602, 409, 202, 73, 22, 5, 0 (linear schedule): equal steps in
                  lambda = log(a_t / s_t) from t = T-1 to t = 0. Each next step aims at an equal
                  share of the lambda still to go, at the nearest index below the current one.
                  A multistep solver's error is set by its steps in lambda, so DPM-Solver's
                  authors recommend this for low-resolution images: it keeps fine, low-variance
                  detail that the uniform spacings (big last step to clean data) average away.
    `num_steps = T` gives T-1, ..., 0 for every spacing.
    """
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    T = abar.shape[0]
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not (
        1 <= num_steps <= T
    ):
        raise ValueError(f"num_steps must be an integer in [1, {T}] (T of the schedule), got {num_steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    n = int(num_steps)
    if spacing == "trailing":
        steps = np.round(T - np.arange(n) * T / n) - 1
    elif spacing == "leading":
        steps = np.arange(n)[::-1] * (T // n)
    elif spacing == "linspace":
        steps = np.round(np.linspace(T - 1, 0, n))
    else:
        lam = 0.5 * np.log(abar / (1.0 - abar))  # (T,), decreasing in t
        steps = [T - 1]
        for i in range(1, n):
            target = lam[steps[-1]] + (lam[0] - lam[steps[-1]]) / (n - i)
            nearest = int(np.abs(lam - target).argmin())
            # strictly below the current step, leaving room for the n - 1 - i still to come
            steps.append(max(min(nearest, steps[-1] - 1), n - 1 - i))
    return [int(t) for t in steps]


class Sampler:
    """What every sampler shares: the visited timesteps and model output -> (x0, eps).

    Args:
        schedule: the `NoiseSchedule` the model was trained with.
        prediction: what the model outputs, "eps" (Ho et al. 2020) or "v" (Salimans & Ho 2022).
        clip_x0: clip the predicted x0 to [-1, 1], the data range, before using it
            (Ho et al.'s `clip_denoised`); eps is then recomputed to match the clipped x0.
    """

    name = "sampler"  # each subclass: the name `make_sampler` and the CLI know it by
    default_spacing = "trailing"

    def __init__(self, schedule: NoiseSchedule, prediction: str = "eps", clip_x0: bool = True):
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}"
            )
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self._abar = schedule.alphas_cumprod_float64  # (T,): 1 - abar_t / abar_p exact for adjacent steps
        self.set_timesteps(schedule.num_steps)

    def set_timesteps(self, num_steps: int, spacing: str | None = None) -> None:
        """Visit `num_steps` of the T timesteps, spaced as `make_timesteps` describes.

        `spacing=None` is the sampler's `default_spacing` ("trailing"; "logsnr" for DPM-Solver++).
        """
        spacing = self.default_spacing if spacing is None else spacing
        self.timesteps = make_timesteps(self._abar, num_steps, spacing)
        self.spacing = spacing
        self._next = dict(zip(self.timesteps, self.timesteps[1:] + [-1], strict=True))

    def prev_timestep(self, t: int) -> int:
        """The timestep visited after t (-1 after the last one: clean data)."""
        t = int(t)
        if t not in self._next:
            raise ValueError(f"t={t} is not one of this sampler's timesteps; call set_timesteps first")
        return self._next[t]

    def alpha_bar(self, t: int) -> float:
        """abar_t as a float64 Python number, with abar = 1 at t = -1 (clean data)."""
        return 1.0 if t < 0 else float(self._abar[t])

    def predict_x0_eps(self, model_output: mx.array, t: int, x_t: mx.array) -> tuple[mx.array, mx.array]:
        """(x0, eps) implied by the model's output at x_t, each (B, H, W, C)."""
        t_batch = mx.full((x_t.shape[0],), int(t), dtype=mx.int32)  # (B,)
        if self.prediction == "eps":
            eps = model_output
            x0 = self.schedule.predict_x0(x_t, t_batch, eps)
        else:
            x0, eps = self.schedule.x0_eps_from_v(x_t, t_batch, model_output)
        if self.clip_x0:
            x0 = mx.clip(x0, -1.0, 1.0)
            eps = self.schedule.predict_eps(x_t, t_batch, x0)
        return x0, eps


def _noise(shape: tuple[int, ...], key: mx.array | None, sampler: str) -> mx.array:
    if key is None:
        raise ValueError(f"{sampler}.step adds noise here: pass key=mx.random.key(seed) (or a split of one)")
    return mx.random.normal(shape, key=key)


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, eq. 11 / Algorithm 2) on any subsequence of steps.

    x_p = mu_tilde(x_t, x0) + sigma_t z with the posterior mean of eq. 7, which equals eq. 11
    when x0 is the unclipped prediction. When steps are skipped, the chain is respaced
    (Nichol & Dhariwal 2021, sec. 4): beta_t = 1 - abar_t / abar_p for the two visited steps.

    Args:
        variance: "beta_tilde" (the posterior variance, optimal when the data is a single point)
            or "beta" (optimal for data ~ N(0, I)); Ho et al. found both give similar samples.
            The last step adds no noise with either (Algorithm 2: z = 0 at t = 1).
    """

    name = "ddpm"

    def __init__(self, schedule: NoiseSchedule, variance: str = "beta_tilde", prediction: str = "eps",
                 clip_x0: bool = True):
        if variance not in ("beta_tilde", "beta"):
            raise ValueError(f"unknown DDPM variance {variance!r}; choose 'beta_tilde' or 'beta'")
        self.variance = variance
        super().__init__(schedule, prediction, clip_x0)

    def sigma(self, t: int) -> float:
        """Standard deviation of the noise that `step` adds at t."""
        p = self.prev_timestep(t)
        if p < 0:
            return 0.0
        abar_t, abar_p = self.alpha_bar(t), self.alpha_bar(p)
        beta = 1.0 - abar_t / abar_p
        if self.variance == "beta":
            return math.sqrt(beta)
        return math.sqrt((1.0 - abar_p) / (1.0 - abar_t) * beta)  # beta_tilde (eq. 7)

    def step(self, model_output: mx.array, t: int, x_t: mx.array, key: mx.array | None = None) -> StepOutput:
        """x_t (B, H, W, C) -> x_p ~ p(x_p | x_t); `key` draws z (needed unless this is the last step)."""
        p = self.prev_timestep(t)
        abar_t, abar_p = self.alpha_bar(t), self.alpha_bar(p)
        alpha = abar_t / abar_p  # respaced alpha_t
        # 1. predicted x0 (eq. 15, or from v)
        x0, _ = self.predict_x0_eps(model_output, t, x_t)
        # 2. posterior mean mu_tilde (eq. 7)
        coef_x0 = math.sqrt(abar_p) * (1.0 - alpha) / (1.0 - abar_t)
        coef_xt = math.sqrt(alpha) * (1.0 - abar_p) / (1.0 - abar_t)
        x_p = coef_x0 * x0 + coef_xt * x_t  # (B, H, W, C)
        # 3. add sigma_t z (Algorithm 2, line 4)
        sigma = self.sigma(t)
        if sigma > 0:
            x_p = x_p + sigma * _noise(x_t.shape, key, "DDPMSampler")
        return StepOutput(x_p, x0)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021): x_p = a_p x0 + sqrt(1 - abar_p - sigma^2) eps + sigma z (eq. 12).

    sigma_t = eta sqrt((1 - abar_p) / (1 - abar_t)) sqrt(1 - abar_t / abar_p) (eq. 16):
    `eta=0` is deterministic (the probability-flow ODE, first order), `eta=1` is exactly
    DDPM's posterior (`DDPMSampler(variance="beta_tilde")`), in between interpolates.
    """

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0, prediction: str = "eps",
                 clip_x0: bool = True):
        if not (isinstance(eta, (int, float, np.floating)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a number >= 0 (0 = deterministic, 1 = DDPM), got {eta!r}")
        self.eta = float(eta)
        super().__init__(schedule, prediction, clip_x0)

    def sigma(self, t: int) -> float:
        """sigma_t of eq. 16 for the step t -> p."""
        p = self.prev_timestep(t)
        abar_t, abar_p = self.alpha_bar(t), self.alpha_bar(p)
        return self.eta * math.sqrt((1.0 - abar_p) / (1.0 - abar_t) * (1.0 - abar_t / abar_p))

    def step(self, model_output: mx.array, t: int, x_t: mx.array, key: mx.array | None = None) -> StepOutput:
        """x_t (B, H, W, C) -> x_p; `key` is needed only when eta > 0."""
        abar_p = self.alpha_bar(self.prev_timestep(t))
        sigma = self.sigma(t)
        # 1. predicted x0 and eps ("predicted x0" and "direction pointing to x_t", eq. 12)
        x0, eps = self.predict_x0_eps(model_output, t, x_t)
        # 2. x_p = sqrt(abar_p) x0 + sqrt(1 - abar_p - sigma^2) eps (+ sigma z)
        direction = math.sqrt(max(1.0 - abar_p - sigma**2, 0.0))
        x_p = math.sqrt(abar_p) * x0 + direction * eps  # (B, H, W, C)
        if sigma > 0:
            x_p = x_p + sigma * _noise(x_t.shape, key, "DDIMSampler")
        return StepOutput(x_p, x0)


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, data prediction, log-SNR time.

    In lambda = log(a / s), the probability-flow ODE has the exact solution
    x_p = (s_p / s_t) x_t - a_p (e^{-h} - 1) int x0 dlambda  with h = lambda_p - lambda_t.
    First order (= DDIM eta=0) takes x0 constant; 2M extrapolates it linearly from the
    current and previous predictions: D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h.
    The first step has no history and the last step (to clean data, lambda = inf, where
    e^{-h} = 0 and the update is exactly x0) is first order. Deterministic: `key` is ignored.

    The sampler remembers the previous x0 between calls; it is used only when `step` is
    called with the timestep that follows the remembered one, so starting a new trajectory
    never mixes in a stale prediction.
    """

    name = "dpm++"
    default_spacing = "logsnr"

    def set_timesteps(self, num_steps: int, spacing: str | None = None) -> None:
        super().set_timesteps(num_steps, spacing)
        self._history: tuple[int, mx.array] | None = None  # (t, x0 predicted at t)

    def _lambda(self, t: int) -> float:
        abar = self.alpha_bar(t)
        return 0.5 * math.log(abar / (1.0 - abar))

    def step(self, model_output: mx.array, t: int, x_t: mx.array, key: mx.array | None = None) -> StepOutput:
        """x_t (B, H, W, C) -> x_p along the probability-flow ODE."""
        t, p = int(t), self.prev_timestep(t)
        # 1. data prediction x0_theta(x_t, t) (clipped: Lu et al.'s thresholding)
        x0, _ = self.predict_x0_eps(model_output, t, x_t)
        history, self._history = self._history, (t, x0)
        if p < 0:  # 2a. last step: lambda_p = inf, so x_p = x0
            return StepOutput(x0, x0)
        lam_t, lam_p = self._lambda(t), self._lambda(p)
        h = lam_p - lam_t
        # 2b. second-order correction from the previous step's x0 (Algorithm 2)
        if history is not None and self._next.get(history[0]) == t:
            r = (lam_t - self._lambda(history[0])) / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * history[1]
        else:
            d = x0
        # 3. x_p = (s_p / s_t) x_t - a_p (e^{-h} - 1) D (Algorithm 2)
        abar_t, abar_p = self.alpha_bar(t), self.alpha_bar(p)
        ratio = math.sqrt((1.0 - abar_p) / (1.0 - abar_t))
        x_p = ratio * x_t - math.sqrt(abar_p) * math.expm1(-h) * d  # (B, H, W, C)
        return StepOutput(x_p, x0)


SAMPLERS = {cls.name: cls for cls in (DDPMSampler, DDIMSampler, DPMSolverPP2MSampler)}


def make_sampler(name: str, schedule: NoiseSchedule, num_steps: int | None = None,
                 spacing: str | None = None, **kwargs) -> Sampler:
    """A sampler by its CLI name ("ddpm", "ddim", "dpm++"), with `num_steps` already set.

    `kwargs` go to the class: `prediction`, `clip_x0`, and `eta` (ddim) or `variance` (ddpm).
    `num_steps=None` visits all T steps; `spacing=None` is the sampler's default.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    sampler = SAMPLERS[name](schedule, **kwargs)
    sampler.set_timesteps(schedule.num_steps if num_steps is None else num_steps, spacing)
    return sampler


def classifier_free_guidance(cond: mx.array, uncond: mx.array, w: float) -> mx.array:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): uncond + w (cond - uncond).

    cond, uncond: the model's outputs (B, H, W, C) for the class labels and for the null label.
    Our w is the paper's 1 + w: w = 1 is the conditional model, w = 0 the unconditional one,
    w > 1 sharpens towards the class. Guiding a v prediction is the same as guiding eps: v is
    affine in eps for fixed x_t, and the weights (1 - w, w) sum to one.
    """
    return uncond + w * (cond - uncond)


def guided_output(model: Callable, x: mx.array, t: mx.array, y: mx.array | None, guidance: float,
                  null_label: int | None = None) -> mx.array:
    """The output the samplers step with: `model(x, t, y)` under classifier-free guidance scale w.

    x (B, H, W, C), t (B,), y (B,) or None (unconditional: no guidance). w = 1 and w = 0 are one
    model call each; otherwise the conditional and null batches run in ONE call (concatenated
    along the batch) and `classifier_free_guidance` combines them. `null_label` is the model's
    "no class" label (`num_classes`), needed when w != 1 and labels are given.
    """
    w = float(guidance)
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"guidance scale must be a number >= 0 (1 = plain conditional), got {guidance!r}")
    if y is None or w == 1.0:
        return model(x, t, y)
    if null_label is None:
        raise ValueError("classifier-free guidance needs null_label (the model's num_classes)")
    null = mx.full(y.shape, null_label, dtype=y.dtype)  # (B,)
    if w == 0.0:
        return model(x, t, null)
    out = model(mx.concatenate([x, x]), mx.concatenate([t, t]), mx.concatenate([y, null]))
    cond, uncond = mx.split(out, 2)  # (B, H, W, C) each
    return classifier_free_guidance(cond, uncond, w)


def generate(
    model: Callable,
    sampler: Sampler,
    shape: Sequence[int],
    y: mx.array | None = None,
    guidance: float = 1.0,
    key: mx.array | None = None,
    null_label: int | None = None,
    x_T: mx.array | None = None,
) -> Iterator[StepOutput]:
    """Run the reverse process from x_T ~ N(0, I), yielding `StepOutput(x_p, pred_x0)` per step.

    Args:
        model: any callable `model(x, t, y)`: x (B, H, W, C), t (B,) int32 timestep indices
            (as in training), y (B,) int labels or None; returns eps or v, shaped like x.
        sampler: a `Sampler` whose `set_timesteps` has been called; one model call per step.
        shape: (B, H, W, C) of the samples.
        y: (B,) class labels, or None for unconditional samples.
        guidance, null_label: classifier-free guidance, see `guided_output`.
        key: `mx.random.key(seed)`; None means `mx.random.key(0)`. The global MLX random
            state is never used, so equal keys give equal samples.
        x_T: start here instead of drawing noise (e.g. a latent from `ddim_invert`).

    MLX is lazy: the yielded arrays are recipes, not numbers, until someone calls
    `mx.eval` (or converts them to numpy). Nothing here evaluates, so the caller chooses:
    `mx.eval(out.prev_sample)` every step keeps memory flat and lets a progress bar mean
    something; never evaluating builds one graph for the whole trajectory, which is then
    computed at the end (fine for tiny tests, heavy for a real network).
    """
    shape = tuple(int(d) for d in shape)
    key = mx.random.key(0) if key is None else key
    noise_key, key = mx.random.split(key)
    if x_T is None:
        x = mx.random.normal(shape, key=noise_key)  # (B, H, W, C)
    elif tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {shape}")
    else:
        x = x_T
    if y is not None and tuple(y.shape) != shape[:1]:
        raise ValueError(f"labels y must have shape ({shape[0]},), got {tuple(y.shape)}")
    for t in sampler.timesteps:
        key, step_key = mx.random.split(key)
        out = guided_output(model, x, mx.full(shape[:1], t, dtype=mx.int32), y, guidance, null_label)
        result = sampler.step(out, t, x, key=step_key)
        x = result.prev_sample
        yield result


def ddim_invert(
    model: Callable,
    sampler: DDIMSampler,
    x0: mx.array,
    y: mx.array | None = None,
    guidance: float = 1.0,
    null_label: int | None = None,
) -> mx.array:
    """Deterministic DDIM encoding x0 (B, H, W, C) -> x_T: eq. 12 with eta = 0, run forwards.

    Visits `sampler.timesteps` in ascending order. Each step moves from level q (the step
    before, -1 = clean) to level t using eps = model(x_q, t), the usual approximation
    eps(x_q, t) ~ eps(x_t, t) (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, app. F):
        x_t = a_t (x_q - s_q eps) / a_q + s_t eps.
    `generate(..., x_T=ddim_invert(...))` with the same DDIM sampler (eta = 0) then returns
    approximately x0; more steps make the round trip closer. x0 is not clipped here, since
    clipping a real image's prediction would break invertibility. Returns x_T (lazy).
    """
    ascending = sampler.timesteps[::-1]
    x = x0
    for q, t in zip([-1, *ascending[:-1]], ascending, strict=True):
        t_batch = mx.full((x.shape[0],), t, dtype=mx.int32)  # (B,)
        out = guided_output(model, x, t_batch, y, guidance, null_label)
        eps = out if sampler.prediction == "eps" else sampler.schedule.x0_eps_from_v(x, t_batch, out)[1]
        abar_q, abar_t = sampler.alpha_bar(q), sampler.alpha_bar(t)
        x0_pred = (x - math.sqrt(1.0 - abar_q) * eps) / math.sqrt(abar_q)
        x = math.sqrt(abar_t) * x0_pred + math.sqrt(1.0 - abar_t) * eps  # (B, H, W, C)
    return x


def _labels_array(labels, n: int, null_label: int | None) -> mx.array | None:
    if labels is None:
        return None
    y = np.full(n, labels) if np.ndim(labels) == 0 else np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be one integer or {n} integers, got {labels!r}")
    top = null_label if null_label is not None else np.inf
    if y.min() < 0 or y.max() > top:
        raise ValueError(f"labels must lie in [0, {null_label}] (the last one = no class), got {labels!r}")
    return mx.array(y.astype(np.int32))


def sample(
    model: Callable,
    sampler: Sampler,
    shape: Sequence[int],
    labels: int | Sequence[int] | None = None,
    guidance: float = 1.0,
    null_label: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    finish: Callable[[mx.array], np.ndarray] = to_uint8,
) -> np.ndarray:
    """Generate images of `shape` (N, H, W, 3) with `sampler`; returns them as uint8 numpy.

    `finish` turns each batch's final sample into what is returned (default `to_uint8`; a latent
    model's decoder for `pipeline.sample_model`).

    `sampler` carries its own settings (timesteps, prediction type, clipping, eta). `labels`:
    None (unconditional), one class index for all, or one per image; with `guidance` != 1,
    `null_label` (the model's num_classes) is required (see `guided_output`). Images are made
    `batch_size` at a time, each batch evaluated step by step; the same arguments (seed and
    batch_size included) give the same images.
    """
    shape = tuple(shape)
    if len(shape) != 4 or not all(_is_count(d) for d in shape):
        raise ValueError(f"shape must be 4 integers >= 1 (N, H, W, C), got {shape!r}")
    if not _is_count(batch_size):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    n = shape[0]
    y_all = _labels_array(labels, n, null_label)
    starts = range(0, n, batch_size)
    keys = mx.random.split(mx.random.key(seed), len(starts))
    images = []
    with tqdm(total=len(starts) * len(sampler.timesteps), desc=f"{sampler.name} sampling",
              disable=not progress) as bar:
        for key, start in zip(keys, starts, strict=True):
            b = min(batch_size, n - start)
            y = None if y_all is None else y_all[start:start + b]
            for out in generate(model, sampler, (b, *shape[1:]), y, guidance, key, null_label):
                mx.eval(out.prev_sample)
                bar.update()
            images.append(finish(out.prev_sample))
    return np.concatenate(images)


def _is_count(value) -> bool:
    """An integer >= 1 (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
