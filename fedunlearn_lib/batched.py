"""Clients batched (``FedConfig.client_batching = "batched"``): the same rounds as the
sequential loop of ``federated.Federation``, computed in fewer, larger passes.

FedSGD (``fedsgd_round``): every sampled client takes its gradient at the same weights, so
the round is one forward and backward pass over all sampled clients' minibatches (in
chunks of whole clients of at most ``images_per_pass`` images, default ``MAX_IMAGES`` of
the device). BatchNorm computes its batch statistics per client minibatch, as the loop's
separate forward calls do (ghost batch norm), and its running statistics take the loop's
sequential momentum updates in closed form: after minibatches 1..T with statistics s_t and
factors a_t (the momentum, or 1/num_batches_tracked where it is None),
``r_T = prod_t (1 - a_t) r_0 + sum_t a_t prod_{u>t} (1 - a_u) s_t``. Data order (the loop's
FedSGD reads a client's samples in order), augmentation draws (each client's
``client_generator``, minibatch by minibatch), the gradient (sum over a client's samples,
clients summed and divided by their total size) and the server step are the loop's.

FedAvg (``fedavg_round``): the clients train different weights, so their weights (and
BatchNorm buffers, and SGD momentum) are stacked along a leading client dimension and one
step of every client runs as one ``torch.func.vmap`` of ``functional_call`` (vmap turns
the convolutions into grouped ones, as HFTA does by hand). Running statistics are batched
buffers, which vmap updates in place. Clients step in lockstep by (epoch, minibatch);
where their minibatches differ in size (a client's last, shorter one) they step in groups
of one size. SGD with momentum and weight decay is elementwise, so the stacked update is
the per-client one. Each client's data order, augmentation, masking after every step and
the size-weighted average are the loop's.

Both agree with the loop within float tolerance (different summation orders), not bit for
bit; tests/test_batched.py checks weights, buffers and loss. On a CPU the loop is as fast or
faster (docs/gpu.md gives the ratios measured), so ``"loop"`` stays the default.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .data import to_device
from .models import conv_bn_pairs

if TYPE_CHECKING:
    from .federated import ClientData, Federation

MAX_IMAGES = {"cuda": 4096, "cpu": 1024}  # images per FedSGD pass (activation memory, an
# estimate: ResNet-56 holds ~10 MB per image in a training pass, 4096 images ~40 GB)


def max_images(device: torch.device | str) -> int:
    """The default chunk of a batched FedSGD pass on ``device``."""
    return MAX_IMAGES.get(torch.device(device).type, MAX_IMAGES["cpu"])


# --------------------------------------------------------------------- augmentation
def draw_crop_flip(n: int, generator: torch.Generator, padding: int,
                   flip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The draws ``data.random_crop_flip`` makes for a batch of ``n`` (row offsets, column
    offsets, mirror flags), in its order, on the generator's device."""
    dev = generator.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    mirror = (torch.rand(n, generator=generator, device=dev) < 0.5 if flip
              else torch.zeros(n, dtype=torch.bool, device=dev))
    return oy, ox, mirror


def apply_crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, mirror: torch.Tensor,
                    padding: int) -> torch.Tensor:
    """``data.random_crop_flip`` with its draws given (on ``x``'s device)."""
    _, _, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (padding,) * 4)
    rows = oy[:, None] + torch.arange(h, device=dev)
    cols = ox[:, None] + torch.arange(w, device=dev)
    cols = torch.where(mirror[:, None], cols.flip(1), cols)
    idx_n = torch.arange(len(x), device=dev)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


# ------------------------------------------------------------------- ghost BatchNorm
@dataclass
class GhostPlan:
    """How a pass's samples split into the loop's minibatches: ``segments`` are runs of
    ``count`` minibatches of ``size`` samples each, in the pass's order; ``group`` gives
    every sample its minibatch (device tensor); ``rank`` every minibatch its position in the
    loop's order (for the running statistics)."""

    segments: list[tuple[int, int]]  # (size, count)
    group: torch.Tensor
    rank: list[int]
    cache: dict = field(default_factory=dict)  # update coefficients, shared by the layers

    @property
    def sizes(self) -> list[int]:
        return [s for s, c in self.segments for _ in range(c)]


def _running_factors(bn: nn.modules.batchnorm._BatchNorm, steps: int) -> list[float]:
    """The averaging factor of each of ``steps`` consecutive training forwards of ``bn``."""
    if bn.momentum is not None:
        return [float(bn.momentum)] * steps
    done = int(bn.num_batches_tracked)  # cumulative average: 1 / batches seen so far
    return [1.0 / (done + t + 1) for t in range(steps)]


def _segment_sums(t: torch.Tensor, plan: GhostPlan) -> torch.Tensor:
    """Per minibatch and channel sums of ``t`` (samples first, channels second)."""
    reduce = (1,) + tuple(range(3, t.dim() + 1))  # all but the minibatch and the channel
    out, start = [], 0
    for size, count in plan.segments:
        out.append(t[start:start + size * count].unflatten(0, (count, size)).sum(dim=reduce))
        start += size * count
    return torch.cat(out)


class _GhostBatchNorm(torch.autograd.Function):
    """Batch normalization with statistics per minibatch of a plan; the usual batch-norm
    backward, per minibatch. Saves only the input and the statistics (as the fused kernel
    does), so a pass costs about what the loop's BatchNorm costs in memory and time."""

    @staticmethod
    def forward(ctx, x, weight, bias, plan: GhostPlan, eps: float):
        xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # stats >= fp32
        reduce = (1,) + tuple(range(3, x.dim() + 1))
        means, variances, start = [], [], 0
        for size, count in plan.segments:
            seg = xs[start:start + size * count].unflatten(0, (count, size))
            var, mean = torch.var_mean(seg, dim=reduce, correction=0)
            means.append(mean)
            variances.append(var)
            start += size * count
        mean, var = torch.cat(means), torch.cat(variances)  # minibatch, channel
        invstd = torch.rsqrt(var + eps)
        a = invstd * weight if weight is not None else invstd
        b = -mean * a if bias is None else bias - mean * a
        shape = (len(x), -1) + (1,) * (x.dim() - 2)
        out = torch.addcmul(b.index_select(0, plan.group).view(shape), xs,
                            a.index_select(0, plan.group).view(shape))
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.plan, ctx.has_bias = plan, bias is not None
        ctx.mark_non_differentiable(mean, var)
        return out.to(x.dtype), mean, var

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, _mean, _var):
        x, weight, mean, invstd = ctx.saved_tensors
        plan = ctx.plan
        xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        dy = dy.to(xs.dtype)
        per_sample = x[0].numel() // x.shape[1]
        if ("count", per_sample) not in plan.cache:
            counts = torch.tensor(plan.sizes, dtype=torch.float64)[:, None] * per_sample
            plan.cache["count", per_sample] = to_device(counts.to(xs.dtype), x.device)
        n = plan.cache["count", per_sample]
        sum_dy = _segment_sums(dy, plan)
        sum_dy_xhat = invstd * (_segment_sums(dy * xs, plan) - mean * sum_dy)
        a = invstd * weight if weight is not None else invstd
        # dx = a (dy - mean(dy) - xhat mean(dy xhat)), with xhat = (x - mean) invstd
        c1 = -a * invstd * sum_dy_xhat / n
        c0 = a * (mean * invstd * sum_dy_xhat - sum_dy) / n
        shape = (len(x), -1) + (1,) * (x.dim() - 2)
        g = plan.group
        dx = torch.addcmul(c0.index_select(0, g).view(shape), xs,
                           c1.index_select(0, g).view(shape))
        dx = torch.addcmul(dx, dy, a.index_select(0, g).view(shape))
        dw = sum_dy_xhat.sum(0) if weight is not None and ctx.needs_input_grad[1] else None
        db = sum_dy.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx.to(x.dtype), dw, db, None, None


