"""Teacher/student architectures by name, for any class count and input size.

The torchvision definitions are used as they are (so torchvision's ImageNet state dicts load into them), with
two documented knobs:

- ``width`` scales every channel count (cheap CPU teachers, e.g. the default digits ensemble at widths
  0.25-0.5). ``width=1.0`` is the published architecture.
- ``image_size <= 64`` (CIFAR/digits-sized inputs) removes the first two stride-2 downsamplings of
  ``mobilenet_v2``, ``efficientnet_b0`` and ``shufflenet_v2`` (overall stride 32 -> 8, as in the usual CIFAR
  ports of these networks), so that a 32 px input still has a 4x4 map at the last stage instead of 1x1.
  Only strides change: parameter names and shapes stay those of torchvision, so ImageNet weights still load.
  ``resnet18``, ``resnet50`` and ``resnet101`` always keep their ImageNet stem; ``resnet18_cifar`` is the
  small-input variant.

Every architecture contains BatchNorm layers: INFER matches their running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import efficientnet, mobilenetv2, resnet, shufflenetv2

# Inputs at most this large get the small-input adaptation (see the module docstring).
SMALL_INPUT = 64


def _scaled(channels: int, width: float, multiple: int = 1) -> int:
    """``channels * width`` rounded to a multiple of ``multiple`` (at least ``multiple``)."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


# ------------------------------------------------------------------------------------------ ResNet-18/50/101
class ScalableResNet(resnet.ResNet):
    """torchvision's ResNet (same module names, blocks and forward) with scalable width and stem.

    ``block``/``layers`` are torchvision's (``BasicBlock, [2, 2, 2, 2]`` is ResNet-18, ``Bottleneck, [3, 4, 6, 3]``
    ResNet-50, ``Bottleneck, [3, 4, 23, 3]`` ResNet-101). ``cifar_stem=True`` replaces the 7x7 stride-2
    convolution + max-pool by a 3x3 stride-1 convolution and no pooling (the standard CIFAR ResNet).
    torchvision's constructor hard-codes 64 base channels, hence this constructor; the layers are built by
    torchvision's own ``_make_layer`` and blocks, so its ImageNet state dicts load at width 1.
    """

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int, width: float = 1.0,
                 cifar_stem: bool = False) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        # groups 1 and base_width 64: BasicBlock requires them, and Bottleneck's inner width is then `planes`
        self.dilation, self.groups, self.base_width = 1, 1, 64
        planes = [_scaled(64 * 2**i, width) for i in range(4)]
        self.inplanes = planes[0]
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


