"""One training iteration of every method, and the original code's ADT_EXP iteration.

GPU: WRN-28-10, batch 64, 3x32x32 (the paper's setting), in fp32 and in bf16 autocast +
channels_last. CPU: small-cnn, batch 64, 3x32x32, fp32 (a smoke-scale suite for a 2-core box),
with the amortised generators at width 32 instead of 256.
Run: pytest benchmarks/test_train_step.py --benchmark-only --benchmark-group-by=param:mode
"""

import pytest
import torch

from adt_fast.models import build_model
from adt_fast.train import TrainConfig
from adt_fast.train.methods import METHODS, Runtime, build_method

from baselines import original_adt_exp_step
from conftest import DEVICE

GPU = DEVICE.type == "cuda"
ARCH = "wrn-28-10" if GPU else "small-cnn"
GENERATOR_WIDTH = 256 if GPU else 32
MODES = ("fp32", "bf16-channels-last") if GPU else ("fp32",)
BATCH = 64  # also a test parameter, so every suite can be grouped by param:batch
EPSILON = 8 / 255


def make_batch(batch):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.rand((batch, 3, 32, 32), device=DEVICE, generator=g)
    y = torch.randint(0, 10, (batch,), device=DEVICE, generator=g)
    return x, y


def make_model(mode):
    torch.manual_seed(0)
    model = build_model(ARCH, 10, in_channels=3, image_size=32).to(DEVICE)
    if mode == "bf16-channels-last":
        model = model.to(memory_format=torch.channels_last)
    return model


@pytest.mark.parametrize("batch", [BATCH])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", list(METHODS))
def test_training_iteration(timed, benchmark, method, mode, batch):
    settings = {"generator_width": GENERATOR_WIDTH} if method in ("adt-exp-am", "adt-imp-am", "l2l") else {}
    cfg = TrainConfig(method=method, dataset="cifar10", out="unused", arch=ARCH, device=str(DEVICE),
                      precision="bf16" if mode != "fp32" else "fp32",
                      channels_last=mode != "fp32", **settings).resolve()
    model = make_model(mode)
    runtime = Runtime(device=DEVICE, precision=cfg.precision, channels_last=cfg.channels_last)
    trainer_method = build_method(cfg, model, runtime)
    optimisers = {"model": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **trainer_method.optimisers()}
    x, y = make_batch(batch)
    model.train()
    benchmark.extra_info.update(device=str(DEVICE), arch=ARCH)
    timed(lambda: trainer_method.train_step(model, x, y, optimisers), rounds=None if GPU else 5)


@pytest.mark.parametrize("batch", [BATCH])
@pytest.mark.parametrize("mode", ["fp32"])
def test_original_code_adt_exp_iteration(timed, benchmark, mode, batch):
    model = make_model(mode)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = make_batch(batch)
    benchmark.extra_info.update(device=str(DEVICE), arch=ARCH)
    timed(lambda: original_adt_exp_step(model, optimiser, x, y, epsilon=EPSILON), rounds=None if GPU else 5)