def _ghost_forward(bn: nn.modules.batchnorm._BatchNorm, holder: list, x: torch.Tensor):
    """``bn``'s training forward with batch statistics per minibatch of ``holder[0]``."""
    plan: GhostPlan | None = holder[0]
    use_batch_stats = bn.training or bn.running_mean is None
    if plan is None or not use_batch_stats:
        return type(bn).forward(bn, x)
    bn._check_input_dim(x)
    out, mean, var = _GhostBatchNorm.apply(x, bn.weight, bn.bias, plan, bn.eps)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        _update_running(bn, plan, mean, var, x)
    return out


@torch.no_grad()
def _update_running(bn: nn.modules.batchnorm._BatchNorm, plan: GhostPlan, mean: torch.Tensor,
                    var: torch.Tensor, x: torch.Tensor) -> None:
    """The running statistics after the loop's sequential update, one per minibatch."""
    steps = len(plan.rank)
    factors = _running_factors(bn, steps)
    key = ("coef", tuple(factors) if bn.momentum is None else bn.momentum)
    if key not in plan.cache:
        by_rank, keep = [0.0] * steps, 1.0
        for t in reversed(range(steps)):  # a_t * prod_{u>t} (1 - a_u), then prod (1 - a_t)
            by_rank[t] = factors[t] * keep
            keep *= 1.0 - factors[t]
        coef = torch.tensor([by_rank[r] for r in plan.rank], dtype=torch.float64)
        plan.cache[key] = (to_device(coef.to(mean.dtype), mean.device), keep)
    coef, keep = plan.cache[key]
    per_sample = x[0].numel() // x.shape[1]  # elements per channel of one sample
    if ("unbias", per_sample) not in plan.cache:  # n / (n - 1) of each minibatch
        counts = torch.tensor(plan.sizes, dtype=torch.float64) * per_sample
        plan.cache["unbias", per_sample] = to_device((counts / (counts - 1)).to(var.dtype),
                                                      mean.device)
    unbias = plan.cache["unbias", per_sample]
    rm, rv = bn.running_mean, bn.running_var
    rm.copy_(keep * rm.to(mean.dtype) + coef @ mean)
    rv.copy_(keep * rv.to(var.dtype) + coef @ (var * unbias[:, None]))
    bn.num_batches_tracked.add_(steps)


@contextlib.contextmanager
def ghost_batchnorm(model: nn.Module):
    """Within the block every BatchNorm of ``model`` normalizes per minibatch of the plan
    put in the yielded holder (``holder[0] = plan``; ``None``: the usual forward)."""
    holder: list = [None]
    patched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in patched:
        m.forward = functools.partial(_ghost_forward, m, holder)
    try:
        yield holder
    finally:
        for m in patched:
            del m.forward


# -------------------------------------------------------------------------- FedSGD
def _fedsgd_layout(clients: list["ClientData"], batch_size: int):
    """The minibatches of the loop's FedSGD over ``clients`` (their samples in order,
    minibatches of ``batch_size``, one of a single sample skipped), in the loop's order:
    (client index, start, size) each."""
    out = []
    for k, c in enumerate(clients):
        for s in range(0, len(c), batch_size):
            size = min(batch_size, len(c) - s)
            if size >= 2:
                out.append((k, s, size))
    return out


