"""`adt_fast.sample_and_entropy`: the public op, its torch.library registration and autograd.

Two launch paths reach the same backend functions:
- under `torch.compile`, and inside an eager torch.func transform (grad, vjp, jacrev, vmap), two
  custom ops (`adt_fast::sample_forward`, `adt_fast::sample_backward`) with fake implementations
  and vmap rules, so the op is traced as two opaque nodes without graph breaks (meta tensors take
  this path too: the fake implementations give their shapes). An autograd Function in
  setup_context style wraps them (`_TransformableSampleAndEntropy`): torch.func takes no other
  kind, and the custom ops' own generated one is not (under functionalize, which takes no
  autograd Function, and no grad-like transform, the custom op is called directly, with its own
  autograd for a plain backward). The backward's k x N incoming gradients are
  materialised here (zeros for an unused output). This path draws
  `seed_offset` in Python with torch.randint (a traced tensor op) and passes it explicitly. On
  the CPU that is the draw the eager path makes; on CUDA it is not (the eager cuda backend takes
  the generator's Philox state, as torch's dropout does), so there eager and compiled runs of one
  seed see different samples, each run reproducible;
- in eager mode, a plain autograd.Function, which skips the custom-op machinery's Python
  overhead (about 60 us a call on the development CPU), and whose cpu and cuda backends reach the
  kernels through adt_fast._C's eager entries, not torch.ops (docs/kernels.md). It passes no
  seed: the backend draws (seed, offset) from the generator itself (the C++ and CUDA backends with
  no extra kernel launch)
  and returns the pair it used. Absent gradients stay None and expanded ones stay views: the
  backends read them in place, so nothing of size k x N is materialised for them.
Either path computes x's gradient only when x requires grad (the trainers' x does not): the
backward then neither accumulates nor writes it.
Either path's backward regenerates the normals from `seed_offset`: nothing of size k x N is
saved between the passes. Neither has a forward-mode derivative: a tangent that reaches the op is
refused (torch's custom ops would drop it, and give zero tangents under torch.compile).
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from typing import Optional, Sequence

import torch
from torch._C._functorch import TransformType

from . import dispatch
from . import reference
from .reference import compute_dtype

_BACKEND_NAMES = ("auto", *dispatch.BACKENDS)
_NO_SECOND_DERIVATIVE = ("adt_fast.sample_and_entropy has no second derivative: its fused backward is "
                         "first-order only")
_NO_FORWARD_MODE = ("adt_fast.sample_and_entropy has no forward-mode derivative (torch.autograd.forward_ad, "
                    "torch.func.jvp, jacfwd, hessian): differentiate it in reverse mode (backward, torch.func.grad, "
                    "vjp, jacrev)")


def _refuse_tangents(*tensors) -> None:
    """Forward-mode AD is not implemented. torch's custom ops look at requires_grad only, so a
    tangent reaching them was dropped: zero or no tangents came out, with no error."""
    if torch.autograd.forward_ad._current_level >= 0 and any(
            t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise RuntimeError(_NO_FORWARD_MODE)


@torch.compiler.disable  # raised eagerly (disable() takes a reason= only from torch 2.8)
def _refuse_forward_ad_compiled() -> None:
    """Under torch.compile, within a forward-AD level: Dynamo cannot tell which inputs carry
    tangents (unpack_dual fails on its fake tensors). Raised eagerly: raised while tracing inside
    torch.func.jvp, the graph break sent dual tensors into a compiled frame and an internal assert
    of torch's."""
    raise RuntimeError(f"{_NO_FORWARD_MODE}; under torch.compile it refuses any forward-AD level")


def _functionalize_without_differentiation() -> bool:
    """Inside an eager torch.func.functionalize and no grad-like transform: torch has no
    functionalize rule for autograd Functions ("NYI: Functionalize rule for custom_function_call"),
    and none is needed there; the custom op, with its own autograd for plain backward, serves.
    With a grad-like transform too, torch.func needs an autograd Function: refused, naming the op."""
    kinds = {level.key() for level in torch._C._functorch.get_interpreter_stack() or ()}
    if TransformType.Functionalize not in kinds:
        return False
    if kinds & {TransformType.Grad, TransformType.Jvp}:
        raise RuntimeError("adt_fast.sample_and_entropy does not run under torch.func.functionalize composed "
                           "with grad, vjp or jacrev (torch has no functionalize rule for the autograd Function "
                           "they need): functionalize alone, or differentiate without functionalize")
    return True


