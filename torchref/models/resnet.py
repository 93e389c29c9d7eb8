"""torchvision's BasicBlock ResNet, CIFAR-style, for 28x28 single-channel Fashion-MNIST.

Written as a torchvision user writes it (``torchvision.models.resnet``'s ``BasicBlock`` and
``ResNet``, with its attribute names, so state-dict keys read the same), with the stem and the
stage widths of the CIFAR ResNets of He et al. (2016, section 4.2)::

    conv1 3x3 (1 -> c0) -> bn1 -> relu                       28x28, c0 = channels[0]
    layer1: blocks x BasicBlock(c0 -> c0)                    28x28, identity shortcuts
    layer2: BasicBlock(c0 -> c1, stride 2) + (blocks - 1)    14x14, projection shortcut first
    layer3: BasicBlock(c1 -> c2, stride 2) + (blocks - 1)     7x7
    avgpool (global) -> flatten -> fc (c2 -> num_classes)    logits

A ``BasicBlock`` is ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, where the
shortcut is ``x`` itself, or ``downsample = Sequential(conv 1x1 stride 2, BatchNorm2d)`` where
the shape changes. Convolutions have no bias (the BatchNorm after each one has it).

State-dict keys (``blocks=1``): ``conv1.weight [c0,1,3,3]``, ``bn1.{weight,bias,running_mean,
running_var,num_batches_tracked}``, ``layer1.0.conv1.weight``, ``layer1.0.bn1.*``,
``layer1.0.conv2.weight``, ``layer1.0.bn2.*``, ``layer2.0.downsample.0.weight [c1,c0,1,1]``,
``layer2.0.downsample.1.*``, ..., ``fc.weight [classes, c2]``, ``fc.bias``.

Example:
    >>> model = ResNet(channels=(16, 32, 64), blocks=2)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1 on every side (torchvision's helper)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution: the projection shortcut (torchvision's helper)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and ReLU, plus the shortcut, then ReLU (torchvision's)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """The CIFAR-style ResNet on ``[N, 1, 28, 28]`` images; logits ``[N, num_classes]``.

    Args:
        channels: widths of the three stages (the stem has the first).
        blocks: BasicBlocks per stage (1: ResNet-8, 2: ResNet-14, in the ``6n + 2`` count).
        num_classes: outputs of the head.
        in_channels: image channels (1 for Fashion-MNIST).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64),
        blocks: int = 2,
        num_classes: int = 10,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(channels) != 3 or blocks < 1:
            raise ValueError(f"need 3 stage widths and blocks >= 1, got channels={channels}, blocks={blocks}")
        self.inplanes = int(channels[0])
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(int(channels[0]), blocks)
        self.layer2 = self._make_layer(int(channels[1]), blocks, stride=2)
        self.layer3 = self._make_layer(int(channels[2]), blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(int(channels[2]), num_classes)
        # torchvision's initialisation; the Linear keeps torch's default U(+-1/sqrt(fan_in)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """torch optimizer parameter groups: ``weight_decay`` on the conv and Linear weights, none on
    BatchNorm's weight and bias or on biases (the 1-D parameters), as the CIFAR recipes do.

    Example:
        >>> opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True)
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def from_config(fields: dict, dtype: torch.dtype | None = None) -> ResNet:
    """A fresh ResNet of the given sizes (``channels``, ``blocks``, ``num_classes``,
    ``in_channels``), from torch's global RNG: the builder jaxnet's registry calls."""
    f = fields
    model = ResNet(f["channels"], f["blocks"], f["num_classes"], f["in_channels"])
    return model if dtype is None else model.to(dtype)
