"""Latent diffusion: the one `Trainer` and the samplers, run in an autoencoder's latent space.

Rombach et al. 2022 ("High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752) train the denoiser on z = scale_factor * E(x), the latents of a fixed
autoencoder, and decode its samples with D(z / scale_factor). At f = 4 a 64x64x3 image becomes
a 16x16x4 latent: 12x fewer numbers per image for every UNet call. Nothing in `train.py`'s loss,
step or loop, nor in `samplers.py`, knows about it; this module is the glue:

1. `reference(path)` names the autoencoder: its path and the SHA-256 of its weights, stored as
   `TrainConfig.autoencoder`; `load_referenced` refuses one whose weights changed since.
2. `latent_dataset` encodes the data set once: the posterior mean (not a sample: deterministic)
   times the scale factor, of every image and of its mirror image. A flipped latent is not the
   latent of the flipped image, so the mirrors are encoded and the Trainer does not flip latents.
   The result is cached in `<run>/latents/` as a checkpoint-format folder (checksummed safetensors,
   written atomically) whose config.json records the autoencoder's SHA-256 and the images'
   fingerprint; a cache that does not match both, or fails its checksum, is encoded again.
3. Every checkpoint of a latent run holds a copy of its autoencoder (`AUTOENCODER_FILE`, its
   config under "autoencoder" in config.json), so the checkpoint alone samples 64x64 images:
   `load_embedded` reads it back, and `pipeline.sample_model` decodes after the sampler.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from diffusion_utils import autoencoder, checkpoint, data
from diffusion_utils.autoencoder import Autoencoder, AutoencoderConfig
from diffusion_utils.cpu.layers import use_fast_cpu_layers

import mlx.core as mx
import numpy as np

AUTOENCODER_FILE = "autoencoder.safetensors"  # in a latent checkpoint: the decoder's weights (and encoder's)
LATENTS_DIR = "latents"  # in a latent run folder: the encoded data set
LATENTS_FILE = "latents.safetensors"
LATENTS_KIND = "latents"  # config.json's "kind" of the cache


def reference(path: str | os.PathLike) -> dict:
    """{"path", "sha256"}: the autoencoder checkpoint at `path` and the checksum of its weights."""
    directory, stored, _ = autoencoder.read_checkpoint(path)
    sha256 = stored["files"].get(checkpoint.MODEL_FILE)
    if not sha256:
        raise ValueError(f"{directory / checkpoint.CONFIG_FILE}: no {checkpoint.MODEL_FILE} recorded")
    return {"path": str(path), "sha256": sha256}


def load_referenced(ref: dict) -> Autoencoder:
    """The autoencoder `reference` named, in eval mode; ValueError (one line) if its weights changed."""
    directory, stored, _ = autoencoder.read_checkpoint(ref["path"])
    if stored["files"].get(checkpoint.MODEL_FILE) != ref["sha256"]:
        raise ValueError(f"{directory}: the autoencoder's weights changed since this run started (sha256 "
                         f"{ref['sha256'][:12]}...); train with the autoencoder the run was started with")
    return autoencoder.load_autoencoder(directory)


def check_sizes(model: Autoencoder, latent_size: int, latent_channels: int, preset: str) -> None:
    """One-line ValueError unless `model` makes latents (latent_size, latent_size, latent_channels) from
    images of the size it was trained on."""
    f, trained = model.config.downsampling_factor, model.config.image_size
    if trained != latent_size * f or model.config.latent_channels != latent_channels:
        raise ValueError(f"preset {preset} trains on {latent_size}x{latent_size}x{latent_channels} latents "
                         f"of {latent_size * f} px images; the autoencoder makes "
                         f"{trained // f}x{trained // f}x{model.config.latent_channels} latents of {trained} "
                         f"px images: train one with --size {latent_size * f}")


def encode_dataset(model: Autoencoder, dataset: data.Dataset, batch_size: int = 64) -> data.Dataset:
    """uint8 images (N, S, S, 3) -> scaled latents (2N, S/f, S/f, c) float32: scale_factor * posterior
    mean of each image, then of each mirrored image; the labels (2N,) follow."""
    both = np.concatenate([dataset.images, dataset.images[:, :, ::-1]])  # (2N, S, S, 3)
    latents = autoencoder.encode_mean(model, both, batch_size) * model.config.scale_factor
    return data.Dataset(latents.astype(np.float32), np.concatenate([dataset.labels] * 2), dataset.class_names)


def latent_dataset(model: Autoencoder, sha256: str, dataset: data.Dataset, run_dir: Path,
                   write_cache: bool = True) -> data.Dataset:
    """`encode_dataset(model, dataset)`, from `run_dir/latents/` when that cache was made from the same
    autoencoder weights (`sha256`) and the same images; otherwise encoded, and cached there when
    `write_cache` (with several ranks sharing a run folder, only rank 0 writes)."""
    key = {"autoencoder_sha256": sha256, "data_sha256": autoencoder.fingerprint(dataset.images),
           "class_names": list(dataset.class_names)}
    cache = Path(run_dir) / LATENTS_DIR
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    latents = encode_dataset(model, dataset)
    if not write_cache:
        return latents
    arrays = {"latents": mx.array(latents.images), "labels": mx.array(latents.labels.astype(np.int32))}
    meta = {"kind": LATENTS_KIND, "train_config": {}, "schedule": None, "step": 0, **key,
            "num_images": len(latents), "scale_factor": model.config.scale_factor}
    checkpoint.save_checkpoint(cache, {LATENTS_FILE: arrays}, meta)
    return latents


def _read_cache(cache: Path, key: dict) -> data.Dataset | None:
    """The cached latents when `cache` holds them for `key`; None (with a warning if it was corrupt)."""
    if not checkpoint.has_checkpoint(cache):
        return None
    try:
        directory, stored = checkpoint.read_config(cache)
        if stored.get("kind") != LATENTS_KIND or any(stored.get(k) != v for k, v in key.items()):
            return None  # made from other weights or images: encode again
        arrays = checkpoint.load_arrays(directory, stored, LATENTS_FILE)
        latents, labels = np.array(arrays["latents"]), np.array(arrays["labels"]).astype(np.int64)
    except (ValueError, FileNotFoundError, KeyError) as err:
        warnings.warn(f"latent cache unusable ({err}); encoding the data set again", stacklevel=3)
        return None
    return data.Dataset(latents, labels, tuple(key["class_names"]))


def prepare(config, run_dir: Path, dataset: data.Dataset | None = None,
            write_cache: bool = True) -> tuple[data.Dataset, Autoencoder]:
    """(scaled latents of the data set, the autoencoder) for a latent `TrainConfig`: the Trainer's data.

    `dataset`: uint8 images at the autoencoder's size, or None for `data.load_dataset(config.dataset)`;
    `write_cache`: see `latent_dataset`.
    """
    model = load_referenced(config.autoencoder)
    check_sizes(model, config.image_size, config.unet.in_channels, config.preset)
    if dataset is None:
        dataset = data.load_dataset(config.dataset, size=model.config.image_size, seed=config.seed)
    return latent_dataset(model, config.autoencoder["sha256"], dataset, run_dir, write_cache), model


def embedded_parts(model: Autoencoder) -> tuple[dict, dict]:
    """({AUTOENCODER_FILE: weights}, {"autoencoder": config}): what a latent checkpoint adds."""
    weights = checkpoint.flat_arrays(model.parameters())
    return {AUTOENCODER_FILE: weights}, {"autoencoder": model.config.to_dict()}


def load_embedded(directory: Path, stored: dict) -> Autoencoder:
    """The autoencoder a latent checkpoint holds (`embedded_parts`), in eval mode. A missing, corrupt
    or mismatched copy raises a one-line ValueError / FileNotFoundError."""
    try:
        config = AutoencoderConfig.from_dict(stored["autoencoder"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{directory / checkpoint.CONFIG_FILE}: bad autoencoder config ({err})") from None
    model = use_fast_cpu_layers(Autoencoder(config))
    checkpoint.load_weights(model, directory, stored, AUTOENCODER_FILE)
    model.eval()
    return model


def decode_to_images(model: Autoencoder, z: mx.array) -> np.ndarray:
    """Scaled latents (B, h, w, c), as the denoiser makes them -> uint8 images (B, h * f, w * f, 3)."""
    return data.to_uint8(model.decode(z / model.config.scale_factor))