def _check_op_arguments(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, grads=()) -> None:
    """The custom ops' own checks, in their real and fake implementations alike: called directly
    (torch.ops.adt_fast.*), one meta tensor among CPU ones sends a call to the fake, whose outputs
    are never written, and the Python-launched backends would take any seed_offset, count or
    epsilon they are given."""
    _check_num_samples(num_samples)
    if not lo < hi:
        raise ValueError(f"the clamp bounds must satisfy lo < hi, got lo={lo} hi={hi}")
    _check_mean(mean)
    _check_output_size(mean, num_samples)
    _check_epsilon(epsilon, mean.dtype)
    _check_tensor("std_param", std_param, like=mean)
    if x is not None:
        _check_tensor("x", x, like=mean)
    if noise is not None:
        _check_tensor("noise", noise, like=mean, shape=(num_samples, *mean.shape))
    # The incoming gradients: the backends read them in any floating dtype, as autograd gives them.
    shapes = {"grad_out": (num_samples, *mean.shape), "grad_nlp": (num_samples, mean.shape[0])}
    for name, grad in grads:
        if grad is not None:
            _check_tensor(name, grad, device=mean.device, shape=shapes[name])
    if seed_offset.dtype != torch.int64 or tuple(seed_offset.shape) != (2,) or seed_offset.device != mean.device:
        raise ValueError(f"seed_offset must be an int64 tensor of 2 values (seed, offset) on mean's device "
                         f"{mean.device}, got {seed_offset.dtype} of shape {tuple(seed_offset.shape)} on "
                         f"{seed_offset.device}")


@torch.library.custom_op("adt_fast::sample_forward", mutates_args=())
def sample_forward(mean: torch.Tensor, std_param: torch.Tensor, x: Optional[torch.Tensor],
                   noise: Optional[torch.Tensor], seed_offset: torch.Tensor, num_samples: int,
                   epsilon: float, lo: float, hi: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_op_arguments(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi)
    _refuse_tangents(mean, std_param, x, noise)  # called directly, or by a compiled graph given dual tensors
    name = dispatch.select(backend, mean.device, mean.dtype)
    out, nlp, _ = dispatch.get(name).forward(mean, std_param, x, noise, seed_offset, None, num_samples, epsilon,
                                             lo, hi)
    return out, nlp


@sample_forward.register_fake
def _(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend):
    _check_op_arguments(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi)
    out = mean.new_empty((num_samples, *mean.shape))
    nlp = mean.new_empty((num_samples, mean.shape[0]), dtype=compute_dtype(mean.dtype))
    return out, nlp


@torch.library.custom_op("adt_fast::sample_backward", mutates_args=())
def sample_backward(grad_out: torch.Tensor, grad_nlp: torch.Tensor, mean: torch.Tensor,
                    std_param: torch.Tensor, x: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                    seed_offset: torch.Tensor, num_samples: int, epsilon: float, lo: float, hi: float,
                    backend: str, need_grad_x: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_op_arguments(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi,
                        grads=(("grad_out", grad_out), ("grad_nlp", grad_nlp)))
    name = dispatch.select(backend, mean.device, mean.dtype)
    grad_mean, grad_std, grad_x = dispatch.get(name).backward(grad_out, grad_nlp, mean, std_param, x, noise,
                                                              seed_offset, num_samples, epsilon, lo, hi,
                                                              need_grad_x=need_grad_x)
    # Contiguous whatever the backend (the reference's autograd keeps an input's layout), as the fake says.
    return grad_mean.contiguous(), grad_std.contiguous(), (mean.new_empty(0) if grad_x is None
                                                           else grad_x.contiguous())


@sample_backward.register_fake
def _(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend,
      need_grad_x=True):
    _check_op_arguments(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi,
                        grads=(("grad_out", grad_out), ("grad_nlp", grad_nlp)))
    # Contiguous, as the real op returns them (empty_like would keep a channels_last input's strides).
    return mean.new_empty(mean.shape), std_param.new_empty(std_param.shape), (
        mean.new_empty(x.shape) if x is not None and need_grad_x else mean.new_empty(0))


def _setup_context(ctx, inputs, output):
    mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend = inputs
    ctx.save_for_backward(mean, std_param, x, noise, seed_offset)
    ctx.settings = (num_samples, epsilon, lo, hi, backend)


def _backward_through(run_backward):
    """The backward of (mean, std_param, x, ...) whose fused gradients come from `run_backward`,
    called as sample_backward is."""
    def backward(ctx, grad_out, grad_nlp):
        mean, std_param, x, noise, seed_offset = ctx.saved_tensors
        need_grad_x = x is not None and ctx.needs_input_grad[2]
        grad_mean, grad_std, grad_x = run_backward(grad_out, grad_nlp, mean, std_param, x, noise,
                                                   seed_offset, *ctx.settings, need_grad_x)
        return grad_mean, grad_std, (grad_x if need_grad_x else None), None, None, None, None, None, None, None
    return backward


sample_forward.register_autograd(_backward_through(sample_backward), setup_context=_setup_context)


def _no_second_derivative(ctx, *grads):
    """sample_backward's own backward (the custom ops called directly, or under functionalize),
    which torch would refuse naming no reason."""
    raise RuntimeError(_NO_SECOND_DERIVATIVE)


sample_backward.register_autograd(_no_second_derivative)


def _vmap_slice_by_slice(op):
    """A vmap rule that runs `op` once per slice of the vmapped dimension and stacks the results.
    Each slice keeps its own (seed, offset): torch.randint under vmap gives one per slice with
    randomness="different" and one for all with "same", so every slice sees the normals a call
    on it alone would. (Folding the slices into the batch dimension would give "same" different
    normals per slice: they depend on the element's index.)"""
    def rule(info, in_dims, *args):
        if info.batch_size == 0:  # no slice to run: the fake kernel gives one slice's outputs
            device = next(a.device for a in args if isinstance(a, torch.Tensor))
            one = op(*(_meta_slice(a, d) for a, d in zip(args, in_dims)))
            outputs = tuple(torch.empty((0, *o.shape), dtype=o.dtype, device=device) for o in one)
        else:
            slices = [op(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims)))
                      for i in range(info.batch_size)]
            outputs = tuple(torch.stack(parts) for parts in zip(*slices))
        return outputs, (0,) * len(outputs)
    return rule


