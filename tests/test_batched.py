"""Clients batched (batched.py) against the sequential loop: the same round, within float
tolerance. In float64 the two agree to ~1e-12, which shows the batched path computes the
loop's round (ghost BatchNorm per client minibatch, running statistics in closed form,
stacked FedAvg clients); in float32 they agree as closely as two summation orders do
(at these tiny minibatches the loop's own float32 gradients differ from its float64 ones
by ~1e-3 relative, and FedAvg's local steps amplify that)."""
import re
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from fedunlearn_lib import ChannelMask, FedConfig, Federation, build_model
from fedunlearn_lib import batched
from fedunlearn_lib.data import random_crop_flip
from fedunlearn_lib.federated import identity_fields

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny batches run fastest on one thread (on 2 shared cores, 2 threads ran 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

MASKS = {"resnet20": {"conv1": [0, 3], "layer2.0.conv1": [5]}, "vgg11": {"body.0": [1, 2]}}


def _federation(data, cfg, sizes, model_name, dtype, mask=None):
    torch.manual_seed(0)
    model = build_model(model_name, data.num_classes).to(dtype)
    idx = torch.arange(len(data.train_y))
    parts, s = [], 0
    for n in sizes:
        parts.append(idx[s:s + n])
        s += n
    fed = Federation(model, data, cfg, partition=parts, progress=False,
                     mask=ChannelMask(mask) if mask else None)
    if dtype == torch.float64:  # normalized images in float64 too
        fed.transform.mean = fed.transform.mean.double()
        fed.transform.inv_std = fed.transform.inv_std.double()
    return fed


def _both(data, cfg, sizes, model_name, dtype, mask=None, rounds=1):
    out = {}
    for mode in ("loop", "batched"):
        fed = _federation(data, replace(cfg, client_batching=mode), sizes, model_name, dtype,
                          mask)
        losses = [fed.run_round() for _ in range(rounds)]
        out[mode] = (fed, losses)
    return out


def _assert_same(out, atol, rtol, loss_rtol):
    (a, la), (b, lb) = out["loop"], out["batched"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if sa[k].is_floating_point():
            torch.testing.assert_close(sb[k], sa[k], atol=atol, rtol=rtol, msg=k)
        else:  # num_batches_tracked
            assert torch.equal(sa[k], sb[k]), (k, sa[k], sb[k])
    assert lb == pytest.approx(la, rel=loss_rtol)
    return sa, sb


# 4 clients, minibatches of 4: 9 -> 4,4 (+1 skipped), 12 -> 4,4,4, 5 -> 4 (+1), 10 -> 4,4,2
FEDSGD_SIZES = [9, 12, 5, 10]


@pytest.mark.parametrize("model_name,masked,rounds", [
    ("resnet20", False, 2), ("resnet20", True, 2), ("vgg11", False, 1), ("vgg11", True, 1)],
    ids=["resnet20", "resnet20-masked", "vgg11", "vgg11-masked"])
def test_fedsgd_one_batch_equals_the_loop_in_float64(small_digits, model_name, masked, rounds,
                                                     monkeypatch):
    """Weights, BN running statistics and counters, and the loss, after two rounds on
    ResNet-20 (so the server momentum takes part; one on VGG-11, whose float64 convolutions
    are slow on a CPU), with augmentation and in several passes of whole clients."""
    monkeypatch.setitem(batched.MAX_IMAGES, "cpu", 20)  # passes [9], [12, 5], [10] (VGG: one)
    sizes = FEDSGD_SIZES if model_name == "resnet20" else [9, 5, 6]  # 5 minibatches
    cfg = FedConfig(algorithm="fedsgd", num_clients=len(sizes), clients_per_round=len(sizes),
                    batch_size=4, lr=0.1, seed=1)
    out = _both(small_digits, cfg, sizes, model_name, torch.float64,
                MASKS[model_name] if masked else None, rounds=rounds)
    sa, sb = _assert_same(out, atol=1e-10, rtol=1e-9, loss_rtol=1e-6)
    bn = "bn1" if model_name == "resnet20" else "body.1"
    minibatches = 9 if model_name == "resnet20" else 5
    assert int(sa[f"{bn}.num_batches_tracked"]) == rounds * minibatches
    start = _federation(small_digits, cfg, sizes, model_name, torch.float64).model
    assert not torch.equal(sb[f"{bn}.running_var"], start.state_dict()[f"{bn}.running_var"])
    if masked:
        first = "conv1" if model_name == "resnet20" else "body.0"
        assert not sb[f"{first}.weight"][MASKS[model_name][first]].any()


@pytest.mark.parametrize("model_name", ["resnet20", "vgg11"])
def test_fedsgd_one_batch_equals_the_loop_in_float32(small_digits, model_name):
    cfg = FedConfig(algorithm="fedsgd", num_clients=4, clients_per_round=4, batch_size=4,
                    lr=0.1, seed=1)
    out = _both(small_digits, cfg, FEDSGD_SIZES, model_name, torch.float32)
    _assert_same(out, atol=2e-4, rtol=1e-3, loss_rtol=1e-5)


# K = 3 clients, 2 local epochs, minibatches of 4: 9 -> 4,4 (+1), 10 -> 4,4,2, 12 -> 4,4,4;
# the third minibatch of an epoch steps in two groups (sizes 2 and 4)
FEDAVG_SIZES = [9, 10, 12]


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_batched_fedavg_equals_sequential_fedavg_for_three_clients(small_digits, masked):
    cfg = FedConfig(algorithm="fedavg", num_clients=3, clients_per_round=3, batch_size=4,
                    local_epochs=2, lr=0.05, seed=2)
    mask = MASKS["resnet20"] if masked else None
    out = _both(small_digits, cfg, FEDAVG_SIZES, "resnet20", torch.float64, mask)
    sa, _ = _assert_same(out, atol=1e-10, rtol=1e-9, loss_rtol=1e-6)
    assert int(sa["bn1.num_batches_tracked"]) == 2 * (2 + 3 + 3)  # the loop's running sum


def test_batched_fedavg_in_float32_and_on_vgg(small_digits):
    """In float32 several local steps on minibatches of 8 amplify rounding (the loop itself
    lands as far from its float64 result as the batched path does), so a small rate and a
    loose bound here; the float64 test above is the exact check."""
    cfg = FedConfig(algorithm="fedavg", num_clients=3, clients_per_round=3, batch_size=8,
                    local_epochs=1, lr=1e-3, seed=2)
    for model_name in ("resnet20", "vgg11"):
        out = _both(small_digits, cfg, [16, 20, 24], model_name, torch.float32)
        _assert_same(out, atol=5e-3, rtol=5e-3, loss_rtol=1e-4)


def test_bf16_batched_round_stays_near_the_loop(small_digits):
    cfg = FedConfig(algorithm="fedsgd", num_clients=2, clients_per_round=2, batch_size=4,
                    lr=0.1, seed=1, precision="bf16")
    out = _both(small_digits, cfg, FEDSGD_SIZES[:2], "resnet20", torch.float32)
    (_, la), (_, lb) = out["loop"], out["batched"]
    assert lb[0] == pytest.approx(la[0], rel=2e-2)


def test_crop_flip_draws_are_those_of_random_crop_flip(small_digits):
    x = small_digits.train_x[:7]
    for flip in (True, False):
        want = random_crop_flip(x, torch.Generator().manual_seed(5), 4, flip)
        g = torch.Generator().manual_seed(5)
        got = batched.apply_crop_flip(x, *batched.draw_crop_flip(len(x), g, 4, flip), 4)
        assert torch.equal(got, want)


def test_client_batching_is_checked_and_left_out_of_the_identity(small_digits, tmp_path):
    with pytest.raises(ValueError, match=r"client_batching 'vmap'.*loop, batched"):
        FedConfig(client_batching="vmap").validate()
    cfg = FedConfig(algorithm="fedsgd", num_clients=10, clients_per_round=2, batch_size=16)
    assert identity_fields(cfg) == {k: v for k, v in asdict(cfg).items()
                                    if k != "client_batching"}
    torch.manual_seed(0)
    a = Federation(build_model("resnet20", 10), small_digits, cfg, progress=False,
                   checkpoint=tmp_path / "c.pt")
    assert "client_batching" not in a.identity["federation"]
    a.train_until(None, 1)
    torch.manual_seed(0)  # the same run, computed batched, resumes the loop's checkpoint
    b = Federation(build_model("resnet20", 10), small_digits,
                   replace(cfg, client_batching="batched"), progress=False,
                   checkpoint=tmp_path / "c.pt")
    assert b.round == 1
    b.train_until(None, 2)
    assert b.round == 2


def test_device_check_runs_tiny_on_the_cpu():
    """benchmarks/device_check.py --device cpu --tiny: every line is `kind key=value ...`
    and every measurement the GPU run prints is there."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"),
                          "--device", "cpu", "--tiny", "--threads", "1"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    lines = out.strip().splitlines()
    for line in lines:
        assert re.fullmatch(r"[a-z_]+( [a-z_][a-z0-9_./-]*=[^\s=]+)+", line), line
    kinds = [line.split()[0] for line in lines]
    for kind in ("env", "plain", "round", "ratio", "pretrain", "estimate", "formula", "total"):
        assert kind in kinds, kind
    rounds = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in lines
              if line.startswith("round ")]
    assert {(r["algorithm"], r["batching"]) for r in rounds} == {
        ("fedsgd", "loop"), ("fedsgd", "batched"), ("fedavg", "loop"), ("fedavg", "batched")}
    assert all(float(r["seconds"]) > 0 for r in rounds)
    ratios = dict(kv.split("=", 1) for line in lines if line.startswith("ratio ")
                  for kv in line.split()[1:])
    assert {"fedsgd-batched/loop", "fedavg-batched/loop"} <= set(ratios)
    pretrain = [line for line in lines if line.startswith("pretrain ")]
    assert any("model=resnet20" in p for p in pretrain) and any("model=vgg16" in p
                                                               for p in pretrain)
    estimate = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in lines
                if line.startswith("estimate ")]
    assert {e["batching"] for e in estimate} == {"loop", "batched"}
    assert all(float(e["gpu_hours"]) > 0 for e in estimate)
