"""Robust options of procs.aggregate: median, trimmed mean, per-client weight cap."""
import pytest
import torch

from fedunlearn_lib.procs import Upload, aggregate, capped_shares


def _up(cid, rows, counts):
    return Upload(cid, {"l": torch.tensor(rows, dtype=torch.float32)},
                  torch.tensor(counts, dtype=torch.float64))


def test_default_is_the_count_weighted_mean():
    a = _up(0, [[1.0, 1.0], [0.0, 0.0]], [2.0, 0.0])
    b = _up(1, [[4.0, 0.0], [3.0, 1.0]], [1.0, 5.0])
    acts, counts = aggregate([a, b])
    assert torch.equal(acts["l"], aggregate([a, b], method="mean")[0]["l"])
    assert torch.allclose(acts["l"], torch.tensor([[2.0, 2 / 3], [3.0, 1.0]]))
    # a cap of 1 changes nothing
    assert torch.allclose(aggregate([a, b], max_weight=1.0)[0]["l"], acts["l"])
    assert counts.tolist() == [3.0, 5.0]


def test_median_of_agreeing_uploads_equals_their_mean():
    rows = [[1.0, 2.0, 3.0], [0.5, 0.0, 7.0]]
    ups = [_up(i, rows, [3.0 + i, 1.0]) for i in range(4)]
    mean, c_mean = aggregate(ups)
    for method in ("median", "trimmed"):
        acts, counts = aggregate(ups, method=method)
        assert torch.allclose(acts["l"], mean["l"])
        assert torch.equal(counts, c_mean)


def test_median_and_trimmed_by_hand_over_holders_only():
    ups = [_up(0, [[1.0], [9.0]], [1.0, 0.0]),   # class 1 not held: ignored
           _up(1, [[2.0], [1.0]], [50.0, 1.0]),
           _up(2, [[4.0], [2.0]], [1.0, 1.0]),
           _up(3, [[100.0], [4.0]], [1.0, 1.0])]
    med = aggregate(ups, method="median")[0]["l"]
    assert med.flatten().tolist() == [3.0, 2.0]  # even: mean of the middle two
    tr = aggregate(ups, method="trimmed", trim=0.25)[0]["l"]  # drops 1 of 4 / 0 of 3
    assert tr.flatten().tolist() == pytest.approx([3.0, 7 / 3])
    # unweighted mean with trim=0
    tr0 = aggregate(ups, method="trimmed", trim=0.0)[0]["l"]
    assert tr0.flatten().tolist() == pytest.approx([107 / 4, 7 / 3])
    _, counts = aggregate(ups, method="median")
    assert counts.tolist() == [53.0, 3.0]  # plain sum of the reported counts


def test_class_nobody_holds_stays_zero_for_every_method():
    ups = [_up(i, [[1.0, 2.0], [5.0, 5.0]], [2.0, 0.0]) for i in range(3)]
    for opts in ({"method": "median"}, {"method": "trimmed"}, {"max_weight": 0.5}):
        acts, _ = aggregate(ups, **opts)
        assert acts["l"][1].tolist() == [0.0, 0.0]
        assert acts["l"].dtype == torch.float32


def test_capped_shares_water_filling():
    s = capped_shares(torch.tensor([100.0, 1.0, 1.0, 2.0]), 0.4)
    assert s.tolist() == pytest.approx([0.4, 0.15, 0.15, 0.3])
    assert float(s.sum()) == pytest.approx(1.0)
    s = capped_shares(torch.tensor([10.0, 10.0, 1.0, 1.0, 1.0]), 0.3)  # two capped
    assert s.tolist() == pytest.approx([0.3, 0.3, 0.4 / 3, 0.4 / 3, 0.4 / 3])
    # infeasible cap (2 holders x 0.25 < 1): equal shares
    assert capped_shares(torch.tensor([9.0, 1.0]), 0.25).tolist() == [0.5, 0.5]
    assert capped_shares(torch.tensor([3.0, 1.0]), None).tolist() == [0.75, 0.25]


def test_max_weight_limits_a_dominant_client():
    honest = [_up(i, [[1.0, 1.0]], [10.0]) for i in range(4)]
    big = _up(9, [[101.0, 1.0]], [1e6])
    assert aggregate(honest + [big])[0]["l"][0, 0] == pytest.approx(101.0, rel=1e-3)
    # cap 0.2 with 5 holders: everyone gets 0.2 -> (4 * 1 + 101) / 5
    assert aggregate(honest + [big], max_weight=0.2)[0]["l"][0, 0] == pytest.approx(21.0)


@pytest.mark.parametrize("opts,needle", [
    ({"method": "avg"}, "'avg'"),
    ({"method": "trimmed", "trim": 0.5}, "0.5"),
    ({"trim": -0.1}, "-0.1"),
    ({"trim": float("nan")}, "nan"),
    ({"max_weight": 0.0}, "0.0"),
    ({"max_weight": 1.5}, "1.5"),
    ({"max_weight": "x"}, "'x'"),
    ({"method": "median", "max_weight": 0.3}, "0.3"),
])
def test_bad_options_name_the_value(opts, needle):
    up = _up(0, [[1.0]], [1.0])
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        aggregate([up], **opts)


def test_validation_still_applies_with_robust_methods():
    bad = _up(1, [[-1.0]], [1.0])
    with pytest.raises(ValueError, match="client 1, layer l: negative"):
        aggregate([_up(0, [[1.0]], [1.0]), bad], method="median")
