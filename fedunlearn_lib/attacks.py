"""Crafted local-proc uploads: scoring participants that lie to the server proc.

Every attack here maps one honest :class:`~fedunlearn_lib.procs.Upload` to a crafted one
that ``procs.aggregate`` accepts: the same layers and shapes, finite non-negative class x
channel matrices (as ReLU'd spatial means always are) and finite non-negative counts. The
server cannot tell them from an honest client's by validation alone; only the robust
options of ``aggregate`` (``method="median"``/``"trimmed"``, ``max_weight``) limit them.

Signature of every attack: ``attack(upload, target, rng, **kw) -> Upload``, returning a
new Upload (the input is never mutated). ``rng`` (a ``numpy.random.Generator`` or a
``torch.Generator``; ``None`` allowed) is only used by random choices (``steer`` with
``pick="random"``).

- ``hide``: the target row of every layer becomes the mean of the other classes' rows
  (those the client holds; all other rows if it holds none), and the target count becomes
  ``boost * max(total count, 1)`` so this row dominates the count-weighted mean. The
  target then looks like an average class: its TF-IDF no longer points at its own
  discriminative channels, the wrong channels are pruned and the class survives.
- ``steer``: on each layer, the ``frac`` share of channels most important to the remaining
  classes (top by the mean of the other rows; or random ones with ``pick="random"``) get a
  target activation of ``factor`` x the layer's largest value, with the boosted target
  count as in ``hide``. With ``suppress=True`` (default) the rows of the other classes the
  client holds are set to zero on those channels and their counts boosted too, so that
  the channels look exclusive to the target (document frequency 1, the largest IDF, under
  both readings of Eq. 7). TF-IDF then picks channels the remaining classes need, and
  pruning hurts the R set. :func:`steer_channels` gives the chosen channels.
- ``scale``: the honest matrices times ``factor`` and the counts times ``count_factor``;
  under the count-weighted mean the one client dominates every class it holds (the
  aggregate is close to its, scaled, matrices). Zero counts stay zero.

Validation passes because each output is built only from clamps, means, maxima and
positive multiples of non-negative finite values, with the same keys and shapes.
:func:`poison` replaces a random fraction of a participant list by one attack.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .procs import Upload

AttackFn = Callable[..., Upload]


def _others(upload: Upload, target: int) -> torch.Tensor:
    """Indices of the non-target classes the client holds (all of them if none)."""
    n = upload.counts.numel()
    if not 0 <= target < n:
        raise ValueError(f"target class {target} outside [0, {n})")
    held = [i for i in range(n) if i != target and float(upload.counts[i]) > 0]
    return torch.tensor(held or [i for i in range(n) if i != target], dtype=torch.long)


def _boost(counts: torch.Tensor, classes, boost: float) -> torch.Tensor:
    if not np.isfinite(boost) or boost < 0:
        raise ValueError(f"boost must be a finite number >= 0, got {boost!r}")
    out = counts.clone()
    big = boost * max(float(counts.sum()), 1.0)
    for c in classes:
        out[c] = max(float(counts[c]), big)
    return out


def hide(upload: Upload, target: int, rng=None, boost: float = 100.0) -> Upload:
    """Target row := mean of the other (held) classes' rows; target count boosted."""
    others = _others(upload, target)
    means = {}
    for n, v in upload.means.items():
        a = v.clone()
        a[target] = v[others].mean(dim=0)
        means[n] = a
    return Upload(upload.client_id, means, _boost(upload.counts, [target], boost))


def steer_channels(upload: Upload, target: int, frac: float = 0.1, pick: str = "top",
                   rng=None) -> dict[str, torch.Tensor]:
    """Per layer, the channels :func:`steer` inflates (sorted indices)."""
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must lie in (0, 1], got {frac!r}")
    if pick not in ("top", "random"):
        raise ValueError(f"unknown pick {pick!r}; choose one of top, random")
    others = _others(upload, target)
    out = {}
    for n, v in upload.means.items():
        c = v.shape[1]
        k = max(1, int(round(frac * c)))
        if pick == "top":
            idx = torch.topk(v[others].double().mean(dim=0), k).indices
        elif isinstance(rng, torch.Generator):
            idx = torch.randperm(c, generator=rng)[:k]
        else:
            gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng()
            idx = torch.as_tensor(gen.choice(c, k, replace=False), dtype=torch.long)
        out[n] = idx.sort().values
    return out


def steer(upload: Upload, target: int, rng=None, frac: float = 0.1, factor: float = 10.0,
          boost: float = 100.0, suppress: bool = True, pick: str = "top") -> Upload:
    """Inflate the target row on the channels the remaining classes need most."""
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
    chosen = steer_channels(upload, target, frac, pick, rng)
    others = [int(i) for i in _others(upload, target)
              if float(upload.counts[int(i)]) > 0] if suppress else []
    means = {}
    for n, v in upload.means.items():
        a = v.clone()
        idx = chosen[n]
        for i in others:
            a[i, idx] = 0.0
        a[target, idx] = factor * max(float(v.max()), 1e-3)
        means[n] = a
    return Upload(upload.client_id, means, _boost(upload.counts, [target, *others], boost))


def scale(upload: Upload, target: int, rng=None, factor: float = 100.0,
          count_factor: float = 1e4) -> Upload:
    """Honest matrices x ``factor``, counts x ``count_factor`` (``target`` unused)."""
    for name, val in (("factor", factor), ("count_factor", count_factor)):
        if not np.isfinite(val) or val < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
    return Upload(upload.client_id, {n: v * factor for n, v in upload.means.items()},
                  upload.counts * count_factor)


ATTACKS: dict[str, AttackFn] = {"hide": hide, "steer": steer, "scale": scale}


def poison(uploads: list[Upload], attack: str | AttackFn, fraction: float, target: int,
           seed: int, **kw) -> tuple[list[Upload], list[int]]:
    """Replace ``round(fraction * len(uploads))`` uploads (Python's round: halves to even)
    chosen at random by ``attack(upload, target, rng, **kw)``.

    Deterministic in ``seed`` (one ``numpy`` generator draws the positions, then is handed
    to the attacks). Returns the new list (same order; untouched uploads are the same
    objects) and the sorted client ids of the poisoned ones.
    """
    fn = ATTACKS.get(attack) if isinstance(attack, str) else attack
    if fn is None or not callable(fn):
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    k = int(round(fraction * len(uploads)))
    idx = sorted(int(i) for i in rng.choice(len(uploads), k, replace=False)) if k else []
    out = list(uploads)
    for i in idx:
        out[i] = fn(uploads[i], target, rng, **kw)
    return out, sorted(uploads[i].client_id for i in idx)
