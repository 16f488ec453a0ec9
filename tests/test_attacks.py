"""Crafted uploads (attacks.py): they pass validation, do what they claim, and the robust
aggregation options of procs.aggregate contain them."""
import numpy as np
import pytest
import torch

from fedunlearn_lib.attacks import ATTACKS, hide, poison, scale, steer, steer_channels
from fedunlearn_lib.procs import Upload, aggregate
from fedunlearn_lib.tfidf import tfidf_scores

TARGET = 2


def _honest(n=8, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(classes, 16, generator=g)
    return [Upload(i, {"a": (base + 0.05 * torch.rand(classes, 16, generator=g)),
                       "b": torch.rand(classes, 4, generator=g)},
                   torch.randint(1, 20, (classes,), generator=g).double()) for i in range(n)]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_passes_validation_differs_and_does_not_mutate(name):
    ups = _honest()
    before = {n: v.clone() for n, v in ups[0].means.items()}, ups[0].counts.clone()
    bad = ATTACKS[name](ups[0], TARGET, np.random.default_rng(0))
    assert isinstance(bad, Upload) and bad is not ups[0] and bad.client_id == 0
    aggregate([bad] + ups[1:])  # no ValueError
    assert any(not torch.equal(bad.means[n], before[0][n]) for n in before[0]) \
        or not torch.equal(bad.counts, before[1])
    for n in before[0]:
        assert torch.equal(ups[0].means[n], before[0][n])
        assert bad.means[n].shape == before[0][n].shape
    assert torch.equal(ups[0].counts, before[1])


def test_hide_sets_target_row_to_the_others_mean_and_dominates():
    ups = _honest()
    up = ups[3]
    bad = hide(up, TARGET, None)
    others = [i for i in range(5) if i != TARGET]
    for n, v in up.means.items():
        assert torch.allclose(bad.means[n][TARGET], v[others].mean(0))
        assert torch.equal(bad.means[n][others], v[others])
    assert bad.counts[TARGET] >= 100 * up.counts.sum()
    acts, _ = aggregate([bad] + ups[:3] + ups[4:])
    assert torch.allclose(acts["a"][TARGET], bad.means["a"][TARGET], atol=0.02)


def test_steer_inflates_the_others_top_channels_and_tfidf_follows():
    ups = _honest()
    chosen = steer_channels(ups[0], TARGET, frac=0.25)
    others = [i for i in range(5) if i != TARGET]
    top = torch.topk(ups[0].means["a"][others].mean(0), 4).indices.sort().values
    assert torch.equal(chosen["a"], top)
    bad = steer(ups[0], TARGET, None, frac=0.25)
    assert (bad.means["a"][TARGET, top] > 5 * ups[0].means["a"].max()).all()
    acts, _ = aggregate([bad] + ups[1:])
    for th in ("class", "channel"):
        picked = torch.topk(tfidf_scores(acts["a"], TARGET, th), 4).indices.sort().values
        assert torch.equal(picked, top), th
    # random pick: reproducible with either kind of generator
    r1 = steer_channels(ups[0], TARGET, 0.25, "random", np.random.default_rng(5))
    r2 = steer_channels(ups[0], TARGET, 0.25, "random", np.random.default_rng(5))
    t1 = steer_channels(ups[0], TARGET, 0.25, "random", torch.Generator().manual_seed(5))
    assert torch.equal(r1["a"], r2["a"]) and t1["a"].numel() == 4


def test_scale_dominates_the_mean_but_not_the_cap_nor_the_median():
    ups = _honest()
    bad = scale(ups[0], TARGET, None)
    poisoned = [bad] + ups[1:]
    honest_mean = aggregate(ups)[0]["a"]
    mean = aggregate(poisoned)[0]["a"]
    assert (mean - bad.means["a"]).norm() < 0.02 * bad.means["a"].norm()
    # the cap: the attacker keeps exactly 25% of each class's weight, the honest clients
    # share the rest by count -> far from the attacker's matrix
    capped = aggregate(poisoned, max_weight=0.25)[0]["a"]
    rest = aggregate(ups[1:])[0]["a"]
    assert torch.allclose(capped, 0.25 * bad.means["a"] + 0.75 * rest, rtol=1e-4)
    assert (capped - bad.means["a"]).norm() > 0.7 * bad.means["a"].norm()
    # median / trimmed mean: back near the honest aggregate
    for opts in ({"method": "median"}, {"method": "trimmed", "trim": 0.2}):
        robust = aggregate(poisoned, **opts)[0]["a"]
        assert (robust - honest_mean).abs().max() < 0.05, opts
    # counts stay the plain sum of the reported counts
    assert torch.equal(aggregate(poisoned)[1], sum(u.counts for u in poisoned))


def test_poison_is_deterministic_and_replaces_the_right_number():
    ups = _honest(n=10)
    a, ids_a = poison(ups, "hide", 0.3, TARGET, seed=7)
    b, ids_b = poison(ups, "hide", 0.3, TARGET, seed=7)
    assert ids_a == ids_b and len(ids_a) == 3 and len(a) == 10
    for x, y in zip(a, b):
        assert torch.equal(x.counts, y.counts)
    changed = [u.client_id for u, h in zip(a, ups) if u is not h]
    assert changed == ids_a
    seen = {tuple(poison(ups, "scale", 0.3, TARGET, seed=s)[1]) for s in range(6)}
    assert len(seen) > 1  # the seed matters
    assert poison(ups, "steer", 0.0, TARGET, seed=0) == (ups, [])
    assert len(poison(ups, steer, 1.0, TARGET, seed=0, frac=0.5)[1]) == 10
    assert len(poison(ups[:4], "scale", 0.5, TARGET, seed=1)[1]) == 2
    with pytest.raises(ValueError, match="'nope'"):
        poison(ups, "nope", 0.5, TARGET, seed=0)
    with pytest.raises(ValueError, match="1.5"):
        poison(ups, "hide", 1.5, TARGET, seed=0)
