"""Image classifiers: WideResNet-28-10 (the paper's), CIFAR ResNet-18, a small CNN, and Madry et
al.'s MNIST CNN.

Every classifier takes images in [0, 1] and splits into two stages so attacks can reach the
representation before pooling (the feature attack of appendix C.5):

    logits = model.head(model.features(x))

``features`` returns the (N, C, h, w) map before global average pooling; ``head`` pools and
applies the final linear layer. Pooling is a mean over the spatial dims (not ``.view``), so the
models accept channels_last inputs and any image size >= 8. The MNIST CNN is the exception: as
in Madry et al., its head flattens the last feature map into two fully connected layers, so it
is built for one image size.

Inputs are not mean/std-normalised: each first convolution is followed by batch normalisation,
which absorbs the input scale, and attacks then work directly in pixel space.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_int

ARCHS = ("wrn-28-10", "resnet18", "small-cnn", "madry-cnn")
MIN_IMAGE_SIZE = 8


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ClassifierHead(nn.Module):
    """Global average pooling followed by a linear layer."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.mean(dim=(2, 3)))


class Classifier(nn.Module):
    """A feature extractor plus a :class:`ClassifierHead`, remembering how it was built."""

    def __init__(self, body: nn.Module, feature_channels: int, config: dict, head: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.head = head if head is not None else ClassifierHead(feature_channels, config["num_classes"])
        self.config = dict(config)
        _initialise(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before global pooling, shape (N, C, h, w)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _initialise(model: nn.Module) -> None:
    """He initialisation for convolutions (as in the WRN and ResNet papers), zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


class PreActWideBlock(nn.Module):
    """Pre-activation wide residual block (BN-ReLU-conv twice), Zagoruyko & Komodakis 2016.

    When the shape changes, the 1x1 projection shortcut reads the pre-activated input, as in
    the reference WRN code used by Madry et al., TRADES and ADT.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + residual


def _wide_resnet_body(in_channels: int, depth: int, widen_factor: int) -> tuple[nn.Module, int]:
    if (depth - 4) % 6 != 0:
        raise ValueError(f"WideResNet depth must be 6n+4, got depth={depth}")
    blocks_per_group = (depth - 4) // 6
    widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    layers: list[nn.Module] = [_conv3x3(in_channels, 16)]
    current = 16
    for width, stride in zip(widths, (1, 2, 2)):
        for index in range(blocks_per_group):
            layers.append(PreActWideBlock(current, width, stride if index == 0 else 1))
            current = width
    layers += [nn.BatchNorm2d(current), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), current


class BasicBlock(nn.Module):
    """Post-activation ResNet basic block (He et al. 2016) with a 1x1 projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _resnet18_body(in_channels: int) -> tuple[nn.Module, int]:
    """CIFAR variant: a 3x3 stride-1 stem and no max-pool, so 32x32 inputs end at 4x4."""
    layers: list[nn.Module] = [_conv3x3(in_channels, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    current = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(current, width, stride), BasicBlock(width, width, 1)]
        current = width
    return nn.Sequential(*layers), current


def _small_cnn_body(in_channels: int) -> tuple[nn.Module, int]:
    """Three conv-BN-ReLU layers (one strided): fast on CPU, enough for 8x8 digits."""

    def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [_conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers = conv_bn_relu(in_channels, 32, 1) + conv_bn_relu(32, 64, 2) + conv_bn_relu(64, 64, 1)
    return nn.Sequential(*layers), 64


class FlattenHead(nn.Module):
    """Flatten, a hidden fully connected layer with ReLU, then the logits (Madry et al.'s head)."""

    def __init__(self, in_features: int, hidden: int, num_classes: int):
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden)
        self.linear = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.relu(self.hidden(features.flatten(1))))


MADRY_HIDDEN = 1024


def _madry_cnn(in_channels: int, image_size: int, num_classes: int) -> tuple[nn.Module, int, nn.Module]:
    """The MNIST model of Madry et al.'s MNIST challenge (github.com/MadryLab/mnist_challenge,
    model.py): conv 5x5 32 + ReLU + max-pool 2, conv 5x5 64 + ReLU + max-pool 2, FC 1024 + ReLU,
    FC to the logits; "same" padding, no batch normalisation. 3.3 M parameters at 28x28."""
    body = nn.Sequential(nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    side = image_size // 2 // 2
    return body, 64, FlattenHead(64 * side * side, MADRY_HIDDEN, num_classes)


def build_model(arch: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> Classifier:
    """Build a classifier by name; ``model.config`` holds these arguments for checkpoints."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    check_int(num_classes, "num_classes")
    check_int(in_channels, "in_channels")
    check_int(image_size, "image_size", MIN_IMAGE_SIZE)
    head = None
    if arch == "wrn-28-10":
        body, feature_channels = _wide_resnet_body(in_channels, depth=28, widen_factor=10)
    elif arch == "resnet18":
        body, feature_channels = _resnet18_body(in_channels)
    elif arch == "madry-cnn":
        body, feature_channels, head = _madry_cnn(in_channels, image_size, num_classes)
    else:
        body, feature_channels = _small_cnn_body(in_channels)
    config = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    return Classifier(body, feature_channels, config, head)
