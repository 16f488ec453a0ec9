"""TF-IDF channel scores (the paper's Eq. 6-8).

For the [classes x channels] matrix A of one conv layer and target class u:

    TF_j  = A[u, j] / sum_j' A[u, j']
    IDF_j = log((1 + |U|) / (1 + df_j)),   df_j = #{i : A[i, j] >= threshold}

Two readings of the threshold in df_j:

- ``"class"`` (default, Eq. 7 as printed): the mean of class i's activations over the
  layer's channels, mean_j' A[i, j'] (a word occurs in a document when its frequency is at
  least that document's average);
- ``"channel"`` (the authors' public code): the mean of channel j over the classes,
  mean_i' A[i', j]. Their code also uses log(|U| / (1 + df)) and a per-layer balance factor
  on TF; those two are not reproduced, only the threshold.
"""
from __future__ import annotations

import torch

IDF_THRESHOLDS = ("class", "channel")


def tfidf_scores(A: torch.Tensor, target: int, idf_threshold: str = "class") -> torch.Tensor:
    """Per-channel TF-IDF score of one conv layer for class ``target``.

    ``A`` is the [num_classes, num_channels] matrix of class-wise mean channel activations;
    ``idf_threshold`` picks the reading of Eq. 7 (see the module docstring). A target row
    of zeros gives TF = 0 everywhere.
    """
    if A.dim() != 2:
        raise ValueError(f"A must be [num_classes, num_channels], got shape {tuple(A.shape)}")
    num_classes = A.shape[0]
    if not 0 <= target < num_classes:
        raise ValueError(f"target class {target} outside [0, {num_classes})")
    if idf_threshold not in IDF_THRESHOLDS:
        raise ValueError(f"unknown idf_threshold {idf_threshold!r}; choose one of "
                         f"{', '.join(IDF_THRESHOLDS)}")
    A = A.double()
    row = A[target]
    total = row.sum()
    tf = row / total if total > 0 else torch.zeros_like(row)
    dim = 1 if idf_threshold == "class" else 0
    df = (A >= A.mean(dim=dim, keepdim=True)).sum(dim=0)
    idf = torch.log((1.0 + num_classes) / (1.0 + df.double()))
    return (tf * idf).float()
