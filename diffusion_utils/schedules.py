"""Noise schedules and the forward (noising) process of a diffusion model.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239):

    beta_t          variance added at step t             betas
    alpha_t         1 - beta_t                           alphas
    alpha_bar_t     prod_{s<=t} alpha_s                  alphas_cumprod
    q(x_t | x_0)  = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)          (eq. 4)
    q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde_t I)                    (eqs. 6-7)
    SNR(t)        = alpha_bar_t / (1 - alpha_bar_t)    (Kingma et al. 2021)

Arrays are indexed by t = 0 .. T-1, where index 0 is the paper's t = 1 (the first noising
step). Coefficients are computed in float64 with numpy, then stored as float32 `mx.array`s;
`alphas_cumprod_float64` keeps abar before the cast (numpy, read-only), for the samplers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

SCHEDULE_KINDS = ("linear", "cosine", "sigmoid")
PREDICTIONS = ("eps", "v")  # what a network may predict: the noise (Ho et al. 2020) or v (Salimans & Ho 2022)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linearly increasing betas (Ho et al. 2020, sec. 4: 1e-4 to 0.02 over T=1000 steps)."""
    if beta_start > beta_end:
        raise ValueError(f"beta_start ({beta_start:.3g}) must not exceed beta_end ({beta_end:.3g})")
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def _betas_from_alpha_bar(alpha_bar: np.ndarray, max_beta: float) -> np.ndarray:
    """beta_t = 1 - alpha_bar(t+1) / alpha_bar(t) for a continuous alpha_bar on t in [0, T]."""
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = cos^2((t/T + s)/(1 + s) pi/2)."""
    if s < 0:
        raise ValueError(f"the cosine offset s must be >= 0, got {s}")
    t = np.linspace(0.0, 1.0, num_steps + 1, dtype=np.float64)
    f = np.cos((t + s) / (1.0 + s) * math.pi / 2) ** 2
    return _betas_from_alpha_bar(f / f[0], max_beta)


def sigmoid_betas(
    num_steps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> np.ndarray:
    """Sigmoid schedule (Chen 2023, "On the Importance of Noise Scheduling", arXiv:2301.10972, alg. 1)."""

    if not start < end or tau <= 0:
        raise ValueError(f"the sigmoid schedule needs start < end and tau > 0, got {start}, {end}, {tau}")

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    t = np.linspace(0.0, 1.0, num_steps + 1, dtype=np.float64)
    v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
    alpha_bar = (v_end - sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
    return _betas_from_alpha_bar(alpha_bar, max_beta)


_BETA_FUNCTIONS = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}


def _extract(coefficients: mx.array, t: mx.array, ndim: int) -> mx.array:
    """coefficients[t] reshaped to (B, 1, ..., 1) so it broadcasts against a (B, ...) batch."""
    t = mx.array(t)
    if t.ndim == 0:
        t = t.reshape(1)
    values = coefficients[t.astype(mx.int32)]  # (B,)
    return values.reshape(values.shape + (1,) * (ndim - 1))


@dataclass(eq=False)
class NoiseSchedule:
    """All the per-step coefficients of a diffusion process, shape (T,) each.

    Build one with `make_schedule`, or directly from any valid `betas` array.
    """

    betas: np.ndarray | mx.array
    kind: str = "custom"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a 1-D array with at least one step, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError(
                f"every beta must lie in (0, 1); got min {betas.min():.3g}, max {betas.max():.3g}"
            )
        alphas = 1.0 - betas
        alpha_bar = np.cumprod(alphas)
        alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
        posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)  # eq. 7
        snr = alpha_bar / (1.0 - alpha_bar)
        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alpha_bar,
            "alphas_cumprod_prev": alpha_bar_prev,
            "sqrt_alphas_cumprod": np.sqrt(alpha_bar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alpha_bar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alpha_bar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alpha_bar - 1.0),
            "posterior_variance": posterior_variance,
            # log of beta_tilde with the t=0 entry (exactly 0) replaced by t=1's, as Ho et al. do
            "posterior_log_variance_clipped": np.log(
                np.concatenate([posterior_variance[1:2], posterior_variance[1:]])
                if betas.size > 1
                else betas
            ),
            "posterior_mean_coef1": betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),  # eq. 7
            "posterior_mean_coef2": (1.0 - alpha_bar_prev) * np.sqrt(alphas) / (1.0 - alpha_bar),
            "snr": snr,
            "log_snr": np.log(snr),
        }
        for name, value in buffers.items():
            setattr(self, name, mx.array(value.astype(np.float32)))
        # abar before the cast, for samplers: 1 - abar_t / abar_s stays exact for adjacent steps
        self.alphas_cumprod_float64 = alpha_bar
        self.alphas_cumprod_float64.flags.writeable = False

    @property
    def num_steps(self) -> int:
        """T, the number of noising steps."""
        return self.betas.shape[0]

    def _check_t(self, t) -> mx.array:
        t = mx.array(t)
        if t.size and (int(mx.min(t)) < 0 or int(mx.max(t)) >= self.num_steps):
            raise ValueError(f"timesteps must lie in [0, {self.num_steps - 1}] for T={self.num_steps}")
        return t

    def q_sample(self, x0: mx.array, t, noise: mx.array, validate: bool = True) -> mx.array:
        """Sample x_t ~ q(x_t | x_0) in closed form (eq. 4): sqrt(abar) x0 + sqrt(1 - abar) noise.

        x0, noise: (B, H, W, C); t: int (B,). Returns (B, H, W, C). validate=False skips the
        range check of t, which reads t's values and so cannot run inside `mx.compile`.
        """
        if validate:
            t = self._check_t(t)
        return (
            _extract(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
        )

    def predict_x0(self, x_t: mx.array, t, eps: mx.array) -> mx.array:
        """x0 implied by a noise prediction: (x_t - sqrt(1 - abar) eps) / sqrt(abar) (eq. 4 solved)."""
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
        )

    def predict_eps(self, x_t: mx.array, t, x0: mx.array) -> mx.array:
        """Noise implied by an x0 prediction: (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0
        ) / _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim)

    def v_target(self, x0: mx.array, t, noise: mx.array) -> mx.array:
        """Velocity v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4)."""
        return (
            _extract(self.sqrt_alphas_cumprod, t, x0.ndim) * noise
            - _extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
        )

    def x0_eps_from_v(self, x_t: mx.array, t, v: mx.array) -> tuple[mx.array, mx.array]:
        """(x0, eps) from a v prediction (Salimans & Ho 2022, sec. 4).

        x0 = sqrt(abar) x_t - sqrt(1 - abar) v;  eps = sqrt(1 - abar) x_t + sqrt(abar) v.
        """
        a = _extract(self.sqrt_alphas_cumprod, t, x_t.ndim)
        b = _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
        return a * x_t - b * v, b * x_t + a * v

    def q_posterior(self, x0: mx.array, x_t: mx.array, t) -> tuple[mx.array, mx.array, mx.array]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
        mean = (
            _extract(self.posterior_mean_coef1, t, x_t.ndim) * x0
            + _extract(self.posterior_mean_coef2, t, x_t.ndim) * x_t
        )
        return (
            mean,
            _extract(self.posterior_variance, t, x_t.ndim),
            _extract(self.posterior_log_variance_clipped, t, x_t.ndim),
        )

    def to_config(self) -> dict:
        """JSON-safe description that `from_config` turns back into the same schedule."""
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError("only schedules made by make_schedule can be saved as a config")
        return {"kind": self.kind, "num_steps": self.num_steps, **self.params}

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        config = dict(config)
        return make_schedule(config.pop("kind"), config.pop("num_steps"), **config)


def make_schedule(kind: str, num_steps: int = 1000, **params) -> NoiseSchedule:
    """A `NoiseSchedule` of `kind` ("linear", "cosine" or "sigmoid") with T = `num_steps`.

    `params` go to the beta function: linear(beta_start, beta_end), cosine(s, max_beta),
    sigmoid(start, end, tau, max_beta).
    """
    if kind not in _BETA_FUNCTIONS:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    try:
        betas = _BETA_FUNCTIONS[kind](int(num_steps), **params)
    except TypeError as err:
        raise ValueError(f"bad parameter for the {kind} schedule: {err}") from None
    return NoiseSchedule(betas, kind=kind, params=dict(params))
