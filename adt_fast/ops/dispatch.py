"""Backend registry and the one place where a call is routed to a backend.

Each backend states why it cannot serve a call (build missing, device, dtype). `auto` takes the
first backend in the device's priority list that can; an explicit choice that cannot serve raises
with its reason (the pattern of xformers' attention dispatch).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from . import reference

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKEND_ENV = "ADT_FAST_BACKEND"
CPU_ISA_ENV = "ADT_FAST_CPU_ISA"

# CUDA tensors: the CUDA C++ kernels first, then Triton. Measured on an H200 (benchmarks/RESULTS.md,
# 2026-12-04): CUDA's eager call costs a third of Triton's host time at B = 64, and in CUDA-graph
# replay CUDA is faster from B = 512 up and within 4% at B = 64.
AUTO_PRIORITY = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


@functools.cache
def _load_extension() -> Optional[str]:
    """Import adt_fast._C (it registers torch.ops.adt_fast_C); returns why it failed, if it did."""
    try:
        extension = importlib.import_module("adt_fast._C")
    except ImportError as err:
        build_log = Path(__file__).resolve().parent.parent / "_C_build_error.txt"
        why = f"; the build said: {build_log.read_text().strip()}" if build_log.is_file() else ""
        return (f"the C++ extension adt_fast._C is not built ({err}){why}; "
                f"run `pip install --no-build-isolation -v -e .`")
    _warn_if_cpu_isa_ignored(extension)
    return None


def _warn_if_cpu_isa_ignored(extension) -> None:
    """The C++ side falls back to the best instruction set when $ADT_FAST_CPU_ISA names one it
    cannot use; someone who forced one (to compare speeds, say) must hear that it was not taken."""
    forced, taken = os.environ.get(CPU_ISA_ENV), extension.cpu_isa()
    if forced and forced != taken:
        usable = extension.build_info()["cpu_isas"].replace(",", ", ")
        warnings.warn(f"${CPU_ISA_ENV}={forced!r} is ignored: the CPU kernels can use {usable} on this "
                      f"machine; they use {taken}", RuntimeWarning, stacklevel=3)


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


def draw_seed_offset(device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A fresh (seed, offset) pair from torch's generator for `device`, kept on that device
    (offset below 2**62, so offset + sample never wraps: docs/randomness.md)."""
    return torch.randint(0, 2**62, (2,), dtype=torch.int64, device=device, generator=generator)


def python_seed_offset(mean, noise, seed_offset, generator) -> torch.Tensor:
    """The (seed, offset) a Python-launched backend uses: the given one, zeros under `noise=`
    (nothing random is drawn), else a fresh pair from the generator."""
    if seed_offset is not None:
        return seed_offset
    if noise is not None:
        return torch.zeros(2, dtype=torch.int64, device=mean.device)
    return draw_seed_offset(mean.device, generator)


# Filled all at once, by the first call: compiled autograd traces the eager backward with Dynamo,
# which warns at a functools.cache-wrapped call ("Silent incorrectness is only a *potential* risk").
_EXTENSION_OPS: dict = {}


def _extension_op(name: str):
    """The op's single overload, resolved once (calling the packet resolves it on every call), or
    one of adt_fast._C's eager entries ("sample_forward_eager", "sample_backward_eager"). Loads
    the extension first, so a backend called without select() works too. The dict is filled only
    once everything resolved: a build that lacks one raises the same error each call."""
    if not _EXTENSION_OPS:
        reason = _load_extension()
        if reason is not None:
            raise RuntimeError(reason)
        stale = ("it was built from older sources; rebuild it with `pip install --no-build-isolation -v -e .`")
        ops = {}
        for op in ("sample_forward", "sample_backward", "philox_words"):
            if not hasattr(torch.ops.adt_fast_C, op):
                raise RuntimeError(f"adt_fast._C has no op {op}: {stale}")
            ops[op] = getattr(torch.ops.adt_fast_C, op).default
        extension = sys.modules["adt_fast._C"]
        for entry in ("sample_forward_eager", "sample_backward_eager"):
            if not hasattr(extension, entry):
                raise RuntimeError(f"adt_fast._C has no function {entry}: {stale}")
            ops[entry] = getattr(extension, entry)
        _EXTENSION_OPS.update(ops)
    return _EXTENSION_OPS[name]


def _extension_call(name: str, args: tuple):
    """The op `name` through adt_fast._C's eager entry, which skips torch.ops' parsing and boxed
    dispatch (about 2 us each way at small sizes), or through torch.ops: where the entry answers
    None (modes, subclasses, fake tensors, grad to record: csrc/binding.cpp), and while Dynamo
    traces (compiled autograd traces the eager backward; torch.compile, draw_normals), since it
    can trace the registered op but not a pybind function."""
    if not torch.compiler.is_compiling():
        result = _extension_op(f"{name}_eager")(*args)
        if result is not None:
            return result
    return _extension_op(name)(*args)


