import math

import pytest
import torch

from fedunlearn_lib.tfidf import tfidf_scores


def test_matches_hand_computed_values():
    # 3 classes x 2 channels
    A = torch.tensor([[2.0, 0.0], [1.0, 3.0], [1.0, 3.0]])
    # channel means: [4/3, 2]; classes at/above mean: ch0 -> {0} (1), ch1 -> {1, 2} (2)
    idf = [math.log(4 / 2), math.log(4 / 3)]
    tf0 = [2 / 2, 0 / 2]
    tf1 = [1 / 4, 3 / 4]
    assert tfidf_scores(A, 0).tolist() == pytest.approx([tf0[0] * idf[0], tf0[1] * idf[1]])
    assert tfidf_scores(A, 1).tolist() == pytest.approx([tf1[0] * idf[0], tf1[1] * idf[1]])


def test_channel_active_for_every_class_scores_zero():
    A = torch.tensor([[1.0, 5.0], [1.0, 0.0]])  # channel 0 equal for all: df = 2 -> idf 0
    s = tfidf_scores(A, 0)
    assert s[0].item() == pytest.approx(0.0)
    assert s[1].item() == pytest.approx(5 / 6 * math.log(3 / 2))


def test_all_zero_row_gives_zero_scores_not_nan():
    A = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert torch.equal(tfidf_scores(A, 0), torch.zeros(2))


def test_bad_target_and_shape_are_named():
    with pytest.raises(ValueError, match="target class 3"):
        tfidf_scores(torch.ones(3, 4), 3)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        tfidf_scores(torch.ones(4), 0)
