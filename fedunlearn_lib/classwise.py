"""A model's logits, its class-wise test accuracy, and how far two class-wise accuracy
distributions lie apart."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .data import BatchTransform, ImageData


@torch.no_grad()
def model_logits(model: nn.Module, x: torch.Tensor, transform: BatchTransform,
                 batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` (eval mode, no autograd graph) on uint8 images ``x``."""
    model.eval()
    return torch.cat([model(transform(x[s:s + batch_size])).float().cpu()
                      for s in range(0, len(x), batch_size)])


def per_class_accuracy(model: nn.Module, data: ImageData,
                       transform: BatchTransform | None = None) -> np.ndarray:
    """Test accuracy of ``model`` on each class of ``data`` (NaN for a class with no images)."""
    transform = transform or BatchTransform(data.mean, data.std, data.test_x.device)
    pred = model_logits(model, data.test_x, transform).argmax(1)
    y = data.test_y.cpu()
    hits = torch.bincount(y[pred == y], minlength=data.num_classes).double()
    counts = torch.bincount(y, minlength=data.num_classes).double()
    return (hits / counts).numpy()


def accuracy_kl(reference: Sequence[float], other: Sequence[float],
                eps: float = 1e-12) -> float:
    """KL(reference ‖ other) between two class-wise accuracy vectors, each normalized to
    sum to 1 (Table 5 of the paper; the retrained model is the reference)."""
    p = np.asarray(reference, dtype=np.float64)
    q = np.asarray(other, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(f"need two accuracy vectors of one length, got shapes "
                         f"{p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any() or p.sum() == 0 or q.sum() == 0:
        raise ValueError("accuracies must be >= 0 and not all zero")
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(np.where(p > 0, p * np.log((p + eps) / (q + eps)), 0.0)))


def softmax_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over images of KL(softmax(reference) ‖ softmax(other)), in nats: how far a
    model's per-image predictions lie from a reference model's (the retrained model) on the
    same images."""
    if reference_logits.shape != logits.shape or reference_logits.ndim != 2 \
            or len(logits) == 0:
        raise ValueError(f"need two [images, classes] logit matrices of one shape, got "
                         f"{tuple(reference_logits.shape)} and {tuple(logits.shape)}")
    log_p = torch.log_softmax(reference_logits.double(), dim=1)
    log_q = torch.log_softmax(logits.double(), dim=1)
    return float((log_p.exp() * (log_p - log_q)).sum(dim=1).mean())


def prediction_histogram(logits: torch.Tensor, num_classes: int) -> np.ndarray:
    """Share of images predicted as each class (where a forgotten class's images go)."""
    pred = logits.argmax(1)
    return (torch.bincount(pred, minlength=num_classes).double() / max(len(pred), 1)).numpy()
