"""A small KL-regularised autoencoder: the first stage of latent diffusion.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", arXiv:2112.10752) trains the denoiser on the latents of an autoencoder instead of on
pixels. This is their "AutoencoderKL" at our scale: a convolutional encoder maps a
(B, 64, 64, 3) image in [-1, 1] to the mean and log-variance of a diagonal Gaussian over a
(B, 16, 16, 4) latent (downsampling factor f = 4), a decoder maps a latent back to pixels, and
training minimises a reconstruction loss plus a *small* KL divergence to N(0, I) (the VAE of
Kingma & Welling 2013, "Auto-Encoding Variational Bayes", arXiv:1312.6114, with the prior's
weight turned almost off): the KL term only keeps the latent space from drifting to huge or
degenerate scales; detail is kept, not traded for a tidy prior.

Losses, as in LDM's `LPIPSWithDiscriminator` minus its perceptual and GAN terms:
    rec = mean |x - x_hat|                        L1 per pixel element. L1 rather than L2: LDM
                                                  uses it, and Zhao et al. 2017 ("Loss Functions
                                                  for Image Restoration with Neural Networks",
                                                  arXiv:1511.08861) found L1-trained networks
                                                  reach higher PSNR than L2-trained ones and keep
                                                  edges sharper (our styles are made of edges).
    kl  = `kl_divergence(mean, logvar)`          per-image sum over latent elements, batch mean
    loss = rec + kl_weight * kl / (H * W * 3)    LDM weighs the per-image sums of both terms with
                                                  kl_weight = 1e-6; dividing both by the pixel
                                                  count keeps that ratio with a per-pixel rec.

The latent scale factor (`compute_scale_factor`) is 1 / std of the training latents, so that the
scaled latents a diffusion model sees have unit variance, like the N(0, I) noise it adds
(Stable Diffusion's 0.18215 is this number for its VAE). It is stored in `AutoencoderConfig`.

Images and latents are channels-last, `(B, H, W, C)`. Layers are plain `mlx.nn` (Conv2d,
GroupNorm with PyTorch's grouping, SiLU); down- and upsampling are a 2x2 average pool / nearest
repeat followed by a 3x3 conv, because stride-2 and transposed convs take slow paths in MLX on
CPU. `train_autoencoder` and `load_autoencoder` swap the layers for their faster CPU versions
(`diffusion_utils.cpu.layers.use_fast_cpu_layers`, same parameters; nothing on a GPU).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from diffusion_utils import checkpoint, data
from diffusion_utils.checks import Row, check_fields, int_at_least, is_number, known_keys
from diffusion_utils.cpu.layers import use_fast_cpu_layers
from diffusion_utils.train import make_optimizer, random_key, set_random_key
from diffusion_utils.unet import parameter_count

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_unflatten
from tqdm.auto import tqdm

KIND = "autoencoder"  # config.json's "kind": tells an autoencoder checkpoint from a denoiser's
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp of the posterior log-variance, for numerical safety


_AUTOENCODER_FIELD_CHECKS: tuple[Row, ...] = (
    *((name, int_at_least(1), "an integer >= 1") for name in ("image_size", "in_channels", "num_res_blocks",
                                                              "latent_channels", "groups", "batch_size",
                                                              "crop_size")),
    ("warmup_steps", int_at_least(0), "an integer >= 0"),
    ("channels", lambda channels: bool(channels) and all(map(int_at_least(1), channels)),
     "a non-empty list of positive integers"),
    ("attention", lambda flag: isinstance(flag, bool), "true or false"),
    ("kl_weight", lambda x: is_number(x) and x >= 0, "a number >= 0"),
    ("scale_factor", lambda x: is_number(x) and x > 0, "a number > 0"),
    ("learning_rate", lambda x: is_number(x) and x > 0, "a number > 0"),
    ("weight_decay", lambda x: is_number(x) and x >= 0, "a number >= 0"),
    ("grad_clip", lambda x: is_number(x) and x > 0, "a number > 0"),
)


@dataclass
class AutoencoderConfig:
    """Everything needed to rebuild and train an `Autoencoder` (stored as JSON in checkpoints)."""

    image_size: int = 64  # training resolution; any multiple of the downsampling factor also runs
    in_channels: int = 3  # RGB
    channels: tuple[int, ...] = (32, 64, 128)  # one level per entry; len - 1 downsamplings: f = 4
    num_res_blocks: int = 1  # residual blocks per level, in encoder and decoder
    latent_channels: int = 4  # as LDM's f=4 model and Stable Diffusion's VAE
    groups: int = 8  # GroupNorm groups; must divide every channel count
    attention: bool = False  # self-attention mid encoder and decoder (LDM's f=4 model has none)
    kl_weight: float = 1e-6  # LDM's weight on the per-image KL sum (see the module docstring)
    scale_factor: float = 1.0  # 1 / std of the training latents; set by `train_autoencoder`
    batch_size: int = 16
    crop_size: int = 32  # training windows: random crops this side (image_size: whole images)
    learning_rate: float = 1e-3  # AdamW via train.make_optimizer, after a linear warm-up
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm

    def __post_init__(self):
        self.channels = tuple(self.channels)
        self.validate()

    @property
    def downsampling_factor(self) -> int:
        """f: image side / latent side."""
        return 2 ** (len(self.channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsampling_factor

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad field: the table, then across fields."""
        check_fields(self, _AUTOENCODER_FIELD_CHECKS)
        f = self.downsampling_factor
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"AutoencoderConfig.groups must be a divisor of every entry of channels "
                             f"{list(self.channels)}, got {self.groups!r}")
        if self.image_size % f:
            raise ValueError(f"AutoencoderConfig.image_size must be a multiple of the downsampling factor "
                             f"{f}, got {self.image_size!r}")
        if self.crop_size > self.image_size or self.crop_size % f:
            raise ValueError(f"AutoencoderConfig.crop_size must be at most image_size and a multiple of {f}, "
                             f"got {self.crop_size!r}")

    def to_dict(self) -> dict:
        """A JSON-safe dict (tuples become lists)."""
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        """Inverse of `to_dict`; unknown keys or bad values raise a one-line ValueError."""
        known_keys(cls, d)
        if "channels" in d and not isinstance(d["channels"], (list, tuple)):
            raise ValueError(f"AutoencoderConfig.channels must be a list, got {d['channels']!r}")
        return cls(**d)


