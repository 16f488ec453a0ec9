"""BatchNorm recall (issue 10): re-estimated running statistics, pruned channels still zero."""
import torch

from fedunlearn_lib import FedConfig, Federation, build_model
from fedunlearn_lib.evidence import bn_recall
from fedunlearn_lib.masking import ChannelMask


def test_bn_recall_reestimates_statistics_and_keeps_pruned_channels_zero(small_digits):
    torch.manual_seed(0)
    model = build_model("resnet20", 10)
    mask = ChannelMask({"conv1": [0, 3], "layer1.0.conv1": [1]})
    mask.apply(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalled = bn_recall(model, small_digits, forget=[9], mask=mask)
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


def test_bn_recall_uses_only_retained_classes(small_digits):
    """The statistics come from the retained classes: changing the forgotten class's
    images leaves them unchanged."""
    model = build_model("resnet20", 10)
    a = bn_recall(model, small_digits, forget=[9]).state_dict()["bn1.running_mean"]
    x = small_digits.train_x.clone()
    x[small_digits.train_y == 9] = 255
    from dataclasses import replace
    b = bn_recall(model, replace(small_digits, train_x=x), forget=[9]).state_dict()[
        "bn1.running_mean"]
    assert torch.allclose(a, b)


def test_bn_recall_in_bf16_is_close_to_fp32_and_keeps_pruned_statistics_at_zero(small_digits):
    model = build_model("resnet20", 10)
    mask = ChannelMask({"conv1": [0, 3]})
    mask.apply(model)
    full = bn_recall(model, small_digits, forget=[9], mask=mask).state_dict()
    half = bn_recall(model, small_digits, forget=[9], mask=mask, precision="bf16").state_dict()
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
    assert raw["KL to retrained U test"] > 0 and 0 <= raw["BN-recall U"] <= 100
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
