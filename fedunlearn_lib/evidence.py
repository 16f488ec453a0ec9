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
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .data import BatchTransform, ImageData
from .federated import FedConfig, Federation, autocast
from .io import atomic_write_json, state_digest
from .masking import ChannelMask
from .probe import probe_accuracy


def relearn_rounds(model: nn.Module, data: ImageData, cfg: FedConfig, forget: Sequence[int],
                   target_u: float, max_rounds: int, device: str = "cpu",
                   progress: bool = False) -> dict:
    """Federated training of a copy of ``model`` on *all* classes until its U-set accuracy
    reaches ``target_u``; ``rounds`` is ``None`` when ``max_rounds`` did not suffice."""
    fed = Federation(copy.deepcopy(model), data, cfg, forget=forget, device=device,
                     progress=progress, desc="relearn")
    result = fed.train_until(target_u, max_rounds, key="u_acc")
    return {"rounds": result.rounds_to_target, "budget": max_rounds,
            "u_curve": [h["u_acc"] for h in result.history]}


def information_left(name: str, model: nn.Module, data: ImageData, cfg: FedConfig,
                     forget: Sequence[int], target_u: float, max_rounds: int,
                     cache_dir: str | os.PathLike, device: str = "cpu") -> dict:
    """Relearn time and probe accuracy of ``model``, cached in ``cache_dir/evidence_<name>.json``
    (recomputed unless the weights, data, target, budget and federation all match)."""
    path = Path(cache_dir) / f"evidence_{name}.json"
    key = {"weights": state_digest(model), "data": data.fingerprint, "target_u": target_u,
           "budget": max_rounds, "forget": list(forget), "federation": asdict(cfg)}
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


@torch.no_grad()
def bn_recall(model: nn.Module, data: ImageData, forget: Sequence[int],
              mask: ChannelMask | None = None, batch_size: int = 500,
              precision: str = "fp32") -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on the
    retained classes' training images (cumulative average over one pass, no weight
    changes, forward passes in ``precision``), masked channels kept at zero:
    pruning-based forgetting that lives in the running statistics comes back here."""
    out = copy.deepcopy(model)
    bns = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("the model has no BatchNorm layer to re-estimate")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts alike
    keep = ~torch.isin(data.train_y, torch.tensor(list(forget), dtype=torch.long,
                                                  device=data.train_y.device))
    x = data.train_x[keep]
    transform = BatchTransform(data.mean, data.std, x.device)
    out.train()
    with autocast(x.device, precision):
        for s in range(0, len(x), batch_size):
            if len(x[s:s + batch_size]) >= 2:
                out(transform(x[s:s + batch_size]))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    if mask is not None:
        mask.apply(out)
    return out.eval()
