"""Shared fixtures for the pytest-benchmark suites: device, sizes and a synchronising timer."""

import os

import pytest
import torch

DEVICE = torch.device(os.environ.get("ADT_FAST_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
# Full sizes on GPU; smaller ones on a 2-core CPU so the suite stays in minutes.
BATCH_SIZES = (64, 512, 4096) if DEVICE.type == "cuda" else (64, 512)


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def timed(benchmark):
    """benchmark(fn) with a device synchronisation inside the timed callable."""

    def run(fn, rounds=None):
        def call():
            result = fn()
            synchronize()
            return result

        fn()  # warm-up: compilation, autotuning, allocator
        synchronize()
        if rounds is None:
            return benchmark(call)
        return benchmark.pedantic(call, rounds=rounds, warmup_rounds=1)

    return run
