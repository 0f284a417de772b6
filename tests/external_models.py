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
