"""The KL autoencoder of latent diffusion: shapes, the KL term, the scale factor, training,
checkpoints. Tiny models at 16 px, trained eagerly (the compiled step traces for a minute on a
loaded 2-core CPU; `benchmarks/autoencoder_psnr.py` runs it)."""

import json
import math

from diffusion_utils import autoencoder as ae
from diffusion_utils import checkpoint, data
from diffusion_utils.unet import parameter_count

import mlx.core as mx
import numpy as np
import pytest

TINY = dict(image_size=16, crop_size=16, channels=(8, 16, 16), groups=4, attention=False, batch_size=8,
            learning_rate=2e-3, warmup_steps=5)
STEPS = 60


def tiny_config(**overrides) -> ae.AutoencoderConfig:
    return ae.AutoencoderConfig(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny autoencoder trained for STEPS steps on 8 style images; PSNR before and after."""
    images, _ = data.make_styles(8, size=16, seed=3)
    mx.random.seed(0)
    before = ae.psnr(images, ae.reconstruct(ae.Autoencoder(tiny_config()), images))
    out = tmp_path_factory.mktemp("ae") / "run"
    model, history = ae.train_autoencoder(tiny_config(), images, STEPS, out, seed=0, compiled=False,
                                          progress=False)
    return {"out": out, "model": model, "history": history, "images": images, "before": before,
            "after": ae.psnr(images, ae.reconstruct(model, images))}


def test_default_model_maps_64px_images_to_16x16x4_latents_and_back():
    model = ae.Autoencoder()
    x = mx.random.uniform(-1, 1, (2, 64, 64, 3))
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (2, 16, 16, 4)
    z = ae.sample_latent(mean, logvar, mx.random.key(0))
    assert z.shape == (2, 16, 16, 4)
    assert model.decode(z).shape == (2, 64, 64, 3)
    assert model.config.downsampling_factor == 4 and model.config.latent_size == 16
    assert 1_000_000 <= parameter_count(model) <= 3_000_000


@pytest.mark.parametrize("shape", [(2, 64, 64, 1), (64, 64, 3), (1, 62, 64, 3)])
def test_encode_rejects_images_of_the_wrong_shape(shape):
    with pytest.raises(ValueError, match="expects images"):
        ae.Autoencoder(tiny_config()).encode(mx.zeros(shape))


def test_kl_divergence_matches_the_closed_form_computed_in_numpy():
    rng = np.random.default_rng(0)
    mean, logvar = rng.normal(size=(3, 4, 4, 4)), rng.normal(scale=0.5, size=(3, 4, 4, 4))
    expected = np.mean([0.5 * np.sum(m**2 + np.exp(lv) - 1 - lv) for m, lv in zip(mean, logvar, strict=True)])
    got = ae.kl_divergence(mx.array(mean, dtype=mx.float32), mx.array(logvar, dtype=mx.float32)).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert ae.kl_divergence(mx.zeros((2, 4, 4, 4)), mx.zeros((2, 4, 4, 4))).item() == 0.0


def test_sample_latent_draws_from_the_posterior():
    mean, logvar = mx.full((20000, 1, 1, 2), 0.5), mx.full((20000, 1, 1, 2), math.log(0.25))
    z = np.array(ae.sample_latent(mean, logvar, mx.random.key(1)))
    assert z.mean() == pytest.approx(0.5, abs=0.01) and z.std() == pytest.approx(0.5, abs=0.01)


def test_scaled_latents_have_unit_standard_deviation():
    mx.random.seed(0)
    model = ae.Autoencoder(tiny_config())
    images, _ = data.make_styles(16, size=16, seed=1)
    scale = ae.compute_scale_factor(model, images, batch_size=5)  # batches of uneven size on purpose
    assert float(np.std(scale * ae.encode_mean(model, images))) == pytest.approx(1.0, rel=1e-4)


def test_a_tiny_autoencoder_overfits_a_few_images(tiny_run):
    losses = [row[1] for row in tiny_run["history"]]
    assert len(losses) == STEPS and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert tiny_run["after"] > tiny_run["before"] + 4.0, (tiny_run["before"], tiny_run["after"])


def test_the_checkpoint_stores_the_scale_factor_and_reloads_to_identical_outputs(tiny_run):
    stored = json.loads((tiny_run["out"] / "checkpoint" / "config.json").read_text())
    assert stored["kind"] == "autoencoder" and stored["step"] == STEPS
    loaded = ae.load_autoencoder(tiny_run["out"])
    scale = ae.compute_scale_factor(tiny_run["model"], tiny_run["images"])
    assert loaded.config.scale_factor == pytest.approx(scale, rel=1e-6) and scale != 1.0
    x = data.to_model_range(tiny_run["images"])
    for a, b in zip(loaded.encode(x), tiny_run["model"].encode(x), strict=True):
        assert np.array_equal(np.array(a), np.array(b))
    assert np.array_equal(ae.reconstruct(loaded, tiny_run["images"]),
                          ae.reconstruct(tiny_run["model"], tiny_run["images"]))


def test_a_resumed_run_takes_exactly_the_steps_of_an_uninterrupted_one(tmp_path):
    images, _ = data.make_styles(12, size=16, seed=4)
    config = tiny_config(batch_size=4)
    whole, _ = ae.train_autoencoder(config, images, 6, tmp_path / "whole", seed=1, compiled=False,
                                    progress=False)
    ae.train_autoencoder(config, images, 3, tmp_path / "split", seed=1, compiled=False, progress=False)
    resumed, history = ae.train_autoencoder(config, images, 6, tmp_path / "split", seed=1, resume=True,
                                            compiled=False, progress=False)
    assert [row[0] for row in history] == [1, 2, 3, 4, 5, 6]
    for (name, a), (_, b) in zip(checkpoint.flat_arrays(whole.parameters()).items(),
                                 checkpoint.flat_arrays(resumed.parameters()).items(), strict=True):
        assert np.array_equal(np.array(a), np.array(b)), name
    with pytest.raises(ValueError, match="other images"):
        ae.train_autoencoder(config, images[::-1].copy(), 8, tmp_path / "split", seed=1, resume=True,
                             compiled=False, progress=False)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        ae.train_autoencoder(config, images, 8, tmp_path / "split", seed=1, compiled=False, progress=False)


def test_config_round_trips_through_json():
    config = tiny_config(kl_weight=1e-5, scale_factor=0.25)
    again = ae.AutoencoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.channels == (8, 16, 16)


@pytest.mark.parametrize("bad, field", [
    (dict(channels=()), "channels"), (dict(channels=(8, 10)), "groups"), (dict(image_size=18), "image_size"),
    (dict(latent_channels=0), "latent_channels"), (dict(kl_weight=-1.0), "kl_weight"),
    (dict(scale_factor=0.0), "scale_factor"), (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(attention="yes"), "attention"), (dict(batch_size=True), "batch_size"),
    (dict(crop_size=32), "crop_size"), (dict(crop_size=10), "crop_size"),  # > image_size; not a multiple of f
])
def test_bad_configs_fail_with_one_line_naming_the_field(bad, field):
    with pytest.raises(ValueError, match=f"AutoencoderConfig.{field}") as err:
        tiny_config(**bad)
    assert "\n" not in str(err.value)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown key"):
        ae.AutoencoderConfig.from_dict({"chanels": [8, 16]})


def _one_line_error(path, error, match):
    with pytest.raises(error, match=match) as err:
        ae.load_autoencoder(path)
    assert "\n" not in str(err.value)


def test_missing_or_corrupt_checkpoints_fail_with_one_line(tiny_run, tmp_path):
    _one_line_error(tmp_path / "nowhere", FileNotFoundError, "not found")
    broken = tmp_path / "broken"
    (broken / "checkpoint").mkdir(parents=True)
    source = tiny_run["out"] / "checkpoint"
    for name in ("config.json", "model.safetensors"):
        (broken / "checkpoint" / name).write_bytes((source / name).read_bytes())
    weights = broken / "checkpoint" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(raw))
    _one_line_error(broken, ValueError, "checksum mismatch")
    weights.unlink()
    _one_line_error(broken, FileNotFoundError, "missing")
    config_file = broken / "checkpoint" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "kind": None}))
    _one_line_error(broken, ValueError, "not an autoencoder checkpoint")
    config_file.write_text(json.dumps({**config, "train_config": {**config["train_config"], "groups": 5}}))
    _one_line_error(broken, ValueError, "bad autoencoder config")


def test_psnr_in_both_ranges():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[:] = 1  # MSE 1 -> 20 log10(255)
    assert ae.psnr(a, b) == pytest.approx(20 * math.log10(255))
    x = np.zeros((4, 4, 3), np.float32)
    assert ae.psnr(x, x + 0.02) == pytest.approx(20 * math.log10(2 / 0.02), rel=1e-4)  # peak-to-peak 2
    assert ae.psnr(x, x) == math.inf
    with pytest.raises(ValueError, match="uint8 with uint8"):
        ae.psnr(a, a.astype(np.float32))


def test_a_time_budget_stops_the_run_early_and_saves_it(tmp_path):
    images, _ = data.make_styles(8, size=16, seed=5)
    _, history = ae.train_autoencoder(tiny_config(), images, 50, tmp_path, max_seconds=0.0, compiled=False,
                                      progress=False)
    assert len(history) == 1
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["step"] == 1
