"""checks.py: the one unknown-key guard every config's `from_dict` shares."""

from diffusion_utils.autoencoder import AutoencoderConfig
from diffusion_utils.train import TrainConfig
from diffusion_utils.unet import UNetConfig

import pytest


@pytest.mark.parametrize("config_class", [UNetConfig, TrainConfig, AutoencoderConfig])
def test_from_dict_names_unknown_keys_and_refuses_non_dicts_in_one_line(config_class):
    good = config_class().to_dict()
    assert config_class.from_dict(good) == config_class()
    with pytest.raises(ValueError, match=rf"^{config_class.__name__}: unknown key\(s\) \['zz_typo'\]; "
                                         r"expected some of \[") as err:
        config_class.from_dict({**good, "zz_typo": 1})
    assert "\n" not in str(err.value) and "'image_size'" in str(err.value)  # a field all three have
    with pytest.raises(ValueError, match=rf"^{config_class.__name__}.from_dict expects a dict, got list$"):
        config_class.from_dict([good])
