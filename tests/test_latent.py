"""Latent diffusion end to end on tiny models: a 16 px autoencoder (4x4x4 latents), the
`latent-smoke` UNet, the one Trainer, checkpoints that hold their autoencoder, and the CLIs as a
user types them. Library tests train eagerly (compiling traces for long on a loaded 2-core CPU)."""

import json
import shutil
import subprocess
import sys
from dataclasses import replace

from diffusion_utils import autoencoder as ae
from diffusion_utils import checkpoint, data, latent, pipeline, train

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from PIL import Image

TINY_AE = ae.AutoencoderConfig(image_size=16, crop_size=16, channels=(8, 16, 16), groups=4, attention=False,
                               batch_size=8, learning_rate=2e-3, warmup_steps=5)
IMAGES = data.Dataset(*data.make_styles(32, size=16, seed=4), data.STYLES)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """A tiny autoencoder run folder (a few eager steps: the plumbing, not the quality, is tested)."""
    out = tmp_path_factory.mktemp("ae") / "ae"
    ae.train_autoencoder(TINY_AE, IMAGES.images, 3, out, compiled=False, progress=False)
    return out


def _config(ae_run, steps: int, **overrides) -> train.TrainConfig:
    return train.get_preset("latent-smoke", steps=steps, autoencoder=latent.reference(ae_run), **overrides)


def _flat(tree) -> dict:
    return {k: np.array(v) for k, v in tree_flatten(tree)}


def test_encode_decode_shapes_and_unit_scale(ae_run):
    model = ae.load_autoencoder(ae_run)
    latents = latent.encode_dataset(model, IMAGES)
    assert latents.images.shape == (64, 4, 4, 4) and latents.images.dtype == np.float32
    assert np.array_equal(latents.labels, np.concatenate([IMAGES.labels] * 2))
    means = ae.encode_mean(model, IMAGES.images)
    np.testing.assert_allclose(latents.images[:32], means * model.config.scale_factor, rtol=1e-6)
    mirrored = ae.encode_mean(model, IMAGES.images[:, :, ::-1])  # encoded, not flipped latents
    np.testing.assert_allclose(latents.images[32:], mirrored * model.config.scale_factor, rtol=1e-6)
    # the scale factor was measured on these training images: their scaled latents have unit std
    assert latents.images[:32].std(dtype=np.float64) == pytest.approx(1.0, rel=1e-4)
    images = latent.decode_to_images(model, mx.array(latents.images[:3]))
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, data.to_uint8(model.decode(mx.array(means[:3]))))


def test_a_latent_training_step_learns_on_a_toy_set(ae_run, tmp_path):
    config = _config(ae_run, 60, batch_size=16, label_dropout=0.0, warmup_steps=1)
    toy = data.Dataset(IMAGES.images[:4].repeat(4, axis=0), np.zeros(16, np.int64), ("toy",))
    trainer = train.train(config, tmp_path / "toy", dataset=toy, compiled=False, progress=False)
    losses = [loss for _, loss in trainer.history]
    assert trainer.dataset.images.shape == (32, 4, 4, 4)  # the Trainer saw scaled latents
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), losses


def test_latent_checkpoint_saves_loads_and_resumes_bit_exactly(ae_run, tmp_path, monkeypatch):
    quiet = {"dataset": IMAGES, "compiled": False, "progress": False}
    whole = train.train(_config(ae_run, 6), tmp_path / "whole", **quiet)
    train.train(_config(ae_run, 3), tmp_path / "split", **quiet)
    monkeypatch.setattr(latent, "encode_dataset", lambda *a: pytest.fail("the cached latents were not used"))
    resumed = train.train(_config(ae_run, 6), tmp_path / "split", resume=True, **quiet)
    assert resumed.history == whole.history
    for a, b in ((whole.model.parameters(), resumed.model.parameters()), (whole.ema, resumed.ema),
                 (whole.optimizer.state, resumed.optimizer.state)):
        fa, fb = _flat(a), _flat(b)
        assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)

    model, schedule, info = checkpoint.load_model(tmp_path / "split")
    assert info.latent and info.image_size == 16 and info.sample_shape == (4, 4, 4)
    assert info == replace(resumed.info, path=info.path)
    assert all(np.array_equal(v, _flat(ae.load_autoencoder(ae_run).parameters())[k])
               for k, v in _flat(info.autoencoder.parameters()).items())  # the copy is the autoencoder
    images, labels = pipeline.sample_model(model, schedule, info, n=2, steps=2)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8 and list(labels) == [0, 1]


