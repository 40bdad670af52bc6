"""Samplers with analytic denoisers: data that is a point or a Gaussian, where the exact
eps-predictor is known, so every sampler's output distribution can be checked.

For data x0 ~ N(mu, sd^2) and x_t = a x0 + s eps (a = sqrt(abar), s = sqrt(1 - abar)):
    E[eps | x_t] = s (x_t - a mu) / (a^2 sd^2 + s^2),   E[x0 | x_t] = mu + a sd^2 (x_t - a mu) / (...)
and the probability-flow ODE keeps z = (x_t - a mu) / sqrt(a^2 sd^2 + s^2) constant, so a
deterministic sampler must map x_T to mu + sd z. sd = 0 is the single-point case.
"""

import math

import diffusion_utils  # noqa: F401  (fast BLAS before mlx.core)
from diffusion_utils.samplers import (
    SPACINGS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    classifier_free_guidance,
    ddim_invert,
    generate,
    guided_output,
    make_sampler,
    make_timesteps,
    sample,
)
from diffusion_utils.schedules import make_schedule

import mlx.core as mx
import numpy as np
import pytest

T = 1000
N = 4000  # samples per distribution check: the std of a sample mean is sd / 63


class GaussianData:
    """Exact denoiser for per-label, per-channel Gaussian data: mus, sds of shape (labels, C).

    The last label is the "null" class (also used for y=None). Counts calls and batch sizes.
    """

    def __init__(self, schedule, mus, sds, prediction="eps"):
        abar = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
        self.a = mx.array(np.sqrt(abar).astype(np.float32))  # (T,)
        self.s = mx.array(np.sqrt(1 - abar).astype(np.float32))  # (T,)
        self.mus = mx.array(np.asarray(mus, dtype=np.float32).reshape(len(mus), -1))  # (L, C)
        self.sds = mx.array(np.asarray(sds, dtype=np.float32).reshape(len(sds), -1))  # (L, C)
        self.prediction = prediction
        self.batches = []

    def __call__(self, x, t, y=None):
        self.batches.append(x.shape[0])
        if y is None:
            y = mx.full(t.shape, self.mus.shape[0] - 1, dtype=mx.int32)
        a, s = self.a[t].reshape(-1, 1, 1, 1), self.s[t].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        mu, sd = self.mus[y][:, None, None, :], self.sds[y][:, None, None, :]  # (B, 1, 1, C)
        var = a * a * sd * sd + s * s
        eps = s * (x - a * mu) / var
        if self.prediction == "eps":
            return eps
        x0 = mu + a * sd * sd * (x - a * mu) / var
        return a * eps - s * x0  # v


@pytest.fixture(scope="module")
def linear():
    return make_schedule("linear", T)


@pytest.fixture(scope="module")
def cosine():
    return make_schedule("cosine", T)


def run(model, sampler, shape, **kwargs):
    for out in generate(model, sampler, shape, **kwargs):
        mx.eval(out.prev_sample)
    return np.array(out.prev_sample)


# --------------------------------------------------------------------------- timesteps
def test_spacings_golden_values(linear):
    abar = np.array(linear.alphas_cumprod)
    assert make_timesteps(abar, 10, "trailing") == list(range(999, 98, -100))
    assert make_timesteps(abar, 10, "leading") == list(range(900, -1, -100))
    assert make_timesteps(abar, 10, "linspace") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    ts = make_timesteps(abar, 10, "logsnr")
    assert ts == [999, 886, 757, 602, 409, 202, 73, 22, 5, 0]
    lam = 0.5 * np.log(abar[ts] / (1 - abar[ts]))
    assert np.allclose(np.diff(lam), (lam[-1] - lam[0]) / 9, rtol=0.1)  # equal steps in log-SNR


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_spacings_give_distinct_descending_steps(kind, spacing):
    abar = np.array(make_schedule(kind, T).alphas_cumprod)
    for n in (1, 2, 3, 7, 10, 20, 333, 999, 1000):
        ts = make_timesteps(abar, n, spacing)
        assert len(ts) == n and all(isinstance(t, int) for t in ts)
        assert 0 <= ts[-1] and ts[0] <= T - 1 and np.all(np.diff(ts) < 0)
        if spacing != "leading":
            assert ts[0] == T - 1  # starts from the pure-noise step the model was trained on
    assert make_timesteps(abar, T, spacing) == list(range(T - 1, -1, -1))


