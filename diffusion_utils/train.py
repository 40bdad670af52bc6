"""Training a diffusion denoiser: the loss, one compiled train step, EMA, and the trainer loop.

References, one idea each:
    Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239): predict the
        noise, sample t uniformly, plain MSE ("L_simple", alg. 1); constant lr after a warm-up; EMA.
    Salimans & Ho 2022, "Progressive Distillation" (arXiv:2202.00512, sec. 4): v-prediction.
    Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting" (arXiv:2303.09556).
    Ho & Salimans 2022, "Classifier-Free Diffusion Guidance" (arXiv:2207.12598): label dropout.
    Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization": AdamW.

The step follows mlx-examples: a free `loss_fn`, `nn.value_and_grad`, and
`partial(mx.compile, inputs=state, outputs=state)` with
`state = [model.state, optimizer.state, mx.random.state]`; t, the noise and the label dropout
are drawn inside the step, which is why the random state is part of the compiled state.
`Trainer` runs the loop (progress bar, loss history, `train.log`, previews, NaN guard) and saves
atomic, exactly resumable checkpoints through `checkpoint.py`; `PRESETS` holds the recipes.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from diffusion_utils import checkpoint, data, distributed, files, flops
from diffusion_utils.checks import Row, check_fields, int_at_least, is_number, known_keys
from diffusion_utils.cpu import streams
from diffusion_utils.cpu.layers import use_fast_cpu_layers, use_fast_cpu_sampling
from diffusion_utils.schedules import PREDICTIONS, SCHEDULE_KINDS, NoiseSchedule, make_schedule
from diffusion_utils.unet import UNet, UNetConfig, parameter_count

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map, tree_unflatten
from tqdm.auto import tqdm

WEIGHTINGS = ("none", "min_snr")
MIN_SNR_GAMMA = 5.0  # Hang et al. 2023 use gamma = 5 for every prediction target


# TrainConfig's fields, one row each: (name, test, what it must be)
_TRAIN_FIELD_CHECKS: tuple[Row, ...] = (
    *((name, int_at_least(1), "an integer >= 1")
      for name in ("image_size", "num_timesteps", "batch_size", "steps", "log_every")),
    *((name, int_at_least(0), "an integer >= 0") for name in ("warmup_steps", "checkpoint_every", "seed")),
    ("preview_every", int_at_least(-1), "an integer >= -1"),
    ("schedule", lambda kind: kind in SCHEDULE_KINDS, f"one of {SCHEDULE_KINDS}"),
    ("prediction", lambda kind: kind in PREDICTIONS, f"one of {PREDICTIONS}"),
    ("loss_weighting", lambda kind: kind in WEIGHTINGS, f"one of {WEIGHTINGS}"),
    ("learning_rate", lambda x: is_number(x) and x > 0, "a number > 0"),
    ("weight_decay", lambda x: is_number(x) and x >= 0, "a number >= 0"),
    ("grad_clip", lambda x: is_number(x) and x > 0, "a number > 0"),
    ("checkpoint_minutes", lambda x: is_number(x) and x >= 0, "a number >= 0"),
    ("ema_decay", lambda x: is_number(x) and 0 <= x < 1, "a number in [0, 1)"),
    ("label_dropout", lambda x: is_number(x) and 0 <= x < 1, "a number in [0, 1)"),
    ("dataset", lambda name: isinstance(name, str) and bool(name), "a data set name or folder"),
    ("autoencoder", lambda ref: ref is None or (isinstance(ref, dict) and set(ref) == {"path", "sha256"}
                                                and all(isinstance(v, str) and v for v in ref.values())),
     "None or {'path': ..., 'sha256': ...} (latent.reference)"),
)


@dataclass
class TrainConfig:
    """One training run, complete enough to repeat it (stored in every checkpoint's config.json)."""

    preset: str = "custom"
    dataset: str = "styles"  # "styles", "paintings", "styles+paintings" or an image folder (see data.py)
    image_size: int = 32  # the side the UNet works at: pixels, or latents for a latent run
    unet: UNetConfig = field(default_factory=UNetConfig)  # num_classes is set from the data set
    schedule: str = "cosine"  # Nichol & Dhariwal 2021: better than linear at 32x32
    num_timesteps: int = 1000  # T
    prediction: str = "eps"  # "eps" (Ho et al. 2020) or "v" (Salimans & Ho 2022)
    loss_weighting: str = "none"  # "none" (L_simple) or "min_snr" (Hang et al. 2023, gamma=5)
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100  # linear warm-up from 0, then constant
    weight_decay: float = 0.0  # AdamW's decoupled decay; 0 (plain Adam), as in Ho et al. 2020
    grad_clip: float = 1.0  # max global gradient norm
    ema_decay: float = 0.999  # EMA horizon ~1/(1-decay) steps
    label_dropout: float = 0.1  # P(label -> null class), for classifier-free guidance
    steps: int = 1000  # total optimiser steps
    log_every: int = 50  # loss line in train.log
    checkpoint_every: int = 500  # 0: only at the end
    checkpoint_minutes: float = 10.0  # also a checkpoint once this much time passed since the last; 0: off
    preview_every: int = 0  # sample grid PNG every N steps; 0: only at the end; -1: never
    seed: int = 0
    # a latent run (latent.py): {"path", "sha256"} of the autoencoder whose scaled latents it trains on
    autoencoder: dict | None = None

    def __post_init__(self):
        if isinstance(self.unet, dict):
            self.unet = UNetConfig.from_dict(self.unet)
        self.validate()

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad field: the table, then across fields."""
        check_fields(self, _TRAIN_FIELD_CHECKS)
        if self.unet.image_size != self.image_size:
            raise ValueError(f"TrainConfig.image_size must be equal to unet.image_size "
                             f"({self.unet.image_size}), got {self.image_size!r}")

    def to_dict(self) -> dict:
        """A JSON-safe dict (the UNet config nested under "unet")."""
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys or bad values raise a one-line ValueError."""
        d = known_keys(cls, d)
        return cls(**{**d, "unet": UNetConfig.from_dict(d.get("unet", {}))})


# Sized by measured training speed (compiled step, batch 32, 2-core x86_64 CPU with OpenBLAS, shared, noisy):
# the 32x32 cost is dominated by the full-resolution level, so `full` keeps that level narrow (32 channels, 1
# block) and puts its capacity at 16x16 and 8x8 (64 and 128 channels), where the layout of a style is decided.
# quick and full predict v (Salimans & Ho 2022): its loss weighs the error of the implied x0 by SNR + 1 >= 1,
# where the eps loss weighs it by SNR, ~0 at the high noise levels that decide colours and layout. Measured on
# `quick` at 400 steps: eps samples took their colours from the initial noise, v samples had each style's
# palette. lr 2e-3 made a deeper 16x16 UNet collapse (loss stuck at the mean prediction), hence 1e-3.
# `num_classes` is filled in from the data set.
PRESETS: dict[str, TrainConfig] = {
    # seconds: for tests and a first look at the loop; learns little
    "smoke": TrainConfig(
        preset="smoke", image_size=16,
        unet=UNetConfig(image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), groups=4),
        num_timesteps=1000, batch_size=8, learning_rate=2e-3, warmup_steps=5, ema_decay=0.9,
        steps=30, log_every=5, checkpoint_every=0, preview_every=-1,
    ),
    # <= ~8 minutes: 16x16 samples in which each style's colours and layout appear
    "quick": TrainConfig(
        preset="quick", image_size=16,
        unet=UNetConfig(image_size=16, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,)),
        prediction="v", batch_size=32, learning_rate=1e-3, warmup_steps=50, ema_decay=0.995,
        steps=800, log_every=50, checkpoint_every=200, preview_every=0,
    ),
    # the shipped model's recipe: 51k images, ~45-55 min at the 15-20 img/s measured on the 2-core x86 CPU
    "full": TrainConfig(
        preset="full",
        unet=UNetConfig(base_channels=32, channel_mults=(1, 2, 4), num_res_blocks=1,
                        attention_resolutions=(8,)),
        prediction="v", batch_size=32, learning_rate=1e-3, warmup_steps=100, ema_decay=0.999,
        steps=1600, log_every=50, checkpoint_every=200, preview_every=400,
    ),
    # seconds, like smoke, in the 4x4x4 latent space of a 16 px autoencoder (train-autoencoder --size 16)
    "latent-smoke": TrainConfig(
        preset="latent-smoke", image_size=4,
        unet=UNetConfig(image_size=4, in_channels=4, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), groups=4),
        num_timesteps=1000, batch_size=8, learning_rate=2e-3, warmup_steps=5, ema_decay=0.9,
        steps=30, log_every=5, checkpoint_every=0, preview_every=-1,
    ),
    # 64 px art in the 16x16x4 latent space of a 64 px autoencoder (Rombach et al. 2022): `full`'s size
    # (2.6M parameters) with the width moved to where a latent's structure is (16, 8 and 4 latent pixels,
    # attention at 8 and 4); 0.30 GFLOP per image, 2.6x cheaper than `full`, to afford more steps.
    "latent64": TrainConfig(
        preset="latent64", image_size=16,
        unet=UNetConfig(image_size=16, in_channels=4, base_channels=48, channel_mults=(1, 2, 2),
                        num_res_blocks=1, attention_resolutions=(8, 4)),
        prediction="v", batch_size=32, learning_rate=1e-3, warmup_steps=100, ema_decay=0.999,
        steps=12000, log_every=100, checkpoint_every=500, preview_every=1000,
    ),
}