def _meta_slice(arg, dim):
    """A meta tensor shaped as one slice of `arg` along `dim` (None: `arg` itself); other values as they are."""
    if not isinstance(arg, torch.Tensor):
        return arg
    shape = arg.shape if dim is None else arg.shape[:dim] + arg.shape[dim + 1:]
    return torch.empty(shape, dtype=arg.dtype, device="meta")


sample_forward.register_vmap(_vmap_slice_by_slice(sample_forward))
sample_backward.register_vmap(_vmap_slice_by_slice(sample_backward))


class _TransformableBackward(torch.autograd.Function):
    """sample_backward as the custom ops' path runs it (jacrev vmaps the backward); a second
    derivative raises rather than counting the fused gradients as constants."""

    @staticmethod
    def forward(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend,
                need_grad_x):
        return sample_backward(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, num_samples, epsilon,
                               lo, hi, backend, need_grad_x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_SECOND_DERIVATIVE)

    generate_vmap_rule = True


class _TransformableSampleAndEntropy(torch.autograd.Function):
    """The custom ops' launch path (torch.compile, meta tensors, eager torch.func transforms), in
    the setup_context style torch.func needs; the custom ops inside give vmap its rules. The
    methods are plain staticmethods so that Dynamo traces them."""

    @staticmethod
    def forward(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend):
        return sample_forward(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_out, grad_nlp):
        return _transformable_backward(ctx, grad_out, grad_nlp)

    generate_vmap_rule = True


_transformable_backward = _backward_through(_TransformableBackward.apply)


class _FirstOrderOnly(torch.autograd.Function):
    """The fused backward's gradients, passed through; differentiating them raises. They depend on
    the op's inputs and on the incoming gradients through arithmetic autograd never saw, so
    `anchors` (those that require grad) are inputs here: any second derivative reaches this node.
    (torch's once_differentiable wraps only when an incoming gradient requires grad: with
    nlp.sum() a second derivative would silently miss the op's term.)"""

    @staticmethod
    def forward(ctx, count, *tensors_and_anchors):
        return tuple(None if t is None else t.clone() for t in tensors_and_anchors[:count])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_SECOND_DERIVATIVE)