@pytest.mark.parametrize("bad", [0, -1, T + 1, 2.5, True, "10"])
def test_bad_step_counts_raise(linear, bad):
    with pytest.raises(ValueError, match="num_steps"):
        DDIMSampler(linear).set_timesteps(bad)
    with pytest.raises(ValueError, match="num_steps"):
        make_sampler("dpm++", linear, bad)


def test_bad_settings_raise(linear):
    model = GaussianData(linear, [[0.0]], [[0.5]])
    for call in (
        lambda: DDIMSampler(linear).set_timesteps(10, spacing="uniform"),
        lambda: make_sampler("euler", linear),
        lambda: DDPMSampler(linear, variance="learned"),
        lambda: DDIMSampler(linear, eta=-0.5),
        lambda: DDIMSampler(linear, eta=float("nan")),
        lambda: DDIMSampler(linear, prediction="x0"),
        lambda: guided_output(model, mx.zeros((1, 1, 1, 1)), mx.zeros((1,), mx.int32), None, -1.0, 0),
        lambda: guided_output(model, mx.zeros((1, 1, 1, 1)), mx.zeros((1,), mx.int32), None, float("inf"), 0),
        lambda: sample(model, make_sampler("ddim", linear, 5), (2, 1, 1)),
        lambda: sample(model, make_sampler("ddim", linear, 5), (0, 1, 1, 3)),
        lambda: sample(model, make_sampler("ddim", linear, 5), (2, 1, 1, 3), batch_size=0),
        lambda: sample(model, make_sampler("ddim", linear, 5), (2, 1, 1, 3), labels=[0, 7], null_label=1),
        lambda: sample(model, make_sampler("ddim", linear, 5), (2, 1, 1, 3), labels=[0, 1, 0]),
    ):
        with pytest.raises(ValueError):
            call()


def test_step_checks_timestep_and_key(linear):
    sampler = make_sampler("ddpm", linear, 10)
    x = mx.zeros((2, 1, 1, 1))
    with pytest.raises(ValueError, match="set_timesteps"):
        sampler.step(x, 500, x)  # 500 is not visited with 10 trailing steps
    with pytest.raises(ValueError, match="key"):
        sampler.step(x, 999, x)  # ancestral step without a random key
    last = sampler.step(x, 99, x)  # the last step adds no noise: no key needed
    assert last.prev_sample.shape == x.shape


# --------------------------------------------------------------------------- formulas
def test_ddpm_full_chain_is_ho_et_al_posterior(linear):
    """With all T steps, the step is mu_tilde (eq. 7) + sqrt(variance) z, for both variances."""
    x0 = mx.random.normal((3, 2, 2, 1), key=mx.random.key(1)) * 0.3
    noise = mx.random.normal(x0.shape, key=mx.random.key(2))
    key = mx.random.key(3)
    z = mx.random.normal(x0.shape, key=key)
    for variance, expected_var in (("beta_tilde", linear.posterior_variance), ("beta", linear.betas)):
        sampler = DDPMSampler(linear, variance=variance, clip_x0=False)
        for t in (999, 500, 1):
            tb = mx.full((3,), t, dtype=mx.int32)
            x_t = linear.q_sample(x0, tb, noise)
            out = sampler.step(noise, t, x_t, key=key)  # the true eps: pred_x0 = x0
            mean, _, _ = linear.q_posterior(x0, x_t, tb)
            assert sampler.sigma(t) ** 2 == pytest.approx(float(expected_var[t]), rel=1e-5)
            assert np.allclose(out.pred_x0, x0, atol=1e-4)
            assert np.allclose(out.prev_sample, mean + sampler.sigma(t) * z, atol=1e-4)
        assert sampler.sigma(0) == 0.0  # Algorithm 2: no noise in the last step


