"""Command-line interface: `python -m diffusion_utils <command> ...`.

One sub-command per job (the README lists them): doctor, notebooks, train, train-autoencoder,
sample, evaluate, bench. Each `_cmd_*` function is thin: it parses nothing itself and calls the
library, so the notebooks and the command line share one code path. Bad input (ValueError, FileNotFoundError)
is printed as a one-line `error: ...` with exit status 2, a failing disk (OSError: read-only, full)
with status 1, never as a traceback. Numbers are range-checked by `_check_range` before any work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import diffusion_utils  # noqa: F401  (sets up the fast BLAS before mlx.core is imported)
from diffusion_utils import pipeline, samplers
from diffusion_utils.paths import SHIPPED_MODEL_DIR

MAX_SAMPLES = 10_000  # per sample/evaluate call: ~30 MB of 32x32 images; more is several calls (seeds)
MAX_SEED = 2**64 - 1  # MLX's random seed is an unsigned 64-bit integer
AUTOENCODER_STEPS = 4000  # train-autoencoder's default: a starting point, not yet a measured recipe
AUTOENCODER_CHECKPOINT_EVERY = 500  # steps; Ctrl-C loses at most this many


def _check_range(option: str, value, low, high=None):
    """`value` of a command-line option, or a one-line ValueError when it lies outside [low, high]."""
    if value is not None and (value < low or (high is not None and value > high)):
        allowed = f"between {low:,} and {high:,}" if high is not None else f">= {low:,}"
        raise ValueError(f"{option} must be {allowed}, got {value:,}")
    return value


def _print_json(result: dict) -> None:
    print(json.dumps(result, sort_keys=True))


def _cmd_doctor(args) -> int:
    from diffusion_utils import distributed
    from diffusion_utils.cpu import blas, streams

    import mlx.core as mx

    world = distributed.world()
    report = {
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "blas": blas.blas_in_use(),
        "sgemm_gflops": round(blas.sgemm_gflops(), 1),  # before `workers()` sets OpenBLAS's threads
        "streams": streams.workers(),  # a slice of each batch per stream (1 on a GPU)
        "rank": world.rank,  # this process among those started by mlx.launch (0 without it)
        "world_size": world.size,
    }
    if args.json:
        _print_json(report)
    else:
        for key, value in report.items():
            print(f"{key:>13}: {value}")
    return 0


def _cmd_notebooks(args) -> int:
    from diffusion_utils import tutorial

    results = tutorial.run_notebooks(args.out, fast=args.fast, only=args.only)
    print(f"executed {len(results)} notebooks; copies and generated images are in {args.out}/")
    return 0


def _checkpoint_path(path: str | None) -> str:
    """--checkpoint, or the shipped model with a hint when this checkout lacks it."""
    if path is not None:
        return path
    if not SHIPPED_MODEL_DIR.exists():
        raise FileNotFoundError(
            f"the shipped model {SHIPPED_MODEL_DIR} is not in this checkout; pass --checkpoint DIR "
            "(train one with: python -m diffusion_utils train --preset quick --out DIR)"
        )
    return str(SHIPPED_MODEL_DIR)


def _check_sampling(args) -> float:
    """Range-check the options sample and evaluate share; returns eta (0 unless --eta is given)."""
    _check_range("--seed", args.seed, 0, MAX_SEED)
    _check_range("--n", args.n, 1, MAX_SAMPLES)
    _check_range("--steps", args.steps, 1)
    _check_range("--guidance", args.guidance, 0)
    if args.eta is None:
        return 0.0
    if args.sampler != "ddim":
        raise ValueError(f"--eta applies only to --sampler ddim; {args.sampler} has no eta")
    return _check_range("--eta", args.eta, 0, 1)


def _output_paths(args):
    """The checked --out and --save-npz paths of `sample`, validated before any sampling work."""
    from diffusion_utils import files, viz

    out = files.check_output_path(args.out, viz.GRID_FORMATS, "--out")
    if args.save_npz is None:
        return out, None
    npz = files.check_output_path(args.save_npz, (".npz",), "--save-npz")
    if npz.resolve() == out.resolve():
        raise ValueError("--out and --save-npz name the same file; give two names")
    return out, npz


def _cmd_sample(args) -> int:
    from diffusion_utils import checkpoint, files, viz

    import numpy as np

    eta = _check_sampling(args)
    out, npz = _output_paths(args)
    model, schedule, info = checkpoint.load_model(_checkpoint_path(args.checkpoint))
    class_names = info.styles
    settings = pipeline.sampling_settings(info, args.sampler, args.steps, args.guidance)
    one_row_per_style = bool(class_names) and args.style is None
    n = args.n if args.n is not None else (4 * len(class_names) if one_row_per_style else 16)
    start = time.perf_counter()
    images, labels = pipeline.sample_model(
        model, schedule, info, n=n, style=args.style, sampler_name=args.sampler, steps=settings.steps,
        eta=eta, guidance=settings.guidance, seed=args.seed, progress=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    rows = one_row_per_style and n % len(class_names) == 0
    viz.save_grid(images, out, nrow=n // len(class_names) if rows else None)
    what = args.style or ("every style" if class_names else "unconditional")
    print(f"{n} images ({what}) with {args.sampler}, {settings.steps} steps, guidance "
          f"{settings.guidance:g}, seed {args.seed} in {seconds:.1f} s -> {args.out}")
    if rows:
        print("rows, top to bottom: " + ", ".join(class_names))
    if npz is not None:
        files.atomic_write(npz, lambda tmp: np.savez_compressed(tmp, images=images, labels=labels))
        print(f"images {images.dtype}{list(images.shape)} and labels -> {npz}")
    return 0


def _cmd_evaluate(args) -> int:
    from diffusion_utils import metrics

    report = metrics.evaluate_checkpoint(
        _checkpoint_path(args.checkpoint), n=args.n, sampler_name=args.sampler, steps=args.steps,
        eta=_check_sampling(args), guidance=args.guidance, seed=args.seed, cache_dir=args.classifier_dir,
        progress=True,
    )  # fmt: skip
    print(metrics.format_report(report))
    if args.json:
        _print_json(report)
    return 0


def _cmd_train(args) -> int:
    from diffusion_utils import distributed, train

    if not args.out.strip():
        raise ValueError("--out is empty; give the run folder")
    given = {"dataset": args.dataset, "seed": _check_range("--seed", args.seed, 0, MAX_SEED),
             "steps": _check_range("--steps", args.steps, 1),
             "batch_size": _check_range("--batch-size", args.batch_size, 1),
             "checkpoint_every": _check_range("--checkpoint-every", args.checkpoint_every, 0),
             "checkpoint_minutes": _check_range("--checkpoint-minutes", args.checkpoint_minutes, 0)}
    if args.autoencoder is not None:
        from diffusion_utils import latent

        given["autoencoder"] = latent.reference(args.autoencoder)
    config = train.get_preset(args.preset, **{k: v for k, v in given.items() if v is not None})
    try:
        trainer = train.train(config, args.out, resume=args.resume)
    except (train.NonFiniteLossError, distributed.PeerLostError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except train.TrainingInterrupted as stop:
        again = args.argv + ([] if args.resume else ["--resume"])
        print(f"{stop}\nresume with: python -m diffusion_utils {shlex.join(again)}", file=sys.stderr)
        return 128 + stop.signum
    if trainer.world.is_main:
        print(f"step {trainer.step}: checkpoint in {trainer.checkpoint_path}, log in "
              f"{trainer.out_dir / 'train.log'}")
    return 0


def _cmd_train_autoencoder(args) -> int:
    from pathlib import Path

    from diffusion_utils import autoencoder, data, files

    if not args.out.strip():
        raise ValueError("--out is empty; give the run folder")
    _check_range("--steps", args.steps, 1)
    factor = autoencoder.AutoencoderConfig().downsampling_factor
    if _check_range("--size", args.size, 8, 512) % factor:
        raise ValueError(f"--size must be a multiple of {factor} (the autoencoder's downsampling), "
                         f"got {args.size}")
    config = autoencoder.AutoencoderConfig(image_size=args.size,
                                           crop_size=min(args.size, autoencoder.AutoencoderConfig.crop_size))
    try:
        with files.RunLock(args.out):  # before the data loads: a second run into --out fails at once
            images = data.load_dataset(args.data, size=args.size).images
            model, history = autoencoder.train_autoencoder(
                config, images, args.steps, args.out, resume=args.resume,
                checkpoint_every=AUTOENCODER_CHECKPOINT_EVERY)
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    step, _, rec, _ = history[-1]
    print(f"step {step}: L1 reconstruction {rec:.4f}, latent scale factor {model.config.scale_factor:.4f}; "
          f"checkpoint in {Path(args.out) / 'checkpoint'}")
    return 0


def _load_bench_harness():
    """`benchmarks/harness.py` of the repository (a clone or an editable install has it)."""
    import importlib.util

    from diffusion_utils.paths import BENCHMARKS_DIR

    path = BENCHMARKS_DIR / "harness.py"
    if not path.is_file():
        raise FileNotFoundError(f"bench needs {path} (the benchmark harness ships with a clone of the "
                                "repository: run it from one, with `pip install -e .`)")
    spec = importlib.util.spec_from_file_location("harness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cmd_bench(args) -> int:
    bench = _load_bench_harness()
    report = bench.run_bench(
        args.preset or bench.DEFAULT_PRESETS, repeats=args.repeats, warmup=args.warmup,
        sample_batch=args.sample_batch, batch_size=args.batch, use_torch=not args.no_torch,
        blas_compare=args.blas_compare, threads=args.threads,
    )  # fmt: skip
    print(bench.format_table(report))
    if args.json:
        _print_json(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `python -m diffusion_utils` parser: one sub-command per `_add_*` function below."""
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_utils", description="Diffusion models from scratch in MLX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_doctor(sub)
    _add_notebooks(sub)
    _add_train(sub)
    _add_train_autoencoder(sub)
    sampling = _sampling_options()
    _add_sample(sub, sampling)
    _add_evaluate(sub, sampling)
    _add_bench(sub)
    return parser


