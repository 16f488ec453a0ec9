"""The membership attack on cases with a known answer."""
import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn_lib.mia import FEATURES, attack_features, membership_attack


def _memorizer(x: torch.Tensor, y: torch.Tensor, epochs: int = 300) -> nn.Module:
    """A linear model with more inputs than samples, trained to zero loss on random labels."""
    model = nn.Linear(x.shape[1], 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _data(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 400, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("kind", FEATURES)
def test_memorized_members_are_detected_and_unseen_ones_are_not(kind):
    g = torch.Generator().manual_seed(0)
    train_x, train_y = _data(200, g)
    fresh_x, fresh_y = _data(200, g)
    model = _memorizer(train_x, train_y)
    with torch.no_grad():
        train_logits, fresh_logits = model(train_x), model(fresh_x)
    # members: 120 training samples; the other 80 are the (held-out) target
    members = (train_logits[:120], train_y[:120])
    nonmembers = (fresh_logits[:120], fresh_y[:120])
    seen = membership_attack(members, nonmembers, (train_logits[120:], train_y[120:]), kind)
    unseen = membership_attack(members, nonmembers, (fresh_logits[120:], fresh_y[120:]), kind)
    assert seen["accuracy"] > 0.75 and seen["rate"] > 0.85, seen  # chance: 0.5
    assert unseen["rate"] < 0.4 and seen["rate"] - unseen["rate"] > 0.5, (seen, unseen)


@pytest.mark.parametrize("kind", FEATURES)
def test_a_model_that_never_saw_the_members_leaves_the_attack_at_chance(kind):
    g = torch.Generator().manual_seed(1)
    other_x, other_y = _data(200, g)
    model = _memorizer(other_x, other_y)  # trained on other data only
    a_x, a_y = _data(400, g)
    b_x, b_y = _data(400, g)
    with torch.no_grad():
        a, b = model(a_x), model(b_x)
    res = membership_attack((a[:300], a_y[:300]), (b[:300], b_y[:300]), (a[300:], a_y[300:]),
                            kind)
    assert abs(res["accuracy"] - 0.5) < 0.12, res
    assert 0.2 < res["rate"] < 0.8, res


def test_attack_features_shapes_and_values():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    labels = torch.tensor([0, 1])
    ent = attack_features(logits, labels, "entropy")
    assert ent.shape == (2, 1) and np.isclose(ent[0, 0], np.log(2)) and ent[1, 0] < 1e-6
    loss = attack_features(logits, labels, "loss")
    assert np.isclose(loss[0, 0], np.log(2)) and np.isclose(loss[1, 0], 20.0, atol=1e-4)
    srt = attack_features(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([0]), "sorted_softmax")
    assert (np.diff(srt[0]) <= 0).all() and np.isclose(srt.sum(), 1.0)


def test_bad_inputs_are_named():
    logits, labels = torch.zeros(10, 3), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="'margin'"):
        attack_features(logits, labels, "margin")
    with pytest.raises(ValueError, match="got 2"):
        membership_attack((logits[:2], labels[:2]), (logits, labels), (logits, labels))
    with pytest.raises(ValueError, match="target"):
        membership_attack((logits, labels), (logits, labels), (logits[:0], labels[:0]))