# --------------------------------------------------------------------------- layers
def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, pytorch_compatible=True)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3, added to the input.

    The block of LDM's autoencoder (no time embedding); channels stay the same, the
    up/down-sampling convs change them.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(groups, channels), _conv3x3(channels, channels)
        self.norm2, self.conv2 = _norm(groups, channels), _conv3x3(channels, channels)
        self.act = nn.SiLU()

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(self.act(self.norm1(x)))  # (B, H, W, C)
        return x + self.conv2(self.act(self.norm2(h)))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H * W positions, with a residual connection (LDM's)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def __call__(self, x: mx.array) -> mx.array:
        B, H, W, C = x.shape
        qkv = self.qkv(self.norm(x).reshape(B, 1, H * W, C))  # (B, 1, L, 3C)
        q, k, v = mx.split(qkv, 3, axis=-1)  # (B, 1, L, C) each
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=C**-0.5)  # (B, 1, L, C)
        return x + self.proj(out).reshape(B, H, W, C)


def _downsample(x: mx.array) -> mx.array:
    """2x2 average pool: (B, H, W, C) -> (B, H/2, W/2, C)."""
    B, H, W, C = x.shape
    return x.reshape(B, H // 2, 2, W // 2, 2, C).mean(axis=(2, 4))


def _upsample(x: mx.array) -> mx.array:
    """Nearest-neighbour repeat: (B, H, W, C) -> (B, 2H, 2W, C)."""
    B, H, W, C = x.shape
    x = mx.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C))
    return x.reshape(B, 2 * H, 2 * W, C)


