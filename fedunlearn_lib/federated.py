"""Federated simulation: FedAvg and FedSGD over Fang-partitioned clients, with checkpoints."""
from __future__ import annotations

import functools

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import BatchTransform, ImageData, to_device
from .io import (atomic_torch_save, check_identity, check_weights, digest, load_blob,
                 state_digest)
from .masking import ChannelMask
from .partition import fang_partition

if TYPE_CHECKING:
    from .procs import Upload

ALGORITHMS = ("fedavg", "fedsgd")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16", "auto")
CLIENT_BATCHINGS = ("loop", "batched")
# FedConfig fields that say how a round is computed, not what it computes (like the device):
# left out of a federation checkpoint's identity, so either may resume the other's run
PLACEMENT_FIELDS = ("client_batching",)


@dataclass
class FedConfig:
    """Federation and optimization hyper-parameters."""

    algorithm: str = "fedavg"
    num_clients: int = 10
    clients_per_round: int = 5
    q: float = 0.1
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    lr_schedule: str = "cosine"  # over a training run's rounds (pretraining, retraining),
    # which ties retraining's rounds to the target to that length; "constant": lr
    # throughout (the paper's protocol, the workflow profiles')
    warmup_rounds: int = 0  # linear warm-up over the first rounds (with lr_rounds): round
    # r <= warmup_rounds runs at lr * r / (warmup_rounds + 1), so even 1 round warms up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    seed: int = 0
    eval_every: int = 1
    checkpoint_every: int = 10
    precision: str = "fp32"  # "bf16": autocast to bfloat16 in training and evaluation;
    # "auto": bf16 where the device computes it natively, else fp32 (native_bf16)
    client_batching: str = "loop"  # "loop": one client (and minibatch) after another;
    # "batched": FedSGD's round as one pass with BatchNorm per client minibatch, FedAvg's
    # clients stacked and vmapped (batched.py); the same numbers within float tolerance

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of "
                             f"{', '.join(ALGORITHMS)}")
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"bias probability q must lie in [0, 1], got {self.q!r}")
        if not 1 <= self.clients_per_round <= self.num_clients:
            raise ValueError(f"clients_per_round={self.clients_per_round} must lie in "
                             f"[1, num_clients={self.num_clients}]")
        for name in ("local_epochs", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of "
                             f"{', '.join(LR_SCHEDULES)}")
        if self.warmup_rounds < 0:
            raise ValueError(f"warmup_rounds must be >= 0, got {self.warmup_rounds!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of "
                             f"{', '.join(PRECISIONS)}")
        if self.client_batching not in CLIENT_BATCHINGS:
            raise ValueError(f"unknown client_batching {self.client_batching!r}; choose one "
                             f"of {', '.join(CLIENT_BATCHINGS)}")

    def lr_at(self, rnd: int, lr_rounds: int | None) -> float:
        """The learning rate of round ``rnd`` (1-based) of a training run of ``lr_rounds``
        rounds: a linear warm-up over ``warmup_rounds`` (round r at lr * r / (warmup_rounds + 1)),
        then constant or a cosine decay that
        ends one step short of 0 in round ``lr_rounds``. Without ``lr_rounds`` (fine-tuning,
        open-ended runs) the rate is ``lr`` throughout."""
        if lr_rounds is None:
            return self.lr
        if rnd <= self.warmup_rounds:  # lr/(w+1), ..., w*lr/(w+1): below lr, rising to it
            return self.lr * rnd / (self.warmup_rounds + 1)
        if self.lr_schedule == "constant":
            return self.lr
        span = max(lr_rounds - self.warmup_rounds, 1)
        done = min(rnd - 1 - self.warmup_rounds, span)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * done / span))


def identity_fields(cfg: FedConfig) -> dict:
    """``cfg`` as a checkpoint's identity records it: ``asdict`` less ``PLACEMENT_FIELDS``
    (so a field of those added with its default changes no recorded identity)."""
    return {k: v for k, v in asdict(cfg).items() if k not in PLACEMENT_FIELDS}