def _extension_forward(*args):
    return _extension_call("sample_forward", args)


def _extension_backward(grad_out, grad_nlp, mean, std_param, x, *rest, need_grad_x=True):
    grad_mean, grad_std, grad_x = _extension_call("sample_backward",
                                                  (grad_out, grad_nlp, mean, std_param, x, *rest, need_grad_x))
    return grad_mean, grad_std, (grad_x if x is not None and need_grad_x else None)


def _extension_words(*args):
    return _extension_op("philox_words")(*args)


def _extension_seed(device, generator, num_samples):
    """The pair the extension's forward draws (on CUDA from the generator's Philox state, unlike
    torch.randint), got from a forward over no elements, which draws and reports it alike."""
    empty = torch.empty(0, device=device)
    return _extension_forward(empty, empty, None, None, None, generator, num_samples, 1.0, -math.inf,
                              math.inf)[2]


def _python_seed(device, generator, num_samples):
    return draw_seed_offset(device, generator)


def _seeded(forward: Callable) -> Callable:
    """A Python-launched forward `(mean, std_param, x, noise, seed_offset, k, eps, lo, hi) ->
    (out, nlp)` under the Backend contract: it takes `generator` and returns the seed it used."""
    def call(mean, std_param, x, noise, seed_offset, generator, *settings):
        seed_offset = python_seed_offset(mean, noise, seed_offset, generator)
        return (*forward(mean, std_param, x, noise, seed_offset, *settings), seed_offset)
    return call


def _reference_backward(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, num_samples, *settings,
                        need_grad_x=True):
    # None is a zero gradient: a broadcast zero view, never k x N zeros.
    zero = mean.new_zeros(())
    grad_out = zero.expand(num_samples, *mean.shape) if grad_out is None else grad_out
    grad_nlp = (zero.expand(num_samples, mean.shape[0]) if grad_nlp is None else grad_nlp)
    return reference.sample_backward(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset,
                                     num_samples, *settings, need_grad_x=need_grad_x)


def _reference_words(seed_offset, numel, num_samples):
    seed, offset = (int(v) for v in seed_offset.tolist())
    return reference.philox_words(seed, offset, numel, num_samples)


def _triton_call(name: str) -> Callable:
    """A function of triton_kernels, imported on first use (triton is an optional dependency)."""
    def call(*args, **kwargs):
        from . import triton_kernels
        return getattr(triton_kernels, name)(*args, **kwargs)
    return call


@dataclass(frozen=True)
class Backend:
    """A way to run the op (the contract every backend follows; see docs/kernels.md):

    forward(mean, std_param, x?, noise?, seed_offset?, generator?, k, eps, lo, hi)
        -> (out, neg_log_prob, seed_offset_used); a None seed_offset is drawn from `generator`
        (or torch's default generator of the device), or zeros under `noise=`;
    backward(grad_out?, grad_nlp?, mean, std_param, x?, noise?, seed_offset, k, eps, lo, hi,
             need_grad_x=True)
        -> (grad_mean, grad_std_param, grad_x or None); a None gradient is zero, and grad_out may
        be contiguous, fully expanded (all strides 0) or expanded over k (strides (0, contiguous));
        anything else is made contiguous; grad_nlp (k, B) is read in place whatever its strides;
        grad_x is None without x or need_grad_x, and then never computed or written;
    philox_words(seed_offset, numel, k) -> int64 (k, ceil(numel/4), 4), for the bit-identity tests;
    draw_seed(device, generator, k) -> the (seed, offset) its forward would draw for k samples,
        advancing the generator alike (draw_normals: the op's normals, materialised).
    mean, std_param, x and noise are contiguous."""

    name: str
    devices: Callable[[], tuple[str, ...]]
    dtypes: tuple[torch.dtype, ...]
    missing: Callable[[], Optional[str]]
    forward: Callable
    backward: Callable
    philox_words: Callable
    draw_seed: Callable

    def unavailable_reason(self) -> Optional[str]:
        """Why this backend cannot run at all on this machine and installation, or None."""
        reason = self.missing()
        if reason is None and not self.devices():
            reason = f"no CUDA device here, and {_triton_cpu_reason()}" if self.name == "triton" \
                else "no CUDA device here"
        return reason

    def why_not(self, device: torch.device, dtype: torch.dtype) -> Optional[str]:
        """Why this backend cannot serve tensors of this device and dtype, or None."""
        reason = self.missing()
        if reason is not None:
            return reason
        if device.type not in self.devices():
            if self.name == "triton" and device.type == "cpu":
                return _triton_cpu_reason()
            return f"{self.name} does not run on {device.type} tensors"
        if dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"{self.name} supports dtypes {names}, not {str(dtype).replace('torch.', '')}"
        return None


