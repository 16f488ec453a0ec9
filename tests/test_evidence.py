"""BatchNorm recall (issue 10): re-estimated running statistics, pruned channels still zero."""
from dataclasses import replace

import pytest
import torch

from fedunlearn_lib import FedConfig, Federation, build_model
from fedunlearn_lib.evidence import bn_recall, training_images
from fedunlearn_lib.masking import ChannelMask


def test_bn_recall_reestimates_statistics_and_keeps_pruned_channels_zero(small_digits):
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    mask = ChannelMask({"conv1": [0, 3], "layer1.0.conv1": [1]})
    mask.apply(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    retained = training_images(small_digits, range(9))
    recalled = bn_recall(model, retained, small_digits, mask=mask)
    state = recalled.state_dict()
    # weights untouched, running statistics re-estimated (fresh BN stats are 0 / 1)
    assert all(torch.equal(state[k], before[k]) for k in before
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert not torch.equal(state["bn1.running_mean"], before["bn1.running_mean"])
    assert torch.equal(model.state_dict()["bn1.running_mean"], before["bn1.running_mean"])
    assert recalled.bn1.momentum == model.bn1.momentum
    # the pruned channels still output exactly zero after BN
    out = {}
    hook = recalled.bn1.register_forward_hook(lambda m, i, o: out.update(bn1=o) and None)
    recalled((small_digits.test_x[:8].float() - 128) / 64)
    hook.remove()
    assert out["bn1"][:, [0, 3]].abs().max() == 0 and out["bn1"][:, 1].abs().max() > 0
    # and U is measured again on the recalled model
    fed = Federation(recalled, small_digits, FedConfig(num_clients=10, clients_per_round=2),
                     forget=[9], progress=False)
    u = fed.evaluate()["u_acc"]
    assert 0.0 <= u <= 1.0


def test_training_images_take_the_named_classes_at_their_share(small_digits):
    """The statistics come from the named classes' images: changing the forgotten class's
    images leaves a retained-class re-estimation unchanged and changes one that includes
    it; a subset keeps about each class's share; an unknown class is named."""
    model = build_model("resnet20", 10)
    x = small_digits.train_x.clone()
    x[small_digits.train_y == 9] = 255
    changed = replace(small_digits, train_x=x)
    stats = {}
    for name, data in (("before", small_digits), ("after", changed)):
        for which, classes in (("retained", range(9)), ("all", range(10))):
            stats[name, which] = bn_recall(model, training_images(data, classes), data) \
                .state_dict()["bn1.running_mean"]
    assert torch.allclose(stats["before", "retained"], stats["after", "retained"])
    assert not torch.allclose(stats["before", "all"], stats["after", "all"])
    sub = training_images(small_digits, [8, 9], max_images=20, seed=1)
    assert len(sub) == 20 and torch.equal(sub, training_images(small_digits, [8, 9], 20, 1))
    with pytest.raises(ValueError, match=r"\[42\]"):
        training_images(small_digits, [42])


def test_bn_recall_in_bf16_is_close_to_fp32_and_keeps_pruned_statistics_at_zero(small_digits):
    model = build_model("resnet20", 10)
    mask = ChannelMask({"conv1": [0, 3]})
    mask.apply(model)
    retained = training_images(small_digits, range(9))
    full = bn_recall(model, retained, small_digits, mask=mask).state_dict()
    half = bn_recall(model, retained, small_digits, mask=mask, precision="bf16").state_dict()
    a, b = full["bn1.running_mean"], half["bn1.running_mean"]
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=0.05, atol=0.05)
    assert b[[0, 3]].abs().max() == 0  # a zeroed channel's input stays exactly zero


def test_closeness_columns_on_a_tiny_run(tmp_path):
    """KL from the retrained model to itself is 0; the arm's columns are all there."""
    from fedunlearn_lib import studies
    from fedunlearn_lib.experiment import load_run
    experiment = {"dataset": "digits", "model": "resnet20", "rounds": 2,
                  "train_per_class": 30, "test_per_class": 10,
                  "federation": {"num_clients": 10, "clients_per_round": 5, "batch_size": 16},
                  "unlearning": {"ratio": 0.1}}
    run = load_run(studies.demo_runs(experiment, [{"forget": [9]}], tmp_path)[0])
    same = studies.closeness_columns(run, run.retrained)
    assert same["KL to retrained U test"] == 0.0 and same["KL to retrained U train"] == 0.0
    raw = studies.closeness_columns(run, run.raw)
    assert raw["KL to retrained U test"] > 0
    assert all(0 <= raw[f"BN recall U ({n})"] <= 100 for n in studies.BN_RECALL)
    assert raw["U test goes to"].endswith("%") and raw["U test goes to"].split()[0] in \
        run.data.classes


def test_relearn_numbers_grade_the_first_round_and_keep_a_miss_as_none():
    from fedunlearn_lib.studies import relearn_numbers

    missed = {"relearn": {"rounds": None, "budget": 2, "u_curve": [0.04, 0.8123, 0.85]}}
    assert relearn_numbers(missed) == {"relearn": None, "relearn U": 81.23}
    met = {"relearn": {"rounds": 1, "budget": 2, "u_curve": [0.0, 0.9]}}
    assert relearn_numbers(met) == {"relearn": 1, "relearn U": 90.0}
    assert relearn_numbers({"relearn": {"rounds": 0, "budget": 2, "u_curve": [0.9]}}) == \
        {"relearn": 0, "relearn U": None}  # already at the target: no round was run


def test_bn_recall_with_the_forgotten_class_keeps_pruned_channels_zero(small_digits):
    """The attack's re-estimation on images that include the forgotten class (all classes;
    the class alone): statistics differ from the retained-only ones, pruned channels still
    output zero, and U is measured again."""
    model = build_model("resnet20", 10)
    mask = ChannelMask({"conv1": [0, 3]})
    mask.apply(model)
    means = {}
    for name, classes in (("retained", range(9)), ("all", range(10)), ("forgotten", [9])):
        recalled = bn_recall(model, training_images(small_digits, classes), small_digits, mask)
        means[name] = recalled.state_dict()["bn1.running_mean"]
        assert means[name][[0, 3]].abs().max() == 0
        out = {}
        hook = recalled.bn1.register_forward_hook(lambda m, i, o: out.update(bn1=o) and None)
        fed = Federation(recalled, small_digits, FedConfig(num_clients=10, clients_per_round=2),
                         forget=[9], progress=False)
        assert 0.0 <= fed.evaluate()["u_acc"] <= 1.0
        hook.remove()
        assert out["bn1"][:, [0, 3]].abs().max() == 0
    assert not torch.allclose(means["retained"], means["forgotten"])
    assert not torch.allclose(means["retained"], means["all"])