def fedsgd_round(fed: "Federation", chosen: list["ClientData"], rnd: int,
                 images_per_pass: int | None = None) -> float:
    """``Federation._fedsgd_round`` as one pass (or a few, of whole clients) with ghost
    BatchNorm; the same server step and the same returned mean loss."""
    from .federated import autocast, client_generator

    cfg, model, device = fed.round_config(rnd), fed.model, fed.device
    limit = images_per_pass or max_images(device)
    for group in fed.server_opt.param_groups:
        group["lr"] = cfg.lr
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    model.zero_grad(set_to_none=True)
    total = sum(len(c) for c in chosen)
    loss_sum = torch.zeros((), device=device)
    tf = fed.transform
    pad, flip = fed.data.crop_padding, fed.data.flip
    chunks, current, size = [], [], 0  # whole clients, at most `limit` images a pass
    for c in chosen:
        if current and size + len(c) > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(c)
        size += len(c)
    chunks.append(current)
    with ghost_batchnorm(model) as holder:
        for clients in chunks:
            batches = _fedsgd_layout(clients, cfg.batch_size)
            if not batches:
                continue
            draws = {}
            if cfg.augment:  # per client, minibatch by minibatch, as the loop draws them
                for k, c in enumerate(clients):
                    g = client_generator(fed.cfg.seed, rnd, c.client_id)
                    for b in (b for b in batches if b[0] == k):
                        draws[b] = draw_crop_flip(b[2], g, pad, flip)
            # pass order: minibatches by size (largest first), loop order within a size
            order = sorted(range(len(batches)), key=lambda i: -batches[i][2])
            laid = [batches[i] for i in order]
            xs = torch.cat([clients[k].x[s:s + n] for k, s, n in laid])
            ys = torch.cat([clients[k].y[s:s + n] for k, s, n in laid])
            if cfg.augment:
                oy, ox, mirror = (torch.cat([draws[b][j] for b in laid]) for j in range(3))
                xs = apply_crop_flip(xs, to_device(oy, device), to_device(ox, device),
                                     to_device(mirror, device), pad)
            segments: list[tuple[int, int]] = []
            for _, _, n in laid:
                if segments and segments[-1][0] == n:
                    segments[-1] = (n, segments[-1][1] + 1)
                else:
                    segments.append((n, 1))
            group = torch.repeat_interleave(torch.arange(len(laid)),
                                            torch.tensor([n for _, _, n in laid]))
            holder[0] = GhostPlan(segments, to_device(group, device), order)
            x = tf(xs)
            with autocast(device, cfg.precision):
                loss = F.cross_entropy(model(x), ys, reduction="sum")
            loss.backward()
            loss_sum += loss.detach()
            holder[0] = None
    for p in params:
        p.grad = (p.grad if p.grad is not None else torch.zeros_like(p)) / total
    fed.server_opt.step()
    return loss_sum.item() / total


