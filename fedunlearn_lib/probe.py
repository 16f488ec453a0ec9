"""Representation probe: can the frozen penultimate features still recognise a forgotten class?"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .data import BatchTransform, ImageData


@torch.inference_mode()
def penultimate_features(model: nn.Module, x: torch.Tensor, transform: BatchTransform,
                         batch_size: int = 500) -> np.ndarray:
    """``model.features`` (the input of the classifier layer) for uint8 images ``x``."""
    model.eval()
    return torch.cat([model.features(transform(x[s:s + batch_size])).float().cpu()
                      for s in range(0, len(x), batch_size)]).numpy()


def probe_accuracy(model: nn.Module, data: ImageData, forget: Sequence[int],
                   max_train: int | None = 5000, seed: int = 0) -> float:
    """Accuracy of a logistic-regression probe, fit on the frozen features of training
    images of *all* classes, on the forgotten classes' test images."""
    transform = BatchTransform(data.mean, data.std, data.train_x.device)
    idx = torch.arange(len(data.train_y))
    if max_train is not None and len(idx) > max_train:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(idx), generator=g)[:max_train].sort().values
    idx = idx.to(data.train_y.device)
    # scikit-learn (~2 s to import) only where a probe is fit: every training process
    # (Flower's ClientApps, the workflow's jobs) imports this module
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(penultimate_features(model, data.train_x[idx], transform),
            data.train_y[idx].cpu().numpy())
    u = torch.isin(data.test_y, torch.tensor(list(forget), device=data.test_y.device))
    if not u.any():
        raise ValueError(f"no test images of the forgotten class(es) {list(forget)}")
    feats = penultimate_features(model, data.test_x[u], transform)
    return float(clf.score(feats, data.test_y[u].cpu().numpy()))
