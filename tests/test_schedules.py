"""Schedules: invariants, golden numbers from the papers' formulas, q_sample statistics."""

import math

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils.schedules import (
    SCHEDULE_KINDS,
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    make_schedule,
    sigmoid_betas,
)

import mlx.core as mx
import numpy as np
import pytest


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
@pytest.mark.parametrize("num_steps", [1, 10, 1000])
def test_alpha_bar_strictly_decreasing_in_unit_interval(kind, num_steps):
    s = make_schedule(kind, num_steps)
    abar = np.array(s.alphas_cumprod)
    assert abar.shape == (num_steps,)
    assert np.all((abar > 0) & (abar < 1))
    assert np.all(np.diff(abar) < 0)
    for name in ("betas", "alphas", "posterior_variance", "snr", "log_snr", "posterior_mean_coef1"):
        assert getattr(s, name).shape == (num_steps,)


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_alpha_bar_is_a_float64_product_cast_once(kind):
    """abar = prod(1 - beta) in float64 from the float64 betas; the float32 buffer is its cast."""
    s = make_schedule(kind, 1000)
    betas64 = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}[kind](1000)
    exact = np.cumprod(1.0 - betas64)
    assert s.alphas_cumprod_float64.dtype == np.float64
    np.testing.assert_array_equal(s.alphas_cumprod_float64, exact)
    np.testing.assert_array_equal(np.array(s.alphas_cumprod), exact.astype(np.float32))
    with pytest.raises(ValueError):  # read-only: the samplers share it
        s.alphas_cumprod_float64[0] = 0.5
    # a product of float32 factors drifts: by t = T its relative error is far above float64's
    drift = np.cumprod((1.0 - betas64).astype(np.float32)).astype(np.float64) / exact - 1
    assert np.abs(drift[-1]) > 1e-9


