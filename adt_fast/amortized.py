"""Framework-agnostic pieces of amortised ADT (Alg. 3, 4) and of the AT-FGSM, ALP and L2L baselines.

One training step of ADT_EXP-AM (ADT_IMP-AM in brackets) is built from these pieces as::

    inputs = generator_inputs(model, x, y, eps)              # [x, g1, g2], classifier in eval mode
    z = sample_noise(B, 64, x.device)                         # [implicit only]
    out = generator(inputs)                                   # [generator(inputs, z)]
    x_adv, entropy = explicit_perturbation(out, x, eps)       # [x_adv, t = tanh_perturbation(out, x, eps)
                                                              #  entropy = entropy_lower_bound(*q(t), z)]
    loss = cross_entropy(model(reverse_gradient(x_adv)), y)  # classifier in train mode
    total = amortized_loss(loss, entropy, lbd)                # loss.mean() - lbd * entropy.mean()
    zero all grads; total.backward(); step the classifier's, the generator's [and q's] optimisers

Gradient-reversal convention. Every optimiser *descends* on ``total``. ``reverse_gradient`` sits
exactly once on the path generator -> classifier (on x_adv), so that one backward gives

    classifier theta:  + d loss / d theta                    (descent on the loss: training)
    generator phi:     - d loss / d phi - lbd * d H / d phi  (descent on -(loss + lbd * H):
                                                              ascent on the ADT objective)
    q psi:             - lbd * d H / d psi                   (ascent on the bound)

The entropy term does not go through the classifier, so it is not reversed; it enters ``total``
with a minus sign because the generator maximises it, and it has no effect on theta. For the
TRADES variants the classifier's loss is trades_loss(model(reverse_gradient(x_adv)), model(x), y,
beta): the clean term does not depend on phi, and the generator ascends beta * KL + lbd * H. L2L is
the same with no entropy (lbd = 0). The authors' code does the same thing with a hook on x_adv,
which for their TRADES variants also divides by beta (KL + lambda * H): the trainer passes
lbd = beta * lambda for that balance (docs/training.md, section 2a).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attacks.engine import eval_mode, iterative_attack, project
from .attacks.losses import cross_entropy
from .attacks.suite import check_epsilon
from .checks import as_real, check_finite, check_int, check_non_negative, shown
from .models.generators import MAX_NOISE_DIM, NOISE_DIM
from .ops import sample_and_entropy

Forward = Callable[[torch.Tensor], torch.Tensor]

# Settings from the paper (C.3) and the authors' code; NOISE_DIM (z ~ U(-1, 1)^64, C.2) is the generators'.
EXP_AM_LAMBDA = 0.01                 # lambda of ADT_EXP-AM, on the per-dimension entropy (as ADT_EXP)
IMP_AM_LAMBDA = 1.0                  # lambda of ADT_IMP-AM, on the per-z-dimension bound
DEFAULT_HINGE = 0.9                  # the authors' --entropy_th, see entropy_lower_bound
GENERATOR_LR = 2e-4
GENERATOR_BETAS = (0.5, 0.999)
Q_LR = 2e-4
Q_BETAS = (0.9, 0.999)               # Adam's defaults (C.3 gives no momentum for q)
ALP_WEIGHT = 0.5                     # Kannan et al.'s released ALP code (C.4 gives no value)
AT_FGSM_CLEAN_WEIGHT = 0.5           # the authors' fgsm_loss (trades.py): (CE clean + CE adversarial) / 2

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------------
# Generator inputs
# ------------------------------------------------------------------------------------------------
def generator_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float, *,
                     forward: Optional[Forward] = None, batch_mean: bool = False,
                     batch_size: Optional[int] = None, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``[x, g1, g2]`` concatenated on channels, shape (B, 3*C, H, W), detached (C.2).

    g1 = grad_x CE(f(x), y) and g2 = grad_x CE(f(x_fgsm), y) at the FGSM point
    x_fgsm = clamp(x + epsilon * sign(g1), *bounds). Both are taken with the classifier in eval
    mode (BatchNorm frozen, each module's flag restored afterwards) and with torch.autograd.grad
    with respect to the input only: nothing accumulates in the classifier's .grad.

    The gradients are per-example (of the summed CE), so they do not depend on the batch size;
    ``batch_mean=True`` divides them by B, which is what the authors' code feeds (F.cross_entropy
    with its default mean): ``batch_size`` when given (the global batch, of which x is one
    process's rows under data parallelism), else x's rows. ``forward(inp)`` replaces
    ``model(inp)`` (e.g. the trainer's autocast and channels_last wrapper).
    """
    epsilon = check_epsilon(epsilon)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size")
    fwd = forward if forward is not None else model
    x = x.detach()
    scale = 1.0 / (batch_size or x.shape[0]) if batch_mean else 1.0
    with eval_mode(model), torch.enable_grad():
        x0 = x.clone().requires_grad_(True)
        (g1,) = torch.autograd.grad(cross_entropy(fwd(x0), y).sum() * scale, x0)
        x_fgsm = project(x + epsilon * g1.sign(), x, epsilon, bounds).requires_grad_(True)
        (g2,) = torch.autograd.grad(cross_entropy(fwd(x_fgsm), y).sum() * scale, x_fgsm)
    return torch.cat([x, g1.detach().to(x.dtype), g2.detach().to(x.dtype)], dim=1)