class Middle(nn.Module):
    """ResBlock [-> attention -> ResBlock] at the lowest resolution (16x16 for 64 px images)."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.blocks = [ResBlock(channels, groups)]
        if attention:
            self.blocks += [AttentionBlock(channels, groups), ResBlock(channels, groups)]

    def __call__(self, h: mx.array) -> mx.array:
        for block in self.blocks:
            h = block(h)
        return h


class Encoder(nn.Module):
    """(B, H, W, 3) -> (B, H/f, W/f, 2 * latent_channels): mean and log-variance, concatenated.

    conv_in, then per level: ResBlocks, and (except at the last level) 2x2 average pool +
    3x3 conv into the next level's channels; the middle; GroupNorm, SiLU, conv_out.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        ch, g = config.channels, config.groups
        self.conv_in = _conv3x3(config.in_channels, ch[0])
        self.levels = [[ResBlock(c, g) for _ in range(config.num_res_blocks)] for c in ch]
        self.downs = [_conv3x3(a, b) for a, b in zip(ch[:-1], ch[1:], strict=True)]
        self.mid = Middle(ch[-1], g, config.attention)
        self.norm_out, self.act = _norm(g, ch[-1]), nn.SiLU()
        self.conv_out = _conv3x3(ch[-1], 2 * config.latent_channels)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv_in(x)  # (B, H, W, C_0)
        for i, blocks in enumerate(self.levels):
            for block in blocks:
                h = block(h)
            if i < len(self.downs):
                h = self.downs[i](_downsample(h))  # (B, H / 2**(i+1), W / 2**(i+1), C_{i+1})
        return self.conv_out(self.act(self.norm_out(self.mid(h))))  # (B, H/f, W/f, 2 * latent)


class Decoder(nn.Module):
    """(B, h, w, latent_channels) -> (B, h * f, w * f, 3): the encoder mirrored.

    conv_in, the middle, then per level (lowest first): ResBlocks, and (except at the top)
    nearest repeat + 3x3 conv into the next level's channels; GroupNorm, SiLU, conv_out.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        ch, g = config.channels[::-1], config.groups
        self.conv_in = _conv3x3(config.latent_channels, ch[0])
        self.mid = Middle(ch[0], g, config.attention)
        self.levels = [[ResBlock(c, g) for _ in range(config.num_res_blocks)] for c in ch]
        self.ups = [_conv3x3(a, b) for a, b in zip(ch[:-1], ch[1:], strict=True)]
        self.norm_out, self.act = _norm(g, ch[-1]), nn.SiLU()
        self.conv_out = _conv3x3(ch[-1], config.in_channels)

    def __call__(self, z: mx.array) -> mx.array:
        h = self.mid(self.conv_in(z))  # (B, h, w, C_last)
        for i, blocks in enumerate(self.levels):
            for block in blocks:
                h = block(h)
            if i < len(self.ups):
                h = self.ups[i](_upsample(h))  # doubles H and W
        return self.conv_out(self.act(self.norm_out(h)))  # (B, H, W, 3)


class Autoencoder(nn.Module):
    """The KL autoencoder: `encode(x) -> (mean, logvar)`, `sample_latent`, `decode(z) -> x_hat`."""

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = config if config is not None else AutoencoderConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def _check_images(self, x: mx.array) -> None:
        f, c = self.config.downsampling_factor, self.config.in_channels
        if x.ndim != 4 or x.shape[-1] != c or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"Autoencoder.encode expects images (B, H, W, {c}) with H and W multiples "
                             f"of {f}, got shape {tuple(x.shape)}")

    def encode(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Images (B, H, W, 3) in [-1, 1] -> mean, logvar: (B, H/f, W/f, latent_channels) each."""
        self._check_images(x)
        mean, logvar = mx.split(self.encoder(x), 2, axis=-1)
        return mean, mx.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: mx.array) -> mx.array:
        """Latents (B, h, w, latent_channels), unscaled -> images (B, h * f, w * f, 3), ~[-1, 1]."""
        if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(f"Autoencoder.decode expects latents (B, h, w, {self.config.latent_channels}),"
                             f" got shape {tuple(z.shape)}")
        return self.decoder(z)

    def __call__(self, x: mx.array, key: mx.array | None = None) -> tuple[mx.array, mx.array, mx.array]:
        """Reconstruct through a posterior sample: (x_hat, mean, logvar)."""
        mean, logvar = self.encode(x)
        return self.decode(sample_latent(mean, logvar, key)), mean, logvar


def sample_latent(mean: mx.array, logvar: mx.array, key: mx.array | None = None) -> mx.array:
    """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): the reparameterisation trick (Kingma &
    Welling 2013, sec. 2.4), so gradients flow through the sample. Shapes as `mean`."""
    return mean + mx.exp(0.5 * logvar) * mx.random.normal(mean.shape, key=key)


