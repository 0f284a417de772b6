"""Data-parallel training: one DDP around a method's whole training step.

The classifier and the method's own networks (generator, q-network) sit in one module whose
forward is ``method.step``: the inner problem (PGD, the distribution fit, the generator's inputs)
runs on the bare networks inside it, and the one backward of the step's objective, gradient
reversal included, is what DDP all-reduces, for every network at once. Each rank trains on its
contiguous share of the global batch; its objective is weighted by its share
(``BatchShard.weight``), so DDP's average over ranks is the gradient of the global batch's mean,
also when the last batch of an epoch does not split evenly.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import BatchShard, World
from .methods import Method, StepOutput


class _StepModule(nn.Module):
    """The classifier and the method's networks, registered together; forward = the method's step."""

    def __init__(self, method: Method, model: nn.Module):
        super().__init__()
        self.model = model
        self.networks = nn.ModuleDict(method.modules())
        self.method = method
        self.weight = 1.0
        self.output: Optional[StepOutput] = None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.method.step(self.model, x, y)
        objective = out.loss if out.objective is None else out.objective
        if self.weight != 1.0:
            objective = objective * self.weight
        self.output = dataclasses.replace(out, objective=objective)
        return objective


class DataParallel:
    """DDP over the method's step, and the split of each global batch into this rank's share."""

    def __init__(self, method: Method, model: nn.Module, world: World, device: torch.device,
                 find_unused_parameters: bool = False):
        self.method, self.world = method, world
        self.module = DistributedDataParallel(
            _StepModule(method, model), device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)

    def split(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of a global batch; the step's random numbers follow the same split."""
        shard = BatchShard.of(len(y), self.world)
        self.method.runtime.shard = shard
        self.module.module.weight = shard.weight
        return shard.rows(x), shard.rows(y)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """For ``Method.train_step(step=...)``: the DDP forward, whose backward all-reduces."""
        self.module(x, y)
        return self.module.module.output
