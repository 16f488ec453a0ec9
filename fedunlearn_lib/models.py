"""CIFAR-style CNNs: ResNet-20/32/44/56 (He et al. 2016) and VGG-11/13/16/19 with BatchNorm.

ResNet shortcuts use a 1x1-conv projection ("option B") where the shape changes,
so torch-pruning's dependency graph models every channel coupling.
"""
from __future__ import annotations

import torch
from torch import nn

RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
MODELS = sorted(RESNET_DEPTHS) + sorted(VGG_CFGS)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; projection shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: a 16-channel stem and 3 stages of 16/32/64 channels."""

    def __init__(self, blocks_per_stage: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled) features."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs; one linear classifier on the 512-d pooled features."""

    def __init__(self, cfg: list[int | str], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                in_ch = int(v)
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled) features."""
        return torch.flatten(self.pool(self.body(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_model(name: str, num_classes: int) -> nn.Module:
    """Build a CIFAR model by name (see ``MODELS``) with ``num_classes`` outputs."""
    key = name.lower()
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if key in RESNET_DEPTHS:
        return CifarResNet(RESNET_DEPTHS[key], num_classes)
    if key in VGG_CFGS:
        return CifarVGG(VGG_CFGS[key], num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def conv_bn_pairs(model: nn.Module) -> dict[str, tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Map each conv's name to (conv, the BatchNorm that normalizes its output, if any).

    Relies on the convention of the models above: a conv's BatchNorm is the next
    module registered after it, with as many features as the conv has filters.
    """
    pairs: dict[str, tuple[nn.Conv2d, nn.BatchNorm2d | None]] = {}
    pending: tuple[str, nn.Conv2d] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if pending is not None:
                pairs[pending[0]] = (pending[1], None)
            pending = (name, module)
        elif isinstance(module, nn.BatchNorm2d) and pending is not None:
            if module.num_features == pending[1].out_channels:
                pairs[pending[0]] = (pending[1], module)
            else:
                pairs[pending[0]] = (pending[1], None)
            pending = None
    if pending is not None:
        pairs[pending[0]] = (pending[1], None)
    return pairs


def prefers_channels_last(model: str, device: str | torch.device) -> bool:
    """Whether ``model`` trains faster in channels-last layout on ``device``: on a CPU for
    the ResNets, and for every model on a CPU without AVX-512 (B = 64 on 2 cores, README
    "Precision and memory layout": on an AVX-512 Intel CPU ResNet-20 1.09x contiguous,
    VGG-11 0.88x; on an AVX2 AMD EPYC ResNet-20 1.78x, VGG-11 1.53x); contiguous elsewhere."""
    if torch.device(device).type != "cpu":
        return False
    return model.lower().startswith("resnet") or not torch.cpu._is_avx512_supported()