def test_linear_golden_values():
    """Ho et al. 2020: betas 1e-4 .. 0.02 over T=1000; alpha_bar_t = prod(1 - beta_s)."""
    s = make_schedule("linear", 1000)
    betas = np.array(s.betas)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    for t in (0, 99, 499, 999):
        expected = np.prod(1 - np.linspace(1e-4, 0.02, 1000)[: t + 1])
        assert float(s.alphas_cumprod[t]) == pytest.approx(expected, rel=1e-4)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_golden_values():
    """Nichol & Dhariwal 2021, eq. 17 with s = 0.008, betas clipped at 0.999."""
    s = make_schedule("cosine", 1000)

    def f(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 250, 500, 900):  # index t is the paper's t + 1
        assert float(s.alphas_cumprod[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-4)
    assert float(s.betas.max()) == pytest.approx(0.999, rel=1e-6)


def test_sigmoid_is_half_way_at_midpoint():
    s = make_schedule("sigmoid", 1000)
    assert float(s.alphas_cumprod[499]) == pytest.approx(0.5, abs=2e-3)


def test_posterior_variance_formula():
    s = make_schedule("linear", 100)
    b, abar = np.array(s.betas, dtype=np.float64), np.cumprod(1 - np.array(s.betas, dtype=np.float64))
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(np.array(s.posterior_variance), b * (1 - abar_prev) / (1 - abar), rtol=1e-4)
    assert float(s.posterior_variance[0]) == 0.0


def test_snr_matches_alpha_bar():
    s = make_schedule("cosine", 50)
    abar = np.array(s.alphas_cumprod)
    np.testing.assert_allclose(np.array(s.snr), abar / (1 - abar), rtol=1e-4)
    np.testing.assert_allclose(np.array(s.log_snr), np.log(abar / (1 - abar)), rtol=1e-4, atol=1e-4)


def test_q_sample_at_t0_is_nearly_x0():
    s = make_schedule("linear", 1000)
    x0 = mx.random.uniform(-1, 1, (4, 8, 8, 3), key=mx.random.key(0))
    noise = mx.random.normal(x0.shape, key=mx.random.key(1))
    x1 = s.q_sample(x0, mx.zeros((4,), dtype=mx.int32), noise)
    assert float(mx.abs(x1 - x0).max()) < 0.05


def test_q_sample_statistics():
    """x_t has mean sqrt(abar) x0 and variance 1 - abar, per timestep of the batch."""
    s = make_schedule("cosine", 1000)
    t = mx.array([100, 500, 900], dtype=mx.int32)
    x0 = mx.full((3, 64, 64, 3), 0.7)
    noise = mx.random.normal(x0.shape, key=mx.random.key(2))
    xt = np.array(s.q_sample(x0, t, noise)).reshape(3, -1)
    abar = np.array(s.alphas_cumprod)[[100, 500, 900]]
    np.testing.assert_allclose(xt.mean(axis=1), np.sqrt(abar) * 0.7, atol=0.03)
    np.testing.assert_allclose(xt.var(axis=1), 1 - abar, atol=0.03)


def test_predictions_invert_q_sample():
    s = make_schedule("sigmoid", 200)
    x0 = mx.random.uniform(-1, 1, (5, 4, 4, 3), key=mx.random.key(3))
    eps = mx.random.normal(x0.shape, key=mx.random.key(4))
    t = mx.array([0, 10, 50, 150, 199])
    xt = s.q_sample(x0, t, eps)
    np.testing.assert_allclose(s.predict_x0(xt, t, eps), x0, atol=2e-3)
    np.testing.assert_allclose(s.predict_eps(xt, t, x0)[:4], eps[:4], atol=2e-3)
    x0_v, eps_v = s.x0_eps_from_v(xt, t, s.v_target(x0, t, eps))
    np.testing.assert_allclose(x0_v, x0, atol=1e-4)
    np.testing.assert_allclose(eps_v, eps, atol=1e-4)


def test_posterior_mean_recovers_previous_step_mean():
    """mu_tilde(x_t, x_0) equals the eq. 7 coefficients applied to (x_0, x_t)."""
    s = make_schedule("linear", 100)
    x0, xt, t = mx.full((1, 2, 2, 1), 0.5), mx.full((1, 2, 2, 1), -0.2), mx.array([40])
    mean, var, _ = s.q_posterior(x0, xt, t)
    b, abar = np.array(s.betas, dtype=np.float64), np.cumprod(1 - np.array(s.betas, dtype=np.float64))
    c1 = b[40] * np.sqrt(abar[39]) / (1 - abar[40])
    c2 = (1 - abar[39]) * np.sqrt(1 - b[40]) / (1 - abar[40])
    assert float(mean[0, 0, 0, 0]) == pytest.approx(c1 * 0.5 + c2 * -0.2, rel=1e-4)
    assert float(var[0, 0, 0, 0]) == pytest.approx(b[40] * (1 - abar[39]) / (1 - abar[40]), rel=1e-4)


def test_config_round_trip():
    s = make_schedule("cosine", 300, s=0.02)
    again = NoiseSchedule.from_config(s.to_config())
    np.testing.assert_array_equal(np.array(again.alphas_cumprod), np.array(s.alphas_cumprod))


@pytest.mark.parametrize(
    "kind, num_steps, params, message",
    [
        ("quadratic", 100, {}, "choose one of linear, cosine, sigmoid"),
        ("linear", 0, {}, "num_steps must be an integer >= 1"),
        ("linear", 2.5, {}, "num_steps must be an integer >= 1"),
        ("linear", 100, {"beta_end": 1.5}, "every beta must lie in (0, 1)"),
        ("linear", 100, {"beta_start": 0.0}, "every beta must lie in (0, 1)"),
        ("cosine", 100, {"offset": 1}, "bad parameter for the cosine schedule"),
        ("linear", 100, {"beta_start": 0.1, "beta_end": 0.01}, "beta_start (0.1) must not exceed beta_end"),
        ("cosine", 100, {"s": -0.1}, "the cosine offset s must be >= 0"),
        ("sigmoid", 100, {"start": 2.0, "end": 2.0}, "the sigmoid schedule needs start < end and tau > 0"),
        ("sigmoid", 100, {"tau": 0.0}, "the sigmoid schedule needs start < end and tau > 0"),
    ],
)
def test_bad_values_say_what_is_allowed(kind, num_steps, params, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_schedule(kind, num_steps, **params)


def test_timestep_out_of_range():
    s = make_schedule("linear", 10)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 9\]"):
        s.q_sample(mx.zeros((1, 2, 2, 3)), mx.array([10]), mx.zeros((1, 2, 2, 3)))
