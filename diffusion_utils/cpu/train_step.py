"""`train.make_train_step` with each slice of the batch on its own CPU stream, all cores at once.

The step draws t, noise and label dropout for the whole batch (one compiled function), then computes
the loss and gradients of each slice on its own MLX stream (`streams.py`; one compiled function per
stream), and combines them as the batch mean, weighted by slice size, before clipping and AdamW (a
third compiled function). That is the plain step up to float32 rounding where the per-slice
gradients are added (tests/test_streams.py); with several ranks (`distributed.py`) the slices are
of this rank's shard. `Trainer` uses it on a multi-core CPU, where it is 1.15-1.5x faster
(`benchmarks/streams.py`, PROFILE.md); on a GPU `streams.workers()` is 1 and the plain step runs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from diffusion_utils import distributed
from diffusion_utils.cpu import streams
from diffusion_utils.schedules import NoiseSchedule
from diffusion_utils.train import clip_and_update, draw_noise_and_dropout, loss_fn, make_train_step

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim


def make_stream_split_train_step(model: nn.Module, optimizer: optim.Optimizer, schedule: NoiseSchedule,
                                 prediction: str = "eps", weighting: str = "none", grad_clip: float = 1.0,
                                 label_dropout: float = 0.0, null_label: int | None = None,
                                 world: distributed.World | None = None) -> Callable:
    """The compiled `step(x0, y) -> (loss, grad_norm)` of `train.make_train_step` (same arguments),
    with the loss and gradients of each batch slice on its own stream. The caller runs `mx.eval(state)`.

    The model state is an output of each slice's function only because `nn.value_and_grad` swaps the
    parameters while tracing; they come back as they went in.
    """
    world = world or distributed.World()
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    if not optimizer.state:
        optimizer.init(model.trainable_parameters())
    state = [model.state, optimizer.state, mx.random.state]
    slice_state = [model.state, mx.random.state]  # the random state for dropout inside the model

    @partial(mx.compile, inputs=state, outputs=state)
    def draw(x0, y):
        return draw_noise_and_dropout(x0, y, schedule.num_steps, label_dropout, null_label)

    def slice_loss_and_grads(x0, y, t, noise):
        return loss_and_grad(model, x0, y, t, noise, schedule, prediction, weighting)

    per_stream_loss_and_grads = streams.per_stream(
        lambda: partial(mx.compile, inputs=slice_state, outputs=slice_state)(slice_loss_and_grads))

    @partial(mx.compile, inputs=state, outputs=state)
    def update(fractions, parts, batch):  # the shard's mean of the slices' losses and gradients
        loss, grads = streams.weighted_sum(list(zip(fractions, parts, strict=True)))
        loss, grads = world.mean_over_ranks(loss, grads, batch)
        return loss, clip_and_update(model, optimizer, grads, grad_clip)

    def step(x0, y):
        t, noise, y = draw(x0, y)
        shard = world.take_shard(x0, y, t, noise)
        fractions, parts = zip(*streams.map_chunks(per_stream_loss_and_grads, *shard), strict=True)
        return update(fractions, list(parts), x0.shape[0])

    return step


def make_fastest_train_step(*args, world: distributed.World | None = None) -> Callable:
    """The compiled step of `train.make_train_step(*args)` in its fastest form here: split across
    streams when `streams.workers() > 1` (a multi-core CPU), else the plain one (one stream, a GPU)."""
    if streams.workers() == 1:
        return make_train_step(*args, world=world)
    return make_stream_split_train_step(*args, world=world)
