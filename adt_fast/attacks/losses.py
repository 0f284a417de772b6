"""Per-example losses shared by attacks (maximised) and trainers (minimised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _accurate(t: torch.Tensor) -> torch.Tensor:
    """Float32 at least (bf16/fp16 logits under autocast), float64 kept: a float64 model's tiny
    gradients would round to 0 in float32, and the attacks' signs with them."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_accurate(logits), y, reduction="none")


def trades_kl(adv_logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x + delta)) per example, as TRADES' code computes its robust term."""
    clean_log_probs = F.log_softmax(_accurate(clean_logits), dim=1)
    adv_log_probs = F.log_softmax(_accurate(adv_logits), dim=1)
    return (clean_log_probs.exp() * (clean_log_probs - adv_log_probs)).sum(1)


def trades_loss(adv_logits: torch.Tensor, clean_logits: torch.Tensor, y: torch.Tensor,
                beta: float) -> torch.Tensor:
    """TRADES' outer objective: CE on the clean input plus beta times the robust KL."""
    return cross_entropy(clean_logits, y) + beta * trades_kl(adv_logits, clean_logits)


def cw_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """C&W's margin loss: max over other classes minus the true logit, capped at kappa.

    The true class is masked with -inf, so the max is right even when every other logit is negative.
    """
    logits = _accurate(logits)
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return torch.clamp(others.max(1).values - true_logit, max=kappa)


def cosine_distance(features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of two feature maps, flattened per example.

    FeaAttack (appendix C.5) minimises this towards a target image of another class: the original
    code's `pair_cos_dist`, i.e. the adversarial features are pulled towards the target's.
    """
    return 1 - F.cosine_similarity(_accurate(features).flatten(1), _accurate(target_features).flatten(1),
                                   dim=1)


# The DLR losses' denominators read the 3rd (untargeted) and 4th (targeted) largest logits.
DLR_CLASSES, DLR_TARGETED_CLASSES = 3, 4


def _check_dlr_classes(logits: torch.Tensor, needed: int, loss: str) -> None:
    if logits.dim() != 2 or logits.shape[1] < needed:
        raise ValueError(f"the {loss} loss needs logits of shape (N, classes) with at least "
                         f"{needed} classes, got {tuple(logits.shape)}")


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Difference of Logits Ratio (Croce & Hein, ICML 2020, Eq. 6), untargeted.

    -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12), with z_pi the logits sorted in decreasing
    order: invariant to shifting and rescaling the logits, so saturated softmaxes cannot hide the
    margin from the attack. Needs at least 3 classes.
    """
    _check_dlr_classes(logits, DLR_CLASSES, "DLR")
    logits = _accurate(logits)
    top = logits.sort(dim=1, descending=True).values
    return cw_margin(logits, y, float("inf")) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). Needs 4 classes."""
    _check_dlr_classes(logits, DLR_TARGETED_CLASSES, "targeted DLR")
    logits = _accurate(logits)
    top = logits.sort(dim=1, descending=True).values
    gap = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return -gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)