@pytest.mark.parametrize("damage, error, message", [
    ("delete", FileNotFoundError, "autoencoder.safetensors: missing"),
    ("corrupt", ValueError, "autoencoder.safetensors: checksum mismatch"),
    ("unlisted", ValueError, "autoencoder.safetensors: this checkpoint was saved without it"),
])
def test_missing_or_corrupt_autoencoder_is_a_one_line_error(ae_run, tmp_path, damage, error, message):
    train.train(_config(ae_run, 1), tmp_path / "run", dataset=IMAGES, compiled=False, progress=False)
    directory = tmp_path / "run" / "checkpoint"
    file, config_file = directory / latent.AUTOENCODER_FILE, directory / checkpoint.CONFIG_FILE
    if damage == "delete":
        file.unlink()
    elif damage == "corrupt":
        raw = bytearray(file.read_bytes())
        raw[-5] ^= 0xFF
        file.write_bytes(bytes(raw))
    else:
        stored = json.loads(config_file.read_text())
        del stored["files"][latent.AUTOENCODER_FILE]
        config_file.write_text(json.dumps(stored))
    with pytest.raises(error) as caught:
        checkpoint.load_model(tmp_path / "run")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_autoencoder_changed_since_the_run_started_is_refused(ae_run, tmp_path):
    config = _config(ae_run, 1)
    config.autoencoder = {**config.autoencoder, "sha256": "0" * 64}
    with pytest.raises(ValueError, match="weights changed since this run started"):
        train.Trainer(config, tmp_path / "run", dataset=IMAGES, compiled=False)


# --------------------------------------------------------------------------- the CLIs as typed
def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "diffusion_utils", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_cli_train_autoencoder_train_latent_and_sample(tmp_path):
    for i, (image, label) in enumerate(zip(IMAGES.images, IMAGES.labels, strict=True)):
        folder = tmp_path / "art" / data.STYLES[label % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    made = _cli("train-autoencoder", "--data", "art", "--size", "16", "--steps", "2", "--out", "ae",
                cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "step 2:" in made.stdout and "checkpoint in ae/checkpoint" in made.stdout
    trained = _cli("train", "--preset", "latent-smoke", "--autoencoder", "ae", "--dataset", "art",
                   "--out", "ldm", "--steps", "1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    resumed = _cli("train", "--preset", "latent-smoke", "--autoencoder", "ae", "--dataset", "art",
                   "--out", "ldm", "--steps", "2", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "step 2: checkpoint in ldm/checkpoint" in resumed.stdout
    shutil.rmtree(tmp_path / "ae")  # the latent checkpoint samples on its own
    sampled = _cli("sample", "--checkpoint", "ldm", "--n", "2", "--steps", "2", "--out", "g.png",
                   "--save-npz", "s.npz", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    with np.load(tmp_path / "s.npz") as saved:
        assert saved["images"].shape == (2, 16, 16, 3) and saved["images"].dtype == np.uint8
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.size[0] > 16


def test_cli_bad_latent_input_is_one_line_error(ae_run, tmp_path):
    cases = [
        (("train-autoencoder", "--size", "18", "--out", "a"), "error: --size must be a multiple of 4"),
        (("train-autoencoder", "--data", "no/such", "--size", "16", "--out", "a"),
         "error: dataset 'no/such' not found"),
        (("train", "--preset", "latent-smoke", "--out", "r", "--steps", "1"),
         "error: preset latent-smoke trains on 4-channel latents: pass the autoencoder they come from"),
        (("train", "--preset", "latent-smoke", "--autoencoder", "nowhere", "--out", "r"),
         "error: checkpoint not found"),
        (("train", "--preset", "latent64", "--autoencoder", str(ae_run), "--out", "r"),
         "train one with --size 64"),
    ]
    for args, message in cases:
        result = _cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