def _add_doctor(sub) -> None:
    doctor = sub.add_parser("doctor", help="platform, MLX device, BLAS in use and its speed")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.set_defaults(func=_cmd_doctor)


def _add_notebooks(sub) -> None:
    notebooks = sub.add_parser("notebooks", help="execute the notebook series headless")
    notebooks.add_argument("--out", default="outputs", help="folder for executed copies and images")
    notebooks.add_argument("--fast", action="store_true", help="fast mode (TUTORIAL_FAST=1)")
    notebooks.add_argument(
        "--only", nargs="+", metavar="PREFIX", help="run only notebooks starting with these (e.g. 01)"
    )
    notebooks.set_defaults(func=_cmd_notebooks)


def _add_run_folder_options(parser: argparse.ArgumentParser, default_steps: int | None) -> None:
    """--out, --steps and --resume: how train and train-autoencoder name and continue a run folder
    (default_steps None: the preset's)."""
    shown = "the preset's" if default_steps is None else default_steps
    parser.add_argument(
        "--out", required=True, metavar="DIR",
        help="run folder; one that holds a checkpoint is only continued, with --resume",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=default_steps, metavar="N",
        help=f"total optimiser steps of the run (default: {shown}); --resume trains until step N",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


def _add_train(sub) -> None:
    from diffusion_utils.train import PRESETS

    train = sub.add_parser(
        "train", help="train a denoiser from a preset; checkpoints, previews and a log go to --out",
        description="Train the UNet denoiser. A run folder holds checkpoint/, train.log and previews/.",
    )
    train.add_argument(
        "--preset", required=True, choices=list(PRESETS),
        help="smoke: seconds (tests); quick: minutes, 16x16; full: the shipped 32x32 recipe; latent-smoke, "
        "latent64: in an autoencoder's latent space (with --autoencoder)",
    )
    train.add_argument(
        "--dataset", metavar="NAME|PATH",
        help="styles (default), paintings, styles+paintings (the 8 styles + a class of painting crops), "
        "or an image folder whose subfolders are the classes",
    )
    train.add_argument(
        "--autoencoder", metavar="DIR",
        help="latent presets: the train-autoencoder run whose latents to train on (a copy goes into "
        "every checkpoint, so sample needs only --checkpoint)",
    )  # fmt: skip
    _add_run_folder_options(train, default_steps=None)
    train.add_argument("--seed", type=int, metavar="S", help="random seed (default 0)")
    train.add_argument(
        "--batch-size", type=int, metavar="B",
        help="global batch (default: the preset's); under mlx.launch each rank computes B / ranks of it",
    )  # fmt: skip
    train.add_argument(
        "--checkpoint-every", type=int, metavar="N",
        help="save a checkpoint every N steps (default: the preset's; 0: only by time and at the end)",
    )  # fmt: skip
    train.add_argument(
        "--checkpoint-minutes", type=float, metavar="M",
        help="also save once M minutes passed since the last checkpoint (default 10; 0: off). "
        "Ctrl-C or SIGTERM saves one too, then exits 130/143 with the command that resumes",
    )  # fmt: skip
    train.set_defaults(func=_cmd_train)


def _add_train_autoencoder(sub) -> None:
    ae = sub.add_parser(
        "train-autoencoder", help="train the KL autoencoder whose latent space latent presets train in",
        description="Train the autoencoder of latent diffusion (f = 4, 4 latent channels). A run folder "
        "holds checkpoint/ with the weights and the latent scale factor.",
    )  # fmt: skip
    ae.add_argument(
        "--data", default="styles", metavar="NAME|PATH",
        help="styles (default), paintings, styles+paintings (the 8 styles + a class of painting crops), "
        "or an image folder whose subfolders are the classes",
    )  # fmt: skip
    ae.add_argument("--size", type=int, default=64, metavar="S", help="image side in pixels (default 64)")
    _add_run_folder_options(ae, default_steps=AUTOENCODER_STEPS)
    ae.set_defaults(func=_cmd_train_autoencoder)


def _sampling_options() -> argparse.ArgumentParser:
    """The options `sample` and `evaluate` share (a parent parser)."""
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument(
        "--checkpoint", metavar="PATH",
        help="checkpoint directory or training run folder (default: the shipped data/pretrained/styles32)",
    )  # fmt: skip
    sampling.add_argument(
        "--sampler", choices=list(samplers.SAMPLERS), default=pipeline.DEFAULT_SAMPLER,
        help=f"reverse process (default {pipeline.DEFAULT_SAMPLER}: DPM-Solver++(2M) is as good at 10-20 "
        "steps as ddpm at 100, and better than ddim at 50)",
    )  # fmt: skip
    sampling.add_argument(
        "--steps", type=int, metavar="K",
        help="sampling steps, one network call each (default per sampler: "
        + ", ".join(f"{name} {k}" for name, k in pipeline.DEFAULT_STEPS.items()) + "); at most T",
    )  # fmt: skip
    sampling.add_argument(
        "--eta", type=float, metavar="E",
        help="DDIM only: 0 (default) deterministic, 1 = DDPM's posterior noise",
    )  # fmt: skip
    sampling.add_argument(
        "--guidance", type=float, metavar="G",
        help=f"classifier-free guidance scale w >= 0: 0 unconditional, 1 plain conditional, >1 more "
        f"typical of the style, less varied (default {pipeline.DEFAULT_GUIDANCE:g} for a model trained "
        "with styles: the best measured style accuracy, KID unchanged within its noise)",
    )  # fmt: skip
    sampling.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return sampling


def _add_sample(sub, sampling: argparse.ArgumentParser) -> None:
    sample = sub.add_parser(
        "sample", parents=[sampling], help="generate images from a checkpoint into a PNG grid",
        description="Generate images from a trained checkpoint and save them as an enlarged PNG grid.",
    )  # fmt: skip
    sample.add_argument("--style", metavar="NAME", help="one style (default: every style, a row each)")
    sample.add_argument(
        "--n", type=int, metavar="N",
        help=f"number of images, at most {MAX_SAMPLES:,} (default 16 of one style, else 4 per style)",
    )  # fmt: skip
    sample.add_argument(
        "--out", required=True, metavar="PNG", help="where to write the grid (.png, or .jpg/.jpeg for JPEG)"
    )
    sample.add_argument(
        "--save-npz", metavar="NPZ",
        help="also save images (uint8 N x H x W x 3) and labels (-1: none) to this .npz file",
    )  # fmt: skip
    sample.set_defaults(func=_cmd_sample)


def _add_evaluate(sub, sampling: argparse.ArgumentParser) -> None:
    evaluate = sub.add_parser(
        "evaluate", parents=[sampling],
        help="style and structure accuracy, KID and memorisation of a checkpoint",
        description="Sample n images evenly over the styles and measure them with this project's style "
        "classifier: style accuracy, KID next to its real-vs-real floor, and nearest-training-image "
        "distances; and with its structure classifier (luminance only, palette-blind): structure accuracy, "
        "overall and per style. The features are not Inception's: compare runs of this project, not papers.",
    )  # fmt: skip
    evaluate.add_argument("--n", type=int, default=128, metavar="N", help="images to sample (default 128)")
    evaluate.add_argument(
        "--classifier-dir", metavar="DIR",
        help="folder for the style and structure classifiers' caches (default data/pretrained/"
        "style_classifier and data/pretrained/structure_classifier; trained there if missing)",
    )  # fmt: skip
    evaluate.add_argument("--json", action="store_true", help="also print one JSON object (last line)")
    evaluate.set_defaults(func=_cmd_evaluate)


def _add_bench(sub) -> None:
    from diffusion_utils.train import PRESETS

    bench = sub.add_parser(
        "bench", help="training and sampling speed of the presets, MLX next to PyTorch",
        description="Time the compiled train step and the sampling forward pass of each preset's UNet "
        "(median of --repeats after --warmup), with model FLOP utilisation against this machine's sgemm "
        "speed, and the same network in PyTorch when it is installed (benchmarks/torch_unet.py).",
    )  # fmt: skip
    bench.add_argument(
        "--preset", nargs="+", choices=list(PRESETS),
        help="presets to time, the first is the headline (default: quick full)",
    )  # fmt: skip
    bench.add_argument("--repeats", type=int, default=5, metavar="N", help="timed calls (default 5)")
    bench.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed calls first (default 2)")
    bench.add_argument("--batch", type=int, metavar="B", help="training batch (default: the preset's)")
    bench.add_argument(
        "--sample-batch", type=int, default=64, metavar="B", help="images per sampling forward (default 64)"
    )
    bench.add_argument(
        "--threads", type=int, metavar="N",
        help="cores for each framework: PyTorch's threads, MLX's streams (default: every core)",
    )  # fmt: skip
    bench.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    bench.add_argument(
        "--blas-compare", action="store_true",
        help="also time the headline preset's training with MLX's bundled BLAS (a slow subprocess)",
    )  # fmt: skip
    bench.add_argument("--json", action="store_true", help="also print one JSON object (last line)")
    bench.set_defaults(func=_cmd_bench)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to print the command that resumes a run
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # the disk: read-only, full, gone
        print(f"error: {err}", file=sys.stderr)
        return 1
