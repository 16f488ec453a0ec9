"""The Fisher-forgetting baseline: the Fisher estimate and the noise it scales."""
import copy

import pytest
import torch
from torch import nn

from fedunlearn_lib import FedConfig, Federation, build_model
from fedunlearn_lib.fisher import federated_fisher, fisher_forget


def test_federated_fisher_is_a_nonnegative_diagonal_per_parameter(small_digits):
    model = build_model("resnet20", 10)
    fed = Federation(model, small_digits, FedConfig(num_clients=10, clients_per_round=2),
                     exclude=[9], progress=False)
    fisher = federated_fisher(fed, max_samples=8)
    params = dict(model.named_parameters())
    assert fisher.keys() == params.keys()
    for name, f in fisher.items():
        assert f.shape == params[name].shape and (f >= 0).all(), name
    assert sum(f.sum() for f in fisher.values()) > 0


def test_noise_follows_alpha_over_fisher_and_forgotten_rows_are_cleared():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 10))
    before = copy.deepcopy(model)
    fisher = {n: torch.full_like(p, 1e4) for n, p in model.named_parameters()}
    fisher["0.weight"][:20] = 1e-2  # rows the data barely constrains
    fisher_forget(model, fisher, forget=[3, 7], alpha=1e-4, seed=0)
    delta = (model[0].weight - before[0].weight).detach()
    # std sqrt(1e-4 / 1e-2) = 0.1 versus sqrt(1e-4 / 1e4) = 1e-4
    assert float(delta[:20].std()) == pytest.approx(0.1, rel=0.1)
    assert float(delta[20:].std()) == pytest.approx(1e-4, rel=0.1)
    assert (model[2].weight[[3, 7]] == 0).all() and (model[2].bias[[3, 7]] == 0).all()
    assert (model[2].weight[[0, 1, 2]] != 0).all()


def test_fisher_noise_is_capped_and_alpha_must_be_positive():
    model = nn.Linear(30, 10)
    before = model.weight.detach().clone()
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    fisher_forget(model, zero, forget=[0], alpha=1.0, max_var=1e-4, seed=0)
    assert float((model.weight[1:] - before[1:]).std()) == pytest.approx(1e-2, rel=0.2)
    with pytest.raises(ValueError, match="alpha must be > 0, got -1"):
        fisher_forget(model, zero, forget=[0], alpha=-1.0)
