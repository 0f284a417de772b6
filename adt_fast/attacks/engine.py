"""The one iterative l_inf engine behind every gradient attack and every PGD-style inner loop.

An attack is a loss to maximise plus a few settings (steps, step size, random start, momentum);
the engine owns the rest: the start, the gradient, the step rule, the projection onto the
epsilon-ball and the clamp to the valid input range.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

from ..ops import reference

PerExampleLoss = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode (BatchNorm frozen) and restore each one's flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def uniform_start(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """U(-1, 1) noise shaped like x, from `generator` (which must live on x's device)."""
    return torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) * 2 - 1


def per_example_start(x: torch.Tensor, example_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """U(-1, 1) noise where example i's draw depends only on (seed, example_ids[i]).

    An attack on a batch then gives each example exactly what it would get attacked alone, which
    makes evaluation independent of batch size and order.
    """
    draws = []
    for example_id in example_ids.tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + int(example_id))
        draws.append(torch.rand(x.shape[1:], generator=generator))
    if not draws:
        return torch.zeros_like(x)
    return (torch.stack(draws) * 2 - 1).to(device=x.device, dtype=x.dtype)


def per_example_normals(x: torch.Tensor, example_ids: torch.Tensor, seed: int, draw: int,
                        num_samples: int) -> torch.Tensor:
    """Standard normals (k, *x.shape) where example i's depend only on (seed, example_ids[i], draw).

    Philox4x32-10 and the Box-Muller mapping of docs/randomness.md, keyed by (example id, seed)
    instead of one seed per call, with counter (element, 0, draw * ceil(k/4) + group, 0). Used
    where the op's own per-call stream would tie an example's samples to its batch position.
    """
    groups = -(-num_samples // reference.SAMPLES_PER_CALL)
    ids = example_ids.to(device=x.device, dtype=torch.int64)[:, None]
    key = (ids & reference.MASK32, torch.full_like(ids, int(seed) & reference.MASK32))
    element = torch.arange(x[0].numel(), device=x.device, dtype=torch.int64).expand(len(x), -1)
    zero = torch.zeros_like(element)
    words = torch.stack([torch.stack(reference.philox4x32(
        (element, zero, torch.full_like(element, draw * groups + g), zero), key), dim=-1)
        for g in range(groups)])                                                   # (G, B, D, 4)
    normals = reference.words_to_normals(words).permute(0, 3, 1, 2).reshape(groups * 4, *x.shape)
    return normals[:num_samples].to(x.dtype).contiguous()


def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: float,
            bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Onto the epsilon-ball around x, then into the valid input range."""
    return torch.clamp(x + torch.clamp(x_adv - x, -epsilon, epsilon), *bounds)


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
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x = x.detach()
    x_adv = x.clone() if start is None else project(x + epsilon * start, x, epsilon, bounds)
    velocity = torch.zeros_like(x) if momentum is not None else None
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(x_adv)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        direction = torch.nan_to_num(grad.float(), nan=0.0)
        if minimize:
            direction = -direction
        if velocity is not None:
            scale = direction.abs().flatten(1).mean(1).clamp_min(1e-12)
            velocity = momentum * velocity + direction / scale.view(-1, *[1] * (x.dim() - 1))
            direction = velocity
        x_adv = project(x_adv.detach() + step_size * direction.sign().to(x.dtype), x, epsilon, bounds)
    return x_adv.detach()