def test_ddim_eta1_sigma_is_posterior_std(linear, cosine):
    """Song et al. eq. 16 with eta = 1 is sqrt(beta_tilde) (Ho et al. eq. 7), adjacent steps."""
    for schedule in (linear, cosine):
        ddim = DDIMSampler(schedule, eta=1.0)
        sigmas = np.array([ddim.sigma(t) for t in range(T)])
        assert np.allclose(sigmas**2, np.array(schedule.posterior_variance), rtol=2e-3, atol=1e-9)
        assert DDIMSampler(schedule, eta=0.0).sigma(500) == 0.0
    # strided: the respaced posterior of the two visited steps (Nichol & Dhariwal sec. 4)
    abar = np.array(linear.alphas_cumprod, dtype=np.float64)
    ddim, ddpm = make_sampler("ddim", linear, 10, eta=1.0), make_sampler("ddpm", linear, 10)
    for t, p in ((999, 899), (499, 399), (199, 99)):
        beta = 1 - abar[t] / abar[p]
        expected = math.sqrt((1 - abar[p]) / (1 - abar[t]) * beta)
        assert ddim.sigma(t) == pytest.approx(expected, rel=1e-6)
        assert ddpm.sigma(t) == pytest.approx(expected, rel=1e-6)
    assert make_sampler("ddim", linear, 10, eta=0.5).sigma(999) == pytest.approx(0.5 * ddim.sigma(999))


def test_ddim_eta1_is_ddpm_sample_for_sample(linear):
    """DDIM(eta=1) and DDPM(beta_tilde) are the same process: equal keys, equal samples."""
    model = GaussianData(linear, [[0.2, -0.3]], [[0.3, 0.1]])
    key = mx.random.key(7)
    ddim = run(model, make_sampler("ddim", linear, 20, eta=1.0), (64, 2, 2, 2), key=key)
    ddpm = run(model, make_sampler("ddpm", linear, 20), (64, 2, 2, 2), key=key)
    assert np.allclose(ddim, ddpm, atol=1e-4)


# --------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_single_point_data_is_reached_exactly(linear, name, prediction):
    c = np.array([0.7, -0.2, 0.0], dtype=np.float32)
    model = GaussianData(linear, [c], [[0.0, 0.0, 0.0]], prediction)
    x = run(model, make_sampler(name, linear, 10, prediction=prediction), (16, 4, 4, 3), key=mx.random.key(0))
    assert np.allclose(x, c, atol=1e-4)