# ------------------------------------------------------------------------------------------------
# Gradient reversal
# ------------------------------------------------------------------------------------------------
class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad.neg()


def reverse_gradient(t: torch.Tensor) -> torch.Tensor:
    """Identity forward; the backward negates the gradient flowing back into ``t``.

    Put it once on the generator's output where it enters the classifier
    (``model(reverse_gradient(x_adv))``): one backward of one loss then gives the classifier
    +dL/dtheta and everything upstream of ``t`` (generator, its noise encoder) -dL/dphi, so one
    descent step of every optimiser trains the classifier and makes the generator ascend L.
    """
    return _ReverseGradient.apply(t)


def amortized_loss(loss: torch.Tensor, entropy: Optional[torch.Tensor], lbd: float) -> torch.Tensor:
    """The one scalar to backward: ``loss.mean() - lbd * entropy.mean()``.

    ``loss`` is the classifier's per-example loss computed through ``reverse_gradient``;
    ``entropy`` the per-example entropy estimate (explicit_perturbation) or bound
    (entropy_lower_bound), or None for L2L. See the module docstring for the signs. The entropy
    term is kept at ``lbd == 0`` (times 0: its networks get zero gradients, not none). A negative
    ``lbd`` would make the generator shrink the entropy, so it is refused, as is NaN or inf.
    """
    lbd = check_non_negative(lbd, "lbd")
    total = loss.mean()
    if entropy is not None:
        # Also at lbd == 0: the entropy's networks (q) then stay in the graph with exactly zero
        # gradients, which DDP needs (it expects a gradient for every parameter), and which
        # leave them unchanged under Adam without weight decay (zero moments, zero step).
        total = total - lbd * entropy.mean()
    return total


