"""The Fisher-forgetting baseline (Golatkar et al. 2020), done federatedly.

Participating clients compute the diagonal Fisher information of the model on their
retained data; the server averages it (weighted by sample count), injects Gaussian noise
with variance alpha / F into every weight, clears the forgotten classes' rows of the
classifier, and the federation fine-tunes as for our method.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .federated import ClientData, Federation


def client_fisher(model: nn.Module, client: ClientData, fed: Federation,
                  max_samples: int | None = None, batch_size: int = 64,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Sum over one client's samples of the squared per-sample gradient of log p(y'|x),
    y' drawn from the model's own prediction (a one-sample Monte-Carlo of the true Fisher)."""
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    gen = torch.Generator().manual_seed(seed * 1_000_003 + client.client_id)

    def nll(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    per_sample = vmap(grad(nll), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    n = len(client) if max_samples is None else min(len(client), max_samples)
    for s in range(0, n, batch_size):
        x = fed.transform(client.x[s:min(n, s + batch_size)])
        with torch.no_grad():
            probs = functional_call(model, (params, buffers), (x,)).softmax(1)
        y = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(x.device)
        for name, g in per_sample(params, x, y).items():
            total[name] += g.pow(2).sum(0)
    return total


def federated_fisher(fed: Federation, num_clients: int | None = None,
                     max_samples: int | None = None) -> dict[str, torch.Tensor]:
    """Sample-weighted mean over ``num_clients`` clients (default: one round's worth)."""
    k = num_clients or fed.cfg.clients_per_round
    rng = np.random.default_rng([fed.cfg.seed, 7919, 99])
    chosen = [fed.clients[c] for c in rng.choice(len(fed.clients), k, replace=False)]
    chosen = [c for c in chosen if len(c)]
    if not chosen:
        raise ValueError("no participating client holds retained data for the Fisher")
    total: dict[str, torch.Tensor] = {}
    count = 0
    for client in chosen:
        for name, f in client_fisher(fed.model, client, fed, max_samples,
                                     seed=fed.cfg.seed).items():
            total[name] = total.get(name, 0) + f
        count += len(client) if max_samples is None else min(len(client), max_samples)
    return {name: f / count for name, f in total.items()}


@torch.no_grad()
def fisher_forget(model: nn.Module, fisher: dict[str, torch.Tensor], forget: Sequence[int],
                  alpha: float = 1e-6, max_var: float = 1e3, seed: int = 0) -> nn.Module:
    """Add N(0, min(alpha / F, max_var)) noise to every parameter in place and zero the
    classifier's rows (weight and bias) of the ``forget`` classes."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    gen = torch.Generator().manual_seed(seed)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    for name, p in model.named_parameters():
        var = (alpha / (fisher[name] + 1e-8)).clamp(max=max_var)
        noise = torch.randn(p.shape, generator=gen).to(p.device)
        p.add_(var.sqrt() * noise)
    rows = torch.tensor(list(forget), device=classifier.weight.device)
    classifier.weight.index_fill_(0, rows, 0.0)
    if classifier.bias is not None:
        classifier.bias.index_fill_(0, rows, 0.0)
    return model
