"""Checkpoints: a folder of safetensors files plus one JSON file, written atomically. No pickle.

A checkpoint is a directory (by default `<run>/checkpoint/`):

    model.safetensors       the raw weights (flattened names, e.g. `down.0.res_blocks.0.conv1.weight`)
    ema.safetensors         the exponential moving average of the weights (what samplers use)
    optimizer.safetensors   AdamW's moments and step count (only needed to resume training)
    config.json             format version, the training config (including the UNet config),
                            the schedule config, class names, step, seed, data-iterator position,
                            MLX random state, loss history, and the SHA-256 of every file above

Writes are atomic: the new checkpoint is written into a hidden sibling directory, every file
and the directory are fsynced, then the old checkpoint is renamed to `<name>.prev`, the new
one renamed into place, and `.prev` deleted. Whenever the process dies, either `<name>` or
`<name>.prev` is a complete checkpoint, and `find_checkpoint` picks it up. `config.json` is
written last and holds the checksums, so a half-written or damaged file is always detected.

Reads are consistent while a run saves into the same folder: `load_model` reads config.json
again after loading, and when a save swapped the checkpoint meanwhile (a checksum or a file
seemingly wrong), it loads again. Every tensor loaded is checked to be finite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusion_utils.cpu.layers import use_fast_cpu_sampling
from diffusion_utils.files import fsync_path
from diffusion_utils.schedules import NoiseSchedule
from diffusion_utils.unet import UNet, UNetConfig

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

FORMAT = "diffusion_utils.checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE, EMA_FILE, OPTIMIZER_FILE = "model.safetensors", "ema.safetensors", "optimizer.safetensors"
CHECKPOINT_DIR = "checkpoint"  # inside a run folder
PREVIOUS_SUFFIX = ".prev"
LOAD_ATTEMPTS = 50  # a load that raced a save is repeated; each save ends a race within milliseconds


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flat_arrays(tree) -> dict[str, mx.array]:
    """A parameter or optimizer-state tree as {dotted name: array}, the safetensors layout."""
    return dict(tree_flatten(tree))


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, dict[str, mx.array]], meta: dict) -> Path:
    """Write a checkpoint directory at `path` atomically; returns `path`.

    arrays: {file name: {tensor name: array}}, e.g. {"model.safetensors": flat_arrays(model.parameters())}.
    meta: JSON-safe dict written to config.json, plus `format`, `format_version` and `files`
    (the SHA-256 of each array file). A crash at any point leaves the previous checkpoint loadable.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        files = {}
        for name, tensors in arrays.items():
            mx.save_safetensors(str(tmp / name), tensors)
            fsync_path(tmp / name)
            files[name] = _sha256(tmp / name)
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "files": files}
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_path(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, RuntimeError):  # how MLX reports a failed write ("[write] Unable to write")
            raise OSError(f"could not write the checkpoint {target}: {err}") from None
        raise
    previous = target.with_name(target.name + PREVIOUS_SUFFIX)
    if target.exists():
        if previous.exists():  # a complete .prev next to a complete target: the older one goes
            shutil.rmtree(previous)
        os.rename(target, previous)
    os.rename(tmp, target)
    fsync_path(target.parent)
    if previous.exists():
        shutil.rmtree(previous)
    return target


def _remove_stale_temporaries(target: Path) -> None:
    """Delete the temporary folders that crashed saves left beside `target` (those of live processes stay)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name[len(f".{target.name}.tmp-"):].split("-")[0]
        if not (pid.isdigit() and _process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory that `path` names: itself, or `<path>/checkpoint` for a run folder.

    Falls back to `<name>.prev` when a crash interrupted the swap of a new checkpoint.
    Raises FileNotFoundError (one line) when there is none.
    """
    p = Path(os.path.abspath(Path(path).expanduser()))  # "." and "" have no name to add ".prev" to
    for directory in (p, p / CHECKPOINT_DIR):
        for candidate in (directory, directory.with_name(directory.name + PREVIOUS_SUFFIX)):
            if (candidate / CONFIG_FILE).is_file():
                return candidate
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    for candidate in (p, p / CHECKPOINT_DIR):
        if candidate.is_dir() and any(candidate.glob("*.safetensors")):
            raise FileNotFoundError(f"{candidate / CONFIG_FILE}: missing (incomplete checkpoint)")
    raise FileNotFoundError(f"no checkpoint in {p} (expected {CONFIG_FILE} there or in {p / CHECKPOINT_DIR})")


