"""Running a model in train or eval mode for a while, each module's own mode put back afterwards
(a submodule kept in eval mode inside a training model stays so). Shared by the attacks, which
freeze BatchNorm, and the probes of models built by your own code."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def module_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    flags = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag
