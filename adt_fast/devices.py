"""Devices: the one place a device name is checked (a device problem is reported as a device
problem), what a device can do natively, and how long something takes on it."""

from __future__ import annotations

import time
from typing import Callable, Hashable, Mapping, Optional, Union

import torch

SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")


class DeviceError(ValueError):
    """A device that does not exist, is not supported, or is not present on this machine."""


def resolve_device(device: Union[None, str, torch.device]) -> torch.device:
    """`auto` (or None) -> cuda when available, else cpu; anything else checked against this machine."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"{device!r} is not a torch device (try cpu, cuda or cuda:0)") from None
    if parsed.type not in SUPPORTED_DEVICE_TYPES:
        raise DeviceError(f"device {device}: only {' and '.join(SUPPORTED_DEVICE_TYPES)} "
                          f"devices are supported")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device}: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s)")
    return parsed


# oneDNN's own test for bf16 in hardware (AVX-512 BF16 or AMX); named in the warning users see.
CPU_BF16_CHECK = "torch.ops.mkldnn._is_mkldnn_bf16_supported()"


def has_native_bf16(device: Union[str, torch.device]) -> bool:
    """Whether bfloat16 convolutions and matrix products run in hardware on `device`: on CPU
    oneDNN's check (AVX-512 BF16 or AMX), on CUDA compute capability 8.0 (Ampere) or later.
    Without it torch emulates bf16 in float32 arithmetic, slower than fp32 itself."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


BF16_EMULATED = "bf16 is emulated on"  # how bf16_emulation_warning's messages begin


def bf16_emulation_warning(device: Union[str, torch.device]) -> Optional[str]:
    """What to tell a user who asked for bf16 on `device` where it is emulated; None where it is native."""
    device = torch.device(device)
    if has_native_bf16(device):
        return None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return (f"{BF16_EMULATED} {torch.cuda.get_device_name(device)} (compute capability "
                f"{major}.{minor}, native bf16 needs 8.0 or later) and runs slower than fp32; "
                f"use --precision fp32 on this GPU")
    return (f"{BF16_EMULATED} this CPU ({CPU_BF16_CHECK} is False: no AVX-512 BF16 or AMX) "
            f"and runs many times slower than fp32 (16x for an ADT_EXP iteration in our measurement); "
            f"use --precision fp32 on this machine")


# How torch's CPU allocator starts its refusal of an allocation (a RuntimeError: only a GPU's is a
# torch.OutOfMemoryError), after a prefix naming its C++ source line; the words after it differ
# by system: "can't allocate memory" (POSIX), "not enough memory" (Windows).
CPU_ALLOCATOR = "DefaultCPUAllocator: "


def is_out_of_memory(err: BaseException) -> bool:
    """Whether torch ran out of memory: a GPU's torch.OutOfMemoryError, or the CPU allocator's
    refusal, which a batch too large for the machine meets on CPU alike."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and CPU_ALLOCATOR in text and "memory" in text.split(CPU_ALLOCATOR, 1)[1]


def out_of_memory_text(err: BaseException) -> str:
    """The first line of torch's out-of-memory message (what it tried to allocate), from the CPU
    allocator's own words on; the rest is a paragraph on the allocator that a one-line error has
    no room for."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first[max(first.find(CPU_ALLOCATOR), 0):]


def seconds_in_turns(runs: Mapping[Hashable, Callable[[], object]], device: Union[str, torch.device],
                     rounds: int, warmed_up: bool = False) -> dict:
    """Seconds of `rounds` timed calls of each of `runs`, by key. Every run is called once untimed
    first (kernels, allocator; not again when the caller has, `warmed_up`), then the runs take
    turns, round after round, so a change in the machine's load or speed falls on all of them
    alike; CUDA work is waited for before the clock is read."""
    device = torch.device(device)

    def timed(run) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for run in () if warmed_up else runs.values():
        run()
    seconds = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            seconds[key].append(timed(run))
    return seconds


def best_seconds(runs: Mapping[Hashable, Callable[[], object]], device: Union[str, torch.device],
                 repeats: int = 2, warmed_up: bool = False) -> dict:
    """The fastest of `repeats` calls of each of `runs` taken in turns (seconds_in_turns), by key."""
    return {key: min(values) for key, values in seconds_in_turns(runs, device, repeats, warmed_up).items()}