def get_preset(name: str, **overrides) -> TrainConfig:
    """A copy of `PRESETS[name]` with `overrides` applied (e.g. steps=..., seed=..., dataset=...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def loss_weights(schedule: NoiseSchedule, t: mx.array, prediction: str = "eps",
                 weighting: str = "none", gamma: float = MIN_SNR_GAMMA) -> mx.array:
    """Per-sample weights (B,) of the MSE for timesteps t (B,).

    "none": 1. "min_snr" (Hang et al. 2023, eq. 7 and sec. 3.4): the x0-space weight
    min(SNR, gamma) re-expressed for the network's target: / SNR for eps-prediction,
    / (SNR + 1) for v-prediction. It stops the easy, low-noise steps from dominating.
    """
    if weighting == "none":
        return mx.ones(t.shape, dtype=mx.float32)
    if weighting != "min_snr":
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")
    snr = schedule.snr[t]  # (B,)
    clipped = mx.minimum(snr, gamma)
    return clipped / snr if prediction == "eps" else clipped / (snr + 1.0)


def loss_fn(model: nn.Module, x0: mx.array, y: mx.array | None, t: mx.array, noise: mx.array,
            schedule: NoiseSchedule, prediction: str = "eps", weighting: str = "none",
            gamma: float = MIN_SNR_GAMMA) -> mx.array:
    """The denoising loss (Ho et al. 2020, alg. 1), a scalar.

    x0: clean images (B, H, W, C) in [-1, 1]; y: labels (B,) or None; t: timesteps (B,);
    noise: standard normal like x0. The model sees x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise
    and is asked for the noise ("eps") or for v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0 ("v").
    Returns mean over the batch of weight(t) * mean over pixels of (prediction - target)^2.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
    x_t = schedule.q_sample(x0, t, noise, validate=False)  # (B, H, W, C); t is traced under mx.compile
    target = noise if prediction == "eps" else schedule.v_target(x0, t, noise)  # (B, H, W, C)
    per_sample = mx.mean(mx.square(model(x_t, t, y) - target), axis=(1, 2, 3))  # (B,)
    return mx.mean(loss_weights(schedule, t, prediction, weighting, gamma) * per_sample)


