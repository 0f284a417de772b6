"""Factories for `adt-fast eval --model tests_module:factory` in tests/test_cli_eval_model.py."""

import os
import sys

import torch
from torch import nn


def build() -> nn.Module:
    """A plain classifier for the synthetic dataset (3 x 8 x 8, 10 classes), no .features."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


def build_per_process() -> nn.Module:
    """build's network initialised from the process id, as a factory drawing from the clock or
    numpy would be: each rank of a torchrun gets other weights."""
    torch.manual_seed(os.getpid())
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


def wide() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))  # wrong input size for 3 x 8 x 8


def fails() -> nn.Module:
    raise RuntimeError("factory exploded")


def not_a_module():
    return 3


def exits() -> nn.Module:
    """A factory that ends the program, as a script's main code does."""
    sys.exit(0)


class _Wrapped(nn.Module):
    """build()'s network behind a forward that the subclasses change."""

    def __init__(self):
        super().__init__()
        self.net = build()


class NaNLogits(_Wrapped):
    """A network gone wrong: every logit NaN (and, after one step, every weight)."""

    def forward(self, x):
        return self.net(x) * float("nan")


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


class ExitsInForward(_Wrapped):
    def forward(self, x):
        sys.exit(3)


class ExitsOnBigBatches(_Wrapped):
    """Passes the probes (two inputs, one), then calls sys.exit(0) on training's or the attacks' batches."""

    def forward(self, x):
        if x.shape[0] > 2:
            sys.exit(0)
        return self.net(x)


class OutOfMemoryOnBigBatches(_Wrapped):
    """Passes eval's probe (two inputs), then runs out of device memory on the attacks' batches, as
    a large model on a GPU does (torch's own exception, raised here on any device)."""

    def forward(self, x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (stand-in)\n"
                                         "See the documentation for Memory Management")
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


class Pooled(nn.Module):
    """Any image size (global pooling), and a .config of its own, as many models carry."""

    def __init__(self):
        super().__init__()
        self.config = {"num_classes": 1000, "note": "the model's own settings, not adt_fast's"}
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4, 10)

    def forward(self, x):
        return self.linear(self.conv(x).mean(dim=(2, 3)))


class ViewNet(nn.Module):
    """Flattens with .view, which channels_last inputs refuse."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 64, 10)

    def forward(self, x):
        features = self.conv(x)
        return self.linear(features.view(features.size(0), -1))


class Unused(nn.Module):
    """An auxiliary layer the forward never calls."""

    def __init__(self):
        super().__init__()
        self.net = build()
        self.aux = nn.Linear(10, 10)

    def forward(self, x):
        return self.net(x)


class AuxInTraining(_Wrapped):
    """(logits, aux) in train mode, as torchvision's GoogLeNet with aux_logits."""

    def forward(self, x):
        logits = self.net(x)
        return (logits, logits) if self.training else logits


class NoParameters(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


def frozen() -> nn.Module:
    model = build()
    model.requires_grad_(False)
    return model


class FailsOnOne(_Wrapped):
    """Fails on a batch of one example."""

    def forward(self, x):
        if x.shape[0] == 1:
            raise RuntimeError("needs two examples")
        return self.net(x)


class ValueErrorOnBigBatches(_Wrapped):
    def forward(self, x):
        if x.shape[0] > 2:
            raise ValueError("only small batches")
        return self.net(x)


_CACHED = build()


def cached() -> nn.Module:
    """A factory that hands out one object on every call."""
    return _CACHED


class BatchMean(_Wrapped):
    """Averages over the batch: one row of logits for any number of inputs."""

    def forward(self, x):
        return self.net(x).mean(0, keepdim=True)


class FewerClassesOnData(_Wrapped):
    """Passes the command's probe (two zero inputs), then returns 5 logits for the data."""

    def forward(self, x):
        logits = self.net(x)
        return logits if bool((x == 0).all()) else logits[:, :5]


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no backward here")


class FailsInBackward(_Wrapped):
    """Its forward works; its backward, which every attack needs, fails."""

    def forward(self, x):
        return self.net(_NoBackward.apply(x))


class FailsInTrainBackward(_Wrapped):
    """Forward and backward work in eval mode; in train mode the backward fails."""

    def forward(self, x):
        logits = self.net(x)
        return _NoBackward.apply(logits) if self.training else logits


class RefusesChannelsLast(nn.Module):
    """A convolutional network that refuses channels_last inputs with a message of two lines."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(4 * 64, 10)

    def forward(self, x):
        if not x.is_contiguous():
            raise ValueError("takes contiguous inputs only\n(a second line of detail)")
        return self.linear(self.conv(x).flatten(1))


def on_meta() -> nn.Module:
    """A model whose parameters have no data (built on the meta device), so it cannot be moved."""
    with torch.device("meta"):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


def one_logit() -> nn.Module:
    """A binary classifier with a single logit (as trained with BCEWithLogitsLoss)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 1))
