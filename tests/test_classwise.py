"""Class-wise accuracy and the KL divergence of Table 5."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn_lib.classwise import accuracy_kl, per_class_accuracy


def test_kl_matches_hand_computation():
    # normalized: p = [0.5, 0.5], q = [0.25, 0.75]
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert accuracy_kl([0.8, 0.8], [0.2, 0.6]) == pytest.approx(expected, rel=1e-9)
    # p = [0.2, 0.3, 0.5] (already sums to 1), q = [1/3, 1/3, 1/3]
    p = np.array([0.2, 0.3, 0.5])
    expected = float(np.sum(p * np.log(p * 3)))
    assert accuracy_kl([0.4, 0.6, 1.0], [0.9, 0.9, 0.9]) == pytest.approx(expected, rel=1e-9)


def test_kl_is_zero_for_proportional_distributions_and_asymmetric_otherwise():
    assert accuracy_kl([0.3, 0.6], [0.1, 0.2]) == pytest.approx(0.0, abs=1e-12)
    assert accuracy_kl([0.2, 0.8], [0.5, 0.5]) != pytest.approx(accuracy_kl([0.5, 0.5],
                                                                            [0.2, 0.8]))


def test_kl_rejects_bad_vectors():
    with pytest.raises(ValueError, match=r"\(2,\) and \(3,\)"):
        accuracy_kl([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="not all zero"):
        accuracy_kl([0.0, 0.0], [0.5, 0.5])


class _Constant(nn.Module):
    """Predicts class 2 for every image."""

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[:, 2] = 1
        return out


def test_per_class_accuracy_of_a_constant_predictor(small_digits):
    acc = per_class_accuracy(_Constant(), small_digits)
    assert acc.shape == (10,) and acc[2] == 1.0 and np.delete(acc, 2).sum() == 0


def test_softmax_kl_by_hand():
    import math

    from fedunlearn_lib.classwise import softmax_kl
    ref = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
    other = torch.tensor([[math.log(3.0), 0.0]])  # q = (3/4, 1/4)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert softmax_kl(ref, other) == pytest.approx(expected, abs=1e-7)
    # mean over images; identical predictions (up to a shift of the logits) give 0
    both = torch.cat([ref, ref + 5.0])
    assert softmax_kl(both, torch.cat([other, ref])) == pytest.approx(expected / 2, abs=1e-7)
    with pytest.raises(ValueError, match=r"\(1, 2\) and \(1, 3\)"):
        softmax_kl(ref, torch.zeros(1, 3))


def test_prediction_histogram_counts_where_images_go():
    from fedunlearn_lib.classwise import prediction_histogram
    logits = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0, 0, 1.0]])
    assert prediction_histogram(logits, 4).tolist() == [0.25, 0.5, 0.25, 0.0]


def test_model_logits_builds_no_autograd_graph(small_digits):
    """Evaluation keeps no graph (it would hold every activation of a 500-image batch)."""
    from fedunlearn_lib.classwise import model_logits
    from fedunlearn_lib.data import BatchTransform
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    x = small_digits.test_x[:7]
    logits = model_logits(model, x, BatchTransform(small_digits.mean, small_digits.std,
                                                   x.device), batch_size=3)
    assert logits.shape == (7, 10) and not logits.requires_grad and logits.grad_fn is None
