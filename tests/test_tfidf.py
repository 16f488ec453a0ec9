import math

import pytest
import torch

from fedunlearn_lib.tfidf import tfidf_scores

L = math.log(3 / 2)  # log((1 + 2 classes) / (1 + 1 class))


def test_readings_differ_on_a_hand_computed_matrix_with_ties():
    A = torch.tensor([[4.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    # "class" (Eq. 7): row means 2 and 1; ties count (2 >= 2, 1 >= 1): df = [2, 2, 1]
    assert tfidf_scores(A, 0, "class").tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert tfidf_scores(A, 1, "class").tolist() == pytest.approx([0.0, 0.0, L / 3])
    # "channel" (authors' code): channel means 2.5, 1.5, 0.5: df = [1, 1, 1]
    assert tfidf_scores(A, 0, "channel").tolist() == pytest.approx([4 / 6 * L, 2 / 6 * L, 0])
    assert tfidf_scores(A, 1, "channel").tolist() == pytest.approx([L / 3] * 3)


def test_default_reading_is_eq7_as_printed():
    A = torch.tensor([[4.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.equal(tfidf_scores(A, 1), tfidf_scores(A, 1, "class"))


def test_class_row_of_zeros():
    A = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    for reading in ("class", "channel"):  # TF of an all-zero row is 0, not NaN
        assert torch.equal(tfidf_scores(A, 0, reading), torch.zeros(2))
    # "class": the zero row's mean is 0, so it counts in every channel: df = [1, 2]
    assert tfidf_scores(A, 1, "class").tolist() == pytest.approx([L / 4, 0.0])
    # "channel": channel means 0.5, 1.5; only class 1 reaches them: df = [1, 1]
    assert tfidf_scores(A, 1, "channel").tolist() == pytest.approx([L / 4, 3 * L / 4])


def test_channel_zero_for_every_class():
    A = torch.tensor([[2.0, 0.0], [4.0, 0.0]])
    # "class": channel 1 is below both row means (df 0) but its TF is 0; channel 0: df 2
    assert tfidf_scores(A, 0, "class").tolist() == pytest.approx([0.0, 0.0])
    # "channel": channel 1's mean is 0, both classes tie (df 2); channel 0: df 1
    assert tfidf_scores(A, 0, "channel").tolist() == pytest.approx([L, 0.0])


def _loop_scores(A: torch.Tensor, u: int, reading: str) -> list[float]:
    n, c = A.shape
    out = []
    for j in range(c):
        df = 0
        for i in range(n):
            thr = (sum(A[i].tolist()) / c if reading == "class"
                   else sum(A[:, j].tolist()) / n)
            df += A[i, j].item() >= thr
        out.append(A[u, j].item() / sum(A[u].tolist()) * math.log((1 + n) / (1 + df)))
    return out


@pytest.mark.parametrize("reading", ["class", "channel"])
def test_hundred_classes_match_an_explicit_loop(reading):
    A = torch.rand(100, 12, generator=torch.Generator().manual_seed(1)).double()
    assert tfidf_scores(A, 99, reading).tolist() == pytest.approx(_loop_scores(A, 99, reading),
                                                                  rel=1e-5)


def test_bad_target_shape_and_reading_are_named():
    with pytest.raises(ValueError, match="target class 3"):
        tfidf_scores(torch.ones(3, 4), 3)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        tfidf_scores(torch.ones(4), 0)
    with pytest.raises(ValueError, match="'row'"):
        tfidf_scores(torch.ones(3, 4), 0, "row")