def drop_labels(y: mx.array, p: float, null_label: int) -> mx.array:
    """Replace each label by `null_label` with probability p (Ho & Salimans 2022, alg. 1).

    Trains one network as both the conditional and the unconditional model, which
    classifier-free guidance then combines at sampling time. y: (B,) int32.
    """
    if p <= 0:
        return y
    keep = mx.random.uniform(shape=y.shape) >= p  # (B,)
    return mx.where(keep, y, null_label).astype(y.dtype)


def update_ema(ema: dict, params: dict, decay: float) -> dict:
    """One EMA step over a parameter tree: ema = decay * ema + (1 - decay) * w, per array.

    The EMA weights average the last ~1/(1 - decay) steps of the noisy SGD trajectory
    and give visibly cleaner samples than the raw weights (Ho et al. 2020, sec. 4).
    """
    return tree_map(lambda e, w: decay * e + (1.0 - decay) * w, ema, params)


# The Trainer runs the update compiled, one fused kernel per array instead of three eager ops:
# eagerly it cost 35 ms of a 188 ms `quick` step on a 2-core CPU, compiled ~2 ms. The decay is
# passed as an mx.array, so the changing decay of the warm-up does not retrace it.
_update_ema_compiled = mx.compile(update_ema)


def ema_decay_at(step: int, decay: float) -> float:
    """The decay used at optimiser step `step` (>= 1): min(decay, (1 + step) / (10 + step)).

    The warm-up keeps the EMA from being dominated by the random initial weights in short runs
    (the num_updates rule of TensorFlow's ExponentialMovingAverage).
    """
    return min(decay, (1.0 + step) / (10.0 + step))


def make_optimizer(config: TrainConfig) -> optim.AdamW:
    """AdamW; the learning rate rises linearly from 0 over `warmup_steps`, then stays constant."""
    lr = config.learning_rate
    schedule = lr
    if config.warmup_steps > 0:
        schedule = optim.join_schedules(
            [optim.linear_schedule(0.0, lr, config.warmup_steps), lambda _: mx.array(lr)],
            [config.warmup_steps],
        )
    return optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def draw_noise_and_dropout(x0: mx.array, y: mx.array | None, num_timesteps: int, label_dropout: float,
                           null_label: int | None) -> tuple[mx.array, mx.array, mx.array | None]:
    """What one step draws from MLX's global random state: t ~ U{0..T-1} (B,), noise ~ N(0, I) like
    x0 (B, H, W, C), and y (B,) with each label dropped to `null_label` with probability `label_dropout`."""
    t = mx.random.randint(0, num_timesteps, (x0.shape[0],))
    noise = mx.random.normal(x0.shape)
    if y is not None and null_label is not None:
        y = drop_labels(y, label_dropout, null_label)
    return t, noise, y


