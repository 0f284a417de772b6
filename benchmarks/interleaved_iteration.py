"""One ADT_EXP iteration in each fp32 mode and the original code's iteration, timed in turns.

pytest-benchmark times one variant after another, so a drift in the machine's speed (a shared
VM) lands on whichever variant ran then. Here every round runs each variant once, in turn, after
one warm-up each, and the medians are compared: a drift hits all of them alike.

    python benchmarks/interleaved_iteration.py --arch small-cnn --rounds 7
"""

import argparse
import statistics
import time

import torch

from adt_fast.train import TrainConfig
from adt_fast.train.methods import Runtime, build_method
from adt_fast.train.tuning import prefers_channels_last, time_memory_formats

from baselines import original_adt_exp_step
from test_train_step import BATCH, DEVICE, EPSILON, make_batch, make_model

MODES = ("default", "fp32", "fp32-channels-last")


def ours(arch, mode, x, y):
    """A step of `adt-fast train --method adt-exp` in `mode` (default: the format measured)."""
    cfg = TrainConfig(method="adt-exp", dataset="cifar10", out="unused", arch=arch, device=str(DEVICE),
                      precision="fp32", channels_last=mode == "fp32-channels-last").resolve()
    model = make_model(arch, "fp32")
    runtime = Runtime(device=DEVICE, precision="fp32")
    if mode == "default":
        seconds = time_memory_formats(model, x, y, runtime)
        runtime.set_memory_format(model, prefers_channels_last(seconds))
    else:
        runtime.set_memory_format(model, cfg.channels_last)
    method = build_method(cfg, model, runtime)
    optimisers = {"model": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **method.optimisers()}
    method.apply_tuning(method.tune(model, x, y))
    model.train()
    return lambda: method.train_step(model, x, y, optimisers)


def original(arch, x, y):
    model = make_model(arch, "fp32")
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return lambda: original_adt_exp_step(model, optimiser, x, y, epsilon=EPSILON)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small-cnn")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    x, y = make_batch(BATCH)
    runs = {mode: ours(args.arch, mode, x, y) for mode in MODES}
    runs["original"] = original(args.arch, x, y)
    for step in runs.values():
        step()
    seconds = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, step in runs.items():
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
    reference = statistics.median(seconds["original"])
    print(f"{args.arch}, B = {BATCH}, {args.rounds} rounds in turns, device {DEVICE}")
    print("| variant | median | ratio to original |\n|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} s | {median / reference:.2f}× |")


if __name__ == "__main__":
    main()
