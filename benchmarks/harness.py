"""How fast this machine trains and samples the project's UNets, in MLX and (optionally) PyTorch.

The harness behind `python -m diffusion_utils bench [--json]` (the CLI loads this file from the
repository's `benchmarks/` folder); `benchmarks/streams.py` and `profile_layers.py` reuse its parts.
`bench` runs `run_bench`: for each training preset it
measures, in one process,

- the machine's ceiling: float32 sgemm GFLOP/s of MLX's default device (`cpu/blas.py`: `sgemm_gflops`);
- the model: parameters and forward GFLOP per image (`flops.count_flops`: 2 FLOPs per
  multiply-add of every conv, linear layer and attention matmul; norms, activations and
  additions, a few percent, are not counted);
- training: images/s of the compiled step the Trainer runs (`cpu/train_step.py`, the preset's batch);
- sampling: images/s per network evaluation (one forward pass of a batch, run the way the
  samplers run it);
- peak memory of each (`mx.get_peak_memory`, reset in between);
- MFU, model FLOP utilisation: achieved FLOP/s (3x the forward FLOPs per trained image, 1x per
  sampled image) over the sgemm ceiling.

`threads` cores go to each framework: PyTorch's intra-op threads, and MLX's streams
(`cpu/streams.py`: a slice of the batch per core, one OpenBLAS thread each).

Then, whatever the presets, `bench_latent_vs_pixel` sets the cost of latent diffusion against pixel
space at 64 px (MLX only): the `latent64` UNet on 16x16x4 latents and its `pixel_twin` on 64x64x3
pixels, training and sampling images/s timed interleaved in one run (the latent one's sampling
includes the autoencoder's decoder), reported as `latent_train_speedup` and `latent_sample_speedup`
(pixel cost / latent cost per image). `--batch` and `--sample-batch` apply to it too.

When PyTorch imports, the same harness times `torch_unet.py` (next to this file) (the same network,
weights copied from the MLX one) on the same batches and cores, interleaved with MLX round
by round so that load from other processes hits both alike, and reports MLX/PyTorch ratios.
Every figure is the median of `repeats` timed calls after `warmup` untimed ones.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from diffusion_utils import data, styles, train
from diffusion_utils.autoencoder import Autoencoder, AutoencoderConfig
from diffusion_utils.cpu import blas, streams
from diffusion_utils.cpu.layers import use_fast_cpu_layers
from diffusion_utils.cpu.train_step import make_fastest_train_step
from diffusion_utils.flops import count_flops
from diffusion_utils.latent import decode_to_images, encode_dataset
from diffusion_utils.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from diffusion_utils.samplers import Sampler, guided_output, make_sampler
from diffusion_utils.schedules import make_schedule
from diffusion_utils.unet import UNet, parameter_count

import mlx.core as mx
import numpy as np

DEFAULT_PRESETS = ("quick", "full")  # the first one is the headline (top-level fields)
SAMPLE_BATCH = 64  # images per network evaluation when timing sampling
LATENT_PRESET = "latent64"  # the latent UNet that `bench_latent_vs_pixel` sets against its pixel twin
# the comparison's batches at most: its pixel twin attends over 32x32 positions, and at bench's default
# sampling batch (64, doubled by guidance) that peaked at 14 GB; per-image costs barely change with batch
LATENT_VS_PIXEL_MAX_BATCH = 16
SAMPLE_STEPS = DEFAULT_STEPS["ddim"]  # DDIM steps per sampled image in that comparison
TORCH_REFERENCE = Path(__file__).resolve().parent / "torch_unet.py"


def time_interleaved(variants: dict[str, Callable[[], None]], repeats: int = 5, warmup: int = 2,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Median seconds per call of each callable (each must finish its work before returning).

    Returns `{name: {"wall": s, "cpu": s}}`: wall-clock time, and this process's CPU time (all
    threads), which load from other processes inflates much less. Every round runs every
    variant once, in a fresh random order, so that a burst of such load slows all variants
    alike; `warmup` untimed rounds come first.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"bench needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            start, cpu = time.perf_counter(), time.process_time()
            variants[name]()
            times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    return {name: {"wall": float(np.median([w for w, _ in ts])), "cpu": float(np.median([c for _, c in ts]))}
            for name, ts in times.items()}


def blas_core() -> str | None:
    """The kernel family OpenBLAS picked for this CPU (e.g. "Haswell" = AVX2, "SkylakeX" = AVX-512)."""
    try:
        corename = ctypes.CDLL(None).openblas_get_corename
    except (AttributeError, OSError):
        return None
    corename.restype = ctypes.c_char_p
    return corename().decode()


def load_torch_reference():
    """The `benchmarks/torch_unet.py` module, or a string saying why it is unavailable."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install torch, or the `bench` extra)"
    if not TORCH_REFERENCE.is_file():
        return f"{TORCH_REFERENCE} not found (the PyTorch reference ships with a source checkout)"
    spec = importlib.util.spec_from_file_location("torch_unet", TORCH_REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _MLXCase:
    """One preset in MLX: the compiled train step and the sampling forward pass on fixed batches."""

    def __init__(self, config: train.TrainConfig, sample_batch: int):
        self.config = config
        self.model = use_fast_cpu_layers(UNet(config.unet))
        self.schedule = make_schedule(config.schedule, config.num_timesteps)
        self.optimizer = train.make_optimizer(config)
        num_classes = config.unet.num_classes
        self.step = make_fastest_train_step(
            self.model, self.optimizer, self.schedule, config.prediction, config.loss_weighting,
            config.grad_clip, config.label_dropout, num_classes if num_classes else None)
        self.state = [self.model.state, self.optimizer.state, mx.random.state]
        size, channels = config.image_size, config.unet.in_channels
        rng = np.random.default_rng(config.seed)
        self.x0 = mx.array(rng.uniform(-1, 1, (config.batch_size, size, size, channels)), dtype=mx.float32)
        labels = rng.integers(0, max(num_classes, 1), config.batch_size)
        self.y = mx.array(labels, dtype=mx.int32) if num_classes else None
        self.x_t = mx.array(rng.standard_normal((sample_batch, size, size, channels)), dtype=mx.float32)
        self.t = mx.array(rng.integers(0, config.num_timesteps, sample_batch), dtype=mx.int32)
        self.y_sample = mx.full((sample_batch,), num_classes, dtype=mx.int32) if num_classes else None
        self.forward = streams.batch_parallel(self.model)  # as `use_fast_cpu_sampling` splits it
        mx.eval(self.model.parameters(), self.x0, self.x_t, self.t)

    def train_step(self) -> None:
        loss, grad_norm = self.step(self.x0, self.y)
        mx.eval(self.state, loss, grad_norm)

    def sample_step(self) -> None:
        mx.eval(self.forward(self.x_t, self.t, self.y_sample))  # eager, as the samplers call it


class _TorchCase:
    """The same preset in PyTorch: the same network and weights, the same step, the same batches."""

    def __init__(self, reference, mlx_case: _MLXCase):
        import torch

        config = mlx_case.config
        self.torch = torch
        self.model = reference.load_mlx_weights(reference.TorchUNet(config.unet), mlx_case.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.grad_clip, self.label_dropout = config.grad_clip, config.label_dropout
        self.num_classes, self.num_steps = config.unet.num_classes, config.num_timesteps
        self.prediction = config.prediction
        weights = train.loss_weights(mlx_case.schedule, mx.arange(config.num_timesteps), config.prediction,
                                     config.loss_weighting)  # (T,) per-timestep loss weights
        self.weights = torch.from_numpy(np.array(weights))

        def nchw(a):
            return torch.from_numpy(np.array(a)).permute(0, 3, 1, 2).contiguous()

        def labels(a):
            return None if a is None else torch.from_numpy(np.array(a)).long()

        self.sqrt_ab = torch.from_numpy(np.array(mlx_case.schedule.sqrt_alphas_cumprod))
        self.sqrt_1mab = torch.from_numpy(np.array(mlx_case.schedule.sqrt_one_minus_alphas_cumprod))
        self.x0, self.y = nchw(mlx_case.x0), labels(mlx_case.y)
        self.x_t, self.t, self.y_sample = nchw(mlx_case.x_t), labels(mlx_case.t), labels(mlx_case.y_sample)

    def train_step(self) -> None:
        """`train.make_train_step` in PyTorch: random t, noise and label dropout; weighted MSE to the
        eps or v target; gradient clipping; AdamW."""
        torch, x0, y = self.torch, self.x0, self.y
        self.model.train()
        t = torch.randint(0, self.num_steps, (x0.shape[0],))
        noise = torch.randn_like(x0)
        a, b = self.sqrt_ab[t].view(-1, 1, 1, 1), self.sqrt_1mab[t].view(-1, 1, 1, 1)
        x_t = a * x0 + b * noise
        target = noise if self.prediction == "eps" else a * noise - b * x0
        if y is not None and self.label_dropout > 0:
            y = torch.where(torch.rand(y.shape) >= self.label_dropout, y, self.num_classes)
        per_sample = ((self.model(x_t, t, y) - target) ** 2).mean(dim=(1, 2, 3))
        loss = (self.weights[t] * per_sample).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()

    def sample_step(self) -> None:
        self.model.eval()
        with self.torch.inference_mode():
            self.model(self.x_t, self.t, self.y_sample)


def _peak_memory_mb(fn: Callable[[], None]) -> float:
    """Peak MLX memory (MB) of one call of `fn`, counted from the memory in use before it."""
    mx.reset_peak_memory()
    fn()
    return mx.get_peak_memory() / 2**20


def _bench_config(name: str, batch_size: int | None = None) -> train.TrainConfig:
    """Preset `name` as the bench times it: a UNet for the style data's classes, `batch_size` if given."""
    overrides = {"batch_size": batch_size} if batch_size else {}
    unet = replace(train.PRESETS[name].unet, num_classes=len(styles.STYLES))
    return train.get_preset(name, unet=unet, **overrides)


def bench_preset(name: str, sgemm_gflops: float, reference=None, repeats: int = 5, warmup: int = 2,
                 sample_batch: int = SAMPLE_BATCH, batch_size: int | None = None,
                 sample: bool = True) -> dict:
    """All figures for one training preset; PyTorch ones too when `reference` is the torch module."""
    config = _bench_config(name, batch_size)
    mx.random.seed(config.seed)
    case = _MLXCase(config, sample_batch)
    gflop = count_flops(config.unet) / 1e9
    result = {
        "preset": name, "image_size": config.image_size, "batch_size": config.batch_size,
        "sample_batch": sample_batch, "parameters": parameter_count(case.model),
        "gflop_per_image": round(gflop, 4),
    }
    torch_case = _TorchCase(reference, case) if reference is not None else None
    phases = [("train", 3.0, config.batch_size)] + ([("sample", 1.0, sample_batch)] if sample else [])
    for phase, flop_factor, batch in phases:
        mlx_fn = getattr(case, f"{phase}_step")
        variants = {"mlx": mlx_fn}
        if torch_case is not None:
            variants["torch"] = getattr(torch_case, f"{phase}_step")
        timed = time_interleaved(variants, repeats, warmup)
        seconds = timed["mlx"]["wall"]
        result[f"mlx_{phase}_img_s"] = round(batch / seconds, 3)
        result[f"mlx_{phase}_cpu_s_per_img"] = round(timed["mlx"]["cpu"] / batch, 5)
        result[f"mlx_{phase}_peak_memory_mb"] = round(_peak_memory_mb(mlx_fn), 1)
        achieved = flop_factor * gflop * batch / seconds  # GFLOP/s
        result[f"mlx_{phase}_gflops"] = float(f"{achieved:.4g}")  # significant digits: a warm-up-free
        result[f"mlx_{phase}_mfu"] = float(f"{achieved / sgemm_gflops:.4g}")  # tiny run is far below 1e-4
        if torch_case is not None:
            result[f"torch_{phase}_img_s"] = round(batch / timed["torch"]["wall"], 3)
            result[f"torch_{phase}_cpu_s_per_img"] = round(timed["torch"]["cpu"] / batch, 5)
            result[f"{phase}_ratio_mlx_over_torch"] = round(timed["torch"]["wall"] / seconds, 3)
            cpu_ratio = timed["torch"]["cpu"] / timed["mlx"]["cpu"]
            result[f"{phase}_cpu_ratio_mlx_over_torch"] = round(cpu_ratio, 3)
    return result


def pixel_twin(config: train.TrainConfig, factor: int, channels: int = 3) -> train.TrainConfig:
    """`config`'s UNet moved from latents to the pixels they stand for: a side `factor` times larger,
    `channels` in and out, the same widths, depth and blocks, and attention at the same levels.

    Attention is matched by level, not by pixel count: latent64 attends at its 8 and 4 px levels
    (levels 1 and 2 of 16, 8, 4), so the twin attends at its 32 and 16 px levels (levels 1 and 2 of
    64, 32, 16). Both networks then have the same layers and parameters (up to the first and last
    conv's channels), and every difference in cost comes from the side length: 16x the pixels per
    conv, 256x the attention matrix at each level. Batch, prediction and schedule stay `config`'s.
    """
    unet = config.unet
    attention = tuple(r * factor for r in unet.attention_resolutions)
    pixel = replace(unet, image_size=unet.image_size * factor, in_channels=channels,
                    attention_resolutions=attention)
    return replace(config, preset=f"{config.preset} in pixel space", image_size=pixel.image_size, unet=pixel)


def _guided_ddim_step(case: _MLXCase, sampler: Sampler, guidance: float) -> Callable[[], None]:
    """One step of `samplers.generate` on the case's sampling batch, as `pipeline.sample_model` runs it:
    a classifier-free-guided UNet call (conditional and null labels in one batch of 2x) and the
    sampler's update, evaluated. DDIM's steps all cost the same, so a middle timestep stands for all."""
    t = sampler.timesteps[len(sampler.timesteps) // 2]
    batch = case.x_t.shape[0]
    t_batch = mx.full((batch,), t, dtype=mx.int32)
    labels = mx.zeros((batch,), dtype=mx.int32)
    null = case.config.unet.num_classes

    def step() -> None:
        out = guided_output(case.forward, case.x_t, t_batch, labels, guidance, null)
        mx.eval(sampler.step(out, t, case.x_t).prev_sample)
    return step


def _latent_vs_pixel_variants(latent_config: train.TrainConfig, sample_batch: int,
                              steps: int) -> tuple[dict, dict[str, Callable[[], None]]]:
    """({"pixel": case, "latent": case, "autoencoder": model}, the callables to time, by name)."""
    autoencoder = use_fast_cpu_layers(Autoencoder(AutoencoderConfig()))  # the default f = 4 model
    autoencoder.eval()
    factor = autoencoder.config.downsampling_factor
    mx.random.seed(latent_config.seed)
    cases = {"pixel": _MLXCase(pixel_twin(latent_config, factor), sample_batch),
             "latent": _MLXCase(latent_config, sample_batch)}
    images = data.to_uint8(cases["pixel"].x0)  # the training batch as the images a data set holds
    dataset = data.Dataset(images, np.zeros(len(images), dtype=np.int64), ("style",))
    variants = {}
    for side, case in cases.items():
        sampler = make_sampler("ddim", case.schedule, steps, prediction=case.config.prediction,
                               clip_x0=side == "pixel")  # as `pipeline.make_model_sampler`
        variants[f"{side}_train"] = case.train_step
        variants[f"{side}_sample_step"] = _guided_ddim_step(case, sampler, DEFAULT_GUIDANCE)
    variants["decode"] = partial(decode_to_images, autoencoder, cases["latent"].x_t)  # numpy: evaluated
    variants["encode"] = partial(encode_dataset, autoencoder, dataset)
    return {**cases, "autoencoder": autoencoder}, variants


def _side_figures(case: _MLXCase, train_s: float, sample_step_s: float, sample_batch: int, steps: int,
                  decode_s: float = 0.0) -> dict:
    """One side of `bench_latent_vs_pixel`: its network, and per image its training and sampling cost
    (`steps` guided steps timed at `sample_batch` images, plus `decode_s` seconds of decoding)."""
    config = case.config
    step_s = sample_step_s / sample_batch
    return {"input_shape": [config.image_size, config.image_size, config.unet.in_channels],
            "attention_resolutions": list(config.unet.attention_resolutions),
            "parameters": parameter_count(case.model),
            "gflop_per_image": round(count_flops(config.unet) / 1e9, 4),
            "train_img_s": round(config.batch_size / train_s, 3),
            "sample_step_s_per_img": round(step_s, 6),
            "sample_img_s": float(f"{1 / (steps * step_s + decode_s):.4g}")}


def bench_latent_vs_pixel(repeats: int = 5, warmup: int = 2, sample_batch: int = SAMPLE_BATCH,
                          batch_size: int | None = None, steps: int = SAMPLE_STEPS) -> dict:
    """What latent diffusion saves per 64 px image: `LATENT_PRESET` on 16x16x4 latents against its
    `pixel_twin` on 64x64x3 pixels, timed interleaved in one process (Rombach et al. 2022,
    "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv:2112.10752).

    Training: images/s of each compiled train step at the same batch; the latent one runs on
    pre-encoded latents, as the Trainer does: the data set is encoded once (`latent.encode_dataset`,
    each image and its mirror), a one-off cost reported as `encode_s_per_img`. Sampling: per image,
    `steps` guided DDIM steps (`_guided_ddim_step`, `DEFAULT_GUIDANCE`, timed at `sample_batch`) and,
    for the latent model, its decoding (`latent.decode_to_images`, `decode_s_per_img`). Weights are
    random: the cost does not depend on them. `latent_*_speedup` = pixel cost / latent cost per image.
    Both batches are capped at `LATENT_VS_PIXEL_MAX_BATCH` (memory).
    """
    sample_batch = min(sample_batch, LATENT_VS_PIXEL_MAX_BATCH)
    batch_size = min(batch_size or train.PRESETS[LATENT_PRESET].batch_size, LATENT_VS_PIXEL_MAX_BATCH)
    parts, variants = _latent_vs_pixel_variants(_bench_config(LATENT_PRESET, batch_size), sample_batch, steps)
    timed = {name: t["wall"] for name, t in time_interleaved(variants, repeats, warmup).items()}
    decode_s = timed["decode"] / sample_batch
    pixel, latent = (_side_figures(parts[side], timed[f"{side}_train"], timed[f"{side}_sample_step"],
                                   sample_batch, steps, decode_s if side == "latent" else 0.0)
                     for side in ("pixel", "latent"))
    latent["decode_s_per_img"] = round(decode_s, 6)
    latent["encode_s_per_img"] = round(timed["encode"] / parts["latent"].config.batch_size, 6)
    return {
        "compared": f"{LATENT_PRESET} UNet on 16x16x4 latents of the f=4 autoencoder (decoder included in "
                    "sampling) vs the same UNet on 64x64x3 pixels, attention at the same levels",
        "batch_size": parts["latent"].config.batch_size, "sample_batch": sample_batch, "sampler": "ddim",
        "sample_steps": steps, "guidance": DEFAULT_GUIDANCE,
        "autoencoder_parameters": parameter_count(parts["autoencoder"]), "pixel": pixel, "latent": latent,
        "latent_train_speedup": round(latent["train_img_s"] / pixel["train_img_s"], 2),
        "latent_sample_speedup": round(latent["sample_img_s"] / pixel["sample_img_s"], 2),
    }


def _blas_off_train_img_s(preset: str, repeats: int, warmup: int, batch_size: int | None) -> float:
    """Train img/s of `preset` in a fresh process that keeps MLX's bundled reference BLAS."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
        "import harness as b; "
        f"r = b.bench_preset({preset!r}, 1.0, None, {repeats}, {warmup}, batch_size={batch_size!r}, "
        "sample=False); print(json.dumps(r))"
    )
    env = {**os.environ, blas.ENV_VAR: "off", streams.ENV_VAR: str(streams.workers())}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the reference-BLAS run failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["mlx_train_img_s"])


def run_bench(presets: tuple[str, ...] | list[str] = DEFAULT_PRESETS, repeats: int = 5, warmup: int = 2,
              sample_batch: int = SAMPLE_BATCH, batch_size: int | None = None, use_torch: bool = True,
              blas_compare: bool = False, threads: int | None = None) -> dict:
    """Benchmark every preset in `presets`; one JSON-safe dict (see the module docstring).

    Top-level `mlx_*`, `torch_*` and `*_ratio_mlx_over_torch` fields repeat those of the
    first preset (the headline). `blas_compare` also times the first preset's training in a
    subprocess with `DIFFUSION_UTILS_BLAS=off` and reports `blas_speedup`.
    """
    presets = list(presets)
    if not presets:
        raise ValueError("bench needs at least one preset")
    for name in presets:
        train.get_preset(name)  # one-line ValueError for an unknown name
    if repeats < 1 or warmup < 0 or sample_batch < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError("bench needs --repeats >= 1, --warmup >= 0, --sample-batch >= 1 and --batch >= 1")
    if threads is not None and not 1 <= threads <= streams.cpu_cores():
        raise ValueError(f"bench needs --threads between 1 and this machine's {streams.cpu_cores()} cores, "
                         f"got {threads}")
    threads = threads or streams.cpu_cores()
    blas.set_blas_threads(threads)
    sgemm = blas.sgemm_gflops()  # the ceiling: one big sgemm on all `threads` cores
    workers = streams.set_workers(threads, cores=threads)  # MLX: a stream per core, one OpenBLAS thread each
    reference = load_torch_reference() if use_torch else "disabled (--no-torch)"
    torch_version = None
    if not isinstance(reference, str):
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        torch_version = torch.__version__
    report = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "mlx": mx.__version__, "device": str(mx.default_device()), "blas": blas.blas_in_use(),
        "blas_core": blas_core(), "threads": threads, "mlx_streams": workers,
        "blas_threads": blas.blas_threads(), "torch": torch_version,
        "torch_skipped": reference if isinstance(reference, str) else None,
        "repeats": repeats, "warmup": warmup, "sgemm_gflops": round(sgemm, 1),
        "flops_counted": "flops.count_flops: 2 per multiply-add of convs, linears and attention "
                         "matmuls; training counts 3x the forward",
        "presets": {},
    }
    for name in presets:
        report["presets"][name] = bench_preset(
            name, sgemm, None if isinstance(reference, str) else reference, repeats, warmup,
            sample_batch, batch_size)
    headline = report["presets"][presets[0]]
    report["headline_preset"] = presets[0]
    for key, value in headline.items():
        if key.startswith(("mlx_", "torch_")) or key.endswith("_mlx_over_torch"):
            report[key] = value
    report["latent_vs_pixel"] = bench_latent_vs_pixel(repeats, warmup, sample_batch, batch_size)
    for key in ("latent_train_speedup", "latent_sample_speedup"):
        report[key] = report["latent_vs_pixel"][key]
    report["blas_speedup"] = None
    if blas_compare:
        off = _blas_off_train_img_s(presets[0], max(1, min(repeats, 2)), min(warmup, 1), batch_size)
        report["blas_off_train_img_s"] = round(off, 3)
        report["blas_speedup"] = round(headline["mlx_train_img_s"] / off, 2)
    return report


def _markdown_table(first_title: str, rows: dict[str, dict], cols: list[tuple[str, str]]) -> list[str]:
    """The lines of a Markdown table: one row per `rows` entry (its name first), one column per
    (key, title) of `cols`; a missing key shows as "-"."""
    lines = [f"| {first_title} | " + " | ".join(title for _, title in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(row.get(key, "-")) for key, _ in cols) + " |")
    return lines


def format_table(report: dict) -> str:
    """The report as a small Markdown table, one row per preset."""
    cols = [("parameters", "params"), ("gflop_per_image", "GFLOP/img"), ("batch_size", "batch"),
            ("mlx_train_img_s", "MLX train img/s"), ("torch_train_img_s", "torch train img/s"),
            ("train_ratio_mlx_over_torch", "train MLX/torch"), ("mlx_train_mfu", "train MFU"),
            ("mlx_sample_img_s", "MLX sample img/s"), ("torch_sample_img_s", "torch sample img/s"),
            ("sample_ratio_mlx_over_torch", "sample MLX/torch"),
            ("mlx_train_peak_memory_mb", "train peak MB")]
    lines = _markdown_table("preset", report["presets"], cols)
    core = f", {report['blas_core']} kernels" if report["blas_core"] else ""
    notes = [f"sgemm ceiling {report['sgemm_gflops']} GFLOP/s ({report['blas']}{core}), "
             f"{report['threads']} threads (MLX: {report['mlx_streams']} streams), "
             f"MLX {report['mlx']} on {report['device']}"]
    if report["torch_skipped"]:
        notes.append(f"PyTorch comparison skipped: {report['torch_skipped']}")
    else:
        notes.append(f"PyTorch {report['torch']}")
    if report["blas_speedup"] is not None:
        notes.append(f"fast BLAS vs MLX's bundled BLAS, {report['headline_preset']} training: "
                     f"{report['blas_speedup']}x ({report['blas_off_train_img_s']} img/s without)")
    return "\n".join(lines + [""] + notes + ["", _format_latent_vs_pixel(report["latent_vs_pixel"])])


def _format_latent_vs_pixel(comparison: dict) -> str:
    """`bench_latent_vs_pixel`'s report as a small Markdown table, pixel row above latent row."""
    cols = [("input_shape", "input"), ("attention_resolutions", "attention at"), ("parameters", "params"),
            ("gflop_per_image", "GFLOP/img"), ("train_img_s", "train img/s"),
            ("sample_img_s", "sample img/s"), ("decode_s_per_img", "decode s/img"),
            ("encode_s_per_img", "encode s/img (once)")]
    lines = _markdown_table("64 px images", {side: comparison[side] for side in ("pixel", "latent")}, cols)
    return "\n".join(lines + ["", (
        f"latent diffusion is {comparison['latent_train_speedup']}x cheaper per trained image and "
        f"{comparison['latent_sample_speedup']}x per sampled image ({comparison['sample_steps']} DDIM steps, "
        f"guidance {comparison['guidance']}): {comparison['compared']}; training batch "
        f"{comparison['batch_size']}, sampling batch {comparison['sample_batch']}")])
