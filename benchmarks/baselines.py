"""The original ADT code's forms, timed as baselines (never used by the library).

They follow the authors' implementation (adt_exp.py): k samples drawn one after another with
torch.randn, +1e-8 inside the logs, a full backward per sample that also fills the classifier's
.grad, and the distribution's gradients never zeroed between steps (they add up; docs/training.md
§2a, `--dist-grad accumulated`).
"""

import math

import torch
import torch.nn.functional as F


def original_sample(mean, std_param, x, epsilon):
    """One sample as the original code draws it: clamp(x + delta) and its -log p per example."""
    r = torch.randn_like(mean)
    sigma = F.softplus(std_param)
    t = torch.tanh(mean + sigma * r)
    per_element = r * r / 2 + torch.log(sigma + 1e-8) + torch.log(1 - t * t + 1e-8)
    constant = mean[0].numel() * (0.5 * math.log(2 * math.pi) + math.log(epsilon))
    return torch.clamp(x + epsilon * t, 0, 1), per_element.flatten(1).sum(1) + constant


def original_adt_exp_step(model, optimiser, x, y, *, epsilon, steps=7, samples=5, lbd=0.01):
    """One ADT_EXP training iteration as the original code writes it (Alg. 2 with its gradients
    accumulated over the steps, eager, fp32)."""
    mean = torch.zeros_like(x, requires_grad=True)
    std_param = torch.zeros_like(x, requires_grad=True)
    adam = torch.optim.Adam([mean, std_param], lr=0.3, betas=(0.0, 0.0))
    model.eval()
    for _ in range(steps):
        for _ in range(samples):
            x_adv, neg_log_prob = original_sample(mean, std_param, x, epsilon)
            loss = F.cross_entropy(model(x_adv), y) + lbd * neg_log_prob.mean() / x[0].numel()
            (-loss).backward()
        adam.step()
    model.train()
    with torch.no_grad():
        x_adv, _ = original_sample(mean, std_param, x, epsilon)
    optimiser.zero_grad()
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    optimiser.step()
    return loss
