"""Fitting per-example explicit adversarial distributions (ADT_EXP's inner problem, Alg. 2).

The same routine trains ADT_EXP and runs the distribution attack of appendix D.3: per-example
(mean, std_param) start at 0 and are moved by Adam with betas (0, 0) to maximise
E_k[loss(x + delta)] + lambda * H, where delta = epsilon * tanh(mean + softplus(std_param) * r).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import torch

from ..checks import check_betas, check_int, check_non_negative, check_steps
from ..devices import best_seconds, is_out_of_memory
from ..ops import sample_and_entropy
from .engine import input_gradient

ADAM_EPS = 1e-8  # torch's default, which the authors' adt_exp.py uses

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
        """clamp(x + delta, 0, 1) for num_samples draws, shape (k, B, *S) in x's dtype, detached."""
        work = self.mean.dtype  # fit_distribution's, float32 for a float16 or bfloat16 x
        with torch.no_grad():
            x_adv, _ = sample_and_entropy(self.mean, self.std_param, num_samples, epsilon, x=x.to(work),
                                          noise=None if noise is None else noise.to(work), generator=generator,
                                          backend=backend)
        return x_adv.to(x.dtype)


def fit_distribution(loss_fn: BatchedLoss, x: torch.Tensor, *, epsilon: float, steps: int,
                     num_samples: int, lbd: float, lr: float = 0.3, betas=(0.0, 0.0),
                     accumulate_grads: bool = False, adam_eps: float = ADAM_EPS,
                     generator: Optional[torch.Generator] = None, backend: str = "auto",
                     track: bool = False,
                     noise: Optional[Callable[[int], torch.Tensor]] = None,
                     samples_per_pass: Optional[int] = None) -> DistributionFit:
    """Maximise E[loss_fn(x + delta)] + lbd * H(p(delta)) over per-example (mean, std_param).

    loss_fn takes a batch of m*B adversarial inputs (m whole samples, sample-major) and returns
    m*B per-example losses. The entropy enters as the per-dimension mean of -log p, as the original
    code does, so the paper's lambda values carry over. Only the distribution parameters get
    gradients (torch.autograd.grad): a model inside loss_fn accumulates nothing in its .grad.
    `track` records the objective, loss and entropy before each step (a host sync per step).
    `noise(step)`, if given, supplies the (k, *x.shape) normals of each step instead of the op's
    generator (e.g. per-example streams that make an attack independent of batching).
    `samples_per_pass` sends the k samples through loss_fn m at a time (None: all k at once).
    NaN components of the classifier's input gradient count as zero, as in the other attacks
    (attacks/engine.py): a model whose gradient is NaN somewhere cannot turn the distribution's
    parameters, and so every sample, into NaN.
    `accumulate_grads=True` steps on the sum of every step's gradient so far instead of the
    step's own (Alg. 2): what the authors' adt_exp.py does, which never zeroes its Adam's
    gradients; with betas (0, 0) a step then follows the sign of the running sum. Its gradients are
    k/B of these (a batch-mean loss summed over k samples, against each example's mean over k),
    which Adam feels only through its eps: `adam_eps` = ADAM_EPS * B / k gives its steps exactly
    (ExplicitDistribution passes it with accumulate_grads, B the global batch).
    The k*B batch is drawn and differentiated through the op as one; only the classifier's
    passes are split, so the result is the same up to how the classifier's kernels treat batch
    size (bit-identical with oneDNN on CPU in fp32: tests/test_speed_modes.py,
    test_split_passes_give_bit_identical_distributions). A
    smaller pass keeps the activations in cache: on a 2-core CPU with a 32 MiB L3, five 64-image
    passes of small-cnn ran faster than one of 320 images (benchmarks/RESULTS.md).
    """
    steps = check_steps(steps, "steps", minimum=0)
    num_samples = check_int(num_samples, "num_samples")
    lbd = check_non_negative(lbd, "lbd")
    lr = check_non_negative(lr, "lr")
    betas = check_betas(betas)
    adam_eps = check_non_negative(adam_eps, "adam_eps")
    if samples_per_pass is not None:
        samples_per_pass = check_int(samples_per_pass, "samples_per_pass")
    x = x.detach()
    # The distribution lives in float32 at least: Adam's eps (1e-8) is 0 in float16, where a zero
    # gradient then steps by 0/0, and every sample of a float16 batch came out NaN. The classifier
    # sees its own dtype.
    work = torch.promote_types(x.dtype, torch.float32)
    mean = torch.zeros_like(x, dtype=work, requires_grad=True)
    std_param = torch.zeros_like(mean, requires_grad=True)
    x_work = x.to(work)
    optimiser = torch.optim.Adam([mean, std_param], lr=lr, betas=betas, eps=adam_eps)
    fit = DistributionFit(mean, std_param)
    dims = x[0].numel()
    per_pass = num_samples if samples_per_pass is None else min(samples_per_pass, num_samples)
    for step in range(steps):
        with torch.enable_grad():
            normals = None if noise is None else noise(step)
            x_adv, neg_log_prob = sample_and_entropy(mean, std_param, num_samples, epsilon, x=x_work,
                                                     noise=None if normals is None else normals.to(work),
                                                     generator=generator, backend=backend)
            per_example, input_grad = _losses_and_input_grads(loss_fn, x_adv.detach().to(x.dtype), per_pass)
            loss = per_example.view(num_samples, -1).mean(0)
            entropy = neg_log_prob.mean(0) / dims
            # d(-objective.sum())/d(entropy) = -lbd; input_grad is d(-objective.sum())/d(x_adv).
            grads = torch.autograd.grad([x_adv, entropy], [mean, std_param],
                                        [input_grad.to(work), torch.full_like(entropy, -lbd)])
        if accumulate_grads and step > 0:
            mean.grad += grads[0]
            std_param.grad += grads[1]
        else:
            mean.grad, std_param.grad = grads
        if track:
            objective = loss + lbd * entropy.detach()
            fit.objective.append(objective.mean().item())
            fit.loss.append(loss.mean().item())
            fit.entropy_per_dim.append(entropy.mean().item())
        optimiser.step()
    fit.mean, fit.std_param = mean.detach(), std_param.detach()
    return fit