def _first_order_only(backward):
    """Runs `backward` without building a graph; under create_graph=True its gradients come back
    through _FirstOrderOnly, anchored to everything they depend on that requires grad."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if not torch.is_grad_enabled():  # a plain backward: no graph to keep out of
            return backward(ctx, *grads)
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        anchors = [t for t in (*grads, *ctx.saved_tensors) if t is not None and t.requires_grad]
        return _FirstOrderOnly.apply(len(outputs), *outputs, *anchors)
    return wrapper


class _EagerSampleAndEntropy(torch.autograd.Function):
    """The eager launch path: the same backend calls as the custom ops, minus their dispatch."""

    @staticmethod
    def forward(ctx, mean, std_param, call, *x_noise):
        """`call`: (generator, settings, backend name) in one argument, and `x_noise` as short as
        the call allows ((), (x,) or (x, noise)), since autograd and functorch go over every
        argument of each apply (RESULTS.md, the host cost of one eager call). The backward's
        trailing None gradients for absent arguments are dropped by autograd."""
        generator, settings, name = call
        x, noise = (*x_noise, None, None)[:2]
        backend = dispatch.get(name)
        out, nlp, seed_offset = backend.forward(mean, std_param, x, noise, None, generator, *settings)
        ctx.save_for_backward(mean, std_param, x, noise, seed_offset)
        ctx.call = (backend.backward, settings, x is not None and ctx.needs_input_grad[3])
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not k x N zeros
        return out, nlp

    @staticmethod
    @_first_order_only  # the fused backward has no derivative of its own: say so, never return 0
    def backward(ctx, grad_out, grad_nlp):
        if grad_out is None and grad_nlp is None:
            return (None,) * 5
        backward, settings, need_grad_x = ctx.call
        grad_mean, grad_std, grad_x = backward(grad_out, grad_nlp, *ctx.saved_tensors, *settings,
                                               need_grad_x=need_grad_x)
        return grad_mean, grad_std, None, grad_x, None


def draw_normals(shape: Sequence[int], num_samples: int, *, rows: Optional[tuple[int, int]] = None,
                 device: torch.device, dtype: torch.dtype = torch.float32,
                 generator: Optional[torch.Generator] = None, backend: str = "auto") -> torch.Tensor:
    """The normals (k, *shape) that one call of the op on a mean of `shape` would draw, materialised.

    The (seed, offset) that backend's own eager forward would draw from the generator (on CUDA,
    the cuda backend's is not torch.randint's) and the same Philox mapping (docs/randomness.md), so ``sample_and_entropy(mean, rho, k, noise=draw_normals(mean.shape, k,
    ...))`` equals the call without `noise` up to float rounding of Box-Muller, and advances the
    generator alike. ``rows=(start, stop)`` keeps only those rows of the batch dimension: a
    data-parallel rank's share of a global batch gets exactly the normals a single process would
    give those examples.
    """
    shape = _check_shape(shape)
    num_samples = _check_num_samples(num_samples)
    if dtype not in dispatch.FLOAT_DTYPES:
        raise TypeError(f"dtype must be torch.float16, torch.bfloat16, torch.float32 or torch.float64, got {dtype!r}")
    device = torch.device(device)
    _check_generator(generator, device, f"device is {device}")
    numel, row = math.prod(shape), math.prod(shape[1:])
    if rows is not None and not (isinstance(rows, (tuple, list)) and len(rows) == 2
                                 and all(_is_int(v) for v in rows)):
        raise TypeError(f"rows must be a pair of ints (start, stop), got {rows!r}")
    start, stop = (0, shape[0]) if rows is None else (operator.index(v) for v in rows)
    if rows is not None and not 0 <= start < stop <= shape[0]:
        raise ValueError(f"rows must be (start, stop) with 0 <= start < stop <= {shape[0]} (the batch of "
                         f"shape {tuple(shape)}), got {rows}")
    chosen = dispatch.get(dispatch.select(backend, device, dtype))
    seed_offset = chosen.draw_seed(device, generator, num_samples)
    words = chosen.philox_words(seed_offset, numel, num_samples)
    # Only the quads that hold rows [start, stop) are turned into normals.
    first, end = start * row, stop * row
    quads = words[:, first // reference.NORMALS_PER_CALL:-(-end // reference.NORMALS_PER_CALL)].to(device)
    normals = reference.normals_from_words(quads, end - first + first % reference.NORMALS_PER_CALL,
                                           compute_dtype(dtype))[:, first % reference.NORMALS_PER_CALL:]
    return normals.reshape(num_samples, stop - start, *shape[1:]).to(dtype)


def _check_tensor(name: str, value, like: Optional[torch.Tensor] = None,
                  shape: Optional[Sequence[int]] = None, device: Optional[torch.device] = None) -> None:
    """A floating tensor; with `like` (mean), on its device, of its dtype and shape (or `shape`);
    with `device` alone, on that device and of `shape`, in any floating dtype."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_nested or value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got a {'nested' if value.is_nested else value.layout} "
                        f"one (convert it with .to_dense() or torch.stack)")
    if value.dtype not in dispatch.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
                        f"got {value.dtype}")
    if like is None and device is None:
        return
    device = like.device if device is None else device
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but mean is on {device}")
    if like is not None and value.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but mean has dtype {like.dtype}")
    expected = like.shape if shape is None else shape
    if value.shape != expected:  # (torch.Size is a tuple: no conversion on the common path)
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(value.shape)}")


