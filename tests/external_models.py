"""Factories for `adt-fast eval --model tests_module:factory` in tests/test_cli_eval_model.py."""

import torch
from torch import nn


def build() -> nn.Module:
    """A plain classifier for the synthetic dataset (3 x 8 x 8, 10 classes), no .features."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


def wide() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))  # wrong input size for 3 x 8 x 8


def fails() -> nn.Module:
    raise RuntimeError("factory exploded")


def not_a_module():
    return 3


class _Wrapped(nn.Module):
    """build()'s network behind a forward that the subclasses change."""

    def __init__(self):
        super().__init__()
        self.net = build()


class Detached(_Wrapped):
    """Non-differentiable preprocessing: no gradient reaches the input."""

    def forward(self, x):
        return self.net(x.detach())


class NoGradForward(_Wrapped):
    def forward(self, x):
        with torch.no_grad():
            return self.net(x)


class ThroughNumpy(_Wrapped):
    """A defence that round-trips its input through numpy, which fails on inputs that require grad."""

    def forward(self, x):
        return self.net(torch.from_numpy(x.numpy()))


class FailsOnBigBatches(_Wrapped):
    """Passes eval's probe (two inputs), then fails on the attacks' batches."""

    def forward(self, x):
        if x.shape[0] > 2:
            raise RuntimeError("only small batches")
        return self.net(x)


class Randomised(nn.Module):
    """A randomised defence whose predictions are mostly its noise, with unseeded initialisation."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))

    def forward(self, x):
        return self.net(x) + 30 * torch.randn(x.shape[0], 10)


instance = build()


def sized(width: int = 4, num_classes: int = 10) -> nn.Module:
    """A factory with arguments, as torchvision's and timm's constructors have."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(width * 64, num_classes))


def mlp() -> nn.Module:
    """No convolution: nothing for a memory format to change."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
