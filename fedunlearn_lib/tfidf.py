"""TF-IDF channel scores (the paper's Eq. 6-8)."""
from __future__ import annotations

import torch


def tfidf_scores(A: torch.Tensor, target: int) -> torch.Tensor:
    """Per-channel TF-IDF score of one conv layer for class ``target``.

    ``A`` is the [num_classes, num_channels] matrix of class-wise mean channel activations.
    TF_j = A[target, j] / sum_j' A[target, j'];
    IDF_j = ln((1 + num_classes) / (1 + #{i : A[i, j] >= mean_i A[i, j]})).
    """
    if A.dim() != 2:
        raise ValueError(f"A must be [num_classes, num_channels], got shape {tuple(A.shape)}")
    num_classes = A.shape[0]
    if not 0 <= target < num_classes:
        raise ValueError(f"target class {target} outside [0, {num_classes})")
    A = A.double()
    row = A[target]
    total = row.sum()
    tf = row / total if total > 0 else torch.zeros_like(row)
    df = (A >= A.mean(dim=0, keepdim=True)).sum(dim=0)
    idf = torch.log((1.0 + num_classes) / (1.0 + df.double()))
    return (tf * idf).float()