# ------------------------------------------------------------------------------------------------
# From generator output to adversarial input
# ------------------------------------------------------------------------------------------------
def explicit_perturbation(generator_out: torch.Tensor, x: torch.Tensor, epsilon: float,
                          generator: Optional[torch.Generator] = None, *,
                          noise: Optional[torch.Tensor] = None, backend: str = "auto",
                          bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """ADT_EXP-AM: one sample of the explicit distribution and its entropy estimate (Eq. A.1).

    generator_out (B, 2*C, H, W) holds the mean mu (channels [:C]) and std parameter rho ([C:]).
    Returns (x_adv, entropy_per_dim): x_adv = clamp(x + eps * tanh(mu + softplus(rho) * r),
    *bounds), shape (B, C, H, W), differentiable w.r.t. generator_out; entropy_per_dim (B,) is
    -log p(delta) of the one MC sample divided by C*H*W, the per-dimension scaling of ADT_EXP, so
    lambda = 0.01 carries over. The constants log(2*pi)/2 + log(eps) per dimension, which the
    authors' code leaves out, are included; they change no gradient. ``noise`` (1, B, C, H, W)
    replaces the normals; ``generator`` seeds them otherwise.
    """
    epsilon = _check_perturbation_inputs(generator_out, x, epsilon, bounds)
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if generator_out.shape != (b, 2 * c, h, w):
        raise ValueError(f"generator_out must have shape ({b}, {2 * c}, {h}, {w}), got {tuple(generator_out.shape)}")
    out = generator_out.to(x.dtype)
    mean, std_param = out[:, :c], out[:, c:]
    x_adv, neg_log_prob = sample_and_entropy(mean, std_param, 1, epsilon, x=x.detach(), clamp=bounds,
                                             noise=noise, generator=generator, backend=backend)
    return x_adv[0], neg_log_prob[0] / (c * h * w)


def _check_perturbation_inputs(generator_out: torch.Tensor, x: torch.Tensor, epsilon: float,
                               bounds: tuple[float, float]) -> float:
    """Floating images and output (a cast of the output to integer images' dtype would cut its
    gradient and truncate it, without a word), an epsilon as the attacks take it, lo < hi.
    Returns epsilon as a float."""
    epsilon = check_epsilon(epsilon)
    for name, value in (("x", x), ("generator_out", generator_out)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(f"{name} must be a floating tensor (images scaled to the bounds), got {got}")
    lo, hi = bounds
    if not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi, got {tuple(bounds)}")
    return epsilon


def tanh_perturbation(generator_out: torch.Tensor, x: torch.Tensor, epsilon: float, *,
                      bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """ADT_IMP-AM and L2L: delta = eps * tanh(generator_out); returns (x_adv, t = tanh(out)).

    x_adv = clamp(x + delta, *bounds) (the engine's ``project``), differentiable w.r.t.
    generator_out; t in (-1, 1), shape (B, C, H, W), is what the q-network reads.
    """
    epsilon = _check_perturbation_inputs(generator_out, x, epsilon, bounds)
    if generator_out.shape != x.shape:
        raise ValueError(f"generator_out must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(generator_out.shape)}")
    t = torch.tanh(generator_out.to(x.dtype))
    x = x.detach()
    return project(x + epsilon * t, x, epsilon, bounds), t


# ------------------------------------------------------------------------------------------------
# Implicit distribution: noise and the entropy lower bound
# ------------------------------------------------------------------------------------------------
def sample_noise(batch: int, noise_dim: int = NOISE_DIM, device=None,
                 generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """z ~ U(-1, 1)^noise_dim, shape (batch, noise_dim), from ``generator`` or torch's default;
    noise_dim at most what the generators read (MAX_NOISE_DIM)."""
    batch = check_int(batch, "batch", minimum=0)
    noise_dim = check_int(noise_dim, "noise_dim", maximum=MAX_NOISE_DIM)
    return torch.rand(batch, noise_dim, device=device, dtype=dtype, generator=generator) * 2 - 1


HINGE_OVER = ("batch", "example")


def entropy_lower_bound(q_mean: torch.Tensor, q_std: torch.Tensor, z: torch.Tensor, *,
                        hinge: Optional[float] = DEFAULT_HINGE, hinge_over: str = "batch",
                        hinge_mean: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """The variational entropy bound U(q) of Eq. A.2 without its constant, one value per example.

    Returns (B,) values: the mean over the noise_dim dimensions of the diagonal Gaussian
    log-density log N(z_j; mean_j, std_j^2) (constants included; the per-dimension mean is the
    authors' scaling, to which lambda = 1.0 and the hinge refer). H(p(delta | x)) >= d * value + c.

    hinge (the authors' --entropy_th, 0.9 by default; None for the paper's plain Eq. A.3): the
    generator and q are rewarded for raising the bound only up to -hinge. The authors apply it to
    the batch mean, ``min(mean_i U_i, -hinge)``; ``hinge_over="batch"`` returns
    ``U_i - relu(mean_i U_i + hinge)``, whose batch mean is exactly that (and so are its
    gradients). ``hinge_over="example"`` clamps each example: ``min(U_i, -hinge)``.

    ``hinge_mean(values)`` is the batch mean the hinge acts on (default ``values.mean()``).
    Under data parallelism, where the rows are one process's share of a global batch, pass a
    differentiable mean over the global batch (an all-reduced sum over the global batch size), so
    that the hinge acts on the global batch as in one process.

    ``hinge`` must be a finite number (or None). ``q_std`` must be > 0 everywhere; that is not
    checked, as reading a tensor's values costs a device sync on every training step, and
    QNetwork's std is at least its ``min_std`` > 0 by construction. A zero or negative std gives NaN.
    """
    if hinge is not None:
        hinge = check_finite(hinge, "hinge")
    if q_mean.dim() != 2 or q_std.shape != q_mean.shape or z.shape != q_mean.shape:
        raise ValueError(f"q_mean, q_std and z must all have shape (B, noise_dim); got "
                         f"{tuple(q_mean.shape)}, {tuple(q_std.shape)}, {tuple(z.shape)}")
    if hinge_over not in HINGE_OVER:
        raise ValueError(f"hinge_over must be one of {HINGE_OVER}, got {hinge_over!r}")
    dtype = torch.float64 if torch.float64 in (q_mean.dtype, q_std.dtype, z.dtype) else torch.float32
    mean, std, z = q_mean.to(dtype), q_std.to(dtype), z.to(dtype)
    log_q = -0.5 * ((z - mean) / std) ** 2 - torch.log(std) - _LOG_SQRT_2PI
    bound = log_q.mean(dim=1)
    if hinge is None:
        return bound
    if hinge_over == "example":
        return torch.clamp(bound, max=-hinge)
    mean = bound.mean() if hinge_mean is None else hinge_mean(bound)
    return bound - F.relu(mean + hinge)


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------
def least_likely_fgsm(model: nn.Module, x: torch.Tensor, epsilon: float, *,
                      forward: Optional[Forward] = None,
                      bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """AT-FGSM's examples (Kurakin et al., "step l.l."): one targeted FGSM step toward the
    least-likely class, x_adv = clamp(x - eps * sign(grad_x CE(f(x), y_ll)), *bounds) with
    y_ll = argmin f(x). Classifier in eval mode; one step of the shared engine; detached."""
    epsilon = check_epsilon(epsilon)
    fwd = forward if forward is not None else model
    with eval_mode(model):
        with torch.no_grad():
            target = fwd(x.detach()).argmin(dim=1)
        return iterative_attack(lambda x_adv: -cross_entropy(fwd(x_adv), target), x,
                                epsilon=epsilon, steps=1, step_size=epsilon, start=None, bounds=bounds)


def alp_penalty(clean_logits: torch.Tensor, adv_logits: torch.Tensor, weight: float = ALP_WEIGHT) -> torch.Tensor:
    """ALP's logit pairing term per example: weight * mean over classes of (f(x) - f(x'))^2.

    Its batch mean is Kannan et al.'s ``weight * mean_squared_error(logits, adv_logits)``.
    Gradients flow into both logits, as in their code. ``weight`` is a finite number >= 0 (a
    negative one would push the logits apart).
    """
    weight = check_non_negative(weight, "weight")
    if clean_logits.shape != adv_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(clean_logits.shape)} vs {tuple(adv_logits.shape)}")
    return weight * (adv_logits.float() - clean_logits.float()).pow(2).mean(dim=1)


def mixed_cross_entropy(clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor,
                        clean_weight: float = 0.5) -> torch.Tensor:
    """CE on clean and adversarial examples together, per example:
    ``clean_weight * CE(f(x), y) + (1 - clean_weight) * CE(f(x'), y)``. 0.5 weighs the two halves
    of a mixed minibatch alike (AT-FGSM, ALP); ``clean_weight`` is a number in [0, 1]."""
    share = as_real(clean_weight)
    if share is None or not 0 <= share <= 1:  # NaN fails both comparisons
        raise ValueError(f"clean_weight must be a number in [0, 1], got {shown(clean_weight)}")
    return share * cross_entropy(clean_logits, y) + (1 - share) * cross_entropy(adv_logits, y)


def alp_loss(clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor,
             weight: float = ALP_WEIGHT) -> torch.Tensor:
    """ALP's training loss per example: the even mixed CE plus the pairing term,
    ``(CE(f(x), y) + CE(f(x'), y)) / 2 + alp_penalty``."""
    return mixed_cross_entropy(clean_logits, adv_logits, y) + alp_penalty(clean_logits, adv_logits, weight)


# ------------------------------------------------------------------------------------------------
# Optimisers and the generator's schedule
# ------------------------------------------------------------------------------------------------
def generator_optimizer(generator: nn.Module, lr: float = GENERATOR_LR,
                        betas: tuple[float, float] = GENERATOR_BETAS) -> torch.optim.Adam:
    """Adam with lr 2e-4 and betas (0.5, 0.999) (C.3); no weight decay."""
    return torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)


def q_optimizer(q: nn.Module, lr: float = Q_LR, betas: tuple[float, float] = Q_BETAS) -> torch.optim.Adam:
    """Adam with lr 2e-4 (C.3) and Adam's default betas; no weight decay."""
    return torch.optim.Adam(q.parameters(), lr=lr, betas=betas)


def generator_lr_factor(epoch: int, *, constant_epochs: int = 100, decay_epochs: int = 50) -> float:
    """The authors' 'linear' generator schedule, as a LambdaLR factor of the 0-based epoch index.

    1 for the first ``constant_epochs`` epochs, then linearly to 1/(decay_epochs + 1) over the
    next ``decay_epochs``, then 0. With their defaults (100, 50) and the paper's 76 epochs it is
    1 throughout: the generator's learning rate is a constant 2e-4 for the whole run.
    Both counts are integers >= 0; ``decay_epochs=0`` drops the factor from 1 straight to 0.
    """
    constant_epochs = check_int(constant_epochs, "constant_epochs", minimum=0)
    decay_epochs = check_int(decay_epochs, "decay_epochs", minimum=0)
    return max(0.0, 1.0 - max(0, epoch + 1 - constant_epochs) / (decay_epochs + 1))


def generator_scheduler(optimizer: torch.optim.Optimizer, *, constant_epochs: int = 100,
                        decay_epochs: int = 50) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over generator_lr_factor; step it once per epoch (the authors step it after each)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: generator_lr_factor(epoch, constant_epochs=constant_epochs,
                                                     decay_epochs=decay_epochs))


__all__ = [
    "ALP_WEIGHT", "AT_FGSM_CLEAN_WEIGHT", "DEFAULT_HINGE", "EXP_AM_LAMBDA", "GENERATOR_BETAS", "GENERATOR_LR",
    "IMP_AM_LAMBDA", "NOISE_DIM", "Q_BETAS", "Q_LR",
    "alp_loss", "alp_penalty", "amortized_loss", "entropy_lower_bound", "explicit_perturbation",
    "generator_inputs", "generator_lr_factor", "generator_optimizer", "generator_scheduler",
    "least_likely_fgsm", "mixed_cross_entropy", "q_optimizer", "reverse_gradient", "sample_noise",
    "tanh_perturbation",
]
