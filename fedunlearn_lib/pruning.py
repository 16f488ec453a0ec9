"""Channel selection from TF-IDF scores, and physical channel removal with torch-pruning."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from .masking import ChannelMask
from .models import conv_bn_pairs
from .tfidf import tfidf_scores

DIRECTIONS = ("highest", "lowest")
SCOPES = ("global", "layer")


def layer_scores(activations: dict[str, torch.Tensor], target: int,
                 idf_threshold: str = "class") -> dict[str, torch.Tensor]:
    """TF-IDF score of every channel of every layer for class ``target``."""
    return {n: tfidf_scores(a, target, idf_threshold) for n, a in activations.items()}


def l1_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """L1 norm of every conv filter (Li et al. 2017 prune the *lowest*)."""
    return {n: m.weight.detach().abs().sum(dim=(1, 2, 3)).cpu()
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def random_scores(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Uniform random scores for every conv channel: selecting by them prunes at random."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.out_channels, generator=g)
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def select_channels(scores: dict[str, torch.Tensor], ratio: float, *,
                    direction: str = "highest", scope: str = "global",
                    already: ChannelMask | None = None) -> ChannelMask:
    """Pick the fraction ``ratio`` of channels with the highest (or lowest) scores.

    ``scope="global"`` ranks all conv channels together (the paper); ``"layer"`` takes
    the fraction in each layer. Channels in ``already`` are not candidates, and at
    least one channel of every layer always survives.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"pruning ratio R must lie in (0, 1), got {ratio!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    already = already or ChannelMask()
    sign = 1.0 if direction == "highest" else -1.0
    room = {n: len(s) - 1 - len(already.channels.get(n, ())) for n, s in scores.items()}
    candidates = [(sign * float(v), n, j) for n, s in scores.items()
                  for j, v in enumerate(s.tolist()) if j not in already.channels.get(n, ())]
    # ties broken by layer order then channel index, so selection is deterministic
    order = {n: i for i, n in enumerate(scores)}
    candidates.sort(key=lambda c: (-c[0], order[c[1]], c[2]))
    if scope == "global":
        quota = {None: max(1, round(ratio * sum(len(s) for s in scores.values())))}
    else:
        quota = {n: max(1, round(ratio * len(s))) for n, s in scores.items()}
    chosen: dict[str, list[int]] = {}
    for _, n, j in candidates:
        key = None if scope == "global" else n
        if quota[key] > 0 and room[n] > 0:
            chosen.setdefault(n, []).append(j)
            quota[key] -= 1
            room[n] -= 1
    return ChannelMask(chosen)


def remove_channels(model: nn.Module, mask: ChannelMask,
                    example_input: torch.Tensor) -> tuple[nn.Module, ChannelMask, int]:
    """Physically remove the masked channels that can be removed on their own.

    A conv whose output channels are tied to other convs' (a residual stream) stays
    masked. Returns (the thinned model, the mask still to keep, channels removed).
    The model is modified in place; its outputs equal those of the masked model.
    """
    mask.apply(model)
    model.eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    pairs = conv_bn_pairs(model)
    kept: dict[str, list[int]] = {}
    removed = 0
    for name, idxs in mask.channels.items():
        conv, bn = pairs[name]
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(idxs))
        own = {id(conv), id(bn)}
        shared = any(isinstance(dep.target.module, (nn.Conv2d, nn.BatchNorm2d))
                     and id(dep.target.module) not in own
                     and dep.handler.__name__ == "prune_out_channels" for dep, _ in group)
        if shared:
            kept[name] = list(idxs)
        else:
            group.prune()
            removed += len(idxs)
    return model, ChannelMask(kept), removed


def count_conv_channels(model: nn.Module) -> int:
    """Total number of conv output channels (the denominator of the pruning ratio)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def conv_flops(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates of all convs and linears for one input (via torch-pruning)."""
    device = next(model.parameters()).device
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(input_size, device=device))
    return int(macs)