def _check_generator(generator, device: torch.device, where: str, *, draws: bool = True) -> None:
    """None, or a torch.Generator that can draw for `device` (`where` says whose device it is, for
    the message). Its device type must be the tensors' (torch's random ops refuse another one: "Expected a
    'cuda' device type for generator"), checked here, before any backend, so that every backend
    and launch path refuses it alike, naming `generator`, instead of failing inside one. Not when
    the call `draws` nothing: under noise= the generator is not used, and meta tensors draw
    nothing (torch's random ops take any generator for them, and torch makes no meta one, so
    shape-tracing code keeps its generator=). Like torch, a generator of another index of the same
    device type is taken."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if draws and device.type != "meta" and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but {where}: pass a generator of that device type, "
                         f"torch.Generator(device={device.type!r})")


@torch.compiler.disable  # asks autograd whether a backward pass runs; compiled regions are recomputed too
def _check_not_recomputed_with_generator() -> None:
    """Any call with `generator=` while autograd runs a backward pass (checkpoint's recomputation,
    a custom autograd.Function's backward, a tensor hook) is refused: checkpoint restores only the
    default generators, so `generator` has moved on, and the recomputation would draw other
    samples than the forward returned, giving the gradients of those, silently. The other calls
    cannot be told from a recomputation (a no_grad draw inside a checkpointed region is one)."""
    if torch._C._current_graph_task_id() != -1:
        raise RuntimeError("sample_and_entropy refuses generator= in any call during a backward pass (a "
                           "torch.utils.checkpoint recomputation, an autograd.Function's backward, a hook): a "
                           "recomputation would draw other samples than the forward did, as checkpoint restores "
                           "only the default generator, and the op cannot tell it from other calls; pass noise= "
                           "or use torch's default generator")


def _is_int(value) -> bool:
    """An integer (numpy's and 0-d integer tensors' too), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex() \
            and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_num_samples(num_samples) -> int:
    """An int in [1, 2**63) (not a bool, a float or a tensor: the op's sample count is a Python number).
    A torch.SymInt (torch.compile's dynamic k, which Dynamo calls an int) stays one: operator.index
    would specialise it, a recompilation for every k."""
    if type(num_samples) is not int:  # (the common case skips the abstract-class checks)
        if isinstance(num_samples, bool) or not isinstance(num_samples, (numbers.Integral, torch.SymInt)):
            raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
        if not isinstance(num_samples, torch.SymInt):
            num_samples = operator.index(num_samples)
    if not 1 <= num_samples < 2**63:
        raise ValueError(f"num_samples must be >= 1 and < 2**63, got {num_samples}")
    return num_samples


def _check_shape(shape) -> tuple[int, ...]:
    """draw_normals' shape, (B, *S) as the op's mean has it, as a tuple of ints (torch.Size, numpy
    or 0-d tensor sizes too); else the binding's errors name its numel, not the shape."""
    try:
        sizes = tuple(shape)
    except TypeError:
        sizes = None
    if sizes is None or not all(_is_int(size) for size in sizes):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}")
    sizes = tuple(operator.index(size) for size in sizes)
    if not sizes:
        raise ValueError("shape must have a batch dimension (B, *S), got ()")
    if min(sizes) < 0:
        raise ValueError(f"shape must hold sizes >= 0, got {sizes}")
    return sizes


def _check_mean(mean) -> None:
    """A floating tensor with a batch dimension."""
    _check_tensor("mean", mean)
    if mean.dim() < 1:
        raise ValueError("mean must have a batch dimension: shape (B, *S), got a 0-d tensor")