# -------------------------------------------------------------------------- FedAvg
def _mask_targets(model: nn.Module, mask) -> list[tuple[str, torch.Tensor]]:
    """(parameter name, channel indices) of every tensor ``mask.apply`` zeroes."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    pairs = conv_bn_pairs(model)
    for layer in mask.channels:
        conv, bn = pairs[layer]
        tensors = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
        if bn is not None:
            tensors += [bn.weight, bn.bias]
        i = mask.index(layer, conv.weight.device)
        out += [(names[id(t)], i) for t in tensors]
    return out


def fedavg_round(fed: "Federation", chosen: list["ClientData"], rnd: int) -> float:
    """``Federation._fedavg_round`` with the clients' weights stacked and their steps
    vmapped; the same weights, buffers and mean loss within float tolerance."""
    from .federated import autocast, client_generator

    cfg, model, device = fed.round_config(rnd), fed.model, fed.device
    tf, pad, flip = fed.transform, fed.data.crop_padding, fed.data.flip
    K = len(chosen)
    model.train()
    names = [n for n, _ in model.named_parameters()]
    live = dict(model.named_parameters())
    live.update(model.named_buffers())

    def stacked(t: torch.Tensor) -> torch.Tensor:
        return t.detach().unsqueeze(0).repeat(K, *([1] * t.dim()))

    P = {n: stacked(live[n]) for n in names}
    B = {n: stacked(b) for n, b in model.named_buffers()}
    mom = {n: torch.zeros_like(p) for n, p in P.items()} if cfg.momentum else {}
    masked = _mask_targets(model, fed.mask) if len(fed.mask) else []

    # every client's steps, as local_train draws them: per epoch an order, then per
    # minibatch of it the augmentation draws; slot (epoch, j) holds minibatch j of epoch
    # slot (epoch, j) holds minibatch j of that epoch of every client that has one, as
    # (client, positions in its device-resident order and draws); one copy per client
    slots: dict[tuple[int, int], list[tuple[int, slice]]] = {}
    orders, draws = [], []
    for k, c in enumerate(chosen):
        g = client_generator(cfg.seed, rnd, c.client_id)
        parts, drawn, at = [], [], 0
        for e in range(cfg.local_epochs):
            order = torch.randperm(len(c), generator=g)
            for j, s in enumerate(range(0, len(c), cfg.batch_size)):
                idx = order[s:s + cfg.batch_size]
                if len(idx) < 2:
                    continue
                parts.append(idx)
                if cfg.augment:
                    drawn.append(draw_crop_flip(len(idx), g, pad, flip))
                slots.setdefault((e, j), []).append((k, slice(at, at + len(idx))))
                at += len(idx)
        orders.append(to_device(torch.cat(parts), device) if parts else None)
        draws.append(tuple(to_device(torch.cat([d[i] for d in drawn]), device)
                           for i in range(3)) if drawn else None)

    def client_loss(p, b, x, y):
        with autocast(device, cfg.precision):
            return F.cross_entropy(functional_call(model, (p, b), (x,)), y)

    batched_loss = vmap(client_loss)
    loss_sum = torch.zeros((), device=device)
    seen = 0
    everyone = list(range(K))
    for key in sorted(slots):
        by_size: dict[int, list] = {}
        for k, sl in slots[key]:
            by_size.setdefault(sl.stop - sl.start, []).append((k, sl))
        for n, items in by_size.items():
            rows = [k for k, _ in items]
            xs = torch.cat([chosen[k].x[orders[k][sl]] for k, sl in items])
            ys = torch.cat([chosen[k].y[orders[k][sl]] for k, sl in items])
            if cfg.augment:
                oy, ox, mirror = (torch.cat([draws[k][i][sl] for k, sl in items])
                                  for i in range(3))
                xs = apply_crop_flip(xs, oy, ox, mirror, pad)
            x = tf(xs)
            x = x.unflatten(0, (len(rows), n))
            y = ys.view(len(rows), n)
            whole = rows == everyone
            r = None if whole else to_device(torch.tensor(rows), device)
            p_in = {m: (t.detach() if whole else t.index_select(0, r)).requires_grad_()
                    for m, t in P.items()}
            b_in = B if whole else {m: t.index_select(0, r) for m, t in B.items()}
            losses = batched_loss(p_in, b_in, x, y)
            grads = torch.autograd.grad(losses.sum(), [p_in[m] for m in names])
            with torch.no_grad():  # torch.optim.SGD's step (elementwise: per client)
                ps = [p_in[m].detach() for m in names]  # whole: P's own storage
                grads = list(grads)
                if cfg.weight_decay:
                    grads = torch._foreach_add(grads, ps, alpha=cfg.weight_decay)
                if cfg.momentum:
                    bufs = [mom[m] if whole else mom[m].index_select(0, r) for m in names]
                    torch._foreach_mul_(bufs, cfg.momentum)
                    torch._foreach_add_(bufs, grads)
                    if not whole:
                        for m, buf in zip(names, bufs):
                            mom[m].index_copy_(0, r, buf)
                    grads = bufs
                torch._foreach_add_(ps, grads, alpha=-cfg.lr)
                if not whole:
                    for m, p in zip(names, ps):
                        P[m].index_copy_(0, r, p)
                if not whole:
                    for m, t in b_in.items():
                        B[m].index_copy_(0, r, t)
                for m, idx in masked:
                    P[m].index_fill_(1, idx, 0.0)
            loss_sum += losses.detach().sum() * n
            seen += n * len(rows)

    # the size-weighted average, summed in client order as the loop sums it
    with torch.no_grad():
        state = {**P, **B}
        floats = [m for m in live if live[m].is_floating_point()]
        acc = [torch.zeros_like(live[m]) for m in floats]
        for k, c in enumerate(chosen):
            torch._foreach_add_(acc, [state[m][k] for m in floats], alpha=float(len(c)))
        total = sum(len(c) for c in chosen)
        torch._foreach_mul_(acc, 1.0 / total)
        torch._foreach_copy_([live[m] for m in floats], acc)
        for m, t in live.items():  # counters (num_batches_tracked): the loop's running sum
            if not t.is_floating_point():
                t.add_((state[m] - t).sum(0))
    return loss_sum.item() / max(seen, 1)
