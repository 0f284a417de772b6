"""Fitting per-example explicit adversarial distributions (ADT_EXP's inner problem, Alg. 2).

The same routine trains ADT_EXP and runs the distribution attack of appendix D.3: per-example
(mean, std_param) start at 0 and are moved by Adam with betas (0, 0) to maximise
E_k[loss(x + delta)] + lambda * H, where delta = epsilon * tanh(mean + softplus(std_param) * r).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..ops import sample_and_entropy

BatchedLoss = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class DistributionFit:
    """The fitted (mean, std_param) and, per step, the batch-mean objective, loss and entropy."""

    mean: torch.Tensor
    std_param: torch.Tensor
    objective: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    entropy_per_dim: list = field(default_factory=list)

    def sample(self, x: torch.Tensor, epsilon: float, num_samples: int = 1,
               generator: Optional[torch.Generator] = None, backend: str = "auto",
               noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """clamp(x + delta, 0, 1) for num_samples draws, shape (k, B, *S), detached."""
        with torch.no_grad():
            x_adv, _ = sample_and_entropy(self.mean, self.std_param, num_samples, epsilon, x=x,
                                          noise=noise, generator=generator, backend=backend)
        return x_adv


def fit_distribution(loss_fn: BatchedLoss, x: torch.Tensor, *, epsilon: float, steps: int,
                     num_samples: int, lbd: float, lr: float = 0.3, betas=(0.0, 0.0),
                     generator: Optional[torch.Generator] = None, backend: str = "auto",
                     track: bool = False,
                     noise: Optional[Callable[[int], torch.Tensor]] = None) -> DistributionFit:
    """Maximise E[loss_fn(x + delta)] + lbd * H(p(delta)) over per-example (mean, std_param).

    loss_fn takes the k*B adversarial inputs in one batch (shape (k*B, *S)) and returns k*B
    per-example losses. The entropy enters as the per-dimension mean of -log p, as the original
    code does, so the paper's lambda values carry over. Only the distribution parameters get
    gradients (torch.autograd.grad): a model inside loss_fn accumulates nothing in its .grad.
    `track` records the objective, loss and entropy before each step (a host sync per step).
    `noise(step)`, if given, supplies the (k, *x.shape) normals of each step instead of the op's
    generator (e.g. per-example streams that make an attack independent of batching).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x = x.detach()
    mean = torch.zeros_like(x, requires_grad=True)
    std_param = torch.zeros_like(mean, requires_grad=True)
    optimiser = torch.optim.Adam([mean, std_param], lr=lr, betas=betas)
    fit = DistributionFit(mean, std_param)
    dims = x[0].numel()
    for step in range(steps):
        with torch.enable_grad():
            x_adv, neg_log_prob = sample_and_entropy(mean, std_param, num_samples, epsilon, x=x,
                                                     noise=None if noise is None else noise(step),
                                                     generator=generator, backend=backend)
            loss = loss_fn(x_adv.flatten(0, 1)).view(num_samples, -1).mean(0)
            entropy = neg_log_prob.mean(0) / dims
            objective = loss + lbd * entropy
            mean.grad, std_param.grad = torch.autograd.grad(-objective.sum(), [mean, std_param])
        if track:
            fit.objective.append(objective.mean().item())
            fit.loss.append(loss.mean().item())
            fit.entropy_per_dim.append(entropy.mean().item())
        optimiser.step()
    fit.mean, fit.std_param = mean.detach(), std_param.detach()
    return fit