def _check_output_size(mean, num_samples: int) -> None:
    """k samples of mean whose bytes a 64-bit size can hold (else torch's allocator reports an
    overflow that names neither argument). Symbolic sizes (torch.compile's dynamic shapes,
    torch.export's Dim) are checked when the op runs, not traced: comparing them would bound the
    batch size below 2**63 / (k D), a guard that torch.export refuses for an unbounded Dim."""
    size = num_samples * mean.numel() * mean.element_size()
    if isinstance(size, int) and size >= 2**63:
        raise ValueError(f"num_samples={num_samples} samples of a mean of shape {tuple(mean.shape)} make an output "
                         f"of {num_samples * mean.numel()} elements, past what a tensor can hold")


_LARGEST = {dtype: torch.finfo(compute_dtype(dtype)).max for dtype in dispatch.FLOAT_DTYPES}


def _check_epsilon(epsilon: float, dtype: torch.dtype) -> None:
    """Finite and > 0 in the dtype the kernels compute in: a larger one would become inf there."""
    largest = _LARGEST[dtype]
    if not 0 < epsilon <= largest:
        raise ValueError(f"epsilon must be > 0 and at most {largest:.4g} (the largest {compute_dtype(dtype)}, "
                         f"which the op computes in for {dtype} inputs), got {epsilon}")


def _check_number(name: str, value, *, infinite_ok: bool = False) -> float:
    """A real number (numpy scalars too) as a float. Comparisons rather than math.isfinite, which
    torch.compile cannot trace on a varying value."""
    if type(value) is not float:  # (the common case skips the abstract-class check)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        value = float(value)
    if value != value or not (infinite_ok or -math.inf < value < math.inf):
        raise ValueError(f"{name} must be {'a number' if infinite_ok else 'finite'}, got {value}")
    return value


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
    num_samples = _check_num_samples(num_samples)
    _check_mean(mean)
    compiling = torch.compiler.is_compiling()
    if not compiling:  # Dynamo calls a SymInt an int: the fake kernel checks there
        _check_output_size(mean, num_samples)
    _check_tensor("std_param", std_param, like=mean)
    epsilon = _check_number("epsilon", epsilon)
    _check_epsilon(epsilon, mean.dtype)
    lo, hi = -math.inf, math.inf
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            raise TypeError(f"clamp must be None or a pair (lo, hi), got {clamp!r}")
        lo, hi = _check_number("clamp[0]", clamp[0], infinite_ok=True), _check_number("clamp[1]", clamp[1],
                                                                                        infinite_ok=True)
        if lo >= hi:
            raise ValueError(f"clamp must have lo < hi, got ({lo}, {hi})")
    if x is not None:
        _check_tensor("x", x, like=mean)
    if noise is not None:
        _check_tensor("noise", noise, like=mean, shape=(num_samples, *mean.shape))
        if noise.requires_grad:
            raise ValueError("noise requires grad, but the op gives no gradient for it: pass noise.detach(), "
                             "or learn mean and std_param instead (the reparameterisation)")
    if backend not in _BACKEND_NAMES:
        raise ValueError(f"backend must be one of {list(_BACKEND_NAMES)}, got {backend!r}")
    if generator is not None:  # (the message's f-string costs as much as the check)
        _check_generator(generator, mean.device, f"mean is on {mean.device}", draws=noise is None)
    if not compiling:
        _refuse_tangents(mean, std_param, x, noise)
    elif torch.autograd.forward_ad._current_level >= 0:
        _refuse_forward_ad_compiled()
    if generator is not None and noise is None and not mean.is_meta:
        _check_not_recomputed_with_generator()

    mean, std_param = mean.contiguous(), std_param.contiguous()
    x, noise = None if x is None else x.contiguous(), None if noise is None else noise.contiguous()
    settings = (num_samples, epsilon, lo, hi)
    # meta: the ops' fake kernels; maybe_current_level: inside an eager torch.func transform
    if compiling or mean.is_meta or torch._C._functorch.maybe_current_level() is not None:
        seed_offset = dispatch.python_seed_offset(mean, noise, None, generator)
        if not compiling and _functionalize_without_differentiation():
            return sample_forward(mean, std_param, x, noise, seed_offset, *settings, backend)
        return _TransformableSampleAndEntropy.apply(mean, std_param, x, noise, seed_offset, *settings, backend)
    call = (generator, settings, dispatch.select(backend, mean.device, mean.dtype))
    x_noise = () if x is None and noise is None else (x,) if noise is None else (x, noise)
    return _EagerSampleAndEntropy.apply(mean, std_param, call, *x_noise)