def kl_divergence(mean: mx.array, logvar: mx.array) -> mx.array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form (Kingma & Welling 2013, appendix B).

    0.5 * sum(mean^2 + exp(logvar) - 1 - logvar) over each image's latent elements, then the
    mean over the batch (as LDM): a scalar, 0 exactly when mean = 0 and logvar = 0.
    mean, logvar: (B, h, w, c).
    """
    per_element = mx.square(mean) + mx.exp(logvar) - 1.0 - logvar  # (B, h, w, c)
    return 0.5 * mx.mean(mx.sum(per_element.reshape(per_element.shape[0], -1), axis=1))


def loss_fn(model: Autoencoder, x: mx.array) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """(total, (rec, kl)): rec = mean |x - x_hat|, total = rec + kl_weight * kl / pixel elements.

    x: (B, H, W, 3) in [-1, 1]. The posterior sample draws from MLX's global random state.
    """
    x_hat, mean, logvar = model(x)
    rec = mx.mean(mx.abs(x - x_hat))
    kl = kl_divergence(mean, logvar)
    return rec + model.config.kl_weight * kl / math.prod(x.shape[1:]), (rec, kl)


def make_train_step(model: Autoencoder, optimizer: optim.Optimizer, compiled: bool = True):
    """`step(x) -> (loss, rec, kl)`: one optimiser step on a batch (B, H, W, 3) in [-1, 1].

    Loss and gradients, global-norm clipping, AdamW update. Compiled as in mlx-examples, with
    model, optimizer and random state (the posterior sample's noise) as implicit inputs and
    outputs; the caller runs `mx.eval` on them after it.
    """
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    if not optimizer.state:
        optimizer.init(model.trainable_parameters())  # so the compiled state holds every array

    def step(x):
        (loss, (rec, kl)), grads = loss_and_grad(model, x)
        grads, _ = optim.clip_grad_norm(grads, model.config.grad_clip)
        optimizer.update(model, grads)
        return loss, rec, kl

    if not compiled:
        return step
    state = [model.state, optimizer.state, mx.random.state]
    return partial(mx.compile, inputs=state, outputs=state)(step)


# --------------------------------------------------------------------------- using a trained model
def _batches(images: np.ndarray, batch_size: int):
    """uint8 (N, H, W, 3) -> successive float32 mx batches in [-1, 1]."""
    for start in range(0, len(images), batch_size):
        yield data.to_model_range(images[start:start + batch_size])


def encode_mean(model: Autoencoder, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> the posterior means (N, H/f, W/f, c), float32, unscaled."""
    parts = []
    for x in _batches(images, batch_size):
        mean, _ = model.encode(x)
        parts.append(np.array(mean))
    return np.concatenate(parts)


def reconstruct(model: Autoencoder, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> uint8 reconstructions decoded from the posterior means."""
    parts = []
    for x in _batches(images, batch_size):
        mean, _ = model.encode(x)
        parts.append(data.to_uint8(model.decode(mean)))
    return np.concatenate(parts)


def compute_scale_factor(model: Autoencoder, images: np.ndarray, batch_size: int = 64) -> float:
    """1 / std of the posterior means of `images` (uint8 (N, H, W, 3)), over all elements.

    The diffusion model then works on `scale_factor * z`, which has unit standard deviation
    (Rombach et al. 2022 introduced it for their KL models). The means, not samples: with LDM's tiny
    KL weight the posterior variance is small, and means make the number deterministic.
    """
    latents = encode_mean(model, images, batch_size).astype(np.float64)
    std = float(latents.std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the latents' standard deviation is {std}: cannot scale them")
    return 1.0 / std


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB, per image then averaged over images.

    a, b: images of the same shape (N, H, W, C) or (H, W, C), either both uint8 (peak 255) or
    both float in [-1, 1] (peak-to-peak 2). 10 * log10(peak^2 / MSE); identical images give inf.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
    if (a.dtype == np.uint8) != (b.dtype == np.uint8):
        raise ValueError(f"psnr: compare uint8 with uint8 or floats with floats, got {a.dtype} and {b.dtype}")
    peak = 255.0 if a.dtype == np.uint8 else 2.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 3:
        a, b = a[None], b[None]
    mse = np.mean(np.square(a - b), axis=tuple(range(1, a.ndim)))  # (N,)
    with np.errstate(divide="ignore"):
        return float(np.mean(10.0 * np.log10(peak**2 / mse)))


# --------------------------------------------------------------------------- training and checkpoints
def fingerprint(images: np.ndarray) -> str:
    """SHA-256 of the training images' bytes and shape: a resumed run must see the same data."""
    digest = hashlib.sha256(repr(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def _check_images(config: AutoencoderConfig, images) -> np.ndarray:
    images = np.asarray(images)
    want = (config.image_size, config.image_size, config.in_channels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
        raise ValueError(f"training images must be uint8 (N, {', '.join(map(str, want))}), "
                         f"got {images.dtype} {images.shape}")
    if len(images) < config.batch_size:
        raise ValueError(f"need at least batch_size={config.batch_size} images, got {len(images)}")
    return images


SCALE_IMAGES = 512  # images the scale factor is measured on at each checkpoint (the first ones)


def _save(out_dir: Path, model: Autoencoder, optimizer, batches: data.BatchIterator, step: int,
          seed: int, history: list, images_sha256: str) -> Path:
    """Checkpoint `out_dir/checkpoint/` atomically via `checkpoint.save_checkpoint`.

    config.json's `train_config` is the `AutoencoderConfig`; `schedule` (None) and `class_names`
    ([]) are there because every checkpoint config has them: this model has neither.
    """
    model.config.scale_factor = compute_scale_factor(model, batches.images[:SCALE_IMAGES])
    meta = {
        "kind": KIND, "step": step, "seed": seed, "train_config": model.config.to_dict(),
        "schedule": None, "class_names": [], "num_images": len(batches.images),
        "data_sha256": images_sha256, "data_iterator": batches.state_dict(), "rng_state": random_key(),
        "loss_history": history,
    }
    arrays = {checkpoint.MODEL_FILE: checkpoint.flat_arrays(model.parameters()),
              checkpoint.OPTIMIZER_FILE: checkpoint.flat_arrays(optimizer.state)}
    return checkpoint.save_checkpoint(out_dir / checkpoint.CHECKPOINT_DIR, arrays, meta)


def read_checkpoint(path) -> tuple[Path, dict, AutoencoderConfig]:
    """(checkpoint directory, its config.json, the AutoencoderConfig) with one-line errors."""
    directory, stored = checkpoint.read_config(path)
    file = directory / checkpoint.CONFIG_FILE
    if stored.get("kind") != KIND:
        raise ValueError(f"{file}: not an autoencoder checkpoint (kind {stored.get('kind')!r})")
    try:
        return directory, stored, AutoencoderConfig.from_dict(stored["train_config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{file}: bad autoencoder config ({err})") from None


def load_autoencoder(path) -> Autoencoder:
    """The trained autoencoder in a checkpoint directory or run folder, in eval mode.

    Missing, corrupt or mismatched files raise FileNotFoundError / ValueError with one line.
    """
    directory, stored, config = read_checkpoint(path)
    model = use_fast_cpu_layers(Autoencoder(config))
    checkpoint.load_weights(model, directory, stored, checkpoint.MODEL_FILE)
    model.eval()
    return model


def _restore(out_dir: Path, config: AutoencoderConfig, seed: int, images_sha256: str, model, optimizer,
             batches: data.BatchIterator) -> tuple[int, list]:
    """Load weights, optimizer moments, batch position and random key; returns (step, history)."""
    directory, stored, stored_config = read_checkpoint(out_dir)
    file = directory / checkpoint.CONFIG_FILE
    asked = replace(config, scale_factor=stored_config.scale_factor)
    if asked != stored_config or stored.get("seed") != seed:
        raise ValueError(f"{out_dir} holds an autoencoder run with another config or seed "
                         f"({stored_config}, seed {stored.get('seed')}); resume with the same ones")
    if stored.get("data_sha256") != images_sha256:
        raise ValueError(f"{file}: the run was trained on other images ({stored.get('num_images')} of them)")
    checkpoint.load_weights(model, directory, stored, checkpoint.MODEL_FILE)
    moments = checkpoint.load_arrays(directory, stored, checkpoint.OPTIMIZER_FILE)
    checkpoint.check_arrays(directory / checkpoint.OPTIMIZER_FILE, moments,
                            checkpoint.flat_arrays(optimizer.state))
    optimizer.state = tree_unflatten(list(moments.items()))
    optimizer.init(model.trainable_parameters())  # marks it initialised; keeps the moments
    try:
        batches.load_state_dict(stored["data_iterator"])
        set_random_key(stored["rng_state"])
        return int(stored["step"]), [list(row) for row in stored["loss_history"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{file}: bad training state ({err})") from None


def _check_run(out_dir: Path, steps, resume: bool) -> None:
    """One-line errors for a bad step count or a run folder that does not fit `resume`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not resume and checkpoint.has_checkpoint(out_dir):
        raise ValueError(f"{out_dir} already holds a checkpoint; resume it or choose another folder")
    if resume and not checkpoint.has_checkpoint(out_dir):
        raise FileNotFoundError(f"no checkpoint to resume in {out_dir}; start a new run there instead")


def _run_steps(model: Autoencoder, optimizer, train_step, batches: data.BatchIterator, step: int,
               steps: int, history: list, save: Callable[[int], object], checkpoint_every: int,
               progress: bool, max_seconds: float | None) -> None:
    """Train from `step` to `steps`, appending [step, loss, rec, kl] to `history`; `save(step)` every
    `checkpoint_every` steps (0: never), at the end, and when `max_seconds` of wall time ran out."""
    state = [model.state, optimizer.state, mx.random.state]
    deadline = math.inf if max_seconds is None else time.perf_counter() + max_seconds
    bar = tqdm(total=steps, initial=step, desc=f"autoencoder {parameter_count(model) / 1e6:.2f}M",
               unit="step", disable=not progress, dynamic_ncols=True)
    with bar:
        while step < steps:
            x, _ = next(batches)  # (B, S, S, 3) in [-1, 1], randomly flipped
            loss, rec, kl = train_step(x)
            mx.eval(state, loss, rec, kl)
            step += 1
            history.append([step, loss.item(), rec.item(), kl.item()])
            if not math.isfinite(history[-1][1]):
                raise FloatingPointError(f"autoencoder loss became {history[-1][1]} at step {step}; "
                                         "lower the learning rate")
            bar.update()
            bar.set_postfix(rec=f"{history[-1][2]:.4f}", kl=f"{history[-1][3]:.0f}")
            out_of_time = time.perf_counter() > deadline
            if step == steps or out_of_time or (checkpoint_every and step % checkpoint_every == 0):
                save(step)
            if out_of_time:
                break


def train_autoencoder(config: AutoencoderConfig, images: np.ndarray, steps: int, out_dir, seed: int = 0,
                      resume: bool = False, checkpoint_every: int = 0, progress: bool = True,
                      compiled: bool = True, max_seconds: float | None = None,
                      ) -> tuple[Autoencoder, list[list[float]]]:
    """Train an autoencoder on uint8 `images` (N, S, S, 3) until `steps` steps in total.

    Saves `out_dir/checkpoint/` (weights, AdamW moments, config with the scale factor, batch
    position, random key, history) every `checkpoint_every` steps (0: only at the end) and at
    the end. resume=True continues the run in `out_dir` exactly (same config, seed and images
    required): the resumed run takes the same steps as an uninterrupted one. `max_seconds` stops
    (and saves) earlier once that much wall time has passed: a run for a time budget.
    Returns (model in eval mode, history: [step, loss, rec, kl] per step).
    """
    out_dir = Path(out_dir)
    images = _check_images(config, images)
    _check_run(out_dir, steps, resume)
    images_sha256 = fingerprint(images)
    mx.random.seed(seed)
    model = use_fast_cpu_layers(Autoencoder(replace(config)))
    optimizer = make_optimizer(config)  # reads learning_rate, warmup_steps and weight_decay
    optimizer.init(model.trainable_parameters())
    batches = data.BatchIterator(images, np.zeros(len(images), np.int64), config.batch_size, seed=seed,
                                 crop=config.crop_size)
    step, history = 0, []
    if resume:
        step, history = _restore(out_dir, config, seed, images_sha256, model, optimizer, batches)
    if steps < step:
        raise ValueError(f"the run is already at step {step}, past the requested {steps} steps")

    def save(at_step: int) -> Path:
        return _save(out_dir, model, optimizer, batches, at_step, seed, history, images_sha256)

    _run_steps(model, optimizer, make_train_step(model, optimizer, compiled), batches, step, steps, history,
               save, checkpoint_every, progress, max_seconds)
    model.eval()
    return model, history