def has_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` (a run folder or a checkpoint directory) holds a checkpoint, even a broken one."""
    try:
        find_checkpoint(path)
    except FileNotFoundError as err:
        return "incomplete checkpoint" in str(err)
    return True


def read_config(path: str | os.PathLike) -> tuple[Path, dict]:
    """(checkpoint directory, its parsed and checked config.json) for a run folder or checkpoint."""
    directory = find_checkpoint(path)
    file = directory / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err}); the checkpoint is corrupt") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{file}: not a diffusion_utils checkpoint config")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: checkpoint format version {config.get('format_version')!r}, "
                         f"this code reads version {FORMAT_VERSION}")
    for key in ("train_config", "schedule", "class_names", "step", "files"):
        if key not in config:
            raise ValueError(f"{file}: missing the {key!r} entry")
    _check_entries(file, config)
    return directory, config


def _check_entries(file: Path, config: dict) -> None:
    """One-line ValueError unless step, files and class_names have the types and ranges a loader needs."""
    step, files, names = config["step"], config["files"], config["class_names"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{file}: 'step' must be an integer >= 0, got {step!r}; the checkpoint is corrupt")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError(f"{file}: 'files' must map file names to SHA-256 checksums, got {files!r}")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{file}: 'class_names' must be a list of names, got {names!r}")


def load_arrays(directory: Path, config: dict, name: str) -> dict[str, mx.array]:
    """The tensors of one checkpoint file, after checking that it exists and its checksum matches."""
    file = directory / name
    if name not in config["files"]:
        raise ValueError(f"{file}: this checkpoint was saved without it")
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing")
    if _sha256(file) != config["files"][name]:
        raise ValueError(f"{file}: checksum mismatch (the file is truncated or corrupt)")
    try:
        arrays = mx.load(str(file))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{file}: unreadable safetensors ({err})") from None
    check_finite(file, arrays)
    return arrays


def check_finite(file: Path, arrays: dict[str, mx.array]) -> None:
    """Raise a one-line ValueError naming the first tensor holding a NaN or an infinity."""
    for key, value in arrays.items():
        if mx.issubdtype(value.dtype, mx.inexact) and not mx.all(mx.isfinite(value)).item():
            raise ValueError(f"{file}: tensor {key} holds NaN or infinite values; the weights are unusable "
                             "(resume from an earlier checkpoint or retrain)")


def check_arrays(file: Path, arrays: dict[str, mx.array], expected: dict[str, mx.array]) -> None:
    """Raise a one-line ValueError unless `arrays` has exactly the names and shapes of `expected`."""
    missing, unexpected = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ValueError(f"{file}: does not match the model in {CONFIG_FILE} ({detail}"
                         f"{', ...' if len(missing or unexpected) > 3 else ''})")
    for key, value in expected.items():
        if arrays[key].shape != value.shape:
            raise ValueError(f"{file}: does not match the model in {CONFIG_FILE} ({key} has shape "
                             f"{tuple(arrays[key].shape)}, the model needs {tuple(value.shape)})")


def load_weights(model: UNet, directory: Path, config: dict, name: str) -> UNet:
    """Load one weights file into `model` after checking names and shapes; returns the model."""
    arrays = load_arrays(directory, config, name)
    check_arrays(directory / name, arrays, flat_arrays(model.parameters()))
    model.update(tree_unflatten(list(arrays.items())))
    return model


def build_model(directory: Path, config: dict) -> UNet:
    """A freshly initialised UNet with the architecture stored in config.json, ready to sample on this
    machine (`use_fast_cpu_sampling`: nothing on a GPU)."""
    try:
        return use_fast_cpu_sampling(UNet(UNetConfig.from_dict(config["train_config"]["unet"])))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG_FILE}: bad UNet config ({err})") from None


@dataclass(frozen=True)
class ModelInfo:
    """What a sampler or evaluator needs to know about a trained model (`load_model` returns one).

    class_names: the data set's classes, in label order. prediction: what the network outputs,
    "eps" (Ho et al. 2020) or "v" (Salimans & Ho 2022). image_size: the side S of the images the
    model makes (samples are (S, S, 3); for a latent model, after decoding). step: optimiser steps
    trained. num_classes: the UNet's classes (0 = unconditional). train_config: the training config
    as stored in config.json (`TrainConfig.to_dict()`). path: the checkpoint directory (None for a
    model still in training). ema: True when the EMA weights were loaded. autoencoder: a latent
    model's `autoencoder.Autoencoder` (None in pixel space): the denoiser works on its scaled
    latents, `sample_shape`, and `pipeline.sample_model` decodes them (see `latent.py`).
    """

    class_names: tuple[str, ...]
    prediction: str
    image_size: int
    step: int
    num_classes: int
    train_config: dict
    path: Path | None = None
    ema: bool = True
    autoencoder: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_train_config(cls, train_config: dict, class_names, step: int, path: Path | None = None,
                          ema: bool = True, autoencoder=None) -> ModelInfo:
        """The info of a model trained with `train_config` (a `TrainConfig.to_dict()`) for `step` steps;
        `autoencoder`: a latent model's, whose downsampling factor turns the UNet's side into pixels."""
        factor = autoencoder.config.downsampling_factor if autoencoder is not None else 1
        return cls(class_names=tuple(class_names), prediction=train_config.get("prediction", "eps"),
                   image_size=int(train_config["unet"]["image_size"]) * factor, step=int(step),
                   num_classes=int(train_config["unet"]["num_classes"]), train_config=train_config,
                   path=path, ema=ema, autoencoder=autoencoder)

    @property
    def latent(self) -> bool:
        """True for a latent diffusion model (the denoiser's samples are decoded by `autoencoder`)."""
        return self.autoencoder is not None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of what the denoiser samples: (S, S, 3) pixels, or a latent model's (S/f, S/f, c)."""
        if not self.latent:
            return (self.image_size, self.image_size, 3)
        side = self.image_size // self.autoencoder.config.downsampling_factor
        return (side, side, self.autoencoder.config.latent_channels)

    @property
    def null_label(self) -> int | None:
        """The "no class" label of classifier-free guidance (= num_classes); None when unconditional."""
        return self.num_classes if self.num_classes > 0 else None

    @property
    def styles(self) -> tuple[str, ...]:
        """The class names a sampler can ask for: `class_names`, or () for an unconditional model."""
        return self.class_names if self.num_classes else ()


def read_consistently(path: str | os.PathLike, load):
    """`load(directory, config)` on the checkpoint at `path`, repeated when a save swapped it meanwhile.

    A run may save into `path` while we read: a file then seems missing or mismatched, or
    config.json changes under us. A failure, or a success, after which the checkpoint reads
    differently is retried (up to LOAD_ATTEMPTS times); a failure that repeats is raised.
    """
    for attempt in range(LOAD_ATTEMPTS):
        seen = None
        try:
            seen = read_config(path)
            result = load(*seen)
        except (ValueError, FileNotFoundError) as err:
            if attempt == LOAD_ATTEMPTS - 1 or _state_of(path) in (seen, str(err)):
                raise
        else:
            if _state_of(path) == seen:
                return result
        time.sleep(0.005 * (attempt + 1))
    raise ValueError(f"{path}: the checkpoint kept changing while it was read; try again")


def _state_of(path) -> tuple[Path, dict] | str:
    """`read_config(path)`, or the message it fails with."""
    try:
        return read_config(path)
    except (ValueError, FileNotFoundError) as err:
        return str(err)


def _embedded_autoencoder(directory: Path, config: dict):
    """The autoencoder a latent checkpoint holds (`latent.load_embedded`); None in pixel space."""
    if "autoencoder" not in config:
        return None
    from diffusion_utils import latent  # latent -> autoencoder -> this module

    return latent.load_embedded(directory, config)


def load_model(path: str | os.PathLike, ema: bool = True) -> tuple[UNet, NoiseSchedule, ModelInfo]:
    """Rebuild a trained denoiser for sampling or evaluation: (model, schedule, info).

    path: a checkpoint directory or a run folder holding `checkpoint/`. ema=True loads the
    EMA weights (better samples), False the raw ones. The model is in eval mode.
    info: a `ModelInfo` (class names, prediction type, image size, step, ...).
    A latent checkpoint also loads the autoencoder it holds (`info.autoencoder`, `latent.py`).
    Corrupt, truncated, missing or mismatched files raise ValueError / FileNotFoundError (one line).
    """
    name = EMA_FILE if ema else MODEL_FILE
    directory, config, model, autoencoder = read_consistently(
        path, lambda d, c: (d, c, load_weights(build_model(d, c), d, c, name), _embedded_autoencoder(d, c)))
    model.eval()
    try:
        schedule = NoiseSchedule.from_config(config["schedule"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG_FILE}: bad schedule config ({err})") from None
    info = ModelInfo.from_train_config(config["train_config"], config["class_names"], config["step"],
                                       path=directory, ema=ema, autoencoder=autoencoder)
    return model, schedule, info
