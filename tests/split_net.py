"""A tiny classifier with FeaAttack's .features / .head split, and a batch for it, shared by the
fuzz findings of the attack API and of evaluate (tests/test_*_fuzz_findings.py)."""

from __future__ import annotations

import torch
from torch import nn


class SplitNet(nn.Module):
    """Conv, ReLU (with BatchNorm between them if asked), then a linear head: 10 logits of 3 x 4 x 4
    inputs; the same weights every time it is built."""

    def __init__(self, batchnorm: bool = False):
        super().__init__()
        torch.manual_seed(0)
        norm = [nn.BatchNorm2d(4)] if batchnorm else []
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *norm, nn.ReLU())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 10))

    def features(self, x):
        return self.body(x)

    def head(self, features):
        return self.fc(features)

    def forward(self, x):
        return self.head(self.features(x))


def split_data(n: int = 6):
    """n inputs in [0, 1) and labels 0, 1, ..., the same every time."""
    x = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return x, torch.arange(n) % 10
