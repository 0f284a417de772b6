"""Backend registry and the one place where a call is routed to a backend.

Each backend states why it cannot serve a call (build missing, device, dtype). `auto` takes the
first backend in the device's priority list that can; an explicit choice that cannot serve raises
with its reason (the pattern of xformers' attention dispatch).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from . import reference

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKEND_ENV = "ADT_FAST_BACKEND"

# CUDA tensors: the CUDA C++ kernels first (launched from C++, the cheaper host path), then
# Triton. This order is a default awaiting GPU measurements; see benchmarks/RESULTS.md.
AUTO_PRIORITY = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


@functools.cache
def _load_extension() -> Optional[str]:
    """Import adt_fast._C (it registers torch.ops.adt_fast_C); returns why it failed, if it did."""
    try:
        importlib.import_module("adt_fast._C")
    except ImportError as err:
        build_log = Path(__file__).resolve().parent.parent / "_C_build_error.txt"
        why = f"; the build said: {build_log.read_text().strip()}" if build_log.is_file() else ""
        return (f"the C++ extension adt_fast._C is not built ({err}){why}; "
                f"run `pip install --no-build-isolation -v -e .`")
    return None


@functools.cache
def _extension_kernel(dispatch_key: str) -> Optional[str]:
    reason = _load_extension()
    if reason is not None:
        return reason
    if not torch._C._dispatch_has_kernel_for_dispatch_key("adt_fast_C::sample_forward", dispatch_key):
        return f"adt_fast._C was built without {dispatch_key} kernels"
    return None


@functools.cache
def _triton_available() -> Optional[str]:
    try:
        importlib.import_module("adt_fast.ops.triton_kernels")
    except ImportError as err:
        return f"triton is not importable ({err})"
    return None


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _extension_forward(*args):
    return torch.ops.adt_fast_C.sample_forward(*args)


def _extension_backward(*args):
    grad_mean, grad_std, grad_x = torch.ops.adt_fast_C.sample_backward(*args)
    return grad_mean, grad_std, (grad_x if args[4] is not None else None)


def _extension_words(*args):
    return torch.ops.adt_fast_C.philox_words(*args)


def _reference_words(seed_offset, numel, num_samples):
    seed, offset = (int(v) for v in seed_offset.tolist())
    return reference.philox_words(seed, offset, numel, num_samples)


def _triton_words(*args):
    from .triton_kernels import philox_words
    return philox_words(*args)


def _triton_forward(*args):
    from .triton_kernels import sample_forward
    return sample_forward(*args)


def _triton_backward(*args):
    from .triton_kernels import sample_backward
    return sample_backward(*args)


@dataclass(frozen=True)
class Backend:
    """A way to run the op. `forward`/`backward` take contiguous tensors (see reference.py);
    `philox_words(seed_offset, numel, num_samples)` returns the raw Philox words, int64 of shape
    (ceil(k/4), numel, 4), for the bit-identity tests."""

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    missing: Callable[[], Optional[str]]
    forward: Callable
    backward: Callable
    philox_words: Callable

    def unavailable_reason(self) -> Optional[str]:
        """Why this backend cannot run at all on this installation, or None."""
        return self.missing()

    def why_not(self, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        """Why this backend cannot serve tensors of this device and dtype, or None."""
        reason = self.unavailable_reason()
        if reason is not None:
            return reason
        if device.type not in self.devices:
            if self.name == "triton" and device.type == "cpu":
                return "triton runs CPU tensors only under TRITON_INTERPRET=1"
            return f"{self.name} does not run on {device.type} tensors"
        if dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"{self.name} supports dtypes {names}, not {str(dtype).replace('torch.', '')}"
        return None


def _triton_devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if _triton_interpreted() else ("cuda",)


BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", ("cpu", "cuda", "meta"), FLOAT_DTYPES, lambda: None,
                         reference.sample_forward, reference.sample_backward, _reference_words),
    "cpu": Backend("cpu", ("cpu",), FLOAT_DTYPES, lambda: _extension_kernel("CPU"),
                   _extension_forward, _extension_backward, _extension_words),
    "cuda": Backend("cuda", ("cuda",), FLOAT_DTYPES, lambda: _extension_kernel("CUDA"),
                    _extension_forward, _extension_backward, _extension_words),
    "triton": Backend("triton", ("cuda",), FLOAT_DTYPES, _triton_available,
                      _triton_forward, _triton_backward, _triton_words),
}


def _backend(name: str) -> Backend:
    backend = BACKENDS[name]
    if name == "triton":  # TRITON_INTERPRET may be set after import
        backend = Backend(**{**backend.__dict__, "devices": _triton_devices()})
    return backend


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: Optional[str]


def backends() -> list[BackendStatus]:
    """Each backend, whether it is usable on this installation, and why not."""
    return [BackendStatus(name, reason is None, reason)
            for name in BACKENDS for reason in [_backend(name).unavailable_reason()]]


def select(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend name that serves this call, or a ValueError/RuntimeError saying why none can."""
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a string, got {type(requested).__name__}")
    if requested == "auto":
        requested = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {requested!r}"
                         f"{' (from $' + BACKEND_ENV + ')' if os.environ.get(BACKEND_ENV) == requested else ''}")
    if requested != "auto":
        reason = _backend(requested).why_not(device, dtype)
        if reason is not None:
            raise RuntimeError(f"backend={requested!r} cannot serve this call: {reason}")
        return requested
    reasons = []
    for name in AUTO_PRIORITY.get(device.type, ("reference",)):
        reason = _backend(name).why_not(device, dtype)
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    raise RuntimeError("no backend can serve this call: " + "; ".join(reasons))


def get(name: str) -> Backend:
    return _backend(name)
