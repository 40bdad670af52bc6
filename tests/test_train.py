"""Training: loss formulas on hand examples, EMA rule, label dropout, compiled = uncompiled,
a real (tiny) training run that learns, and the NaN guard."""

import math
from dataclasses import replace

from diffusion_utils import checkpoint, data, train
from diffusion_utils.schedules import make_schedule
from diffusion_utils.unet import UNet, UNetConfig

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

TINY_UNET = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                       attention_resolutions=(4,), groups=4, num_heads=2, num_classes=3)


def _styles(n=96, size=16, seed=0):
    images, labels = data.make_styles(n, size=size, seed=seed)
    return data.Dataset(images, labels, data.STYLES)


class ConstantModel:
    """A stand-in denoiser that always predicts the same value."""

    def __init__(self, value):
        self.value = value

    def __call__(self, x, t, y=None):
        return mx.full(x.shape, self.value)


def _cosine_abar(t, T=1000, s=0.008):
    """alpha_bar from Nichol & Dhariwal 2021, eq. 17, computed independently in float64."""
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    return np.cumprod(1 - betas)[t]


def test_eps_and_v_losses_on_a_hand_example():
    schedule = make_schedule("cosine", 1000)
    t = mx.array([0, 400, 999])
    x0 = mx.full((3, 2, 2, 3), 0.5)
    noise = mx.full((3, 2, 2, 3), -1.0)
    abar = _cosine_abar(np.array([0, 400, 999]))
    # predicting 0: the eps loss is E[eps^2] = 1, the v loss E[v^2], v = sqrt(abar) eps - sqrt(1-abar) x0
    eps_loss = train.loss_fn(ConstantModel(0.0), x0, None, t, noise, schedule, prediction="eps")
    assert float(eps_loss) == pytest.approx(1.0, rel=1e-6)
    v = np.sqrt(abar) * -1.0 - np.sqrt(1 - abar) * 0.5
    v_loss = train.loss_fn(ConstantModel(0.0), x0, None, t, noise, schedule, prediction="v")
    assert float(v_loss) == pytest.approx(np.mean(v**2), rel=1e-5)
    # predicting the right constant noise gives zero loss
    assert float(train.loss_fn(ConstantModel(-1.0), x0, None, t, noise, schedule)) == pytest.approx(0.0)


def test_min_snr_weights_on_a_hand_example():
    schedule = make_schedule("cosine", 1000)
    t = np.array([0, 300, 700, 999])
    abar = _cosine_abar(t)
    snr = abar / (1 - abar)
    assert snr[0] > 5 > snr[-1]  # the example straddles gamma = 5
    eps_w = train.loss_weights(schedule, mx.array(t), "eps", "min_snr")
    v_w = train.loss_weights(schedule, mx.array(t), "v", "min_snr")
    np.testing.assert_allclose(np.array(eps_w), np.minimum(snr, 5) / snr, rtol=1e-4)
    np.testing.assert_allclose(np.array(v_w), np.minimum(snr, 5) / (snr + 1), rtol=1e-4)
    np.testing.assert_array_equal(np.array(train.loss_weights(schedule, mx.array(t))), 1.0)
    # the weighted loss of a zero prediction is the mean of the weights times E[eps^2] = 1
    x0, noise = mx.zeros((4, 2, 2, 3)), mx.ones((4, 2, 2, 3))
    loss = train.loss_fn(ConstantModel(0.0), x0, None, mx.array(t), noise, schedule, weighting="min_snr")
    assert float(loss) == pytest.approx(np.mean(np.minimum(snr, 5) / snr), rel=1e-4)


def test_update_ema_rule():
    ema = {"w": mx.array([0.0, 10.0]), "layers": [{"b": mx.array(1.0)}]}
    params = {"w": mx.array([1.0, 0.0]), "layers": [{"b": mx.array(3.0)}]}
    out = train.update_ema(ema, params, 0.9)  # 0.9 * ema + 0.1 * w
    np.testing.assert_allclose(np.array(out["w"]), [0.1, 9.0], rtol=1e-6)
    assert float(out["layers"][0]["b"]) == pytest.approx(1.2)
    assert train.ema_decay_at(1, 0.999) == pytest.approx(2 / 11)  # warm-up: (1 + n) / (10 + n)
    assert train.ema_decay_at(10**6, 0.999) == 0.999
    for decay in (0.9, 0.5):  # the Trainer's compiled update follows the decay it is given
        fast = train._update_ema_compiled(ema, params, mx.array(decay))
        slow = train.update_ema(ema, params, decay)
        np.testing.assert_allclose(np.array(fast["w"]), np.array(slow["w"]), rtol=1e-6)
        assert float(fast["layers"][0]["b"]) == pytest.approx(float(slow["layers"][0]["b"]), rel=1e-6)


