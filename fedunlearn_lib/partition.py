"""Non-IID partition of Fang et al. (2020), as used by the paper."""
from __future__ import annotations

import numpy as np
import torch


def fang_partition(labels: torch.Tensor, num_clients: int, q: float, num_classes: int,
                   seed: int = 0) -> list[torch.Tensor]:
    """Split sample indices over clients by bias probability ``q``.

    Clients are split into ``num_classes`` groups of (near) equal size. A sample of label
    m goes to group m with probability q, otherwise to one of the other groups uniformly;
    within its group it goes to a client uniformly. ``q = 1/num_classes`` is IID.
    Returns one sorted index tensor per client; deterministic in ``seed``.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"bias probability q must lie in [0, 1], got {q!r}")
    if num_clients < num_classes:
        raise ValueError(f"num_clients={num_clients} must be >= the number of classes "
                         f"({num_classes}) so every class has a client group")
    y = labels.cpu().numpy()
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{y.min()}, {y.max()}]")
    rng = np.random.default_rng(seed)
    groups = np.array_split(np.arange(num_clients), num_classes)
    home = rng.random(len(y)) < q
    # uniform over the other num_classes - 1 groups: draw in [0, K-1), skip the own label
    other = rng.integers(0, num_classes - 1, size=len(y))
    other = other + (other >= y)
    group = np.where(home, y, other)
    sizes = np.array([len(g) for g in groups])
    starts = np.array([g[0] for g in groups])  # groups are contiguous client ranges
    client = starts[group] + (rng.random(len(y)) * sizes[group]).astype(np.int64)
    order = np.argsort(client, kind="stable")
    bounds = np.searchsorted(client[order], np.arange(num_clients + 1))
    return [torch.from_numpy(np.sort(order[bounds[c]:bounds[c + 1]])) for c in range(num_clients)]
