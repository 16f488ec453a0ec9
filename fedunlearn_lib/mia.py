"""Membership inference against an unlearned model (Golatkar et al. 2020; Kurmanji et al. 2023).

An attacker fits a classifier that tells training members from non-members using features
of the model's output, then asks which of the forgotten class's training samples it still
calls "member". After perfect unlearning that rate should match the retrained model's.

Each attack in ``ATTACKS`` is named feature + classifier; all standardize their inputs:

- ``entropy-logreg``: the softmax entropy (one scalar) with logistic regression;
- ``loss-logreg``: the cross-entropy loss on the true label (one scalar) with logistic
  regression;
- ``sorted-softmax-mlp64``: the softmax vector sorted in descending order (label-agnostic,
  so class identity is discarded) with an MLP of one 64-unit hidden layer;
- ``authors-posterior-mlp128``: the authors' attack as their public code builds it, the
  full, unsorted posterior (softmax) vector with an MLP of one 128-unit hidden layer.

Ours differ from the authors' in their input (a scalar entropy or loss, or the sorted
rather than the full posterior) and classifier (logistic regression, or 64 hidden units
rather than 128).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from .classwise import model_logits


class Attack(NamedTuple):
    """One membership attack: per-sample features, a classifier factory, what it is."""

    features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels)
    classifier: Callable[[int], ClassifierMixin]  # seed -> unfitted classifier
    description: str


def _entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1, keepdim=True)


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels.cpu(), reduction="none").unsqueeze(1)


def _sorted_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.softmax(1).sort(1, descending=True).values


def _posterior(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.softmax(1)


def _logreg(seed: int) -> ClassifierMixin:
    return LogisticRegression(max_iter=1000)


def _mlp(width: int) -> Callable[[int], ClassifierMixin]:
    """A factory of MLPs with one hidden layer of ``width`` units."""
    return lambda seed: MLPClassifier(hidden_layer_sizes=(width,), max_iter=500,
                                      random_state=seed)


ATTACKS: dict[str, Attack] = {
    "entropy-logreg": Attack(_entropy, _logreg,
                             "softmax entropy (a scalar), logistic regression"),
    "loss-logreg": Attack(_loss, _logreg,
                          "cross-entropy loss on the true label (a scalar), logistic regression"),
    "sorted-softmax-mlp64": Attack(_sorted_softmax, _mlp(64),
                                   "softmax vector sorted descending, MLP with 64 hidden units"),
    "authors-posterior-mlp128": Attack(_posterior, _mlp(128),
                                       "the authors' attack: full unsorted softmax posterior, "
                                       "MLP with 128 hidden units"),
}


def get_attack(kind: str) -> Attack:
    """The attack named ``kind``; ValueError naming the valid ones otherwise."""
    if kind not in ATTACKS:
        raise ValueError(f"unknown membership attack {kind!r}; choose one of "
                         f"{', '.join(ATTACKS)}")
    return ATTACKS[kind]


@torch.inference_mode()
def attack_features(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> np.ndarray:
    """Per-sample input of attack ``kind`` (see ``ATTACKS``), one row per sample."""
    return get_attack(kind).features(logits, labels).numpy().astype(np.float64)


def attack_model(kind: str, seed: int) -> Pipeline:
    """The unfitted classifier of attack ``kind`` behind a standard scaler."""
    return make_pipeline(StandardScaler(), get_attack(kind).classifier(seed))


def membership_attack(member: tuple[torch.Tensor, torch.Tensor],
                      nonmember: tuple[torch.Tensor, torch.Tensor],
                      target: tuple[torch.Tensor, torch.Tensor],
                      kind: str = "entropy-logreg", seed: int = 0) -> dict[str, float]:
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
    accuracy = float(attack_model(kind, seed).fit(x_fit, y_fit).score(x_val, y_val))
    attacker = attack_model(kind, seed).fit(x, y)
    rate = float(attacker.predict(attack_features(*target, kind)).mean())
    return {"rate": rate, "accuracy": accuracy}
