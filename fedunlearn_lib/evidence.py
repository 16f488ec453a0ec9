"""Information left in a model, beyond U-set accuracy: relearn time and the probe.

U-set accuracy 0 may come from fine-tuning alone, so it cannot tell pruning from no
pruning. Relearn time (federated rounds, with the forgotten classes back in the data,
until the raw model's U-set accuracy is regained) and a linear probe on the frozen
features measure what the model still knows; the retrained model is the reference.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .data import BatchTransform, ImageData
from .federated import FedConfig, Federation, autocast, identity_fields
from .io import atomic_write_json, state_digest
from .masking import ChannelMask
from .probe import probe_accuracy


def relearn_rounds(model: nn.Module, data: ImageData, cfg: FedConfig, forget: Sequence[int],
                   target_u: float, max_rounds: int, device: str = "cpu",
                   progress: bool = False) -> dict:
    """Federated training of a copy of ``model`` on *all* classes until its U-set accuracy
    on the decision split (validation when ``data`` has one) reaches ``target_u`` (the raw
    model's, on the same split); ``rounds`` is ``None`` when ``max_rounds`` did not
    suffice. ``u_curve``: U-set test accuracy in round 0, after the first round and in the
    last round (None in the rounds between, which are not evaluated on test)."""
    fed = Federation(copy.deepcopy(model), data, cfg, forget=forget, device=device,
                     progress=progress, desc="relearn")
    key = fed.decision_key.replace("r_acc", "u_acc")
    fed.train_until(target_u, min(1, max_rounds), key=key)  # round 1 is reported on test
    result = fed.train_until(target_u, max_rounds, key=key)
    return {"rounds": result.rounds_to_target, "budget": max_rounds, "decided_on": key,
            "u_curve": [h.get("u_acc") for h in result.history]}


def information_left(name: str, model: nn.Module, data: ImageData, cfg: FedConfig,
                     forget: Sequence[int], target_u: float, max_rounds: int,
                     cache_dir: str | os.PathLike, device: str = "cpu") -> dict:
    """Relearn time and probe accuracy of ``model``, cached in ``cache_dir/evidence_<name>.json``
    (recomputed unless the weights, data, target, budget and federation all match)."""
    path = Path(cache_dir) / f"evidence_{name}.json"
    key = {"weights": state_digest(model), "data": data.fingerprint, "target_u": target_u,
           "budget": max_rounds, "forget": list(forget), "federation": identity_fields(cfg)}
    if path.exists():
        try:
            cached = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is truncated or corrupted ({err}); delete it") from err
        if cached.get("key") == key:
            return cached["result"]
    result = {"relearn": relearn_rounds(model, data, cfg, forget, target_u, max_rounds, device),
              "probe": probe_accuracy(model, data, forget, seed=cfg.seed)}
    atomic_write_json({"key": key, "result": result}, path)
    return result


BN_IMAGES = 5000  # training images a BatchNorm re-estimation averages over (a subset)


def training_images(data: ImageData, classes: Sequence[int], max_images: int | None = None,
                    seed: int = 0) -> torch.Tensor:
    """The training images of ``classes`` (uint8), at most ``max_images`` of them drawn at
    random (seeded), so each class keeps its natural share."""
    keep = torch.isin(data.train_y, torch.tensor(list(classes), dtype=torch.long,
                                                 device=data.train_y.device))
    idx = torch.nonzero(keep).squeeze(1)
    if not len(idx):
        raise ValueError(f"no training images of classes {list(classes)}")
    if max_images is not None and len(idx) > max_images:
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(idx), generator=g)[:max_images].sort().values
        idx = idx[pick.to(idx.device)]
    return data.train_x[idx]


@torch.no_grad()
def bn_recall(model: nn.Module, images: torch.Tensor, data: ImageData,
              mask: ChannelMask | None = None, batch_size: int = 500,
              precision: str = "fp32") -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``images``
    (uint8, e.g. ``training_images`` of some classes; normalized as ``data``'s; cumulative
    average over one pass, no weight changes, forward passes in ``precision``), masked
    channels kept at zero. On the retained classes it separates what pruning removed from
    statistics thrown off balance; on images that include the forgotten classes (a client
    that still holds them) it is an attack: forgetting that lives in the running
    statistics comes back there."""
    out = copy.deepcopy(model)
    bns = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("the model has no BatchNorm layer to re-estimate")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts alike
    transform = BatchTransform(data.mean, data.std, images.device)
    out.train()
    with autocast(images.device, precision):
        for s in range(0, len(images), batch_size):
            if len(images[s:s + batch_size]) >= 2:
                out(transform(images[s:s + batch_size]))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    if mask is not None:
        mask.apply(out)
    return out.eval()