def test_label_dropout_rate_and_null_label():
    mx.random.seed(0)
    y = mx.zeros((20000,), dtype=mx.int32)
    dropped = np.array(train.drop_labels(y, 0.25, null_label=7))
    assert set(np.unique(dropped)) == {0, 7}
    assert np.mean(dropped == 7) == pytest.approx(0.25, abs=0.02)
    assert train.drop_labels(y, 0.0, null_label=7) is y


def test_config_round_trip_and_validation():
    config = train.get_preset("quick", seed=3)
    again = train.TrainConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.unet, UNetConfig)
    with pytest.raises(ValueError, match="prediction"):
        replace(config, prediction="x0")
    with pytest.raises(ValueError, match="unknown key"):
        train.TrainConfig.from_dict({**config.to_dict(), "lr": 1.0})
    with pytest.raises(ValueError, match="unknown preset"):
        train.get_preset("huge")
    assert set(train.PRESETS) == {"smoke", "quick", "full", "latent-smoke", "latent64"}


def _step_pair(compiled):
    mx.random.seed(42)
    model = UNet(TINY_UNET)
    optimizer = optim.AdamW(learning_rate=1e-3)
    step = train.make_train_step(model, optimizer, make_schedule("cosine", 100), label_dropout=0.5,
                                 null_label=3, compiled=compiled)
    x = mx.random.uniform(-1, 1, (4, 8, 8, 3))
    y = mx.array([0, 1, 2, 0])
    losses = []
    for _ in range(3):
        loss, _ = step(x, y)
        mx.eval(model.state, optimizer.state, loss)
        losses.append(loss.item())
    return losses, dict(tree_flatten(model.parameters()))


def test_compiled_and_uncompiled_steps_agree():
    losses_c, params_c = _step_pair(compiled=True)
    losses_u, params_u = _step_pair(compiled=False)
    np.testing.assert_allclose(losses_c, losses_u, rtol=1e-5)
    assert losses_c[0] != losses_c[1]  # t and noise are fresh draws each step, not baked in
    for name, value in params_u.items():
        np.testing.assert_allclose(np.array(params_c[name]), np.array(value), rtol=1e-4, atol=1e-6)


def test_smoke_training_on_styles_learns(tmp_path):
    config = replace(train.get_preset("smoke"), steps=60)
    trainer = train.train(config, tmp_path / "run", dataset=_styles(256), progress=False)
    losses = np.array([loss for _, loss in trainer.history])
    assert len(losses) == 60 and np.all(np.isfinite(losses))
    assert losses[-15:].mean() < 0.7 * losses[:5].mean()  # ~1.0 (predicting 0) down to ~0.5
    log = (tmp_path / "run" / "train.log").read_text()
    assert "loss" in log and "img/s" in log and '"preset": "smoke"' in log and "done: 60 steps" in log
    key = train.random_key()
    images = trainer.preview(per_class=1)  # one EMA sample per style
    assert images.shape == (8, 16, 16, 3) and images.dtype == np.uint8
    assert train.random_key() == key  # previews leave the training random stream alone


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    config = replace(train.get_preset("smoke"), learning_rate=1e30, warmup_steps=1000, checkpoint_every=1)
    run = tmp_path / "run"
    with pytest.raises(train.NonFiniteLossError) as err:
        train.train(config, run, dataset=_styles(64), progress=False)
    message = str(err.value)
    assert "\n" not in message and "learning rate (1e+30) is likely too high" in message
    step = int(message.split(" at step ")[1].split(":")[0])
    assert step >= 2 and f"step {step - 1}) is intact" in message
    model, _, info = checkpoint.load_model(run)
    assert info.step == step - 1
    assert all(math.isfinite(float(mx.sum(p))) for _, p in tree_flatten(model.parameters()))
    assert "stopped: loss became" in (run / "train.log").read_text()
