"""The checks every public attack entry point runs once per call on what it is given.

`evaluate` and the stand-alone attacks (``Attack.perturb``, ``fgsm`` ... ``cw``,
``feature_attack``, ``transfer``) share them: the engine projects onto the epsilon-ball *and*
clamps to [0, 1], so inputs outside [0, 1] (a normalised batch) would come back far more than
epsilon away, silently; and bad labels would fail deep inside a loss (on CUDA, as a device-side
assert). The engine's per-step primitives (``project``, ``iterative_attack``, ``apgd``) take their
inputs as given: they run inside trainers' steps, where a check per call would cost a sync.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..checks import unreadable_tensor_problem
from ..devices import is_out_of_memory
from ..models.external import TOO_FEW_LOGITS, raised
from .engine import eval_mode

# Every integer dtype: the labels are read as int64 (torch's losses take no other), so an int8 or
# uint16 tensor of class indices is as good as any.
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint64, torch.uint32, torch.uint16,
                torch.uint8)


def check_module(model, name: str) -> None:
    """The attacks call the model, its .parameters() and its .train(): a plain function (or None)
    would fail deep inside with an AttributeError, and a model on the meta device (built there to
    be loaded later) in torch, at the first value read back."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module mapping inputs in [0, 1] to logits, got "
                        f"{type(model).__name__} (wrap a function in an nn.Module whose forward calls it)")
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ValueError(f"{name} has parameters on the meta device, which hold no values (only shapes): load "
                         f"its weights first, e.g. {name}.to_empty(device='cpu') then load_state_dict")


def check_batch(x: torch.Tensor, y: torch.Tensor, x_name: str = "x", y_name: str = "y") -> torch.Tensor:
    """Refuse a batch the attacks cannot score honestly; return the labels as int64.

    check_batch_form's batch, whose x also lies in [0, 1]: the attacks clamp to that range.
    """
    return check_batch_form(x, y, x_name, y_name, unit_range=True)


