"""Command-line interface: `python -m diffusion_utils <command> ...`.

One sub-command per job (contract in DESIGN.md): doctor, notebooks, train, sample, evaluate,
bench. Each `_cmd_*` function is thin: it parses nothing itself and calls the library, so the
notebooks and the command line share one code path. Bad input (ValueError, FileNotFoundError)
is printed as a one-line `error: ...` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import diffusion_utils  # noqa: F401  (sets up the fast BLAS before mlx.core is imported)


def _print_json(result: dict) -> None:
    print(json.dumps(result, sort_keys=True))


def _cmd_doctor(args) -> int:
    import mlx.core as mx

    from diffusion_utils import backend

    report = {
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "blas": backend.blas_in_use(),
        "sgemm_gflops": round(backend.sgemm_gflops(), 1),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffusion_utils", description="Diffusion models from scratch in MLX."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser("doctor", help="platform, MLX device, BLAS in use and its speed")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.set_defaults(func=_cmd_doctor)

    notebooks = sub.add_parser("notebooks", help="execute the notebook series headless")
    notebooks.add_argument("--out", default="outputs", help="folder for executed copies and images")
    notebooks.add_argument("--fast", action="store_true", help="fast mode (TUTORIAL_FAST=1)")
    notebooks.add_argument(
        "--only", nargs="+", metavar="PREFIX", help="run only notebooks starting with these (e.g. 01)"
    )
    notebooks.set_defaults(func=_cmd_notebooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
