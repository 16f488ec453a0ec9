"""The Fisher-forgetting baseline: the federated Δ and Fisher, Eq. 1's Newton step and
noise, the earlier noise-only variant, head-zeroing, and the σ and damping rules."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn_lib import FedConfig, Federation, build_model
from fedunlearn_lib.fisher import (ClientStats, aggregate_statistics, choose_damping,
                                   choose_sigma, client_statistics,
                                   federated_statistics, fisher_forget, participants)
from fedunlearn_lib.studies import _fisher_dir


def _linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 10))


def _stats(model, value):
    return {n: torch.full_like(p, value) for n, p in model.named_parameters()}


# ------------------------------------------------------------ federated Δ and F
def test_federated_fisher_is_a_nonnegative_diagonal_per_parameter(small_digits):
    model = build_model("resnet20", 10)
    fed = Federation(model, small_digits, FedConfig(num_clients=10, clients_per_round=2),
                     exclude=[9], progress=False)
    delta, fisher = federated_statistics(fed, max_samples=8)
    params = dict(model.named_parameters())
    assert fisher.keys() == params.keys() == delta.keys()
    for name, f in fisher.items():
        assert f.shape == params[name].shape == delta[name].shape, name
        assert (f >= 0).all(), name
    assert sum(f.sum() for f in fisher.values()) > 0
    assert sum(d.abs().sum() for d in delta.values()) > 0


def test_server_takes_count_weighted_means_of_the_client_sums():
    a = ClientStats({"w": torch.tensor([2.0, 4.0])}, {"w": torch.tensor([1.0, 3.0])}, 1)
    b = ClientStats({"w": torch.tensor([6.0, 0.0])}, {"w": torch.tensor([9.0, 3.0])}, 3)
    empty = ClientStats({"w": torch.zeros(2)}, {"w": torch.zeros(2)}, 0)
    delta, fisher = aggregate_statistics([a, b, empty])
    # (sum of sums) / (sum of counts) = 1/4 * a's mean + 3/4 * b's mean
    assert torch.allclose(delta["w"], torch.tensor([8.0, 4.0]) / 4)
    assert torch.allclose(fisher["w"], torch.tensor([10.0, 6.0]) / 4)
    with pytest.raises(ValueError, match="no participating client"):
        aggregate_statistics([empty])


def test_federated_statistics_pool_the_participants_sums(small_digits):
    # a 1-layer linear model: per-client sums checked against plain autograd
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    fed = Federation(model, small_digits, FedConfig(num_clients=10, clients_per_round=3, q=0.5),
                     exclude=[9], progress=False)
    chosen = participants(fed)
    assert len(chosen) == 3 and all(9 not in c.y.tolist() for c in chosen)
    stats = [client_statistics(model, c, fed, max_samples=10, seed=0) for c in chosen]
    for c, s in zip(chosen, stats):
        model.zero_grad()
        F.cross_entropy(model(fed.transform(c.x[:10])), c.y[:10], reduction="sum").backward()
        assert s.count == min(10, len(c))
        for name, p in model.named_parameters():
            assert torch.allclose(s.grad_sum[name], p.grad, atol=1e-5), name
    delta, fisher = federated_statistics(fed, max_samples=10)
    total = sum(s.count for s in stats)
    for name in delta:
        assert torch.allclose(delta[name], sum(s.grad_sum[name] for s in stats) / total,
                              atol=1e-6)
        assert torch.allclose(fisher[name], sum(s.fisher_sum[name] for s in stats) / total,
                              atol=1e-6)


# ------------------------------------------------------------------ Eq. 1
def test_eq1_newton_step_is_w_minus_delta_over_damped_fisher():
    model = _linear()
    before = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    delta = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    fisher = {n: torch.rand(p.shape, generator=g) + 0.5 for n, p in model.named_parameters()}
    fisher_forget(model, fisher, delta=delta, sigma=0.0, damping=0.25)
    for (name, p), q in zip(model.named_parameters(), before.parameters()):
        assert torch.allclose(p, q - delta[name] / (fisher[name] + 0.25), atol=1e-6), name
    # max_step clamps every element of the step
    clamped = copy.deepcopy(before)
    fisher_forget(clamped, fisher, delta=delta, damping=0.25, max_step=0.1)
    for (name, p), q in zip(clamped.named_parameters(), before.parameters()):
        step = (delta[name] / (fisher[name] + 0.25)).clamp(-0.1, 0.1)
        assert torch.allclose(p, q - step, atol=1e-6), name
    with pytest.raises(ValueError, match="needs delta"):
        fisher_forget(model, fisher)
    with pytest.raises(ValueError, match="damping must be > 0"):
        fisher_forget(model, fisher, delta=delta, damping=0.0)


def test_eq1_noise_is_sigma_times_fisher_to_the_minus_quarter():
    model = nn.Linear(400, 300)
    before = model.weight.detach().clone()
    fisher = _stats(model, 1e-4)
    fisher["weight"][:100] = 1e-2  # F^{-1/4}: 10 on the first 100 rows, sqrt(10) on the rest
    fisher_forget(model, fisher, delta=_stats(model, 0.0), sigma=0.01, damping=1e-12, seed=0)
    noise = (model.weight - before).detach()
    assert float(noise[:100].std()) == pytest.approx(0.01 * 1e-2 ** -0.25, rel=0.05)
    assert float(noise[100:].std()) == pytest.approx(0.01 * 1e-4 ** -0.25, rel=0.05)
    assert abs(float(noise.mean())) < 1e-3
    # the same seed draws the same b, so σ only scales it
    again = nn.Linear(400, 300)
    with torch.no_grad():
        again.weight.copy_(before)
    fisher_forget(again, fisher, delta=_stats(model, 0.0), sigma=0.02, damping=1e-12, seed=0)
    assert torch.allclose(again.weight - before, 2 * noise, atol=1e-5)


def test_classifier_rows_are_zeroed_only_when_asked():
    for method in ("eq1", "golatkar-var"):
        model = _linear()
        fisher = _stats(model, 1.0)
        kw = {"delta": _stats(model, 0.0)} if method == "eq1" else {}
        fisher_forget(model, fisher, [3, 7], method=method, sigma=1e-3, **kw)
        assert (model[2].weight[[3, 7]] != 0).all() and (model[2].bias[[3, 7]] != 0).all()
        fisher_forget(model, fisher, [3, 7], method=method, sigma=1e-3, zero_head=True, **kw)
        assert (model[2].weight[[3, 7]] == 0).all() and (model[2].bias[[3, 7]] == 0).all()
        assert (model[2].weight[[0, 1, 2]] != 0).all()
    with pytest.raises(ValueError, match="zero_head needs the forget classes"):
        fisher_forget(model, fisher, method="golatkar-var", sigma=1e-3, zero_head=True)


# ----------------------------------------------------------- earlier variant
def test_golatkar_var_noise_follows_alpha_over_fisher():
    model = _linear()
    before = copy.deepcopy(model)
    fisher = _stats(model, 1e4)
    fisher["0.weight"][:20] = 1e-2  # rows the data barely constrains
    fisher_forget(model, fisher, method="golatkar-var", alpha=1e-4, seed=0)
    delta = (model[0].weight - before[0].weight).detach()
    # std sqrt(1e-4 / 1e-2) = 0.1 versus sqrt(1e-4 / 1e4) = 1e-4
    assert float(delta[:20].std()) == pytest.approx(0.1, rel=0.1)
    assert float(delta[20:].std()) == pytest.approx(1e-4, rel=0.1)
    # alpha defaults to sigma squared; no Newton step (delta is not used)
    by_sigma = copy.deepcopy(before)
    fisher_forget(by_sigma, fisher, method="golatkar-var", sigma=1e-2, seed=0,
                  delta=_stats(model, 1.0))
    assert torch.allclose(by_sigma[0].weight, model[0].weight)


def test_golatkar_var_noise_is_capped_and_alpha_must_be_positive():
    model = nn.Linear(30, 10)
    before = model.weight.detach().clone()
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    fisher_forget(model, zero, method="golatkar-var", alpha=1.0, max_var=1e-4, seed=0)
    assert float((model.weight - before).detach().std()) == pytest.approx(1e-2, rel=0.2)
    with pytest.raises(ValueError, match="alpha must be > 0, got -1"):
        fisher_forget(model, zero, method="golatkar-var", alpha=-1.0)
    with pytest.raises(ValueError, match="unknown method 'newton'"):
        fisher_forget(model, zero, method="newton")


# ------------------------------------------------------------------ the rules
def test_sigma_rule_picks_the_largest_sigma_keeping_the_fraction():
    val_r = {0.0: 0.90, 0.01: 0.85, 0.1: 0.52, 0.3: 0.20, 1.0: 0.55}  # 1.0: a lucky draw
    seen = []

    def stub(s):
        seen.append(s)
        return val_r[s] if s != 1.0 else 0.10

    sigma, trials = choose_sigma([0.3, 0.0, 0.1, 0.01], stub, raw_r_acc=1.0, keep_fraction=0.5)
    assert sigma == 0.1 and seen == [0.0, 0.01, 0.1, 0.3]
    assert [t["ok"] for t in trials] == [True, True, True, False]
    sigma, _ = choose_sigma([0.01, 0.1, 0.3], val_r.get, raw_r_acc=0.9, keep_fraction=0.9)
    assert sigma == 0.01  # none keeps 0.81: the smallest
    assert choose_sigma([0.01, 0.1], val_r.get, raw_r_acc=0.9, keep_fraction=0.5)[0] == 0.1
    with pytest.raises(ValueError, match="keep_fraction"):
        choose_sigma([0.1], val_r.get, 0.9, keep_fraction=1.5)


def test_damping_rule_picks_the_smallest_damping_whose_step_keeps_the_fraction():
    val_r = {1e-4: 0.11, 1e-2: 0.11, 1.0: 0.6, 100.0: 0.9}
    seen = []

    def stub(d):
        seen.append(d)
        return val_r[d]

    damping, trials = choose_damping([100.0, 1e-4, 1.0, 1e-2], stub, 0.9, keep_fraction=0.5)
    assert damping == 1.0 and seen == [1e-4, 1e-2, 1.0]  # stops at the first that qualifies
    assert choose_damping([1e-4, 1e-2], val_r.get, 0.9, keep_fraction=0.5)[0] == 1e-2
    with pytest.raises(ValueError, match="damping values must be > 0"):
        choose_damping([0.0, 1.0], val_r.get, 0.9)


def test_fisher_fine_tuning_folder_names_every_setting():
    names = {_fisher_dir("eq1", 0.01, 1.0, None, False, None),
             _fisher_dir("eq1", 0.03, 1.0, None, False, None),
             _fisher_dir("eq1", 0.01, 10.0, None, False, None),
             _fisher_dir("eq1", 0.01, 1.0, 0.1, False, None),
             _fisher_dir("eq1", 0.01, 1.0, None, True, None),
             _fisher_dir("eq1", 0.01, 1.0, None, False, 100),
             _fisher_dir("golatkar-var", 0.01, 1.0, None, False, None)}
    assert len(names) == 7
    assert _fisher_dir("golatkar-var", 1e-3, 1.0, None, True, 20) == \
        "fisher_golatkar-var_sigma0.001_zerohead_samples20"
