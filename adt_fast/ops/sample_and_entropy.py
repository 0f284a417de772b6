"""`adt_fast.sample_and_entropy`: the public op, its torch.library registration and autograd.

Two launch paths reach the same backend functions:
- under `torch.compile`, two custom ops (`adt_fast::sample_forward`, `adt_fast::sample_backward`)
  with fake implementations, so the op is traced as two opaque nodes without graph breaks; this
  path draws `seed_offset` in Python (a traced tensor op) and passes it explicitly;
- in eager mode, a plain autograd.Function, which skips the custom-op machinery's Python
  overhead (about 60 us a call on the development CPU). It passes no seed: the backend draws
  (seed, offset) from the generator itself (the C++ and CUDA backends with no extra kernel launch)
  and returns the pair it used. Absent gradients stay None and expanded ones stay views: the
  backends read them in place, so nothing of size k x N is materialised for them.
Either way x's gradient is computed only when x requires grad (the trainers' x does not): the
backward then neither accumulates nor writes it.
Either way the backward regenerates the normals from `seed_offset`: nothing of size k x N is
saved between the passes.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from . import dispatch
from . import reference
from .reference import compute_dtype

_BACKEND_NAMES = ("auto", *dispatch.BACKENDS)


@torch.library.custom_op("adt_fast::sample_forward", mutates_args=())
def sample_forward(mean: torch.Tensor, std_param: torch.Tensor, x: Optional[torch.Tensor],
                   noise: Optional[torch.Tensor], seed_offset: torch.Tensor, num_samples: int,
                   epsilon: float, lo: float, hi: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    name = dispatch.select(backend, mean.device, mean.dtype)
    out, nlp, _ = dispatch.get(name).forward(mean, std_param, x, noise, seed_offset, None, num_samples, epsilon,
                                             lo, hi)
    return out, nlp


@sample_forward.register_fake
def _(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend):
    out = mean.new_empty((num_samples, *mean.shape))
    nlp = mean.new_empty((num_samples, mean.shape[0]), dtype=compute_dtype(mean.dtype))
    return out, nlp


@torch.library.custom_op("adt_fast::sample_backward", mutates_args=())
def sample_backward(grad_out: torch.Tensor, grad_nlp: torch.Tensor, mean: torch.Tensor,
                    std_param: torch.Tensor, x: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                    seed_offset: torch.Tensor, num_samples: int, epsilon: float, lo: float, hi: float,
                    backend: str, need_grad_x: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    name = dispatch.select(backend, mean.device, mean.dtype)
    grad_mean, grad_std, grad_x = dispatch.get(name).backward(grad_out, grad_nlp, mean, std_param, x, noise,
                                                              seed_offset, num_samples, epsilon, lo, hi,
                                                              need_grad_x=need_grad_x)
    return grad_mean, grad_std, (mean.new_empty(0) if grad_x is None else grad_x)


@sample_backward.register_fake
def _(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend,
      need_grad_x=True):
    return torch.empty_like(mean), torch.empty_like(std_param), (
        torch.empty_like(x) if x is not None and need_grad_x else mean.new_empty(0))


def _setup_context(ctx, inputs, output):
    mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend = inputs
    ctx.save_for_backward(mean, std_param, x, noise, seed_offset)
    ctx.settings = (num_samples, epsilon, lo, hi, backend)


def _backward(ctx, grad_out, grad_nlp):
    mean, std_param, x, noise, seed_offset = ctx.saved_tensors
    need_grad_x = x is not None and ctx.needs_input_grad[2]
    grad_mean, grad_std, grad_x = sample_backward(grad_out, grad_nlp, mean, std_param, x, noise,
                                                  seed_offset, *ctx.settings, need_grad_x)
    return grad_mean, grad_std, (grad_x if need_grad_x else None), None, None, None, None, None, None, None


sample_forward.register_autograd(_backward, setup_context=_setup_context)


class _EagerSampleAndEntropy(torch.autograd.Function):
    """The eager launch path: the same backend calls as the custom ops, minus their dispatch."""

    @staticmethod
    def forward(ctx, mean, std_param, x, noise, generator, num_samples, epsilon, lo, hi, name):
        out, nlp, seed_offset = dispatch.get(name).forward(mean, std_param, x, noise, None, generator,
                                                           num_samples, epsilon, lo, hi)
        ctx.save_for_backward(mean, std_param, x, noise, seed_offset)
        ctx.settings = (num_samples, epsilon, lo, hi)
        ctx.backend = name
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not k x N zeros
        return out, nlp

    @staticmethod
    @once_differentiable  # the fused backward has no derivative of its own: say so, never return 0
    def backward(ctx, grad_out, grad_nlp):
        if grad_out is None and grad_nlp is None:
            return (None,) * 10
        grad_mean, grad_std, grad_x = dispatch.get(ctx.backend).backward(grad_out, grad_nlp, *ctx.saved_tensors,
                                                                         *ctx.settings,
                                                                         need_grad_x=ctx.needs_input_grad[2])
        return grad_mean, grad_std, grad_x, None, None, None, None, None, None, None


def draw_normals(shape: Sequence[int], num_samples: int, *, rows: Optional[tuple[int, int]] = None,
                 device: torch.device, dtype: torch.dtype = torch.float32,
                 generator: Optional[torch.Generator] = None, backend: str = "auto") -> torch.Tensor:
    """The normals (k, *shape) that one call of the op on a mean of `shape` would draw, materialised.

    The same (seed, offset) draw from the generator and the same Philox mapping as the op's own
    (docs/randomness.md), so ``sample_and_entropy(mean, rho, k, noise=draw_normals(mean.shape, k,
    ...))`` equals the call without `noise` up to float rounding of Box-Muller, and advances the
    generator alike. ``rows=(start, stop)`` keeps only those rows of the batch dimension: a
    data-parallel rank's share of a global batch gets exactly the normals a single process would
    give those examples.
    """
    numel, row = math.prod(shape), math.prod(shape[1:])
    start, stop = (0, shape[0]) if rows is None else rows
    seed_offset = dispatch.draw_seed_offset(device, generator)
    words = dispatch.get(dispatch.select(backend, device, dtype)).philox_words(seed_offset, numel, num_samples)
    # Only the quads that hold rows [start, stop) are turned into normals.
    first, end = start * row, stop * row
    quads = words[:, first // reference.NORMALS_PER_CALL:-(-end // reference.NORMALS_PER_CALL)].to(device)
    normals = reference.normals_from_words(quads, end - first + first % reference.NORMALS_PER_CALL,
                                           compute_dtype(dtype))[:, first % reference.NORMALS_PER_CALL:]
    return normals.reshape(num_samples, stop - start, *shape[1:]).to(dtype)


def _check_tensor(name: str, value, like: Optional[torch.Tensor] = None,
                  shape: Optional[Sequence[int]] = None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dispatch.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
                        f"got {value.dtype}")
    if like is None:
        return
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but mean is on {like.device}")
    if value.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but mean has dtype {like.dtype}")
    expected = tuple(like.shape if shape is None else shape)
    if tuple(value.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")


def _check_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def sample_and_entropy(mean: torch.Tensor, std_param: torch.Tensor, num_samples: int = 1,
                       epsilon: float = 8 / 255, *, x: Optional[torch.Tensor] = None,
                       clamp: Optional[tuple[float, float]] = (0.0, 1.0),
                       noise: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None,
                       backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Draw k perturbations from ADT's tanh-Gaussian and return them with their -log density.

    delta = epsilon * tanh(mean + softplus(std_param) * r) with r ~ N(0, 1), elementwise; mean
    and std_param have shape (B, *S). Returns (delta, neg_log_prob): delta of shape (k, B, *S) in
    the input dtype, or clamp(x + delta, *clamp) when `x` is given; neg_log_prob of shape (k, B),
    the exact -log p(delta) summed over S (float32, or float64 for float64 inputs). Its mean over
    k estimates the entropy. Differentiable w.r.t. mean, std_param and x.

    `noise` (k, B, *S) replaces the generator's normals; `generator` seeds them otherwise.
    `backend` is "auto" (or $ADT_FAST_BACKEND), "reference", "cpu", "cuda" or "triton".
    """
    _check_tensor("mean", mean)
    _check_tensor("std_param", std_param, like=mean)
    if mean.dim() < 1:
        raise ValueError("mean must have a batch dimension: shape (B, *S), got a 0-d tensor")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    epsilon = _check_number("epsilon", epsilon)
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    lo, hi = -math.inf, math.inf
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be None or a pair (lo, hi), got {clamp!r}")
        lo, hi = (_check_number(f"clamp[{i}]", v) for i, v in enumerate(clamp))
        if lo >= hi:
            raise ValueError(f"clamp must have lo < hi, got ({lo}, {hi})")
    if x is not None:
        _check_tensor("x", x, like=mean)
    if noise is not None:
        _check_tensor("noise", noise, like=mean, shape=(num_samples, *mean.shape))
    if backend not in _BACKEND_NAMES:
        raise ValueError(f"backend must be one of {list(_BACKEND_NAMES)}, got {backend!r}")
    if generator is not None and noise is None and generator.device.type != mean.device.type:
        raise ValueError(f"generator is on {generator.device} but mean is on {mean.device}")

    tensors = (mean.contiguous(), std_param.contiguous(), None if x is None else x.contiguous(),
               None if noise is None else noise.contiguous())
    settings = (num_samples, epsilon, lo, hi)
    if torch.compiler.is_compiling():
        seed_offset = dispatch.python_seed_offset(mean, noise, None, generator)
        return sample_forward(*tensors, seed_offset, *settings, backend)
    return _EagerSampleAndEntropy.apply(*tensors, generator, *settings,
                                        dispatch.select(backend, mean.device, mean.dtype))