DISTRIBUTION_CASES = [  # (sampler, kwargs, steps, spacing, tolerance on std ratio)
    ("ddpm", {"variance": "beta_tilde"}, 1000, None, 0.05),
    ("ddpm", {"variance": "beta"}, 1000, None, 0.05),
    ("ddim", {"eta": 1.0}, 1000, None, 0.05),
    ("ddim", {"eta": 0.0}, 1000, None, 0.05),
    ("ddim", {"eta": 0.0}, 50, "logsnr", 0.1),
    ("dpm++", {}, 20, None, 0.06),
    ("dpm++", {}, 10, None, 0.15),
]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("name, kwargs, steps, spacing, tol", DISTRIBUTION_CASES)
def test_samplers_converge_to_gaussian_data(cosine, name, kwargs, steps, spacing, tol, prediction):
    """Per channel a different scale (0.05 .. 0.8): fine detail and coarse structure both kept."""
    mus, sds = np.array([0.3, -0.1, 0.0]), np.array([0.05, 0.2, 0.8])
    model = GaussianData(cosine, [mus], [sds], prediction)
    sampler = make_sampler(name, cosine, steps, spacing, prediction=prediction, clip_x0=False, **kwargs)
    x = run(model, sampler, (N, 1, 1, 3), key=mx.random.key(1)).reshape(N, 3)
    assert np.all(np.abs(x.mean(0) - mus) < 4 * sds / math.sqrt(N) + 0.01 * sds)
    assert np.all(np.abs(x.std(0) / sds - 1) < tol), x.std(0) / sds


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_dpm_solver_tracks_the_exact_ode_better_than_ddim(kind):
    """The PF-ODE maps x_T to mu + sd z; DPM-Solver++(2M) at 20 steps is close, DDIM is not."""
    schedule = make_schedule(kind, T)
    mus, sds = np.array([0.3, 0.0]), np.array([0.2, 0.8])
    model = GaussianData(schedule, [mus], [sds])
    x_T = mx.random.normal((500, 1, 1, 2), key=mx.random.key(3))
    a, s = math.sqrt(float(schedule.alphas_cumprod[-1])), math.sqrt(1 - float(schedule.alphas_cumprod[-1]))
    exact = mus + sds * (np.array(x_T) - a * mus) / np.sqrt(a * a * sds**2 + s * s)

    def error(name, steps):
        x = run(model, make_sampler(name, schedule, steps, clip_x0=False), x_T.shape, x_T=x_T)
        return np.abs(x - exact).max(axis=(0, 1, 2)) / sds  # per channel, in units of sd

    assert np.all(error("dpm++", 20) < 0.1)
    assert np.all(error("ddim", 1000) < 0.05)  # first order, but with all steps
    assert np.all(error("ddim", 20) > 2 * error("dpm++", 20))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_v_and_eps_models_give_the_same_samples(linear, name):
    mus, sds = [[0.1, 0.4]], [[0.3, 0.1]]
    key, shape = mx.random.key(5), (32, 2, 2, 2)
    xs = [
        run(GaussianData(linear, mus, sds, p), make_sampler(name, linear, 15, prediction=p), shape, key=key)
        for p in ("eps", "v")
    ]
    assert np.allclose(xs[0], xs[1], atol=1e-4)


def test_clip_x0_keeps_samples_in_data_range(linear):
    model = GaussianData(linear, [[3.0]], [[0.0]])  # a "data point" outside [-1, 1]
    for clip, expected in ((True, 1.0), (False, 3.0)):
        x = run(model, make_sampler("ddim", linear, 10, clip_x0=clip), (8, 1, 1, 1))
        assert np.allclose(x, expected, atol=1e-4)


# --------------------------------------------------------------------------- determinism
def test_deterministic_ddim_is_reproducible_and_seeded(linear):
    model = GaussianData(linear, [[0.0]], [[0.5]])
    sampler = make_sampler("ddim", linear, 10)
    a = run(model, sampler, (8, 2, 2, 1), key=mx.random.key(11))
    b = run(model, sampler, (8, 2, 2, 1), key=mx.random.key(11))
    c = run(model, sampler, (8, 2, 2, 1), key=mx.random.key(12))
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_dpm_solver_history_does_not_leak_between_runs(linear):
    """An interrupted run must not change the next one (the multistep history is per run)."""
    model = GaussianData(linear, [[0.1]], [[0.3]])
    fresh = run(model, make_sampler("dpm++", linear, 12), (8, 1, 1, 1), key=mx.random.key(2))
    sampler = make_sampler("dpm++", linear, 12)
    for i, _ in enumerate(generate(model, sampler, (8, 1, 1, 1), key=mx.random.key(9))):
        if i == 4:
            break
    assert np.array_equal(run(model, sampler, (8, 1, 1, 1), key=mx.random.key(2)), fresh)
    assert isinstance(sampler, DPMSolverPP2MSampler)


def test_ddim_inversion_round_trips(linear):
    """x0 -> x_T -> x0 returns close to the start, with a first-order error (halves per 2x steps)."""
    mu, sd = 0.1, 0.3
    model = GaussianData(linear, [[mu]], [[sd]])
    x0 = mu + sd * mx.random.normal((256, 2, 2, 1), key=mx.random.key(4))

    def round_trip_error(steps):
        sampler = make_sampler("ddim", linear, steps, clip_x0=False)
        x_T = ddim_invert(model, sampler, x0)
        assert abs(float(mx.std(x_T)) - 1) < 0.12  # encodes to (about) the N(0, I) prior
        return np.abs(run(model, sampler, x0.shape, x_T=x_T) - np.array(x0)).mean() / sd

    coarse, fine = round_trip_error(50), round_trip_error(200)
    assert fine < 0.03 and fine < 0.4 * coarse


