import numpy as np
import pytest
import torch

from fedunlearn_lib.partition import fang_partition


def _labels(n_per_class=2000, k=10):
    return torch.arange(k).repeat_interleave(n_per_class)


def test_every_sample_goes_to_exactly_one_client():
    y = _labels(200)
    parts = fang_partition(y, 20, 0.5, 10, seed=1)
    allidx = torch.cat(parts).sort().values
    assert torch.equal(allidx, torch.arange(len(y)))


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_label_proportions_follow_q(q):
    y = _labels()
    k, clients = 10, 20  # two clients per group: group m = clients 2m, 2m+1
    parts = fang_partition(y, clients, q, k, seed=0)
    for m in range(k):
        group = torch.cat([parts[2 * m], parts[2 * m + 1]])
        labels = y[group]
        home = (labels == m).sum().item() / (y == m).sum().item()
        assert home == pytest.approx(q, abs=0.03)
        # the rest of label m spreads uniformly over the other 9 groups
    other = torch.cat([parts[2], parts[3]])
    frac = (y[other] == 0).sum().item() / (y == 0).sum().item()
    assert frac == pytest.approx((1 - q) / 9, abs=0.02)


def test_within_group_clients_get_equal_shares():
    y = _labels()
    parts = fang_partition(y, 20, 0.9, 10, seed=0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.std() / sizes.mean() < 0.05


def test_deterministic_by_seed():
    y = _labels(100)
    a = fang_partition(y, 10, 0.5, 10, seed=3)
    b = fang_partition(y, 10, 0.5, 10, seed=3)
    c = fang_partition(y, 10, 0.5, 10, seed=4)
    assert all(torch.equal(x, z) for x, z in zip(a, b))
    assert not all(torch.equal(x, z) for x, z in zip(a, c))


def test_bad_q_and_too_few_clients():
    with pytest.raises(ValueError, match="1.5"):
        fang_partition(_labels(10), 10, 1.5, 10)
    with pytest.raises(ValueError, match="num_clients=5"):
        fang_partition(_labels(10), 5, 0.5, 10)
