"""Tests for diffusion_utils.classifier: the style classifier (real, tiny training) and its cache."""

import json
import warnings

from diffusion_utils import classifier, styles

import numpy as np
import pytest

# --------------------------------------------------------------------------- the classifier


TINY = dict(n_train=512, n_test=256, steps=60)  # a quick classifier for the tests


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("classifier")
    model, info = classifier.load_or_train_classifier(
        cache_dir, image_size=16, progress=False, **TINY
    )
    return cache_dir, model, info


def test_classifier_learns_real_styles_quickly(tiny_classifier):
    _, model, info = tiny_classifier
    chance = 1 / len(styles.STYLES)
    images, labels = styles.make_styles(256, size=16, seed=7)
    accuracy = classifier.style_accuracy(model, images, labels)
    assert accuracy > max(0.7, 4 * chance)
    assert info["held_out_accuracy"] > max(0.7, 4 * chance)
    features = classifier.embed(model, images[:5])
    assert features.shape == (5, model.config.widths[-1]) and np.isfinite(features).all()


def test_classifier_cache_round_trip(tiny_classifier, monkeypatch):
    cache_dir, model, info = tiny_classifier

    def no_training(*args, **kwargs):
        raise AssertionError("a valid cache must not be retrained")

    monkeypatch.setattr(classifier, "train_style_classifier", no_training)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, loaded_info = classifier.load_or_train_classifier(
            cache_dir, image_size=16, progress=False, **TINY
        )
    assert loaded_info == info
    images, _ = styles.make_styles(16, size=16, seed=9)
    np.testing.assert_array_equal(classifier.embed(loaded, images), classifier.embed(model, images))
    assert not list(cache_dir.glob(".*"))  # no temporary files left behind


def _copy_cache(src, dst):
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())


def test_stale_cache_is_retrained(tiny_classifier, tmp_path):
    _copy_cache(tiny_classifier[0], tmp_path)
    config_path = tmp_path / "style_classifier_16px.json"
    info = json.loads(config_path.read_text())
    info["key"]["class_names"] = ["not", "these", "styles"]
    config_path.write_text(json.dumps(info))
    with pytest.warns(RuntimeWarning, match="other settings"):
        _, new_info = classifier.load_or_train_classifier(
            tmp_path, image_size=16, progress=False, **TINY
        )
    assert new_info["key"]["class_names"] == list(styles.STYLES)
    assert json.loads(config_path.read_text())["key"]["class_names"] == list(styles.STYLES)


def test_cache_is_retrained_when_the_styles_change(tiny_classifier, tmp_path, monkeypatch):
    _copy_cache(tiny_classifier[0], tmp_path)
    draw = styles.held_out_styles

    def relabelled(*args, **kwargs):  # as if the generator now drew other pictures per label
        images, labels = draw(*args, **kwargs)
        return images, (labels + 1) % len(styles.STYLES)

    monkeypatch.setattr(styles, "held_out_styles", relabelled)
    with pytest.warns(RuntimeWarning, match="other styles"):
        classifier.load_or_train_classifier(tmp_path, image_size=16, progress=False, **TINY)


@pytest.mark.parametrize("broken", ["weights", "config", "missing_weights"])
def test_corrupt_cache_is_retrained_with_a_warning(tiny_classifier, tmp_path, broken):
    _copy_cache(tiny_classifier[0], tmp_path)
    weights = tmp_path / "style_classifier_16px.safetensors"
    if broken == "weights":
        weights.write_bytes(b"not a safetensors file")
    elif broken == "config":
        (tmp_path / "style_classifier_16px.json").write_text("{ truncated")
    else:
        weights.unlink()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        model, _ = classifier.load_or_train_classifier(
            tmp_path, image_size=16, progress=False, **TINY
        )
    with warnings.catch_warnings():  # the rewritten cache is valid again
        warnings.simplefilter("error")
        classifier.load_or_train_classifier(tmp_path, image_size=16, progress=False, **TINY)
    images, _ = styles.make_styles(8, size=16, seed=9)
    assert np.isfinite(classifier.embed(model, images)).all()