# --------------------------------------------------------------------------- guidance
@pytest.fixture()
def classes(linear):
    """Class 0 ~ N(-0.5, 0.2^2), class 1 ~ N(0.5, 0.2^2), null (label 2) ~ N(0, 0.6^2)."""
    return GaussianData(linear, [[-0.5], [0.5], [0.0]], [[0.2], [0.2], [0.6]])


def test_guidance_one_is_conditional_and_zero_unconditional(classes):
    x = mx.random.normal((6, 2, 2, 1), key=mx.random.key(0))
    t = mx.array([999, 800, 500, 100, 10, 0], dtype=mx.int32)
    y = mx.array([0, 1, 0, 1, 0, 1], dtype=mx.int32)
    null = mx.full((6,), 2, dtype=mx.int32)
    cond, uncond = classes(x, t, y), classes(x, t, null)
    classes.batches.clear()
    assert np.array_equal(guided_output(classes, x, t, y, 1.0), cond)  # no null_label needed
    assert np.array_equal(guided_output(classes, x, t, y, 0.0, null_label=2), uncond)
    assert classes.batches == [6, 6]  # one call each, no doubled batch
    out = guided_output(classes, x, t, y, 3.0, null_label=2)
    assert classes.batches[2:] == [12]  # cond and null in ONE batch
    assert np.array_equal(out, classifier_free_guidance(cond, uncond, 3.0))
    assert np.allclose(out, uncond + 3.0 * (cond - uncond), atol=1e-6)
    with pytest.raises(ValueError, match="null_label"):
        guided_output(classes, x, t, y, 3.0)


def test_guided_sampling_matches_the_right_distribution(linear, classes):
    y = mx.array(np.repeat([0, 1], N // 2).astype(np.int32))
    key, shape = mx.random.key(3), (N, 1, 1, 1)
    sampler = make_sampler("dpm++", linear, 20, clip_x0=False)
    plain = run(classes, sampler, shape, y=y, key=key)
    assert np.array_equal(run(classes, sampler, shape, y=y, guidance=1.0, key=key), plain)
    assert np.allclose(plain[: N // 2].mean(), -0.5, atol=0.02)
    assert np.allclose(plain[N // 2 :].mean(), 0.5, atol=0.02)
    unconditional = run(classes, sampler, shape, key=key)  # y=None: the null class
    assert np.allclose(run(classes, sampler, shape, y=y, guidance=0.0, null_label=2, key=key), unconditional)
    assert abs(unconditional.std() - 0.6) < 0.03
    strong = run(classes, sampler, shape, y=y, guidance=4.0, null_label=2, key=key)
    assert strong[N // 2 :].mean() > plain[N // 2 :].mean()  # pushed further from the null class


# --------------------------------------------------------------------------- sample()
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_sample_returns_reproducible_uint8(linear, classes, name):
    sampler = make_sampler(name, linear, 8)
    kwargs = dict(labels=[0, 1, 0, 1, 1], guidance=2.0, null_label=2, batch_size=2)
    images = sample(classes, sampler, (5, 4, 4, 3), seed=3, **kwargs)
    assert images.dtype == np.uint8 and images.shape == (5, 4, 4, 3)
    assert np.array_equal(images, sample(classes, sampler, (5, 4, 4, 3), seed=3, **kwargs))
    assert not np.array_equal(images, sample(classes, sampler, (5, 4, 4, 3), seed=4, **kwargs))
    # class 0 data sits at -0.5 (pixel ~64), class 1 at +0.5 (pixel ~191)
    assert images[[0, 2]].mean() < 100 < 160 < images[[1, 3, 4]].mean()
