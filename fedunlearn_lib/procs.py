"""The paper's local proc (client side) and its server-side aggregation.

A client uploads, for every conv layer, the class-wise mean of the ReLU'd, spatially
averaged output channels ([num_classes x channels]) plus per-class sample counts.
Raw data never leaves the client.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import BatchTransform
from .federated import ClientData


@dataclass
class Upload:
    """What one client sends to the server."""

    client_id: int
    means: dict[str, torch.Tensor]  # layer -> [num_classes, channels]
    counts: torch.Tensor  # [num_classes]


@torch.inference_mode()
def local_proc(model: nn.Module, client_data: ClientData, transform: BatchTransform,
               num_classes: int, batch_size: int = 500,
               max_samples: int | None = None) -> Upload:
    """Class-wise mean channel activations of every ``Conv2d`` on one client's data."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    x_all, y_all = client_data.x, client_data.y
    if max_samples is not None:
        x_all, y_all = x_all[:max_samples], y_all[:max_samples]
    dev = y_all.device
    sums = {n: torch.zeros(num_classes, m.out_channels, device=dev, dtype=torch.float64)
            for n, m in convs.items()}
    labels: list[torch.Tensor] = []

    def hook(name: str):
        def fn(_m: nn.Module, _inp, out: torch.Tensor) -> None:
            pooled = torch.relu(out).mean(dim=(2, 3)).double()
            sums[name].index_add_(0, labels[0], pooled)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in convs.items()]
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(y_all), batch_size):
            labels[:] = [y_all[s:s + batch_size]]
            model(transform(x_all[s:s + batch_size]))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    counts = torch.bincount(y_all, minlength=num_classes).double()
    denom = counts.clamp(min=1).unsqueeze(1)
    means = {n: (v / denom).float().cpu() for n, v in sums.items()}
    return Upload(client_data.client_id, means, counts.cpu())


def aggregate(uploads: list[Upload]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Count-weighted mean over clients of each layer's class-wise activations.

    Classes a client lacks get weight zero there; a class no client holds stays zero.
    Malformed uploads raise ``ValueError`` naming the client and the layer.
    """
    if not uploads:
        raise ValueError("aggregate needs at least one upload")
    ref = uploads[0]
    num_classes = ref.counts.numel()
    shapes = {n: tuple(v.shape) for n, v in ref.means.items()}
    total = torch.zeros(num_classes, dtype=torch.float64)
    sums = {n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()}
    for up in uploads:
        who = f"client {up.client_id}"
        if up.counts.shape != (num_classes,) or not torch.isfinite(up.counts).all() \
                or (up.counts < 0).any():
            raise ValueError(f"{who}: counts must be {num_classes} finite non-negative numbers")
        if set(up.means) != set(shapes):
            odd = sorted(set(up.means) ^ set(shapes))
            raise ValueError(f"{who}: unexpected or missing layer(s) {', '.join(odd)}")
        for n, v in up.means.items():
            if tuple(v.shape) != shapes[n] or shapes[n][0] != num_classes:
                raise ValueError(f"{who}, layer {n}: shape {tuple(v.shape)}, expected "
                                 f"{shapes[n]} with {num_classes} class rows")
            if not torch.isfinite(v).all():
                raise ValueError(f"{who}, layer {n}: NaN or Inf in the upload")
            if (v < 0).any():
                raise ValueError(f"{who}, layer {n}: negative activations (ReLU outputs "
                                 f"are >= 0)")
            sums[n] += v.double() * up.counts.double().unsqueeze(1)
        total += up.counts.double()
    denom = total.clamp(min=1).unsqueeze(1)
    return {n: (v / denom).float() for n, v in sums.items()}, total