def _cuda_devices() -> tuple[str, ...]:
    """("cuda",) when this machine has a CUDA device (a CUDA tensor implies one)."""
    return ("cuda",) if torch.cuda.is_available() else ()


def _triton_runs_cpu() -> bool:
    """Under Triton's interpreter only, which triton.jit picks when the kernels are decorated: once
    adt_fast.ops.triton_kernels is imported its mode decides, before that TRITON_INTERPRET (read
    on every call: it may be set after adt_fast is imported, as the test suites do)."""
    kernels = sys.modules.get("adt_fast.ops.triton_kernels")
    return kernels.INTERPRETED if kernels is not None else _triton_interpreted()


def _triton_cpu_reason() -> str:
    if _triton_interpreted():
        return ("TRITON_INTERPRET=1 was set after adt_fast's Triton kernels were imported in compiled mode; "
                "set it before they are imported")
    return "triton runs CPU tensors only under TRITON_INTERPRET=1"


def _triton_devices() -> tuple[str, ...]:
    return _cuda_devices() + (("cpu",) if _triton_runs_cpu() else ())


BACKENDS: dict[str, Backend] = {
    "reference": Backend("reference", lambda: ("cpu", "cuda"), FLOAT_DTYPES, lambda: None,
                         _seeded(reference.sample_forward), _reference_backward, _reference_words, _python_seed),
    "cpu": Backend("cpu", lambda: ("cpu",), FLOAT_DTYPES, lambda: _extension_kernel("CPU"),
                   _extension_forward, _extension_backward, _extension_words, _extension_seed),
    "cuda": Backend("cuda", _cuda_devices, FLOAT_DTYPES, lambda: _extension_kernel("CUDA"),
                    _extension_forward, _extension_backward, _extension_words, _extension_seed),
    "triton": Backend("triton", _triton_devices, FLOAT_DTYPES, _triton_available,
                      _seeded(_triton_call("sample_forward")), _triton_call("sample_backward"),
                      _triton_call("philox_words"), _python_seed),
}


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: Optional[str]


def backends() -> list[BackendStatus]:
    """Each backend, whether it is usable on this machine and installation, and why not."""
    return [BackendStatus(name, reason is None, reason)
            for name, backend in BACKENDS.items() for reason in [backend.unavailable_reason()]]


# (requested, device type, dtype, $ADT_FAST_BACKEND, $TRITON_INTERPRET) -> backend name. The two
# variables are part of the key because they may change after import; whether the extension
# and triton load, and whether CUDA is present, cannot change within a process. A variable that
# cannot change the answer is not read (None in the key): $ADT_FAST_BACKEND counts for "auto"
# only, and $TRITON_INTERPRET for triton on CPU tensors only.
_SELECTED: dict[tuple, str] = {}


def select(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend name that serves this call, or a ValueError/RuntimeError saying why none can.
    Cached, so a call costs a dict lookup and at most two environment reads (errors are not cached)."""
    if not isinstance(requested, str):
        raise TypeError(f"backend must be a string, got {type(requested).__name__}")
    env = os.environ.get(BACKEND_ENV) if requested == "auto" else None
    interpret = (os.environ.get("TRITON_INTERPRET") if device.type == "cpu" and "triton" in (requested, env)
                 else None)
    key = (requested, device.type, dtype, env, interpret)
    name = _SELECTED.get(key)
    if name is None:
        name = _SELECTED[key] = _resolve(requested, device, dtype, env)
    return name


def _resolve(requested: str, device: torch.device, dtype: torch.dtype, env: Optional[str]) -> str:
    if requested == "auto":
        requested = env or "auto"
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {requested!r}"
                         f"{' (from $' + BACKEND_ENV + ')' if env == requested else ''}")
    if requested != "auto":
        reason = BACKENDS[requested].why_not(device, dtype)
        if reason is not None:
            raise RuntimeError(f"backend={requested!r}{' (from $' + BACKEND_ENV + ')' if env == requested else ''} "
                               f"cannot serve this call: {reason}")
        return requested
    reasons = []
    for name in AUTO_PRIORITY.get(device.type, ("reference",)):
        reason = BACKENDS[name].why_not(device, dtype)
        if reason is None:
            if name == "reference" and reasons:  # once per (device type, dtype, ...): select caches
                warnings.warn(f"adt_fast: backend 'auto' runs the sampling op on the pure-PyTorch "
                              f"reference on {device.type} ({dtype}), many times slower than a fused "
                              f"backend, because {'; '.join(reasons)}", RuntimeWarning, stacklevel=4)
            return name
        reasons.append(f"{name}: {reason}")
    raise RuntimeError("no backend can serve this call: " + "; ".join(reasons))


def get(name: str) -> Backend:
    return BACKENDS[name]
