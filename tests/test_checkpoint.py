"""Checkpoints: round trip, resume = uninterrupted run, atomic writes, clear errors on bad files."""

import json
import shutil
from dataclasses import replace

from diffusion_utils import checkpoint, data, files, train

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

DATASET = data.Dataset(*data.make_styles(64, size=16, seed=1), data.STYLES)


def _config(steps):
    return replace(train.get_preset("smoke"), steps=steps, checkpoint_every=0, batch_size=8)


def _flat(tree):
    return {k: np.array(v) for k, v in tree_flatten(tree)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 4-step smoke run (its Trainer and folder), shared by the read-only tests."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    return train.train(_config(4), out, dataset=DATASET, progress=False), out


def test_round_trip_load_model(run):
    trainer, out = run
    model, schedule, info = checkpoint.load_model(out)
    assert info.step == 4 and info.prediction == "eps" and info.image_size == 16
    assert info.class_names == info.styles == data.STYLES and info.num_classes == info.null_label == 8
    assert info.train_config == trainer.config.to_dict() and info.ema
    assert info == replace(trainer.info, path=info.path)  # the trainer describes the same model
    assert schedule.to_config() == trainer.schedule.to_config()
    loaded, ema = _flat(model.parameters()), _flat(trainer.ema)
    assert loaded.keys() == ema.keys()
    assert all(np.array_equal(loaded[k], ema[k]) for k in ema)  # bit-exact
    raw, _, _ = checkpoint.load_model(out / "checkpoint", ema=False)
    trained = _flat(trainer.model.parameters())
    assert all(np.array_equal(v, trained[k]) for k, v in _flat(raw.parameters()).items())
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["format_version"] == checkpoint.FORMAT_VERSION and len(config["loss_history"]) == 4
    assert not list(out.glob(".checkpoint.tmp-*")) and not (out / "checkpoint.prev").exists()


def test_resume_is_bit_exact(tmp_path):
    whole = train.train(_config(6), tmp_path / "whole", dataset=DATASET, progress=False)
    train.train(_config(3), tmp_path / "split", dataset=DATASET, progress=False)
    resumed = train.train(_config(6), tmp_path / "split", resume=True, dataset=DATASET, progress=False)
    assert resumed.history == whole.history  # same t, noise, label dropout and batches
    for a, b in ((whole.model.parameters(), resumed.model.parameters()), (whole.ema, resumed.ema),
                 (whole.optimizer.state, resumed.optimizer.state)):
        fa, fb = _flat(a), _flat(b)
        assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_resume_accepts_a_new_cadence(tmp_path):
    """Log/checkpoint/preview intervals may change between runs (e.g. a newer preset) without
    changing what is learned: the resumed run equals the uninterrupted one."""
    whole = train.train(_config(6), tmp_path / "whole", dataset=DATASET, progress=False)
    train.train(_config(3), tmp_path / "split", dataset=DATASET, progress=False)
    config = replace(_config(6), log_every=2, checkpoint_every=2)
    resumed = train.train(config, tmp_path / "split", resume=True, dataset=DATASET, progress=False)
    assert resumed.history == whole.history and resumed.config.checkpoint_every == 2


def test_resume_refuses_a_different_config(run, tmp_path):
    _, out = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    with pytest.raises(ValueError, match=r"seed=0 \(asked 5\)"):
        train.train(replace(_config(6), seed=5), copy, resume=True, dataset=DATASET, progress=False)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        train.train(_config(6), copy, dataset=DATASET, progress=False)
    with pytest.raises(ValueError, match="already at step 4"):
        train.Trainer.resume(copy, dataset=DATASET).run(steps=2, progress=False)


def test_crash_mid_write_keeps_the_previous_checkpoint(run, tmp_path, monkeypatch):
    _, out = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    trainer = train.Trainer.resume(copy, dataset=DATASET)
    trainer.run(steps=5, progress=False)  # writes step 5 normally
    before = _flat(checkpoint.load_model(copy)[0].parameters())
    real_save, calls = mx.save_safetensors, []

    def dying_save(path, arrays, *args, **kwargs):
        if calls:
            raise OSError("simulated crash after the first file")
        calls.append(path)
        real_save(path, arrays, *args, **kwargs)

    monkeypatch.setattr(checkpoint.mx, "save_safetensors", dying_save)
    with pytest.raises(OSError, match="simulated crash"):
        trainer.run(steps=6, progress=False)  # step 6 trains, then its checkpoint write dies
    monkeypatch.undo()
    model, _, info = checkpoint.load_model(copy)
    assert info.step == 5 and len(calls) == 1
    after = _flat(model.parameters())
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # killed between the two renames: only checkpoint.prev exists, and it is found
    (copy / "checkpoint").rename(copy / "checkpoint.prev")
    assert checkpoint.load_model(copy)[2].step == 5
    trainer.save()  # the next save completes the swap and cleans up
    assert checkpoint.load_model(copy)[2].step == 6
    assert sorted(p.name for p in copy.iterdir()) == [files.LOCK_FILE, "checkpoint", "train.log"]


def _broken_copy(run, tmp_path):
    _, out = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy / "checkpoint"


@pytest.mark.parametrize("damage, error, message", [
    ("truncate", ValueError, "ema.safetensors: checksum mismatch"),
    ("remove", FileNotFoundError, "ema.safetensors: missing"),
    ("garbage_json", ValueError, "config.json: not valid JSON"),
    ("no_config", FileNotFoundError, "config.json: missing"),
    ("other_unet", ValueError, "ema.safetensors: does not match the model in config.json"),
    ("future_version", ValueError, "format version 99"),
    ("unreadable", ValueError, "ema.safetensors: unreadable safetensors"),
])
def test_damaged_checkpoint_gives_one_line_error(run, tmp_path, damage, error, message):
    ckpt = _broken_copy(run, tmp_path)
    ema, config_file = ckpt / "ema.safetensors", ckpt / "config.json"
    config = json.loads(config_file.read_text())
    if damage == "truncate":
        ema.write_bytes(ema.read_bytes()[:1000])
    elif damage == "remove":
        ema.unlink()
    elif damage == "garbage_json":
        config_file.write_text("{not json")
    elif damage == "no_config":
        config_file.unlink()
    elif damage == "other_unet":
        config["train_config"]["unet"]["base_channels"] = 8
        config_file.write_text(json.dumps(config))
    elif damage == "future_version":
        config["format_version"] = 99
        config_file.write_text(json.dumps(config))
    elif damage == "unreadable":  # garbage whose checksum is recorded: the reader itself must fail
        ema.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
        config["files"]["ema.safetensors"] = checkpoint._sha256(ema)
        config_file.write_text(json.dumps(config))
    with pytest.raises(error) as err:
        checkpoint.load_model(ckpt.parent)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        checkpoint.load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoint.load_model(tmp_path)
