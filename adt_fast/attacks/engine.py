"""The one iterative l_inf engine behind every gradient attack and every PGD-style inner loop.

An attack is a loss to maximise plus a few settings (steps, step size, random start, momentum);
the engine owns the rest: the start, the gradient, the step rule, the projection onto the
epsilon-ball and the clamp to the valid input range.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn

from ..checks import check_steps
from ..models.modes import module_mode
from ..ops import reference

PerExampleLoss = Callable[[torch.Tensor], torch.Tensor]
# One forward, two answers per example: the loss to maximise and whether the input is adversarial.
LossAndHit = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """Where the model's first parameter or buffer lives (fallback for a model with neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return fallback


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager:
    """Put every module in eval mode (BatchNorm frozen) and restore each one's flag afterwards."""
    return module_mode(model, training=False)


def uniform_start(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """U(-1, 1) noise shaped like x, from `generator` (which must live on x's device)."""
    return torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) * 2 - 1


# Keys of per-example torch generators: seed * _ID_STRIDE + id for ids in [0, _ID_STRIDE) (the keys
# every report so far was made with), and a 62-bit hash of (seed, id) placed above 2^62 for other
# ids, which FeaAttack's (example, target) and APGD-T's (example, try) ids reach on large
# evaluations, where the stride alone would give one stream's examples another stream's draws.
# Streams' seeds are below 2^36 (suite.MAX_SEED * 16 + 15), so the first range ends below 2^56.
_ID_STRIDE = 1_000_003
_HASHED_KEYS = 1 << 62


def example_seed(seed: int, example_id: int) -> int:
    """The torch seed of one example's draws in the stream `seed`, different for every (seed, id)
    (for hashed ids: but for a chance of about n^2 / 2^63 among n of them)."""
    seed, example_id = int(seed), int(example_id)
    if 0 <= example_id < _ID_STRIDE:
        return seed * _ID_STRIDE + example_id
    digest = hashlib.blake2b(f"{seed}:{example_id}".encode(), digest_size=8).digest()
    return _HASHED_KEYS + (int.from_bytes(digest, "little") >> 2)


