"""One training iteration of every method in every mode users run, with the original code's
ADT_EXP iteration in the same run; and one epoch of every method on digits.

Iterations (batch 64, 3x32x32): on GPU WRN-28-10 (the paper's setting), on CPU small-cnn and
resnet18; modes fp32, fp32 + channels_last, bf16 autocast + channels_last, and `default`: what
`adt-fast train` runs without flags (fp32 in the memory format measured at the start of the run,
train.tuning.time_memory_formats; the choice is in the benchmark's extra_info). The methods run as
`adt-fast train` runs them: ADT_EXP splits its k*B inner batch as measured by `Method.tune`, and
train accuracy costs no extra forward (the loop measures it on one batch in ten). The amortised
generators use Table 7's width 256 on GPU and 32 on CPU. The original code's iteration
(baselines.py) runs in fp32, its only mode, eagerly and with its classifier under torch.compile
(mode `fp32-torch-compile`: what a user of that code gets from one line; the warm-up call
compiles, outside the timed rounds).

Run: pytest benchmarks/test_train_step.py --benchmark-only --benchmark-group-by=param:arch,param:mode
(-k "adt-exp or original" for the decisive rows; -k digits for the epochs).
"""

import pytest
import torch

from adt_fast.models import build_model
from adt_fast.train import TrainConfig, fit
from adt_fast.train.methods import METHODS, Runtime, build_method
from adt_fast.train.tuning import measure_memory_format

from baselines import original_adt_exp_step
from conftest import DEVICE

GPU = DEVICE.type == "cuda"
ARCHS = ("wrn-28-10",) if GPU else ("small-cnn", "resnet18")
GENERATOR_WIDTH = 256 if GPU else 32
MODES = ("default", "fp32", "fp32-channels-last", "bf16-channels-last")
BATCH = 64  # also a test parameter, so every suite can be grouped by param:batch
EPSILON = 8 / 255
# A resnet18 ADT_EXP iteration takes tens of seconds on a 2-core CPU.
CPU_ROUNDS = {"small-cnn": 5, "resnet18": 3}


def make_batch(batch):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.rand((batch, 3, 32, 32), device=DEVICE, generator=g)
    y = torch.randint(0, 10, (batch,), device=DEVICE, generator=g)
    return x, y


def make_model(arch, mode):
    torch.manual_seed(0)
    model = build_model(arch, 10, in_channels=3, image_size=32).to(DEVICE)
    if mode.endswith("channels-last"):
        model = model.to(memory_format=torch.channels_last)
    return model


def rounds(arch):
    return None if GPU else CPU_ROUNDS[arch]


def training_step(method, arch, mode, x, y, info=None):
    """One training step of `method` as `adt-fast train` runs it in `mode` (the `default` mode
    measures the memory format as fit() does), with fit()'s tuning applied. `info` (a dict)
    receives the choices made."""
    settings = {"generator_width": GENERATOR_WIDTH} if method in ("adt-exp-am", "adt-imp-am", "l2l") else {}
    default = mode == "default"
    cfg = TrainConfig(method=method, dataset="cifar10", out="unused", arch=arch, device=str(DEVICE),
                      precision="fp32" if default else mode.split("-")[0],
                      channels_last=mode.endswith("channels-last"), **settings).resolve()
    model = make_model(arch, mode)
    runtime = Runtime(device=DEVICE, precision=cfg.precision, channels_last=cfg.channels_last)
    info = {} if info is None else info
    if default:  # what fit() does before the first epoch: the measured memory format, then the rest
        info["memory_format"] = measure_memory_format(model, x, y, runtime)
        runtime.set_memory_format(model, info["memory_format"]["channels_last"])
    trainer_method = build_method(cfg, model, runtime)
    optimisers = {"model": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **trainer_method.optimisers()}
    info["tuning"] = trainer_method.tune(model, x, y)
    trainer_method.apply_tuning(info["tuning"])
    model.train()
    return lambda: trainer_method.train_step(model, x, y, optimisers)


def original_step(arch, x, y, compiled=False):
    """The original code's ADT_EXP iteration (baselines.py), fp32, its only mode; `compiled`:
    its classifier wrapped in torch.compile (the optimiser steps the same parameters)."""
    model = make_model(arch, "fp32")
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    forward = torch.compile(model) if compiled else model
    return lambda: original_adt_exp_step(forward, optimiser, x, y, epsilon=EPSILON)


@pytest.mark.parametrize("batch", [BATCH])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", list(METHODS))
def test_training_iteration(timed, benchmark, method, arch, mode, batch):
    x, y = make_batch(batch)
    step = training_step(method, arch, mode, x, y, benchmark.extra_info)
    benchmark.extra_info.update(device=str(DEVICE), arch=arch)
    timed(step, rounds=rounds(arch))


@pytest.mark.parametrize("batch", [BATCH])
@pytest.mark.parametrize("mode", ["fp32", "fp32-torch-compile"])
@pytest.mark.parametrize("arch", ARCHS)
def test_original_code_adt_exp_iteration(timed, benchmark, arch, mode, batch):
    x, y = make_batch(batch)
    benchmark.extra_info.update(device=str(DEVICE), arch=arch)
    timed(original_step(arch, x, y, compiled=mode == "fp32-torch-compile"), rounds=rounds(arch))


@pytest.mark.parametrize("batch", [BATCH])
@pytest.mark.parametrize("method", list(METHODS))
def test_digits_epoch(benchmark, tmp_path_factory, monkeypatch, method, batch):
    """Wall clock of `adt-fast train --dataset digits --epochs 1` in the default mode: data, the
    speed measurement, 23 batches, the test pass and the checkpoints, one round."""
    monkeypatch.setenv("ADT_FAST_NO_PROGRESS", "1")

    def run():
        fit(TrainConfig(method=method, dataset="digits", out=str(tmp_path_factory.mktemp("run") / "run"),
                        epochs=1, batch_size=batch, device=str(DEVICE), tensorboard=False))
    benchmark.extra_info.update(device=str(DEVICE), arch="small-cnn")
    benchmark.pedantic(run, rounds=1, iterations=1)
