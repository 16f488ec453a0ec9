"""The paper's local proc (client side) and its server-side aggregation.

A client uploads, for every conv layer, the class-wise mean of the ReLU'd, spatially
averaged output channels ([num_classes x channels]) plus per-class sample counts.
Raw data never leaves the client.
"""
from __future__ import annotations

import numbers
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


AGGREGATIONS = ("mean", "median", "trimmed")


def aggregate(uploads: list[Upload], method: str = "mean", trim: float = 0.1,
              max_weight: float | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Aggregate each layer's class-wise activations over clients.

    ``method``:

    - ``"mean"`` (default, the paper): count-weighted mean over clients. Classes a client
      lacks get weight zero there; a class no client holds stays zero.
    - ``"median"``: coordinate-wise median, per class and layer, over the clients that hold
      the class (count > 0); each holder counts once whatever its count (an even number
      of holders gives the mean of the two middle values).
    - ``"trimmed"``: coordinate-wise trimmed mean over the holders of each class, dropping
      ``floor(trim * holders)`` values at each end of every coordinate, then the
      unweighted mean of the rest; ``trim`` must lie in [0, 0.5).

    Each client's class row is already a per-class mean (count-normalized), so median and
    trimmed mean compare like with like.

    ``max_weight`` (only with ``"mean"``; in (0, 1]) caps any one client's share of a
    class's total weight: shares start as count / total count over the holders; every
    share above the cap is set to the cap and the excess is handed to the uncapped holders
    in proportion to their counts, repeated until no share exceeds the cap (water-filling).
    When the cap cannot be met (holders x max_weight < 1) every holder gets an equal share.

    Returns ``(activations, counts)``: ``activations`` maps each layer to its
    [num_classes, channels] float32 matrix; ``counts`` is always the plain sum of the
    uploaded per-class counts (float64) whatever the method, i.e. what the clients report,
    not a robust estimate. Malformed uploads raise ``ValueError`` naming the client and
    the layer; unknown ``method``, bad ``trim`` or ``max_weight`` raise ``ValueError``
    naming the value.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation method {method!r}; choose one of "
                         f"{', '.join(AGGREGATIONS)}")
    if isinstance(trim, bool) or not isinstance(trim, numbers.Real) \
            or not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be a number in [0, 0.5), got {trim!r}")
    if max_weight is not None:
        if isinstance(max_weight, bool) or not isinstance(max_weight, numbers.Real) \
                or not 0.0 < max_weight <= 1.0:
            raise ValueError(f"max_weight must be None or a number in (0, 1], got "
                             f"{max_weight!r}")
        if method != "mean":
            raise ValueError(f"max_weight={max_weight!r} applies only to method='mean' "
                             f"(method {method!r} already weighs every holder equally)")
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
    if method == "mean" and max_weight is None:
        denom = total.clamp(min=1).unsqueeze(1)
        return {n: (v / denom).float() for n, v in sums.items()}, total
    counts = torch.stack([up.counts.double() for up in uploads])  # [clients, classes]
    out = {n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()}
    for c in range(num_classes):
        holders = torch.nonzero(counts[:, c] > 0).flatten()
        if holders.numel() == 0:
            continue
        if method == "mean":
            share = capped_shares(counts[holders, c], max_weight)
        for n in shapes:
            rows = torch.stack([uploads[int(i)].means[n][c].double() for i in holders])
            if method == "mean":
                out[n][c] = share @ rows
            elif method == "median":
                out[n][c] = _median(rows)
            else:
                k = int(trim * rows.shape[0] + 1e-9)  # floor, robust to 0.29 * 100
                kept = rows.sort(dim=0).values[k:rows.shape[0] - k]
                out[n][c] = kept.mean(dim=0)
    return {n: v.float() for n, v in out.items()}, total


def _median(rows: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median over dim 0 (mean of the two middle values when even)."""
    s = rows.sort(dim=0).values
    m = s.shape[0]
    return s[m // 2] if m % 2 else (s[m // 2 - 1] + s[m // 2]) / 2


def capped_shares(weights: torch.Tensor, max_weight: float | None) -> torch.Tensor:
    """Normalized ``weights`` (all > 0) with no share above ``max_weight``.

    Water-filling: shares above the cap are set to it and the excess is redistributed over
    the uncapped entries in proportion to their weights, until none exceeds the cap. If
    ``len(weights) * max_weight < 1`` the cap is infeasible and all shares are equal.
    """
    w = weights.double()
    share = w / w.sum()
    if max_weight is None:
        return share
    n = w.numel()
    if n * max_weight <= 1.0 + 1e-12:
        return torch.full_like(share, 1.0 / n)
    capped = torch.zeros(n, dtype=torch.bool)
    for _ in range(n):
        over = (share > max_weight + 1e-12) & ~capped
        if not over.any():
            break
        capped |= over
        free = ~capped
        share = torch.where(capped, torch.full_like(share, max_weight), share)
        rest = 1.0 - max_weight * int(capped.sum())
        share[free] = rest * w[free] / w[free].sum()
    return share