def per_example_start(x: torch.Tensor, example_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """U(-1, 1) noise where example i's draw depends only on (seed, example_ids[i]).

    An attack on a batch then gives each example exactly what it would get attacked alone, which
    makes evaluation independent of batch size and order.
    """
    draws = []
    for example_id in example_ids.tolist():
        generator = torch.Generator().manual_seed(example_seed(seed, example_id))
        draws.append(torch.rand(x.shape[1:], generator=generator))
    if not draws:
        return torch.zeros_like(x)
    return (torch.stack(draws) * 2 - 1).to(device=x.device, dtype=x.dtype)


def _example_stream(ids: torch.Tensor, seed: int, kind: int) -> Tuple[tuple, torch.Tensor, torch.Tensor]:
    """The Philox key (id mod 2^32, seed mod 2^32) of the per-example streams, and their
    counter words 1 and 3: 2 (id div 2^32) + kind and seed div 2^32 (each mod 2^32).

    Without the two counter words, seeds s and s + 2^32 (stream seeds reach 2^36) or ids 2^32
    apart would share a stream. Below 2^32 they are kind and 0, the counters of every earlier
    report. kind (0: normals, 1: words) keeps the two functions' counters apart. Distinct for ids
    in [0, 2^63) and seeds in [0, 2^64).
    """
    seed = int(seed)
    key = (ids & reference.MASK32, torch.full_like(ids, seed & reference.MASK32))
    id_word = ((ids >> 32) * 2 + kind) & reference.MASK32
    return key, id_word, torch.full_like(ids, (seed >> 32) & reference.MASK32)


def per_example_normals(x: torch.Tensor, example_ids: torch.Tensor, seed: int, draw: int,
                        num_samples: int) -> torch.Tensor:
    """Standard normals (k, *x.shape) where example i's depend only on (seed, example_ids[i], draw).

    Philox4x32-10 and the Box-Muller of docs/randomness.md, keyed by (id mod 2^32, seed mod 2^32)
    instead of one seed per call, with counter (element, 2 (id div 2^32),
    draw * ceil(k/4) + group, seed div 2^32): one call serves samples 4 group .. 4 group + 3 of an
    element (the op's stream gives a call to a quad of elements instead). Used where the op's own
    per-call stream would tie an example's samples to its batch position.
    """
    groups = -(-num_samples // reference.NORMALS_PER_CALL)
    ids = example_ids.to(device=x.device, dtype=torch.int64)[:, None]
    key, id_word, seed_word = _example_stream(ids, seed, kind=0)
    element = torch.arange(x[0].numel(), device=x.device, dtype=torch.int64).expand(len(x), -1)
    zero = torch.zeros_like(element)
    words = torch.stack([torch.stack(reference.philox4x32(
        (element, zero + id_word, torch.full_like(element, draw * groups + g), zero + seed_word),
        key), dim=-1) for g in range(groups)])                                     # (G, B, D, 4)
    normals = reference.words_to_normals(words).permute(0, 3, 1, 2).reshape(groups * 4, *x.shape)
    return normals[:num_samples].to(x.dtype).contiguous()


def per_example_words(example_ids: torch.Tensor, seed: int, draws: torch.Tensor,
                      device: Union[None, str, torch.device] = None, attempt: int = 0) -> torch.Tensor:
    """(B, D, 4) random 32-bit words (int64): row i, draw j depends only on
    (seed, example_ids[i], draws[j], attempt).

    Philox4x32-10 keyed as per_example_normals, with counter
    (attempt, 2 (id div 2^32) + 1, draw, seed div 2^32): an odd second word, which
    per_example_normals never uses, so the two never share words. One call serves a block of
    draws (Square's queries), which keeps the per-query cost on the host negligible; `attempt`
    gives a draw further words (Square's redraws of a proposal that would not move its point).
    """
    ids = example_ids.to(device=device, dtype=torch.int64)[:, None]
    draws = torch.as_tensor(draws, dtype=torch.int64, device=ids.device)[None, :] & reference.MASK32
    key, id_word, seed_word = _example_stream(ids, seed, kind=1)
    zero = torch.zeros_like(ids * draws)
    counter = (zero + (int(attempt) & reference.MASK32), zero + id_word, zero + draws, zero + seed_word)
    return torch.stack(reference.philox4x32(counter, key), dim=-1)


def classified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the model's answer is y, with every logit finite.

    How every attack and the natural accuracy score an input. Non-finite logits are never a
    correct answer: argmax picks the index of a NaN, so an all-NaN row would "predict" class 0,
    and an attack that drives the model to NaN would leave examples of class 0 robust.
    """
    return (logits.argmax(1) == y) & torch.isfinite(logits).all(1)


def input_gradient(loss: torch.Tensor, inputs: torch.Tensor,
                   weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d(loss)/d(inputs), or d(loss . weight)/d(inputs) for a weighted sum.

    Zeros where the model does not depend on its input through autograd (it detaches the input,
    or runs under no_grad): such a model is evaluated, and the sanity checks report its zero
    gradients as a sign of masking, rather than every gradient attack failing.
    """
    if not loss.requires_grad:
        return torch.zeros_like(inputs)
    (grad,) = torch.autograd.grad(loss, inputs, weight, allow_unused=True, materialize_grads=True)
    return grad


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float,
            bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Onto the epsilon-ball around x, then into the valid input range."""
    return torch.clamp(x + torch.clamp(x_adv - x, -epsilon, epsilon), *bounds)


def _ascent_direction(grad: torch.Tensor) -> torch.Tensor:
    """The gradient the sign steps follow: NaN components as 0, +-inf as +-the dtype's maximum.

    Kept in float64 for a float64 model (float32 at least): a float32 cast rounds gradients below
    1e-45 to 0, and their sign with them, so the attack would not move.
    """
    return torch.nan_to_num(grad.to(torch.promote_types(grad.dtype, torch.float32)), nan=0.0)


def _normalise_per_example(direction: torch.Tensor) -> torch.Tensor:
    """direction / its per-example mean |.| (MIM's normalisation; all-zero rows stay 0).

    Divided by the row's largest |.| first: the mean of two components at the dtype's maximum
    (infinite gradients) overflows to inf, which made the whole step 0 instead of following them.
    """
    view = (-1,) + (1,) * (direction.dim() - 1)
    magnitude = direction.abs().flatten(1)
    unit = direction / magnitude.amax(1).clamp_min(torch.finfo(direction.dtype).tiny).view(view)
    return unit / unit.abs().flatten(1).mean(1).clamp_min(torch.finfo(direction.dtype).tiny).view(view)


def iterative_attack(loss_fn: PerExampleLoss, x: torch.Tensor, *, epsilon: float, steps: int,
                     step_size: float, start: Union[None, torch.Tensor] = None,
                     momentum: Optional[float] = None,
                     bounds: tuple[float, float] = (0.0, 1.0),
                     minimize: bool = False) -> torch.Tensor:
    """Maximise loss_fn (one value per example) over the l_inf ball around x by signed steps.

    start: None for x itself, else U(-1, 1) noise scaled by epsilon (a random start).
    momentum: MIM's decay; the gradient is normalised by its per-example mean |.| and accumulated.
    minimize: step against the gradient instead (targeted attacks such as FeaAttack).
    A NaN gradient component counts as zero (no step along it), so a model whose gradients
    break cannot push x_adv to NaN; +-inf keep their sign.
    Returns a detached tensor; x is never modified, and only x_adv receives gradients.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    steps = check_steps(steps, "steps", minimum=0)
    x = x.detach()
    x_adv = x.clone() if start is None else project(x + epsilon * start, x, epsilon, bounds)
    velocity = torch.zeros_like(x) if momentum is not None else None
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(x_adv)
            grad = input_gradient(loss.sum(), x_adv)
        direction = _ascent_direction(grad)
        if minimize:
            direction = -direction
        if velocity is not None:
            velocity = momentum * velocity + _normalise_per_example(direction)
            direction = velocity
        x_adv = project(x_adv.detach() + step_size * direction.sign().to(x.dtype), x, epsilon, bounds)
    return x_adv.detach()


# ----------------------------------------------------------------------------- APGD's step rule


def apgd_checkpoints(steps: int) -> List[int]:
    """The iterations w_j after which APGD may halve its step (Croce & Hein, ICML 2020, Sec. 3.2).

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j * steps),
    kept while w_j <= steps. Computed in hundredths, so that 0.41 * 100 is 41 and not 41.000001.
    For 100 steps: 22, 41, 57, 70, 80, 87, 93, 99, the reference implementation's schedule.
    """
    hundredths = [0, 22]
    while hundredths[-1] < 100:
        hundredths.append(hundredths[-1] + max(hundredths[-1] - hundredths[-2] - 3, 6))
    points: List[int] = []
    for p in hundredths[1:]:
        w = -(-p * steps // 100)
        if 1 <= w <= steps and (not points or w > points[-1]):
            points.append(w)
    return points


@dataclass
class APGDRun:
    """One APGD run on a batch.

    broken: (B,) bool, whether some iterate (the start included) was adversarial.
    x_adv: (B, *S) the first adversarial iterate where one was found, else the highest-loss point.
    loss_best: (B,) the highest loss seen. step_sizes: (steps, B) the step size of each step.
    """

    broken: torch.Tensor
    x_adv: torch.Tensor
    loss_best: torch.Tensor
    step_sizes: torch.Tensor


def apgd(loss_fn: LossAndHit, x: torch.Tensor, *, epsilon: float, steps: int,
         start: Optional[torch.Tensor] = None, rho: float = 0.75, momentum: float = 0.75,
         bounds: tuple[float, float] = (0.0, 1.0)) -> APGDRun:
    """Auto-PGD (Croce & Hein, ICML 2020, Alg. 1) on the l_inf ball around x.

    The step starts at 2 * epsilon, per example; the first step is a plain projected sign step,
    later ones mix in the previous move with weight 1 - momentum. At each checkpoint w_j
    (:func:`apgd_checkpoints`) an example's step is halved, and it restarts from its best point,
    when (1) at most rho of the steps since w_{j-1} raised the loss, or (2) the step was not
    halved at w_{j-1} and the best loss has not risen since. The losses compared in (1) run from
    the iterate at w_{j-1} (the start for j = 1) to the one at w_j.
    start: None for x itself, else noise that is scaled per example to l_inf norm epsilon
    (APGD's start: x + epsilon * t / max|t|). NaN gradient components count as zero.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    steps = check_steps(steps, "steps", minimum=0)
    x = x.detach()
    view = (-1,) + (1,) * (x.dim() - 1)
    if start is None:
        x_adv = x.clone()
    else:
        scale = start.flatten(1).abs().max(1).values.clamp_min(1e-12).view(view)
        x_adv = torch.clamp(x + epsilon * start / scale, *bounds)

    def value_and_grad(z: torch.Tensor):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            loss, hit = loss_fn(z)
            grad = input_gradient(loss.sum(), z)
        return loss.detach().float(), hit.detach(), _ascent_direction(grad)

    loss, hit, grad = value_and_grad(x_adv)
    broken, x_hit = hit.clone(), x_adv.clone()
    loss_best, x_best, grad_best = loss.clone(), x_adv.clone(), grad.clone()
    step = torch.full((len(x),), 2.0 * epsilon, device=x.device)
    step_sizes = []
    checkpoints = apgd_checkpoints(steps)
    previous_check, losses = 0, [loss]
    loss_best_at_check = loss_best.clone()
    halved_at_check = torch.ones_like(broken)  # condition (2) cannot fire at the first checkpoint
    x_prev = x_adv
    for i in range(steps):
        step_sizes.append(step)
        weight = momentum if i > 0 else 1.0
        z = project(x_adv + step.view(view).to(x.dtype) * grad.sign().to(x.dtype), x, epsilon, bounds)
        x_next = project(x_adv + weight * (z - x_adv) + (1 - weight) * (x_adv - x_prev),
                         x, epsilon, bounds)
        x_prev, x_adv = x_adv, x_next
        loss, hit, grad = value_and_grad(x_adv)
        new_hit = hit & ~broken
        x_hit = torch.where(new_hit.view(view), x_adv, x_hit)
        broken = broken | hit
        better = loss > loss_best
        x_best = torch.where(better.view(view), x_adv, x_best)
        grad_best = torch.where(better.view(view), grad, grad_best)
        loss_best = torch.where(better, loss, loss_best)
        losses.append(loss)
        if checkpoints and i + 1 == checkpoints[0]:
            span = checkpoints.pop(0) - previous_check
            window = torch.stack(losses[previous_check:])
            rises = (window[1:] > window[:-1]).sum(0)
            halve = (rises <= rho * span) | (~halved_at_check & (loss_best <= loss_best_at_check))
            step = torch.where(halve, step / 2, step)
            x_adv = torch.where(halve.view(view), x_best, x_adv)
            grad = torch.where(halve.view(view), grad_best, grad)
            halved_at_check, loss_best_at_check = halve, loss_best.clone()
            previous_check = i + 1
    x_out = torch.where(broken.view(view), x_hit, x_best)
    sizes = torch.stack(step_sizes) if step_sizes else torch.zeros(0, len(x), device=x.device)
    return APGDRun(broken, x_out.detach(), loss_best, sizes)
