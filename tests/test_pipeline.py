"""pipeline: the glue between a loaded checkpoint and the samplers (labels, defaults, one call).

A tiny random UNet stands in for a trained model: these tests check what the glue decides
(labels, settings, errors) and that it adds nothing to the samplers' results.
"""

from diffusion_utils import pipeline, samplers, schedules
from diffusion_utils.checkpoint import ModelInfo

import numpy as np
import pytest


def _info(num_classes: int, prediction: str = "v") -> ModelInfo:
    names = ("a", "b", "c")[:num_classes]
    return ModelInfo(class_names=names, prediction=prediction, image_size=8, step=0,
                     num_classes=num_classes, train_config={})


@pytest.fixture(scope="module")
def tiny(make_tiny_unet):
    return make_tiny_unet(num_classes=3), schedules.make_schedule("cosine", 50)


def test_style_labels_fill_rows_in_class_order():
    assert pipeline.style_labels(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert pipeline.style_labels(4, 3).tolist() == [0, 0, 1, 2]  # the first n % C get one more
    assert pipeline.style_labels(3, 3, style=2).tolist() == [2, 2, 2]
    assert pipeline.style_labels(3, 0).tolist() == [-1, -1, -1]  # unconditional


def test_model_info_null_label_and_styles():
    assert _info(3).null_label == 3 and _info(3).styles == ("a", "b", "c")
    assert _info(0).null_label is None and _info(0).styles == ()
    assert pipeline.style_index("b", _info(3).styles) == 1 and pipeline.style_index(2, ("a", "b", "c")) == 2
    with pytest.raises(ValueError, match="this model knows a, b, c"):
        pipeline.style_index("d", ("a", "b", "c"))


def test_sampling_settings_fill_in_the_measured_defaults():
    assert pipeline.sampling_settings(_info(3)) == ("dpm++", 20, pipeline.DEFAULT_GUIDANCE)
    assert pipeline.sampling_settings(_info(3), "ddim", 7, 1.5) == ("ddim", 7, 1.5)
    assert pipeline.sampling_settings(_info(0), "ddpm").guidance == 1.0  # unconditional: no guidance
    with pytest.raises(ValueError, match="needs a model trained with styles"):
        pipeline.sampling_settings(_info(0), guidance=2.0)
    with pytest.raises(ValueError, match="unknown sampler"):
        pipeline.sampling_settings(_info(3), "euler")


def test_sample_model_is_the_sampler_with_the_models_settings(tiny):
    model, schedule = tiny
    info = _info(3)
    images, labels = pipeline.sample_model(model, schedule, info, n=5, sampler_name="ddim", steps=3,
                                           eta=0.5, guidance=2.0, seed=7, batch_size=2)
    assert labels.tolist() == [0, 0, 1, 1, 2] and images.shape == (5, 8, 8, 3)
    sampler = samplers.DDIMSampler(schedule, eta=0.5, prediction="v")
    sampler.set_timesteps(3)
    direct = samplers.sample(model, sampler, (5, 8, 8, 3), labels, guidance=2.0, null_label=3, seed=7,
                             batch_size=2)
    assert np.array_equal(images, direct)


def test_sample_model_rejects_bad_requests(tiny):
    model, schedule = tiny
    with pytest.raises(ValueError, match="eta applies only to the ddim sampler"):
        pipeline.sample_model(model, schedule, _info(3), n=2, sampler_name="dpm++", eta=0.5)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        pipeline.sample_model(model, schedule, _info(3), n=0)
    with pytest.raises(ValueError, match="unconditional"):
        pipeline.sample_model(model, schedule, _info(0), n=2, style="a")


def test_sample_model_spreads_n_over_a_list_of_classes(tiny):
    model, schedule = tiny
    _, labels = pipeline.sample_model(model, schedule, _info(3), n=5, style=["c", 0], steps=2)
    assert labels.tolist() == [2, 2, 2, 0, 0]  # in the list's order, the first n % k get one more
    _, labels = pipeline.sample_model(model, schedule, _info(3), n=2, style="b", steps=2)
    assert labels.tolist() == [1, 1]
    with pytest.raises(ValueError, match="this model knows a, b, c"):
        pipeline.sample_model(model, schedule, _info(3), n=2, style=["a", "z"], steps=2)
