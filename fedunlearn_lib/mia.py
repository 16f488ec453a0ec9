"""Membership inference against an unlearned model (Golatkar et al. 2020; Kurmanji et al. 2023).

An attacker fits a classifier that tells training members from non-members using features
of the model's output, then asks which of the forgotten class's training samples it still
calls "member". After perfect unlearning that rate should match the retrained model's.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from .data import BatchTransform

FEATURES = ("entropy", "loss", "sorted_softmax")


@torch.inference_mode()
def model_logits(model: nn.Module, x: torch.Tensor, transform: BatchTransform,
                 batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on uint8 images ``x``."""
    model.eval()
    return torch.cat([model(transform(x[s:s + batch_size])).float().cpu()
                      for s in range(0, len(x), batch_size)])


def attack_features(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> np.ndarray:
    """Per-sample attack input: softmax ``entropy``, cross-entropy ``loss``, or the
    ``sorted_softmax`` vector (the authors' public code)."""
    probs = logits.softmax(1)
    if kind == "entropy":
        feat = -(probs * logits.log_softmax(1)).sum(1, keepdim=True)
    elif kind == "loss":
        feat = F.cross_entropy(logits, labels.cpu(), reduction="none").unsqueeze(1)
    elif kind == "sorted_softmax":
        feat = probs.sort(1, descending=True).values
    else:
        raise ValueError(f"unknown attack feature {kind!r}; choose one of {', '.join(FEATURES)}")
    return feat.numpy().astype(np.float64)


def _attacker(kind: str, seed: int):
    if kind == "sorted_softmax":
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=seed)
    else:
        clf = LogisticRegression(max_iter=1000)
    return make_pipeline(StandardScaler(), clf)


def membership_attack(member: tuple[torch.Tensor, torch.Tensor],
                      nonmember: tuple[torch.Tensor, torch.Tensor],
                      target: tuple[torch.Tensor, torch.Tensor],
                      kind: str = "entropy", seed: int = 0) -> dict[str, float]:
    """Fit the attack on (logits, labels) of members vs non-members and apply it to ``target``.

    The two sides are balanced by subsampling the larger. Returns ``rate`` (fraction of
    ``target`` predicted "member") and ``accuracy`` (the attack's accuracy on a held-out
    quarter of the balanced member/non-member set; 0.5 is chance).
    """
    rng = np.random.default_rng(seed)
    n = min(len(member[1]), len(nonmember[1]))
    if n < 4:
        raise ValueError(f"membership attack needs >= 4 members and non-members, got {n}")
    if len(target[1]) == 0:
        raise ValueError("membership attack needs at least one target sample")
    feats, ys = [], []
    for label, (logits, labels) in ((1, member), (0, nonmember)):
        pick = np.sort(rng.choice(len(labels), n, replace=False))
        feats.append(attack_features(logits[pick], labels[pick], kind))
        ys.append(np.full(n, label))
    x, y = np.concatenate(feats), np.concatenate(ys)
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=0.25, stratify=y,
                                                  random_state=seed)
    accuracy = float(_attacker(kind, seed).fit(x_fit, y_fit).score(x_val, y_val))
    attacker = _attacker(kind, seed).fit(x, y)
    rate = float(attacker.predict(attack_features(*target, kind)).mean())
    return {"rate": rate, "accuracy": accuracy}
