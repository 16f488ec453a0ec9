"""One unlearning request: local procs -> server TF-IDF -> channel selection, per class."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from .federated import Federation
from .masking import ChannelMask
from .procs import aggregate, local_proc
from .pruning import DIRECTIONS, SCOPES, l1_scores, layer_scores, random_scores, select_channels
from .tfidf import IDF_THRESHOLDS
# the named arms (overrides of an UnlearnConfig), torch-free in arms.py for the workflow
from .arms import ARMS  # noqa: F401  (re-exported)

APPLY_MODES = ("mask", "remove")
SCORE_FROM = ("all", "holders")
SCORES = ("tfidf", "l1", "random", "none")  # what ranks the channels ("none": prune nothing)


@dataclass
class UnlearnConfig:
    """How channels are scored, selected and pruned."""

    ratio: float = 0.05
    scores: str = "tfidf"  # one of SCORES: TF-IDF (the paper) or a baseline ranking
    direction: str = "highest"
    scope: str = "global"
    apply: str = "mask"
    idf_threshold: str = "class"  # "class": Eq. 7 as printed; "channel": the authors' code
    score_from: str = "all"  # draw the local-proc participants among "all" clients (the
    # paper) or only the "holders" of the class
    score_clients: int | None = None  # clients running local proc; None = one round's worth
    score_samples: int | None = None  # per-client cap on local-proc samples; None = all
    seed: int = 0  # the unlearning seed: which clients run local proc, the random arm's
    # channels, fine-tuning's client sampling and batch order (0 = the federation seed's
    # streams); the partition stays the pretraining's

    def validate(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"pruning ratio R must lie in (0, 1), got {self.ratio!r}")
        if self.seed < 0:
            raise ValueError(f"unlearning seed must be >= 0, got {self.seed!r}")
        for name, value, choices in (("scores", self.scores, SCORES),
                                     ("direction", self.direction, DIRECTIONS),
                                     ("scope", self.scope, SCOPES),
                                     ("apply", self.apply, APPLY_MODES),
                                     ("idf_threshold", self.idf_threshold, IDF_THRESHOLDS),
                                     ("score_from", self.score_from, SCORE_FROM)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def prune_for_classes(fed: Federation, forget: Sequence[int],
                      cfg: UnlearnConfig) -> tuple[ChannelMask, list[dict]]:
    """Select and mask channels of ``fed.model`` for each class in ``forget`` in turn.

    Each class gets fresh local procs on the already-pruned model (the paper's way of
    removing several classes); a weight arm (``cfg.scores`` "l1", "random", "none") ranks
    the pruned model's weights instead, also ``cfg.ratio`` per class. Returns the union
    mask and, per class, the local-proc participants, timing, counts and the U-/R-set
    accuracy after that class's channels are pruned (``"after"``).
    """
    cfg.validate()
    num_classes = fed.data.num_classes
    n_score = cfg.score_clients or fed.cfg.clients_per_round
    if not 1 <= n_score <= fed.cfg.num_clients:
        raise ValueError(f"score_clients={n_score} must lie in [1, {fed.cfg.num_clients}]")
    mask = ChannelMask(fed.mask.state())
    info = []
    for k, cls in enumerate(forget):
        chosen: list[int] = []
        t0 = t1 = time.perf_counter()
        if cfg.scores == "tfidf":
            chosen = score_participants(fed, cls, n_score, cfg.score_from, k, cfg.seed)
            if fed.remote is not None:
                uploads = fed.remote.local_procs(fed, chosen, cfg.score_samples)
            else:
                uploads = [local_proc(fed.model, fed.clients[c], fed.transform, num_classes,
                                      max_samples=cfg.score_samples) for c in chosen]
            t1 = time.perf_counter()
            activations, counts = aggregate(uploads)
            if counts[cls] == 0:
                raise ValueError(
                    f"the {len(chosen)} local-proc participants (clients {chosen}) hold no "
                    f"image of class {cls}"
                    + (f" among their first {cfg.score_samples} samples" if cfg.score_samples
                       else "")
                    + "; raise score_clients (or score_samples), or set score_from='holders'")
            selected = server_selection(activations, cls, cfg, already=mask)
        else:
            selected = weight_selection(fed.model, cfg, stream_seed(fed.cfg.seed, cfg.seed) + k,
                                        already=mask)
        t2 = time.perf_counter()
        mask = mask.union(selected)
        mask.apply(fed.model)
        info.append({"class": int(cls), "clients": chosen, "selected": len(selected),
                     "local_proc_s": t1 - t0, "server_proc_s": t2 - t1,
                     "after": fed.evaluate()})
    return mask, info


def server_selection(activations: dict[str, torch.Tensor], target: int, cfg: UnlearnConfig,
                     already: ChannelMask | None = None) -> ChannelMask:
    """The server proc's choice on aggregated activations: TF-IDF for ``target`` under
    ``cfg.idf_threshold``, then ``cfg.ratio`` of the channels by ``cfg.direction`` and
    ``cfg.scope`` (channels in ``already`` are not chosen again)."""
    return select_channels(layer_scores(activations, target, cfg.idf_threshold), cfg.ratio,
                           direction=cfg.direction, scope=cfg.scope, already=already)


def weight_selection(model: torch.nn.Module, cfg: UnlearnConfig, seed: int,
                     already: ChannelMask | None = None) -> ChannelMask:
    """A baseline arm's choice from the weights alone (no upload): ``cfg.ratio`` of the
    channels by L1 filter norm or at random (``seed``); none for ``scores="none"``."""
    if cfg.scores == "none":
        return ChannelMask()
    if cfg.scores == "l1":
        scores = l1_scores(model)
    elif cfg.scores == "random":
        scores = random_scores(model, seed)
    else:
        raise ValueError(f"scores {cfg.scores!r} needs uploads, not weights; weight arms: "
                         f"l1, random, none")
    return select_channels(scores, cfg.ratio, direction=cfg.direction, scope=cfg.scope,
                           already=already)


def arm_config(base: UnlearnConfig, arm: str) -> UnlearnConfig:
    """``base`` with the overrides of the named arm (one of ``ARMS``)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    return replace(base, **ARMS[arm])


