"""Class-discrimination importance for torch-pruning's pruners.

``TFIDFImportance`` ranks conv channels by the paper's TF-IDF score for one class, computed
from aggregated local-proc uploads, so that any torch-pruning pruner
(``tp.pruner.BasePruner`` and friends) removes the channels this library's
``select_channels`` would pick::

    imp = TFIDFImportance(model, uploads, target=k)       # uploads: local_proc per client
    pruner = tp.pruner.BasePruner(model, example_inputs, importance=imp,
                                  pruning_ratio=0.05, global_pruning=True)
    pruner.step()

Sign convention. torch-pruning keeps the channels of *highest* importance and removes the
lowest. The paper prunes the channels with the *highest* TF-IDF score for the forgotten
class (the most class-discriminative ones), so with ``direction="highest"`` (default, the
paper) the importance is the negated TF-IDF score: the channels most discriminative of the
class are the least important to keep. ``direction="lowest"`` (the ablation arm of the
same name) returns the score itself, so the least discriminative channels go.

Groups. torch-pruning calls the importance once per group of coupled layers and expects
one score per channel of the group's root layer, or ``None`` to leave the group alone.
A group whose root is not a scored conv (the classifier, anything the uploads do not
cover) gets ``None``. A group whose pruned output channels span several scored convs is a
residual stream (in a ResNet the stem or shortcut conv and every block's second conv of a
stage add into the same channels), which the library itself never removes physically
(``remove_channels`` keeps such channels masked) and which the paper scores per conv, not
per stream. ``coupled="skip"`` (default) returns ``None`` for it; ``coupled="mean"``
scores each stream channel by the mean of its convs' TF-IDF scores (torch-pruning's own
"mean" group reduction), a choice of this module, not of the paper.

Counting. With ``coupled="skip"`` the candidates are the channels of uncoupled convs only,
so compare with ``select_channels`` on those convs' scores. Of the ``n`` candidates of a
scope torch-pruning removes ``n - int(n * (1 - ratio))`` (about ``ceil(ratio * n)``),
``select_channels`` ``max(1, round(ratio * n))`` and never a layer's last channel: the
counts agree when ``ratio * n`` is a whole number or its fractional part exceeds one half
(for ResNet-20's 336 uncoupled channels at ratio 0.05 both remove 17; per layer at 0.05
they differ on 64-channel layers, 4 against 3). Under global ranking torch-pruning removes
every channel whose importance equals the threshold, so exact ties there can remove more;
``select_channels`` breaks ties by layer order, then channel. Depthwise convs are not
scored (``None``).

The scores belong to the model the uploads were computed on: if a layer's channel count
has changed since (an earlier pruning step), the call raises ``ValueError``; compute fresh
uploads on the pruned model and a new importance for each step (as the paper does for
each further class).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from .procs import Upload, aggregate
from .pruning import DIRECTIONS, layer_scores

COUPLED = ("skip", "mean")


class TFIDFImportance(tp.importance.Importance):
    """torch-pruning importance: (negated) TF-IDF scores of class ``target`` per channel.

    ``model`` is the network the ``uploads`` (one ``local_proc`` ``Upload`` per client)
    were computed on; they are aggregated with ``aggregate(uploads, method=aggregation)``
    and scored with ``layer_scores(activations, target, idf_threshold)``, available as
    ``self.scores`` (layer name -> TF-IDF per channel, what ``select_channels`` ranks).
    ``direction`` and ``coupled`` are explained in the module docstring. Raises
    ``ValueError`` naming the bad value for a class no upload holds or outside the
    uploads' classes, an unknown ``direction``, ``coupled``, ``idf_threshold`` or
    ``aggregation``, or uploads naming a layer that is not a conv of ``model`` with as
    many channels.
    """

    def __init__(self, model: nn.Module, uploads: Sequence[Upload], target: int, *,
                 idf_threshold: str = "class", direction: str = "highest",
                 coupled: str = "skip", aggregation: str = "mean") -> None:
        activations, counts = aggregate(list(uploads), method=aggregation)
        self._setup(model, activations, counts, target, idf_threshold, direction, coupled)

    @classmethod
    def from_activations(cls, model: nn.Module, activations: dict[str, torch.Tensor],
                         counts: torch.Tensor, target: int, *, idf_threshold: str = "class",
                         direction: str = "highest",
                         coupled: str = "skip") -> "TFIDFImportance":
        """The importance from what ``aggregate`` returned (``activations``, ``counts``)."""
        self = cls.__new__(cls)
        self._setup(model, activations, counts, target, idf_threshold, direction, coupled)
        return self

    def _setup(self, model: nn.Module, activations: dict[str, torch.Tensor],
               counts: torch.Tensor, target: int, idf_threshold: str, direction: str,
               coupled: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; choose one of "
                             f"{', '.join(DIRECTIONS)}")
        if coupled not in COUPLED:
            raise ValueError(f"unknown coupled {coupled!r}; choose one of {', '.join(COUPLED)}")
        num_classes = int(counts.numel())
        if isinstance(target, bool) or not isinstance(target, numbers.Integral) \
                or not 0 <= target < num_classes:
            raise ValueError(f"target class {target!r} is not one of the uploads' "
                             f"{num_classes} classes [0, {num_classes})")
        if counts[target] <= 0:
            raise ValueError(f"target class {target} is not in the uploads: no uploading "
                             f"client holds an image of it, so it has no TF-IDF scores")
        convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        for name, a in activations.items():
            if name not in convs:
                raise ValueError(f"the uploads score layer {name!r}, which is not a conv "
                                 f"layer of the model")
            if a.shape[1] != convs[name].out_channels:
                raise ValueError(f"the uploads score {a.shape[1]} channels of layer {name!r}, "
                                 f"which has {convs[name].out_channels}")
        self.target, self.direction, self.coupled = int(target), direction, coupled
        self.scores = layer_scores(activations, self.target, idf_threshold)
        self._names = {m: n for n, m in convs.items() if n in self.scores}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        root_dep, root_idxs = group[0]
        root = root_dep.target.module
        if root not in self._names or root_dep.handler != tp.prune_conv_out_channels:
            return None
        scored = []  # (layer name, its channel indices, the matching root indices)
        for item in group:
            dep, idxs = item
            module = dep.target.module
            if module in self._names and dep.handler == tp.prune_conv_out_channels:
                name = self._names[module]
                if module.out_channels != len(self.scores[name]):
                    raise ValueError(
                        f"layer {name!r} has {module.out_channels} channels, the uploads "
                        f"{len(self.scores[name])}: the model was pruned after the local "
                        f"procs ran; compute new uploads and a new TFIDFImportance")
                scored.append((name, list(idxs), list(item.root_idxs)))
        if len(scored) > 1 and self.coupled == "skip":
            return None
        # one score per root index, in the order of the root's indices (all channels for
        # the groups a pruner builds; a hand-made group may name a subset)
        position = {int(r): i for i, r in enumerate(root_idxs)}
        total = torch.zeros(len(root_idxs), dtype=torch.float64)
        hits = torch.zeros(len(root_idxs), dtype=torch.float64)
        for name, idxs, ridx in scored:
            at = torch.tensor([position[int(r)] for r in ridx], dtype=torch.long)
            total.index_add_(0, at, self.scores[name][idxs].double())
            hits.index_add_(0, at, torch.ones(len(ridx), dtype=torch.float64))
        sign = -1.0 if self.direction == "highest" else 1.0
        return (sign * total / hits.clamp(min=1)).float()