def clip_and_update(model: nn.Module, optimizer: optim.Optimizer, grads: dict, grad_clip: float) -> mx.array:
    """Clip the global gradient norm to `grad_clip`, then one optimizer (AdamW) update; returns the norm."""
    grads, grad_norm = optim.clip_grad_norm(grads, grad_clip)
    optimizer.update(model, grads)
    return grad_norm


def make_train_step(model: nn.Module, optimizer: optim.Optimizer, schedule: NoiseSchedule,
                    prediction: str = "eps", weighting: str = "none", grad_clip: float = 1.0,
                    label_dropout: float = 0.0, null_label: int | None = None,
                    compiled: bool = True, world: distributed.World | None = None) -> Callable:
    """`step(x0, y) -> (loss, grad_norm)`: one optimiser step on a batch, updating model and optimizer.

    x0: (B, H, W, C) float32 in [-1, 1]; y: (B,) int32 labels, or None for an unconditional model.
    Inside: draw t, noise and label dropout, loss and gradients, clip, AdamW (Ho et al. 2020, alg. 1).
    `compiled=True` traces it once with `mx.compile`; model, optimizer and random state are
    declared as the compiled function's implicit inputs and outputs, so the graph reads and
    writes them instead of baking in their values. The caller runs `mx.eval(state)` after it.
    With a `world` of several ranks (`distributed.py`), x0 and y are the whole global batch: t, noise
    and dropout are drawn for all of it, this rank computes its shard, and the gradients are averaged
    over the ranks before the update, so the step does not depend on the number of ranks.
    """
    world = world or distributed.World()
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    if not optimizer.state:
        optimizer.init(model.trainable_parameters())  # so the compiled state holds every array

    def step(x0, y):
        t, noise, y = draw_noise_and_dropout(x0, y, schedule.num_steps, label_dropout, null_label)
        shard = world.take_shard(x0, y, t, noise)  # this rank's part (all of it on one machine)
        loss, grads = loss_and_grad(model, *shard, schedule, prediction, weighting)
        loss, grads = world.mean_over_ranks(loss, grads, x0.shape[0])
        return loss, clip_and_update(model, optimizer, grads, grad_clip)

    if not compiled:
        return step
    state = [model.state, optimizer.state, mx.random.state]
    return partial(mx.compile, inputs=state, outputs=state)(step)