def _losses_and_input_grads(loss_fn: BatchedLoss, x_adv: torch.Tensor, per_pass: int):
    """Per-example losses of the (k, B, *S) inputs and d(-mean_k loss summed over B)/d(x_adv),
    the classifier run on per_pass samples at a time (gradients w.r.t. the inputs only)."""
    num_samples = x_adv.shape[0]
    losses, grads = [], []
    for start in range(0, num_samples, per_pass):
        chunk = x_adv[start:start + per_pass].flatten(0, 1).requires_grad_()
        chunk_loss = loss_fn(chunk)
        # The same -1/k that mean(0) of -objective.sum() sends back to every per-example loss.
        weight = torch.full_like(chunk_loss, -1.0) / num_samples
        grads.append(input_gradient(chunk_loss, chunk, weight).nan_to_num(nan=0.0))
        losses.append(chunk_loss.detach())
    grad = grads[0] if len(grads) == 1 else torch.cat(grads)
    return torch.cat(losses) if len(losses) > 1 else losses[0], grad.view_as(x_adv)


def choose_samples_per_pass(loss_fn: BatchedLoss, x: torch.Tensor, num_samples: int,
                            repeats: int = 2) -> tuple[int, dict]:
    """The samples per classifier pass that ran fastest per sample on this device and model.

    Times loss_fn's forward plus its input gradient on m copies of the batch x for m in
    1, 2, 4, ... and num_samples (best of `repeats`, in turns, after one warm-up each) and returns the
    fastest m with the measured seconds per sample by m. Uses no random numbers. The warm-ups go
    smallest first, and the first m that runs out of memory is left out with every larger
    one: a pass that does not fit is not a choice (torch's error when not even m = 1 fits).
    """
    candidates = sorted({min(2 ** i, num_samples) for i in range(num_samples.bit_length())} | {num_samples})
    runs, out_of_memory = {}, False
    for m in candidates:
        try:
            runs[m] = partial(_losses_and_input_grads, loss_fn, x.detach().unsqueeze(0).repeat(m, *[1] * x.dim()), m)
            runs[m]()  # its warm-up
        except RuntimeError as err:
            if m == candidates[0] or not is_out_of_memory(err):
                raise
            runs.pop(m, None)  # and with it the m copies of the batch
            out_of_memory = True
            break
    if out_of_memory and x.device.type == "cuda":  # what the failed pass held, free once its handler ended
        torch.cuda.empty_cache()
    seconds = {m: total / m for m, total in best_seconds(runs, x.device, repeats, warmed_up=True).items()}
    return min(seconds, key=seconds.get), seconds
