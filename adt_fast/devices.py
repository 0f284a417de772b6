"""The one place a device name is checked: a device problem is reported as a device problem."""

from __future__ import annotations

from typing import Union

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