@dataclass
class ClientData:
    """One client's private samples (uint8 images on the compute device) and labels."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TrainResult:
    """Outcome of ``Federation.train_until``."""

    rounds_to_target: int | None
    rounds_run: int
    history: list[dict] = field(default_factory=list)
    rounds_strict: int | None = None  # first round also meeting the U-set bound, if asked


class Federation:
    """A simulated federation training one global model.

    ``exclude`` removes classes from every client's data (fine-tuning and retraining);
    ``forget`` splits the test set into the U-set (those classes) and the R-set (the rest).
    ``mask`` keeps pruned channels at zero after every local step and every aggregation.
    ``partition`` (one index tensor per client) replaces the Fang split when given.
    A checkpoint records the federation's identity (config, data fingerprint, excluded
    classes, mask, starting weights, plus ``identity``'s own keys) and is resumed only
    when it matches exactly; otherwise a ``ValueError`` names the keys that differ.
    """

    def __init__(self, model: nn.Module, data: ImageData, cfg: FedConfig, *,
                 forget: Sequence[int] = (), exclude: Sequence[int] = (),
                 mask: ChannelMask | None = None, device: torch.device | str = "cpu",
                 partition: list[torch.Tensor] | None = None,
                 checkpoint: str | os.PathLike | None = None, identity: dict | None = None,
                 channels_last: bool = False, progress: bool = True, desc: str = "rounds",
                 remote: "Remote | None" = None, lr_rounds: int | None = None) -> None:
        cfg.validate()
        self.lr_rounds = lr_rounds
        self.remote = remote
        self.exclude = sorted(int(c) for c in exclude)
        self.cfg, self.device, self.progress, self.desc = cfg, torch.device(device), progress, desc
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mask = mask or ChannelMask()
        self.mask.apply(self.model)
        self.data = data.to(self.device)
        self.transform = BatchTransform(data.mean, data.std, self.device, channels_last,
                                        data.crop_padding, data.flip)
        if remote is not None:  # the clients and their data live elsewhere
            parts = [torch.zeros(0, dtype=torch.long)] * cfg.num_clients
        else:
            parts = partition if partition is not None else fang_partition(
                data.train_y, cfg.num_clients, cfg.q, data.num_classes, cfg.seed)
        if len(parts) != cfg.num_clients:
            raise ValueError(f"partition has {len(parts)} clients, config says "
                             f"num_clients={cfg.num_clients}")
        keep = torch.ones(data.num_classes, dtype=torch.bool)
        keep[list(exclude)] = False
        keep = keep.to(self.device)
        self.clients: list[ClientData] = []
        for cid, idx in enumerate(parts):
            idx = idx.to(self.device)
            idx = idx[keep[self.data.train_y[idx]]]
            self.clients.append(ClientData(cid, self.data.train_x[idx], self.data.train_y[idx]))
        u = torch.zeros(data.num_classes, dtype=torch.bool)
        u[list(forget)] = True
        self._in_u = u.to(self.device)
        self.round = 0
        self.elapsed = 0.0  # wall-clock seconds spent in train_until, across resumes
        self.history: list[dict] = []
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.identity = None if self.checkpoint is None else {
            **(identity or {}), "federation": identity_fields(cfg), "data": data.fingerprint,
            "exclude": self.exclude, "mask": self.mask.state(),
            "partition": None if partition is None else digest(partition),
            "lr_rounds": lr_rounds,
            "start_weights": state_digest(self.model)}
        self.server_opt = None
        if cfg.algorithm == "fedsgd":
            self.server_opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr,
                                              momentum=cfg.momentum,
                                              weight_decay=cfg.weight_decay)
        if self.checkpoint is not None and self.checkpoint.exists():
            self._resume()

    # ---------------------------------------------------------------- rounds
    def round_config(self, rnd: int) -> FedConfig:
        """The federation config of round ``rnd``, its scheduled learning rate in ``lr``."""
        return replace(self.cfg, lr=self.cfg.lr_at(rnd, self.lr_rounds))

    def sample_clients(self, rnd: int) -> list[int]:
        """The clients taking part in round ``rnd`` (deterministic in seed and round)."""
        rng = np.random.default_rng([self.cfg.seed, rnd])
        return sorted(rng.choice(self.cfg.num_clients, self.cfg.clients_per_round,
                                 replace=False).tolist())

    def run_round(self) -> float:
        """Run the next round; return the mean training loss over sampled samples.

        With a ``remote`` (for example the Flower app's server side) the sampled clients
        train wherever their data lives; otherwise in this process."""
        rnd = self.round + 1
        sampled = self.sample_clients(rnd)
        chosen = [c for c in (self.clients[i] for i in sampled) if len(c) >= 2]
        if self.remote is not None:  # the remote knows its clients' sizes
            loss = self.remote.train_round(self, sampled, rnd)
        elif not chosen:
            loss = float("nan")
        elif self.cfg.client_batching == "batched":
            from .batched import fedavg_round, fedsgd_round
            loss = (fedavg_round if self.cfg.algorithm == "fedavg" else fedsgd_round)(
                self, chosen, rnd)
        elif self.cfg.algorithm == "fedavg":
            loss = self._fedavg_round(chosen, rnd)
        else:
            loss = self._fedsgd_round(chosen, rnd)
        self.mask.apply(self.model)
        self.round = rnd
        return loss

    def _fedavg_round(self, chosen: list[ClientData], rnd: int) -> float:
        cfg, model = self.round_config(rnd), self.model
        live = list(model.state_dict().values())
        floats = [t for t in live if t.is_floating_point()]
        start = [t.clone() for t in floats]
        acc = [torch.zeros_like(t) for t in floats]
        total, seen = 0, 0
        loss_sum = torch.zeros((), device=self.device)  # no host sync per step
        for client in chosen:
            torch._foreach_copy_(floats, start)
            client_loss, client_seen = local_train(model, client, self.transform, cfg, rnd,
                                                   self.mask)
            loss_sum += client_loss
            seen += client_seen
            torch._foreach_add_(acc, floats, alpha=float(len(client)))
            total += len(client)
        torch._foreach_mul_(acc, 1.0 / total)
        torch._foreach_copy_(floats, acc)
        return loss_sum.item() / max(seen, 1)

    def _fedsgd_round(self, chosen: list[ClientData], rnd: int) -> float:
        cfg, model = self.round_config(rnd), self.model
        for group in self.server_opt.param_groups:
            group["lr"] = cfg.lr
        params = [p for p in model.parameters() if p.requires_grad]
        acc = [torch.zeros_like(p) for p in params]
        total = 0
        loss_sum = torch.zeros((), device=self.device)
        model.train()
        for client in chosen:
            g = client_generator(self.cfg.seed, rnd, client.client_id)
            model.zero_grad(set_to_none=False)
            for idx in batches(len(client), cfg.batch_size, g, self.device, shuffle=False):
                x = self.transform(client.x[idx], g, cfg.augment)
                with autocast(self.device, cfg.precision):
                    loss = F.cross_entropy(model(x), client.y[idx], reduction="sum")
                loss.backward()
                loss_sum += loss.detach()
            # client gradient = mean over its samples; server weights clients by size
            torch._foreach_add_(acc, [p.grad for p in params])
            total += len(client)
        for p, a in zip(params, acc):
            p.grad = a / total
        self.server_opt.step()
        return loss_sum.item() / total

    # ------------------------------------------------------------ evaluation
    @property
    def decision_key(self) -> str:
        """The history key that stop rules read: validation R-set accuracy when the data
        has a validation split, else test R-set accuracy."""
        return "r_acc" if self.data.val_y is None else "val_r_acc"

    @torch.inference_mode()
    def evaluate(self, batch_size: int = 1000, split: str = "test") -> dict[str, float | None]:
        """Accuracy on the U-set (forgotten classes) and the R-set (the rest) of the
        ``"test"`` or ``"val"`` split."""
        if split not in ("test", "val"):
            raise ValueError(f"unknown split {split!r}; choose test or val")
        xs, ys = (self.data.test_x, self.data.test_y) if split == "test" else \
            (self.data.val_x, self.data.val_y)
        if ys is None:
            raise ValueError("this data set has no validation split (set val_fraction)")
        self.model.eval()
        correct = []
        for s in range(0, len(ys), batch_size):
            x = self.transform(xs[s:s + batch_size])
            with autocast(self.device, self.cfg.precision):
                logits = self.model(x)
            correct.append(logits.argmax(1) == ys[s:s + batch_size])
        hit = torch.cat(correct)
        in_u = self._in_u[ys]
        u, r = hit[in_u], hit[~in_u]
        return {"u_acc": u.float().mean().item() if len(u) else None,
                "r_acc": r.float().mean().item() if len(r) else None}

    def scores(self) -> dict[str, float | None]:
        """Test accuracies, plus validation ones (``val_`` keys) when there is a split."""
        out = self.evaluate()
        if self.data.val_y is not None:
            out.update(self.decision_scores())
        return out

    def final_scores(self) -> dict[str, float | None]:
        """``scores()`` of the model as it is after ``train_until``: read from the last
        history entry (which holds both splits), evaluated only when it has none."""
        last = self.history[-1] if self.history else {}
        if last.get("round") == self.round and "r_acc" in last:
            return {k: v for k, v in last.items() if k.endswith("_acc")}
        return self.scores()

    def decision_scores(self) -> dict[str, float | None]:
        """The accuracies the stop rules read: validation (``val_`` keys) when there is a
        validation split, else test (what every round of a training run records)."""
        if self.data.val_y is None:
            return self.evaluate()
        return {f"val_{k}": v for k, v in self.evaluate(split="val").items()}

    # -------------------------------------------------------------- training
    def train_until(self, target: float | None, max_rounds: int, *, key: str | None = None,
                    max_u: float | None = None, patience: int | None = None) -> TrainResult:
        """Train until accuracy ``key`` reaches ``target`` or ``max_rounds`` rounds ran.

        ``key`` defaults to ``decision_key`` (validation R-set accuracy when there is a
        validation split). Every round records the decision split's accuracies only; the
        test split (``u_acc``, ``r_acc``) is also recorded in round 0, in the first round
        meeting ``target`` (the paper's stop round) and in the last round run, the rounds
        whose numbers are reported. Round 0 (the model as given) is evaluated too;
        ``rounds_to_target`` is the first evaluated round whose ``key`` accuracy is
        >= target (``None`` if never reached). With ``max_u`` training goes on until the
        same round also has U-set accuracy (of the same split) <= ``max_u`` (the strict
        stop rule), reported as ``rounds_strict``. With ``patience`` training also stops
        once ``key`` has not improved for that many rounds (a plateau).
        Resumes from the checkpoint when one exists.
        """
        if max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        key = key or self.decision_key
        t0 = time.perf_counter() - self.elapsed
        if not self.history:
            self.history.append({"round": 0, "loss": None, **self.scores()})

        def record(loss: float) -> None:
            entry = {"round": self.round, "loss": loss, **self.decision_scores()}
            self.history.append(entry)
            if (target is not None and "r_acc" not in entry
                    and rounds_for(self.history, target, key) == self.round):
                entry.update(self.evaluate())  # the paper's stop round: reported on test

        def stop() -> bool:
            if patience is not None and plateaued(self.history, key, patience):
                return True
            return target is not None and rounds_for(self.history, target, key,
                                                     max_u) is not None

        first = self.round
        bar = tqdm(total=max_rounds, initial=self.round, desc=self.desc,
                   disable=not self.progress, leave=False)
        while not stop() and self.round < max_rounds:
            loss = self.run_round()
            if self.round % self.cfg.eval_every == 0 or self.round == max_rounds:
                record(loss)
                bar.set_postfix({key: f"{self.history[-1][key]:.3f}"})
            if self.checkpoint is not None and self.round % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
            self.elapsed = time.perf_counter() - t0
            bar.update(1)
        bar.close()
        if "r_acc" not in self.history[-1]:  # the last round run: reported on test
            self.history[-1].update(self.evaluate())
        self.elapsed = time.perf_counter() - t0
        if self.checkpoint is not None and self.round > first:
            self.save_checkpoint()
        reached = None if target is None else rounds_for(self.history, target, key)
        strict = (None if target is None or max_u is None
                  else rounds_for(self.history, target, key, max_u))
        return TrainResult(reached, self.round, list(self.history), strict)

    # ----------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write model, round, history, mask and server optimizer state atomically."""
        path = Path(path or self.checkpoint)
        state = self.model.state_dict()
        blob = {"model": state, "weights": state_digest(state), "round": self.round,
                "elapsed": self.elapsed,
                "history": self.history, "mask": self.mask.state(), "identity": self.identity,
                "server_opt": self.server_opt.state_dict() if self.server_opt else None}
        return atomic_torch_save(blob, path)

    def _resume(self) -> None:
        blob = load_blob(self.checkpoint, self.device)
        check_identity(self.checkpoint, self.identity, blob.get("identity"))
        check_weights(self.checkpoint, blob["model"], blob.get("weights"))
        load_state(self.model, blob["model"], self.checkpoint)
        self.round, self.history = blob["round"], blob["history"]
        self.elapsed = blob["elapsed"]
        if self.server_opt is not None and blob["server_opt"] is not None:
            self.server_opt.load_state_dict(blob["server_opt"])


class Remote(Protocol):
    """Clients that live outside this process (the Flower app's server side)."""

    def train_round(self, fed: "Federation", chosen: list[int], rnd: int) -> float:
        """Train ``fed.model`` on the clients ``chosen`` for round ``rnd`` (FedAvg), update
        it in place, and return the mean training loss."""

    def holders(self, cls: int) -> list[int]:
        """The clients holding at least one image of class ``cls``."""

    def local_procs(self, fed: "Federation", chosen: list[int],
                    max_samples: int | None) -> list["Upload"]:
        """The local proc of every client in ``chosen`` on ``fed.model``."""


def batches(n: int, batch_size: int, g: torch.Generator, device: torch.device,
            shuffle: bool = True):
    """Index batches over ``n`` samples in the order ``g`` draws, skipping any batch of
    one sample (BatchNorm needs two in training mode)."""
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    order = to_device(order, device)
    for s in range(0, n, batch_size):
        idx = order[s:s + batch_size]
        if len(idx) >= 2:
            yield idx


def local_train(model: nn.Module, client: ClientData, transform: BatchTransform,
                cfg: FedConfig, rnd: int, mask: ChannelMask) -> tuple[torch.Tensor, int]:
    """One client's FedAvg update of ``model`` in place: ``cfg.local_epochs`` epochs of SGD,
    data order and augmentation drawn from ``client_generator``, masked channels zeroed
    after every step. Returns the summed training loss (a tensor) and the samples seen."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    g = client_generator(cfg.seed, rnd, client.client_id)
    device = client.y.device
    loss_sum, seen = torch.zeros((), device=device), 0
    model.train()
    for _ in range(cfg.local_epochs):
        for idx in batches(len(client), cfg.batch_size, g, device):
            x = transform(client.x[idx], g, cfg.augment)
            with autocast(device, cfg.precision):
                loss = F.cross_entropy(model(x), client.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if len(mask):
                mask.apply(model)
            loss_sum += loss.detach() * len(idx)
            seen += len(idx)
    return loss_sum, seen


@functools.cache
def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AMX tiles or AVX512-BF16. Elsewhere bf16 autocast is emulated and slow (on an AVX2
    AMD EPYC here ResNet-20 trained 12x slower in bf16 than in fp32, where a CPU with AMX
    trained 2.0x faster; README "Precision and memory layout"). Asked once per device:
    autocast calls it on every batch."""
    return _native_bf16(torch.device(device))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` with ``"auto"`` replaced by ``"bf16"`` or ``"fp32"`` (native_bf16)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The autocast context of ``precision`` (resolve_precision): bfloat16 convolutions and
    matrix products for ``"bf16"``, a no-op for ``"fp32"``."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                          enabled=resolve_precision(precision, device) == "bf16")


def client_generator(seed: int, rnd: int, client: int) -> torch.Generator:
    """The generator behind client ``client``'s data order and augmentation in round ``rnd``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + rnd * 10_007 + client)


def load_state(model: nn.Module, state: dict, source: str | os.PathLike) -> None:
    """``load_state_dict`` with an error that says which checkpoint does not fit the model."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    extra = sorted(set(state) - set(ours))
    wrong = [k for k in ours if k in state and ours[k].shape != state[k].shape]
    if missing or extra or wrong:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", extra),
                                               ("shape mismatch", wrong)) if keys)
        raise ValueError(f"checkpoint {source} does not match the model ({detail})")
    model.load_state_dict(state)


def rounds_for(history: list[dict], target: float, key: str = "r_acc",
               max_u: float | None = None) -> int | None:
    """First round of ``history`` whose ``key`` accuracy is >= ``target`` (and, with
    ``max_u``, whose U-set accuracy on the same split is <= ``max_u``)."""
    u_key = key.replace("r_acc", "u_acc")
    for h in history:
        if h[key] is None or h[key] < target:
            continue
        if max_u is None or (h[u_key] is not None and h[u_key] <= max_u):
            return h["round"]
    return None


def plateaued(history: list[dict], key: str, patience: int) -> bool:
    """Whether ``key`` has not exceeded its best value for ``patience`` rounds."""
    values = [(h[key], h["round"]) for h in history if h[key] is not None]
    if not values:
        return False
    best = max(values, key=lambda v: v[0])[1]  # first round with the best value
    return history[-1]["round"] - best >= patience