class NonFiniteLossError(FloatingPointError):
    """Training stopped because the loss became NaN or infinite (the checkpoint on disk is untouched)."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a step, once its checkpoint was saved."""

    def __init__(self, signum: int, step: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint in {path}")
        self.signum, self.step, self.path = signum, step, path


class _StopSignals:
    """While training: SIGINT and SIGTERM ask the loop to checkpoint and stop after the current step;
    a second signal interrupts at once. Installed only on the main thread (Python's rule for handlers)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def random_key() -> list[int]:
    """MLX's global random key as two ints [hi, lo] (JSON-safe), for checkpoints."""
    return [int(v) for v in mx.random.state[0].tolist()]


def set_random_key(key: list[int]) -> None:
    """Make MLX's global random key exactly `key` ([hi, lo] from `random_key`)."""
    hi, lo = (int(v) for v in key)
    mx.random.seed((hi << 32) | lo)  # mx.random.key(seed) is [seed >> 32, seed & 0xffffffff]


@contextmanager
def _random_state_kept():
    """Restore MLX's global random key on exit, so building a model (random init) for a preview
    does not shift the stream of t, noise and dropout draws that training uses."""
    key = random_key()
    try:
        yield
    finally:
        set_random_key(key)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


class Trainer:
    """Owns a run: model, EMA weights, optimizer, batch stream, compiled step, log and checkpoints.

    `Trainer(config, out_dir)` starts a new run in `out_dir` (refusing to overwrite an existing
    checkpoint there); `Trainer.resume(out_dir)` continues the run stored there, restoring
    weights, optimizer moments, data-iterator position and MLX random state, so that the
    resumed run takes exactly the steps the uninterrupted one would have. `run()` trains.

    Files in `out_dir`: `checkpoint/` (see `checkpoint.py`), `train.log` (human-readable:
    config, loss every `log_every` steps, images/s, wall time), `previews/step_NNNNNN.png`.
    `lock`: the `files.RunLock` on `out_dir` that the caller already holds (`train` takes it before
    the data loads); without one, `run()` takes it while it trains.
    Pass `dataset` (a `data.Dataset`) to train on images already in memory; by default
    `data.load_dataset(config.dataset, config.image_size, config.seed)` is used. Building a
    Trainer seeds MLX's global random generator with `config.seed` (the step draws from it).
    A latent run (`config.autoencoder` set) trains on the images' scaled latents, encoded once and
    cached in `out_dir/latents/`, and saves its autoencoder in every checkpoint (see `latent.py`).
    """

    def __init__(self, config: TrainConfig, out_dir: str | Path, dataset: data.Dataset | None = None,
                 compiled: bool = True, lock: files.RunLock | None = None, _state: tuple | None = None):
        self.out_dir, self.lock = Path(out_dir), lock
        self.checkpoint_path = self.out_dir / checkpoint.CHECKPOINT_DIR
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"{self.out_dir} is a file; give a folder for the run")
        if _state is None and checkpoint.has_checkpoint(self.out_dir):
            raise ValueError(f"{self.out_dir} already holds a checkpoint; resume it (--resume) or "
                             "choose another output folder")
        self.world, self.trained_world_size = distributed.world(), None  # None: a new run
        self.dataset, self.autoencoder = self._load_data(config, dataset)
        classes = len(self.dataset.class_names)
        self.config = replace(config, unet=replace(config.unet, num_classes=classes if classes > 1 else 0))
        self.null_label = self.config.unet.num_classes or None  # the "no class" label for guidance

        mx.random.seed(self.config.seed)
        self.model = use_fast_cpu_layers(UNet(self.config.unet))  # a no-op on a GPU
        self.schedule = make_schedule(self.config.schedule, self.config.num_timesteps)
        self.optimizer = make_optimizer(self.config)
        self.optimizer.init(self.model.trainable_parameters())
        self.batches = data.BatchIterator(self.dataset.images, self.dataset.labels, self.config.batch_size,
                                          seed=self.config.seed, flip=self.autoencoder is None)
        self.step, self.history, self.saved_step = 0, [], None
        self.ema = self.model.trainable_parameters()  # MLX arrays are immutable: no copy needed
        self.world.shard_sizes(self.config.batch_size)  # at least one image per rank
        if _state is not None:
            self._restore(*_state)
        self.state = [self.model.state, self.optimizer.state, mx.random.state]
        self.train_step = self._make_train_step(compiled)

    def _load_data(self, config: TrainConfig, dataset: data.Dataset | None) -> tuple[data.Dataset, object]:
        """(what the UNet trains on, the autoencoder of a latent run or None), shapes checked."""
        size, channels = config.image_size, config.unet.in_channels
        autoencoder = None
        if config.autoencoder is not None:
            from diffusion_utils import latent  # latent -> autoencoder -> this module

            dataset, autoencoder = latent.prepare(config, self.out_dir, dataset, self.world.is_main)
        elif channels != 3:
            raise ValueError(f"preset {config.preset} trains on {channels}-channel latents: pass the "
                             "autoencoder they come from (--autoencoder DIR)")
        elif dataset is None:
            dataset = data.load_dataset(config.dataset, size=size, seed=config.seed)
        if dataset.images.shape[1:] != (size, size, channels):
            raise ValueError(f"the data set is {dataset.images.shape[1:]} per image, the config trains on "
                             f"({size}, {size}, {channels})")
        return dataset, autoencoder

    def _make_train_step(self, compiled: bool) -> Callable:
        """`make_train_step` for this run; compiled, the fastest form for this machine (on a multi-core
        CPU each slice of the batch on its own stream: `cpu/train_step.py`)."""
        cfg = self.config
        args = (self.model, self.optimizer, self.schedule, cfg.prediction, cfg.loss_weighting, cfg.grad_clip,
                cfg.label_dropout, self.null_label)
        if not compiled:
            return make_train_step(*args, compiled=False, world=self.world)
        from diffusion_utils.cpu.train_step import make_fastest_train_step  # it builds on this module

        return make_fastest_train_step(*args, world=self.world)

    @classmethod
    def resume(cls, out_dir: str | Path, dataset: data.Dataset | None = None, compiled: bool = True,
               lock: files.RunLock | None = None) -> Trainer:
        """Continue the run whose checkpoint is in `out_dir` (ValueError/FileNotFoundError if unusable)."""
        if not checkpoint.has_checkpoint(out_dir):
            raise FileNotFoundError(f"no checkpoint to resume in {out_dir}; start a new run there instead")
        directory, stored = checkpoint.read_config(out_dir)
        try:
            config = TrainConfig.from_dict(stored["train_config"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{directory / checkpoint.CONFIG_FILE}: bad training config ({err})") from None
        return cls(config, out_dir, dataset, compiled, lock, _state=(directory, stored))

    def _restore(self, directory: Path, stored: dict) -> None:
        """Load weights, EMA, optimizer state, iterator position and random state from a checkpoint."""
        if tuple(stored["class_names"]) != tuple(self.dataset.class_names) or \
                stored.get("num_images") != len(self.dataset):
            raise ValueError(f"{directory / checkpoint.CONFIG_FILE}: the run was trained on "
                             f"{stored.get('num_images')} images of {list(stored['class_names'])}, but "
                             f"{self.config.dataset!r} now has {len(self.dataset)} of "
                             f"{list(self.dataset.class_names)}")
        checkpoint.load_weights(self.model, directory, stored, checkpoint.MODEL_FILE)
        ema = checkpoint.load_arrays(directory, stored, checkpoint.EMA_FILE)
        params = checkpoint.flat_arrays(self.model.trainable_parameters())
        checkpoint.check_arrays(directory / checkpoint.EMA_FILE, ema, params)
        self.ema = tree_unflatten(list(ema.items()))
        moments = checkpoint.load_arrays(directory, stored, checkpoint.OPTIMIZER_FILE)
        checkpoint.check_arrays(directory / checkpoint.OPTIMIZER_FILE, moments,
                                checkpoint.flat_arrays(self.optimizer.state))
        self.optimizer.state = tree_unflatten(list(moments.items()))
        self.optimizer.init(self.model.trainable_parameters())  # marks it initialised; keeps the moments
        try:
            self.batches.load_state_dict(stored["data_iterator"])
            set_random_key(stored["rng_state"])
            self.step = int(stored["step"])
            self.history = [(int(s), float(v)) for s, v in stored.get("loss_history", [])]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{directory / checkpoint.CONFIG_FILE}: bad training state ({err})") from None
        self.saved_step = self.step
        self.trained_world_size = stored.get("world_size", 1)
        streams.match_stored_workers(stored.get("cpu_streams"))

    # ------------------------------------------------------------------ checkpoints, log, previews
    def save(self) -> Path:
        """Write the current state as the run's checkpoint (atomically; with several ranks only rank 0
        writes, and no rank waits for the others: each may decide alone, e.g. on a stop signal)."""
        meta = {
            "step": self.step,
            "seed": self.config.seed,
            "train_config": self.config.to_dict(),
            "schedule": self.schedule.to_config(),
            "class_names": list(self.dataset.class_names),
            "num_images": len(self.dataset),
            "data_iterator": self.batches.state_dict(),
            "rng_state": random_key(),
            "loss_history": [[s, v] for s, v in self.history],
            "cpu_streams": streams.workers(),  # resume is bit-exact only with the same count
            "world_size": self.world.size,  # contract (DESIGN.md); batch_size is the global batch
            "batch_per_rank": self.world.shard_sizes(self.config.batch_size),
        }
        arrays = {
            checkpoint.MODEL_FILE: checkpoint.flat_arrays(self.model.parameters()),
            checkpoint.EMA_FILE: checkpoint.flat_arrays(self.ema),
            checkpoint.OPTIMIZER_FILE: checkpoint.flat_arrays(self.optimizer.state),
        }
        if self.autoencoder is not None:  # a latent checkpoint samples pixels on its own
            from diffusion_utils import latent

            extra_arrays, extra_meta = latent.embedded_parts(self.autoencoder)
            arrays.update(extra_arrays)
            meta.update(extra_meta)
        path = checkpoint.save_checkpoint(self.checkpoint_path, arrays, meta) if self.world.is_main \
            else self.checkpoint_path
        self.saved_step, self._saved_at = self.step, time.monotonic()
        return path

    def _check_ranks_agree(self) -> None:
        """With several ranks: RanksDivergedError unless all hold the same weights, EMA, optimizer
        state, random key and step (a run folder that differs between machines, a bug)."""
        state = {"model": self.model.parameters(), "ema": self.ema, "optimizer": self.optimizer.state,
                 "random": mx.random.state[0], "step": mx.array(self.step)}
        self.world.check_in_sync(state, "the weights, EMA, optimizer state and step")

    def ema_model(self) -> UNet:
        """A copy of the network holding the EMA weights, in eval mode (for sampling)."""
        with _random_state_kept():
            model = use_fast_cpu_sampling(UNet(self.config.unet))
        model.update(self.ema)
        model.eval()
        return model

    @property
    def info(self) -> checkpoint.ModelInfo:
        """What `checkpoint.load_model` would say about this run's model now (for the samplers)."""
        config, names = self.config.to_dict(), self.dataset.class_names
        return checkpoint.ModelInfo.from_train_config(config, names, self.step, autoencoder=self.autoencoder)

    def preview(self, per_class: int = 4, seed: int = 0) -> np.ndarray:
        """Samples from the EMA weights with the samplers' defaults, uint8 (n, H, W, 3).

        `per_class` images of each class in class order (16 for an unconditional model). The
        same `seed` every time, so successive previews show the same noise being denoised.
        """
        from diffusion_utils import pipeline  # imported here: only previews need the samplers

        classes = self.config.unet.num_classes
        images, _ = pipeline.sample_model(self.ema_model(), self.schedule, self.info,
                                          n=per_class * classes if classes else 16, seed=seed)
        return images

    def _save_preview(self) -> Path | None:
        from diffusion_utils import viz

        if not self.world.is_main:  # the other ranks wait for it in the next step
            return None
        path = self.out_dir / "previews" / f"step_{self.step:06d}.png"
        return viz.save_grid(self.preview(), path, nrow=4)  # one class per row

    def _log(self, line: str) -> None:
        if not self.world.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "train.log", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def _log_header(self, total: int) -> None:
        forward_flops = flops.unet_flops(self.model)
        start = "resumed from step" if self.step else "started at step"
        self._log(f"# run {start} {self.step} -> {total} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self._log(f"# data: {self.config.dataset} ({len(self.dataset)} images, classes "
                  f"{', '.join(self.dataset.class_names)})")
        if self.autoencoder is not None:
            source = self.config.autoencoder
            self._log(f"# latents: {self.dataset.images.shape[1:]} per image (each image and its mirror), "
                      f"scale factor {self.autoencoder.config.scale_factor:.5f}, from the autoencoder "
                      f"{source['path']} (weights sha256 {source['sha256']})")
        self._log(f"# model: {parameter_count(self.model) / 1e6:.2f}M parameters, "
                  f"{forward_flops / 1e9:.3f} GFLOP/image forward; device {mx.default_device()}")
        self._log("# config: " + json.dumps(self.config.to_dict(), sort_keys=True))
        self._log(f"# world: {self.world.describe(self.config.batch_size)}")
        note = distributed.resume_note(self.trained_world_size, self.world.size)
        if note:
            self._log(f"# {note}")
            if self.world.is_main:
                print(f"note: {note}", file=sys.stderr)

    # ------------------------------------------------------------------ the loop
    def run(self, steps: int | None = None, progress: bool = True,
            callback: Callable[[Trainer], None] | None = None) -> list[tuple[int, float]]:
        """Train until `steps` optimiser steps in total (default: config.steps); returns the loss history.

        Saves a checkpoint every `checkpoint_every` steps and at the end, a preview grid every
        `preview_every` steps and at the end (unless -1), and calls `callback(trainer)` after
        every step (e.g. to redraw a live loss plot). Raises NonFiniteLossError, without saving,
        if the loss becomes NaN or infinite. Holds the run folder's `files.RunLock` (a second run
        there fails at once), unless the Trainer was given one its caller holds; SIGINT/SIGTERM save a
        checkpoint after the current step and raise TrainingInterrupted. Also saves once
        `checkpoint_minutes` passed since the last checkpoint.
        """
        total = self.config.steps if steps is None else steps
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"steps must be an integer >= 1, got {total!r}")
        if total < self.step:
            raise ValueError(f"the run is already at step {self.step}, past the requested {total} steps")
        self.config.steps = total
        lock = files.RunLock(self.out_dir).acquire() if self.world.is_main and self.lock is None else None
        stop = _StopSignals()
        try:
            return self._loop(total, stop, progress, callback)
        finally:
            stop.restore()
            if lock is not None:
                lock.release()

    def _loop(self, total: int, stop: _StopSignals, progress: bool, callback) -> list[tuple[int, float]]:
        self._saved_at = time.monotonic()
        self._log_header(total)
        self._check_ranks_agree()
        run_start, run_first_step = time.perf_counter(), self.step
        step_seconds = []  # wall time of each step since the last log line (checkpoints, previews excluded)
        bar = tqdm(total=total, initial=self.step, desc=f"train {self.config.preset}", unit="step",
                   disable=not progress or not self.world.is_main, dynamic_ncols=True)
        try:
            while self.step < total:
                start = time.perf_counter()
                loss, grad_norm = self._one_step()
                step_seconds.append(time.perf_counter() - start)
                self._report(bar, loss, grad_norm, step_seconds, total, run_start)
                self._after_step(total, stop)
                if callback is not None:
                    callback(self)
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            self._log(f"interrupted at step {self.step}; last checkpoint: step {self.saved_step}")
            raise
        finally:
            bar.close()
        self._check_ranks_agree()  # every rank ends with the same weights and EMA (raises if not)
        seconds = time.perf_counter() - run_start
        done = self.step - run_first_step
        rate = done * self.config.batch_size / max(seconds, 1e-9)
        self._log(f"done: {done} steps in {_clock(seconds)} ({rate:.1f} img/s with checkpoints and previews)")
        return self.history

    def _one_step(self) -> tuple[float, mx.array]:
        """One optimiser step and EMA update on the next batch, evaluated: (loss, grad_norm).
        Raises NonFiniteLossError when the loss is NaN or infinite."""
        x, y = next(self.batches)  # (B, H, W, 3) in [-1, 1], (B,) int32
        loss, grad_norm = self.train_step(x, y if self.null_label is not None else None)
        self.step += 1
        decay = mx.array(ema_decay_at(self.step, self.config.ema_decay))
        self.ema = _update_ema_compiled(self.ema, self.model.trainable_parameters(), decay)
        with self.world.collective(f"step {self.step}", self._saved_note()):
            mx.eval(self.state, self.ema, loss, grad_norm)
        loss = loss.item()
        if not math.isfinite(loss):
            self._stop_non_finite(loss)
        self.history.append((self.step, loss))
        return loss, grad_norm

    def _report(self, bar, loss: float, grad_norm: mx.array, step_seconds: list[float], total: int,
                run_start: float) -> None:
        """The progress bar after every step; a `train.log` line every `log_every` steps and at the end
        (mean loss and img/s since the last line, which empties `step_seconds`)."""
        batch = self.config.batch_size
        bar.update()
        last = step_seconds[-5:]  # img/s over the last few steps
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{batch * len(last) / sum(last):.1f}")
        if self.step % self.config.log_every == 0 or self.step == total:
            recent = [v for _, v in self.history[-len(step_seconds):]]
            rate = batch * len(step_seconds) / sum(step_seconds)
            self._log(f"step {self.step:>7d}/{total}  loss {np.mean(recent):.5f}  "
                      f"grad_norm {grad_norm.item():.3f}  img/s {rate:6.1f}  "
                      f"lr {self.optimizer.learning_rate.item():.2e}  "
                      f"elapsed {_clock(time.perf_counter() - run_start)}")
            step_seconds.clear()

    def _after_step(self, total: int, stop: _StopSignals) -> None:
        """Checkpoint when due, stop (TrainingInterrupted) after a signal, preview when due."""
        if self._checkpoint_due(total, stop):
            self._log(f"checkpoint at step {self.step} -> {self.save()}")
        if stop.received is not None:
            self._log(f"stopped by {signal.Signals(stop.received).name} at step {self.step}")
            raise TrainingInterrupted(stop.received, self.step, self.checkpoint_path)
        every = self.config.preview_every
        if every != -1 and (self.step == total or (every and self.step % every == 0)):
            self._log(f"preview -> {self._save_preview()}")

    def _checkpoint_due(self, total: int, stop: _StopSignals) -> bool:
        """After a step: at the end, every `checkpoint_every` steps, `checkpoint_minutes` after the
        last checkpoint, or when a stop signal arrived."""
        cfg = self.config
        minutes = (time.monotonic() - self._saved_at) / 60
        return (self.step == total or stop.received is not None
                or bool(cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                or bool(cfg.checkpoint_minutes and minutes >= cfg.checkpoint_minutes))

    def _saved_note(self) -> str:
        return (f"the last good checkpoint ({self.checkpoint_path}, step {self.saved_step}) is intact"
                if self.saved_step is not None else "no checkpoint had been written yet")

    def _stop_non_finite(self, loss: float) -> None:
        saved = self._saved_note()
        message = (f"loss became {loss} at step {self.step}: the learning rate "
                   f"({self.config.learning_rate:g}) is likely too high (lower it or lengthen the warm-up); "
                   f"{saved}")
        self._log(f"stopped: {message}")
        raise NonFiniteLossError(message)


_CADENCE = ("log_every", "checkpoint_every", "checkpoint_minutes", "preview_every")  # not what is learned


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, dataset: data.Dataset | None = None,
          compiled: bool = True, progress: bool = True,
          callback: Callable[[Trainer], None] | None = None) -> Trainer:
    """Train `config` into `out_dir` and return the Trainer (its model, EMA weights, history).

    resume=True continues the run stored in `out_dir` until `config.steps` in total; the stored
    run must have been started with the same config apart from `steps` and the log, checkpoint and
    preview cadence, which do not change the weights and are taken from `config` (ValueError otherwise).
    """
    lock = files.RunLock(out_dir).acquire() if distributed.world().is_main else None
    try:  # locked before the data loads: a second run into out_dir fails at once, not after loading
        trainer = _start_or_resume(config, out_dir, resume, dataset, compiled, lock)
        trainer.run(config.steps, progress=progress, callback=callback)
    finally:
        if lock is not None:
            lock.release()
    return trainer


def _start_or_resume(config: TrainConfig, out_dir: str | Path, resume: bool, dataset: data.Dataset | None,
                     compiled: bool, lock: files.RunLock | None) -> Trainer:
    """`train`'s Trainer: a new run, or the stored one with `config`'s cadence (ValueError when the
    stored run's config differs from `config` in more than steps and cadence)."""
    if not resume:
        return Trainer(config, out_dir, dataset, compiled, lock)
    trainer = Trainer.resume(out_dir, dataset, compiled, lock)
    trainer.config = replace(trainer.config, **{key: getattr(config, key) for key in _CADENCE})
    stored = replace(trainer.config, steps=config.steps).to_dict()
    unet = replace(config.unet, num_classes=trainer.config.unet.num_classes)  # set from the data
    asked = replace(config, unet=unet).to_dict()
    differ = [key for key in asked if asked[key] != stored[key]]
    if differ:
        shown = ", ".join(f"{k}={stored[k]!r} (asked {asked[k]!r})" for k in differ if k != "unet")
        raise ValueError(f"{out_dir} holds a run with a different config: "
                         f"{shown or 'another UNet'}; resume with the same preset, data set and seed")
    return trainer
