import pytest
import torch
from torch import nn

from fedunlearn_lib.models import MODELS, build_model, conv_bn_pairs


@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name):
    m = build_model(name, 7).eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_depth_matches_name(name):
    """ResNet-d: d - 1 convs on the main path + fc; VGG-d: d - 3 convs (+ 3 FC originally)."""
    m = build_model(name, 10)
    depth = int(name.lstrip("resnetvg"))
    plain = sum(1 for n, c in m.named_modules() if isinstance(c, nn.Conv2d)
                and "shortcut" not in n)
    assert plain == (depth - 1 if name.startswith("resnet") else depth - 3)
    assert len(conv_bn_pairs(m)) == sum(isinstance(c, nn.Conv2d) for c in m.modules())
    assert all(bn is not None and bn.num_features == conv.out_channels
               for conv, bn in conv_bn_pairs(m).values())


def test_unknown_model_names_choices():
    with pytest.raises(ValueError, match="resnet7.*resnet20"):
        build_model("resnet7", 10)


@pytest.mark.parametrize("avx512", [True, False])
def test_the_default_layout_is_the_faster_one_per_model_and_device(monkeypatch, avx512):
    from fedunlearn_lib.experiment import ExperimentConfig
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: avx512)
    assert ExperimentConfig(model="resnet20").uses_channels_last()  # 1.09x / 1.78x
    # VGG-11: 0.88x on an AVX-512 CPU, 1.53x on an AVX2 one
    assert ExperimentConfig(model="vgg11").uses_channels_last() is not avx512
    assert not ExperimentConfig(model="resnet20", device="cuda").uses_channels_last()
    assert not ExperimentConfig(model="resnet20", channels_last=False).uses_channels_last()