def check_batch_form(x: torch.Tensor, y: torch.Tensor, x_name: str = "x", y_name: str = "y", *,
                     unit_range: bool = False) -> torch.Tensor:
    """Refuse a batch that cannot be scored, whatever the range of its inputs (clean accuracy on a
    normalised batch is a score); return the labels as int64. torch's errors name no argument, and
    float or negative labels, an empty x or a NaN in x would score wrongly without one.

    x: floating point, dense, finite, (N, ...) with N >= 1 and at least one value per input; y:
    integers >= 0 of any integer dtype, shape (N,). `unit_range`: x must also lie in [0, 1] (check_batch's rule, finiteness included).
    """
    inputs = "inputs in [0, 1]" if unit_range else "inputs"
    _check_values(x, x_name)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        hint = f" (images as bytes? {x_name}.float() / 255)" if got == torch.uint8 else ""
        raise TypeError(f"{x_name} must be a floating-point tensor of {inputs}, got {got}{hint}")
    if x.dim() < 2:
        raise ValueError(f"{x_name} must be batched, shape (N, ...), got {tuple(x.shape)}")
    _check_values(y, y_name)
    if not isinstance(y, torch.Tensor) or y.dtype not in LABEL_DTYPES:
        got = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise TypeError(f"{y_name} must be an integer tensor of class labels, got {got}")
    if y.shape != (len(x),):
        raise ValueError(f"{y_name} must have shape ({len(x)},) to match {x_name}, got {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"no examples ({x_name} is empty)")
    if x.shape[1:].numel() == 0:  # aminmax refuses it with an error of its own; no model scores it
        raise ValueError(f"{x_name} holds inputs of no values, shape {tuple(x.shape)}: each input needs at least one")
    # int64 first: torch has no min of a uint16, uint32 or uint64; a uint64 from 2**63 on turns < 0
    rule = f"< 2**63 ({y_name}, a uint64 tensor, is read as int64)" if y.dtype == torch.uint64 else f">= 0 ({y_name})"
    y = y.long()
    x_ok, y_min = _read_back(x, y, unit_range)
    if not x_ok and unit_range:
        raise ValueError(f"{x_name} must lie in [0, 1] (the attacks clamp to that range; a model "
                         f"that normalises its inputs must do it inside its forward)")
    if not x_ok:
        raise ValueError(f"{x_name} must be finite, got NaN or inf in it")
    if y_min < 0:
        raise ValueError(f"labels must be {rule}")
    return y


def _check_values(value, name: str) -> None:
    """Refuse a tensor whose values the checks and the attacks cannot read (sparse, nested, meta,
    quantized), before its dtype: a quantized one's error then says how to convert it. A ValueError
    for a meta tensor (the right kind, in a place without values), a TypeError for the others."""
    problem = isinstance(value, torch.Tensor) and unreadable_tensor_problem(value)
    if problem:
        raise (ValueError if value.is_meta else TypeError)(f"{name} {problem}")


def _read_back(x: torch.Tensor, y: torch.Tensor, unit_range: bool) -> tuple:
    """Whether x passes its value check (in [0, 1] with unit_range, else finite) and y's min, read
    back together: one device sync per checked batch."""
    if unit_range:
        x_min, x_max = torch.aminmax(x)  # NaN where x holds one
        x_ok = (x_min >= 0) & (x_max <= 1)  # NaN fails both comparisons; +-inf fails one
    else:
        x_ok = torch.isfinite(x).all()
    y_min = y.min().to(device=x.device, dtype=torch.float64)
    x_ok, y_min = torch.stack([x_ok.double(), y_min]).tolist()
    return bool(x_ok), y_min


# The inputs check_classes runs the model on: with one, a model that returns one row of logits for
# its whole batch (a mean over it, z[:1]) would pass, then fail deep in a loss or score garbage.
PROBE_INPUTS = 2


def check_classes(ctx, model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str) -> int:
    """The number of classes `model` returns (through ctx's forward), checked against the labels
    with one forward of x's first PROBE_INPUTS examples. A forward that fails there is a ValueError
    naming x and its shape (torch's own error names neither), whatever x's number of dimensions:
    the model decides what its inputs are."""
    probe = x[:PROBE_INPUTS]
    with eval_mode(model), torch.no_grad():
        try:
            logits = ctx.logits(probe, model)
        except RuntimeError as err:  # inputs left on the CPU, or a float64 batch from numpy, most often
            if is_out_of_memory(err):
                raise
            devices = sorted({str(t.device) for t in itertools.chain(model.parameters(), model.buffers())})
            if devices and str(x.device) not in devices:
                raise ValueError(f"the inputs are on {x.device} but the {what}'s parameters are on "
                                 f"{', '.join(devices)}, and the {what} failed on them ({err}): move the inputs, "
                                 f"e.g. x.to({devices[0]!r})") from err
            dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()})
            if dtypes and str(x.dtype) not in dtypes:
                raise TypeError(f"the inputs are {x.dtype} but the {what}'s parameters are {', '.join(dtypes)}, "
                                f"and the {what} failed on them ({err}): convert the inputs, e.g. "
                                f"x.to({dtypes[0]})") from err
            shape = ", ".join(["N", *map(str, x.shape[1:])])
            raise ValueError(f"the {what} fails on x, of shape ({shape}): {raised(err).splitlines()[0]}; x must "
                             f"hold the inputs the {what}'s forward takes (an image classifier's: (N, C, H, W))") from err
    if logits.dim() != 2 or len(logits) != len(probe):
        inputs = "one input" if len(probe) == 1 else f"{len(probe)} inputs"
        raise ValueError(f"the {what} returns {tuple(logits.shape)} for {inputs}; it must return logits of shape "
                         f"({len(probe)}, number of classes)")
    if logits.shape[1] < 2:
        raise ValueError(f"the {what} returns {logits.shape[1]} logit(s) per input: {TOO_FEW_LOGITS}")
    check_labels_fit(y, logits.shape[1], what)
    return logits.shape[1]


def check_labels_fit(y: torch.Tensor, num_classes: int, what: str, labels: str = "the labels") -> None:
    """Refuse labels past the `num_classes` logits of the `what` (the model): a label it lacks
    fails deep in a loss, or (FeaAttack's pool) names an image of some other dataset's class."""
    top = int(y.max())
    if top >= num_classes:
        raise ValueError(f"{labels} go up to {top} but the {what} returns {num_classes} logits: "
                         f"{labels} and the {what} come from different datasets")