class ResNet18(ScalableResNet):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); see :class:`ScalableResNet`."""

    def __init__(self, num_classes: int, width: float = 1.0, cifar_stem: bool = False) -> None:
        super().__init__(resnet.BasicBlock, [2, 2, 2, 2], num_classes, width, cifar_stem)


# ------------------------------------------------------------------------------------- CIFAR ResNet-20..56
class _ShortcutA(nn.Module):
    """He et al.'s option-A shortcut: stride-2 subsampling plus zero-padded channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        extra = planes - in_planes
        self.pad = (0, 0, 0, 0, extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], self.pad)


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(in_planes, planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet-(6n+2) of He et al. 2016 as in the external checkpoints of weights/cifar10-resnet
    (akamaster/pytorch_resnet_cifar10): 3x3 stem of 16 channels, three stages of ``n`` basic blocks with
    16/32/64 channels (times ``width``), option-A shortcuts, global average pool, final layer ``linear``."""

    def __init__(self, n: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        planes = [_scaled(16 * 2**i, width) for i in range(3)]
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        blocks, in_planes = [], planes[0]
        for i, p in enumerate(planes):
            stage = []
            for j in range(n):
                stage.append(CifarBasicBlock(in_planes, p, stride=2 if i > 0 and j == 0 else 1))
                in_planes = p
            blocks.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = blocks
        self.linear = nn.Linear(planes[2], num_classes)
        for m in self.modules():  # the initialisation of the original code
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


# -------------------------------------------------------------------------------------------------- ConvNet
class ConvNet(nn.Module):
    """The ConvNet of the dataset-distillation literature with BatchNorm ("ConvNetBN"): ``depth`` blocks of
    conv3x3-BN-ReLU-avgpool2 with 128 channels (times ``width``), then a linear layer on the flattened map.
    ``depth = round(log2(image_size)) - 2``: 3 blocks at 32 px, 4 at 64, 5 at 128, 6 at 224."""

    def __init__(self, num_classes: int, image_size: int, width: float = 1.0) -> None:
        super().__init__()
        channels = _scaled(128, width)
        depth = max(1, int(round(math.log2(image_size))) - 2)
        layers: list[nn.Module] = []
        in_ch, size = 3, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(in_ch, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            in_ch, size = channels, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, num_classes)
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"ConvNet built for {self.image_size}x{self.image_size} inputs got "
                             f"{tuple(x.shape[-2:])}; rebuild it with image_size={x.shape[-1]}")
        return self.classifier(torch.flatten(self.features(x), 1))


# ------------------------------------------------------------------------------------ torchvision mobiles
def _unstride(conv: nn.Module) -> None:
    assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2), conv
    conv.stride = (1, 1)


def _mobilenet_v2(num_classes: int, image_size: int, width: float) -> nn.Module:
    small = image_size <= SMALL_INPUT
    # torchvision's table [t, c, n, s]; the small-input variant runs the second stage (c=24) at stride 1
    setting = [[1, 16, 1, 1], [6, 24, 2, 1 if small else 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]
    model = mobilenetv2.MobileNetV2(num_classes=num_classes, width_mult=width, inverted_residual_setting=setting)
    if small:
        _unstride(model.features[0][0])
    return model


def _efficientnet_b0(num_classes: int, image_size: int, width: float) -> nn.Module:
    small = image_size <= SMALL_INPUT
    conf = partial(efficientnet.MBConvConfig, width_mult=width, depth_mult=1.0)
    # torchvision's B0 table (expand, kernel, stride, in, out, layers); small inputs: second stage at stride 1
    setting = [conf(1, 3, 1, 32, 16, 1), conf(6, 3, 1 if small else 2, 16, 24, 2), conf(6, 5, 2, 24, 40, 2),
               conf(6, 3, 2, 40, 80, 3), conf(6, 5, 1, 80, 112, 3), conf(6, 5, 2, 112, 192, 4),
               conf(6, 3, 1, 192, 320, 1)]
    model = efficientnet.EfficientNet(setting, dropout=0.2, num_classes=num_classes)
    if small:
        _unstride(model.features[0][0])
    return model


# torchvision's ShuffleNet-V2 stage channels per published width; other widths scale the x1.0 row.
_SHUFFLE_CHANNELS = {0.5: [24, 48, 96, 192, 1024], 1.0: [24, 116, 232, 464, 1024],
                     1.5: [24, 176, 352, 704, 1024], 2.0: [24, 244, 488, 976, 2048]}


def _shufflenet_v2(num_classes: int, image_size: int, width: float) -> nn.Module:
    channels = _SHUFFLE_CHANNELS.get(width)
    if channels is None:  # stage channels must be even (channel split); stem and conv5 as in x1.0
        channels = [24, *(_scaled(c, width, 2) for c in (116, 232, 464)), 1024]
    model = shufflenetv2.ShuffleNetV2([4, 8, 4], channels, num_classes=num_classes)
    if image_size <= SMALL_INPUT:
        _unstride(model.conv1[0])
        model.maxpool = nn.Identity()
    return model


def _cifar_resnet(depth: int) -> Callable[[int, int, float], nn.Module]:
    return lambda num_classes, image_size, width: CifarResNet((depth - 2) // 6, num_classes, width)


_BUILDERS: dict[str, Callable[[int, int, float], nn.Module]] = {
    "resnet18": lambda num_classes, image_size, width: ResNet18(num_classes, width, cifar_stem=False),
    "resnet18_cifar": lambda num_classes, image_size, width: ResNet18(num_classes, width, cifar_stem=True),
    # ImageNet students of the SRe2L family's cross-architecture tables (torchvision definitions, ImageNet stem)
    "resnet50": lambda num_classes, image_size, width: ScalableResNet(resnet.Bottleneck, [3, 4, 6, 3], num_classes,
                                                                      width),
    "resnet101": lambda num_classes, image_size, width: ScalableResNet(resnet.Bottleneck, [3, 4, 23, 3],
                                                                       num_classes, width),
    "mobilenet_v2": _mobilenet_v2,
    "efficientnet_b0": _efficientnet_b0,
    "shufflenet_v2": _shufflenet_v2,
    "convnet": lambda num_classes, image_size, width: ConvNet(num_classes, image_size, width),
    **{f"cifar_resnet{d}": _cifar_resnet(d) for d in (20, 32, 44, 56)},
}

ARCHS: tuple[str, ...] = tuple(_BUILDERS)

# The parameter of each architecture's final classifier (its first dimension is the class count).
HEADS: dict[str, str] = {
    "resnet18": "fc.weight", "resnet18_cifar": "fc.weight", "resnet50": "fc.weight", "resnet101": "fc.weight",
    "mobilenet_v2": "classifier.1.weight",
    "efficientnet_b0": "classifier.1.weight", "shufflenet_v2": "fc.weight", "convnet": "classifier.weight",
    **{f"cifar_resnet{d}": "linear.weight" for d in (20, 32, 44, 56)},
}

# Input size each architecture was designed for (used when a checkpoint does not record one).
NATIVE_SIZE: dict[str, int] = {a: 32 if a.startswith("cifar_") or a == "resnet18_cifar" else 224 for a in ARCHS}


def build_model(arch: str, num_classes: int, image_size: int = 224, width: float = 1.0) -> nn.Module:
    """Build architecture ``arch`` (one of :data:`ARCHS`) for ``num_classes`` classes and square inputs of
    ``image_size`` pixels, with channel counts scaled by ``width``; randomly initialised, in train mode."""
    if arch not in _BUILDERS:
        raise ValueError(f"build_model: unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"build_model: num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"build_model: image_size must be an int >= 8, got {image_size!r}")
    if not (isinstance(width, int | float) and 0 < width <= 4):
        raise ValueError(f"build_model: width must be in (0, 4], got {width!r}")
    return _BUILDERS[arch](num_classes, image_size, float(width))
