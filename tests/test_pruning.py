import copy

import pytest
import torch

from fedunlearn_lib import ChannelMask, build_model, remove_channels, select_channels


def test_global_selection_takes_top_fraction_across_layers():
    scores = {"a": torch.tensor([0.9, 0.1, 0.5, 0.2]), "b": torch.tensor([0.8, 0.7, 0.0, 0.3])}
    sel = select_channels(scores, 0.25)  # 2 of 8
    assert sel.channels == {"a": [0], "b": [0]}
    low = select_channels(scores, 0.25, direction="lowest")
    assert low.channels == {"a": [1], "b": [2]}


def test_layer_scope_takes_fraction_per_layer():
    scores = {"a": torch.tensor([0.9, 0.8, 0.7, 0.6]), "b": torch.tensor([0.1, 0.3, 0.2, 0.0])}
    sel = select_channels(scores, 0.25, scope="layer")
    assert sel.channels == {"a": [0], "b": [1]}


def test_never_prunes_a_whole_layer_and_skips_already_pruned():
    scores = {"tiny": torch.tensor([5.0, 4.0]), "big": torch.zeros(10)}
    sel = select_channels(scores, 0.5)  # 6 of 12, but "tiny" keeps one
    assert sel.channels["tiny"] == [0] and len(sel) == 6
    again = select_channels(scores, 0.5, already=sel)
    assert "tiny" not in again.channels
    assert not set(again.channels["big"]) & set(sel.channels["big"])


@pytest.mark.parametrize("kw,msg", [({"ratio": 1.0}, "R must lie in"), ({"ratio": 0.0}, "0.0"),
                                    ({"ratio": 0.1, "direction": "up"}, "up.*highest"),
                                    ({"ratio": 0.1, "scope": "net"}, "net.*global")])
def test_bad_selection_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        select_channels({"a": torch.ones(3)}, **kw)


def _mask_for(model, frac=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(m.out_channels, generator=g) for n, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d)}
    return select_channels(scores, frac)


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_mask_zeroes_the_channel_after_batchnorm():
    m = build_model("vgg11", 10).eval()
    _randomize_bn(m)
    mask = ChannelMask({"body.0": [3, 5]})
    mask.apply(m)
    out = m.body[1](m.body[0](torch.randn(2, 3, 32, 32)))
    assert out[:, [3, 5]].abs().max() == 0
    assert out[:, 0].abs().max() > 0


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_remove_gives_the_masked_models_outputs(name):
    model = build_model(name, 10).eval()
    _randomize_bn(model)
    mask = _mask_for(model)
    masked = mask.apply(copy.deepcopy(model)).eval()
    x = torch.randn(4, 3, 32, 32)
    thin, keep, removed = remove_channels(copy.deepcopy(model), mask, torch.zeros(1, 3, 32, 32))
    keep.apply(thin)
    assert removed + len(keep) == len(mask)
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in model.parameters())
    assert torch.allclose(thin.eval()(x), masked(x), atol=1e-4)
    if name == "vgg11":
        assert len(keep) == 0  # every VGG conv can be removed on its own
    else:
        # residual-stream convs stay masked: stem, each block's conv2, shortcuts
        assert keep.channels and all(n == "conv1" or n.endswith("conv2") or "shortcut" in n
                                     for n in keep.channels)
        assert all(n.endswith("conv1") and n != "conv1" for n in set(mask.channels) -
                   set(keep.channels))


def test_l1_baseline_is_per_layer_lowest_and_l1_global_ranks_all_layers():
    from collections import OrderedDict
    from pathlib import Path

    from fedunlearn_lib.experiment import ExperimentConfig, Run
    from fedunlearn_lib.studies import ablation_mask

    a, b = torch.nn.Conv2d(1, 4, 1, bias=False), torch.nn.Conv2d(4, 8, 1, bias=False)
    with torch.no_grad():  # filter L1 norms: a = .4 .1 .3 .2, b = 5 .15 7 .25 3 9 .35 2
        a.weight.copy_(torch.tensor([0.4, 0.1, 0.3, 0.2]).view(4, 1, 1, 1))
        b.weight.copy_(torch.tensor([5, 0.15, 7, 0.25, 3, 9, 0.35, 2]).view(8, 1, 1, 1)
                       .expand(8, 4, 1, 1) / 4)
    model = torch.nn.Sequential(OrderedDict(a=a, b=b))
    run = Run(Path("."), ExperimentConfig(), None, {}, model, model, model)  # scope "global"

    def chosen(arm):
        return {n: sorted(j) for n, j in ablation_mask(run, arm, 0.25).channels.items()}

    # Li et al. (2017): round(R * channels) lowest filters of each layer, whatever the scope
    assert chosen("l1") == {"a": [1], "b": [1, 3]}
    # global: the round(R * 12) = 3 lowest filters of the whole net
    assert chosen("l1-global") == {"a": [1, 3], "b": [1]}
    with pytest.raises(ValueError, match="'l2'.*tfidf-lowest-channel"):
        ablation_mask(run, "l2", 0.25)


def test_mask_pairs_and_jaccard():
    from fedunlearn_lib.masking import ChannelMask, jaccard
    a = ChannelMask({"conv1": [0, 1], "layer1.0.conv1": [2]})
    b = ChannelMask({"conv1": [1], "layer1.0.conv1": [2, 3]})
    assert a.pairs() == {("conv1", 0), ("conv1", 1), ("layer1.0.conv1", 2)}
    assert jaccard(a, b) == 2 / 4 and jaccard(a, a) == 1.0
    assert jaccard(ChannelMask(), ChannelMask()) == 1.0
