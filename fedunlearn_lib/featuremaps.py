"""The paper's Figure 2: feature maps of class-discriminative channels, and their TF-IDF."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from .data import BatchTransform, ImageData  # noqa: E402
from .federated import ClientData  # noqa: E402
from .procs import local_proc  # noqa: E402
from .tfidf import tfidf_scores  # noqa: E402


@torch.inference_mode()
def conv_outputs(model: nn.Module, x: torch.Tensor,
                 layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """ReLU'd outputs of the named conv layers (all convs when ``None``) for batch ``x``."""
    modules = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
               and (layers is None or n in layers)}
    out: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, torch.relu(o)))
               for n, m in modules.items()]
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def default_layer(model: nn.Module, min_size: int = 8) -> str:
    """The deepest conv whose feature maps are still at least ``min_size`` pixels wide."""
    probe = torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device)
    sizes = {n: o.shape[-1] for n, o in conv_outputs(model, probe).items()}
    wide = [n for n, s in sizes.items() if s >= min_size]
    return wide[-1] if wide else list(sizes)[0]


def class_activations(model: nn.Module, data: ImageData, transform: BatchTransform,
                      layer: str) -> torch.Tensor:
    """Class-wise mean channel activation of ``layer`` on the test split: [classes, C]."""
    up = local_proc(model, ClientData(-1, data.test_x, data.test_y), transform,
                    data.num_classes)
    return up.means[layer]


def plot_feature_maps(model: nn.Module, data: ImageData, transform: BatchTransform,
                      layer: str, target: int, classes: list[int], channels: list[int],
                      per_class: int = 2) -> plt.Figure:
    """Rows: a few test images of each class; columns: the image and chosen channels' maps."""
    picks = [torch.nonzero(data.test_y.cpu() == c).flatten()[:per_class] for c in classes]
    idx = torch.cat(picks)
    x = data.test_x[idx]
    maps = conv_outputs(model, transform(x), [layer])[layer][:, channels].cpu()
    vmax = float(maps.max()) or 1.0
    rows, cols = len(idx), len(channels) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(x[r].permute(1, 2, 0).cpu().numpy())
        axes[r, 0].set_ylabel(data.classes[int(data.test_y[idx[r]])], fontsize=9)
        for c, ch in enumerate(channels):
            axes[r, c + 1].imshow(maps[r, c].numpy(), cmap="viridis", vmin=0, vmax=vmax)
            if r == 0:
                axes[r, c + 1].set_title(f"ch {ch}", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    fig.suptitle(f"{layer}: channels ranked by TF-IDF for class "
                 f"'{data.classes[target]}'", fontsize=10)
    fig.tight_layout()
    return fig


def plot_activation_heatmap(A: torch.Tensor, target: int, class_names: list[str],
                            top: int = 24, idf_threshold: str = "class"
                            ) -> tuple[plt.Figure, list[int]]:
    """Heat map of class-wise activations for the ``top`` channels by TF-IDF for ``target``.

    Returns the figure and all channel indices, highest score first.
    """
    scores = tfidf_scores(A, target, idf_threshold)
    ranking = torch.argsort(scores, descending=True).tolist()
    order = ranking[:top]
    norm = A[:, order] / A[:, order].max(dim=0, keepdim=True).values.clamp(min=1e-12)
    fig, (ax_s, ax_h) = plt.subplots(2, 1, figsize=(0.38 * len(order) + 2, 5.5),
                                     gridspec_kw={"height_ratios": [1, 3]}, sharex=True)
    ax_s.bar(np.arange(len(order)) + 0.5, scores[order].numpy(), color="tab:red")
    ax_s.set_ylabel("TF-IDF")
    sns.heatmap(norm.numpy(), ax=ax_h, cmap="mako",
                cbar_kws={"label": "activation / channel max", "orientation": "horizontal",
                          "pad": 0.22, "shrink": 0.5},
                xticklabels=order, yticklabels=class_names)
    ax_h.set_xlabel(f"top {len(order)} channels by TF-IDF for class {class_names[target]}")
    ax_h.set_ylabel("class")
    ax_h.get_yticklabels()[target].set_color("tab:red")
    fig.tight_layout()
    return fig, ranking
