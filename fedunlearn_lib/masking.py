"""Channel masks: zero a conv's selected filters and its BatchNorm scale and shift."""
from __future__ import annotations

import torch
from torch import nn

from .models import conv_bn_pairs


class ChannelMask:
    """Out-channel indices to keep at zero, per conv layer name.

    ``apply`` zeroes the filters (and bias) of each selected channel and the matching
    BatchNorm weight and bias, so the channel outputs exactly zero after BN. Call it after
    every optimizer step to keep the channels pruned through fine-tuning.
    """

    def __init__(self, channels: dict[str, list[int]] | None = None) -> None:
        self.channels: dict[str, list[int]] = {
            k: sorted(set(int(i) for i in v)) for k, v in (channels or {}).items() if len(v)}
        self._index: dict[tuple[str, torch.device], torch.Tensor] = {}  # per layer, device

    def index(self, name: str, device: torch.device) -> torch.Tensor:
        """Layer ``name``'s masked channels as an index tensor on ``device``, made once:
        ``apply`` runs after every local step, and a fresh host-to-GPU copy each time
        would wait for the GPU's queue to drain."""
        key = (name, torch.device(device))
        if key not in self._index:
            self._index[key] = torch.tensor(self.channels[name], device=device)
        return self._index[key]

    def __len__(self) -> int:
        return sum(len(v) for v in self.channels.values())

    def pairs(self) -> frozenset[tuple[str, int]]:
        """The masked channels as (layer, channel) pairs."""
        return frozenset((n, j) for n, idx in self.channels.items() for j in idx)

    def union(self, other: "ChannelMask") -> "ChannelMask":
        merged = {k: list(v) for k, v in self.channels.items()}
        for k, v in other.channels.items():
            merged[k] = merged.get(k, []) + list(v)
        return ChannelMask(merged)

    def _targets(self, model: nn.Module) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """(tensors to zero, channel indices) per masked layer, looked up afresh each call
        (cheap), so a model whose layers were replaced by channel removal is never stale."""
        pairs = conv_bn_pairs(model)
        targets = []
        for name, idx in self.channels.items():
            if name not in pairs:
                raise KeyError(f"mask names conv layer {name!r}, which the model lacks")
            conv, bn = pairs[name]
            if max(idx) >= conv.out_channels:
                raise ValueError(f"mask channel {max(idx)} outside layer {name!r} "
                                 f"with {conv.out_channels} channels")
            tensors = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
            if bn is not None:
                tensors += [bn.weight, bn.bias]
            targets.append((tensors, self.index(name, conv.weight.device)))
        return targets

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the masked channels of ``model`` in place and return it."""
        for tensors, idx in self._targets(model):
            for t in tensors:
                t.index_fill_(0, idx, 0.0)
        return model

    def state(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.channels.items()}


def jaccard(a: ChannelMask, b: ChannelMask) -> float:
    """Jaccard overlap of two channel selections (1.0 when both are empty)."""
    x, y = a.pairs(), b.pairs()
    return len(x & y) / len(x | y) if x | y else 1.0