def arm_of(cfg: UnlearnConfig) -> str:
    """The name of the arm whose overrides ``cfg`` carries ("custom" if none)."""
    return next((name for name, over in ARMS.items()
                 if all(getattr(cfg, k) == v for k, v in over.items())), "custom")


def stream_seed(federation_seed: int, unlearning_seed: int) -> int:
    """The seed of an unlearning's random streams: the federation's for unlearning seed 0,
    else one derived from both."""
    if unlearning_seed == 0:
        return federation_seed
    return int(np.random.SeedSequence([federation_seed, unlearning_seed]).generate_state(1)[0]
               >> 1)


def score_participants(fed: Federation, cls: int, n: int, score_from: str,
                       draw: int = 0, seed: int = 0) -> list[int]:
    """The clients that run the local proc for class ``cls``: ``n`` drawn at random among
    all clients (``score_from="all"``, the paper) or among those holding the class
    (``"holders"``); deterministic in the federation seed, the unlearning ``seed`` and
    ``draw``."""
    if score_from == "holders":
        pool = fed.remote.holders(cls) if fed.remote is not None else \
            [c.client_id for c in fed.clients if bool((c.y == cls).any())]
        if not pool:
            raise ValueError(f"no client holds class {cls}; nothing to score it on")
    elif score_from == "all":
        pool = list(range(fed.cfg.num_clients))
    else:
        raise ValueError(f"unknown score_from {score_from!r}; choose one of "
                         f"{', '.join(SCORE_FROM)}")
    rng = np.random.default_rng([stream_seed(fed.cfg.seed, seed), 7919, draw])
    return sorted(pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False))
