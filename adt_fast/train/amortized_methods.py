"""Amortised ADT (Alg. 3, 4) and the AT-FGSM, ALP and L2L baselines as training methods.

Every method here is a composition of pieces, as in ``adt_fast.train.methods``; the networks and
the objective's pieces come from ``adt_fast.models.generators`` and ``adt_fast.amortized``
(docs/amortized.md):

    adt-exp-am    = Amortized(ExplicitGenerator)         + CEOuter()      lambda 0.01
    adt-exp-am --loss trades
                  = Amortized(ExplicitGenerator)         + TradesOuter(beta)  weight beta * lambda
    adt-imp-am    = Amortized(ImplicitGenerator, q)      + CEOuter()      lambda 1.0, hinge 0.9
    adt-imp-am --loss trades
                  = Amortized(ImplicitGenerator, q)      + TradesOuter(beta)  weight beta * lambda
    l2l           = Amortized(DirectGenerator)           + CEOuter()      no entropy
    at-fgsm       = LeastLikelyFGSM()                    + MixedCEOuter(c) clean weight c 0.5
                                                           (CEOuter() at c = 0; ComposedMethod)
    alp           = PGD(CEInner(), uniform start)        + ALPOuter(w)    (ComposedMethod)

**One simultaneous update (Alg. 3, 4).** An amortised step computes the generator's inputs
``[x, g1, g2]`` with the classifier in eval mode (detached), draws x_adv from the generator (train
mode), feeds ``reverse_gradient(x_adv)`` to the shared outer loss (classifier in train mode) and
backwards the one scalar ``amortized_loss(loss, entropy, lambda) = loss.mean() - lambda *
entropy.mean()``: the classifier's SGD descends the loss while the generator's and q's Adams,
taking ordinary descent steps on the same backward, ascend loss + lambda * H and the bound. The
reported ``train_loss`` is the classifier's loss (CE or TRADES), not the objective with its entropy
term; that is the one difference from ``Method.train_step``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import amortized as am
from ..models import classifier_config
from ..models.generators import PerturbationGenerator, QNetwork
from .config import NO_HINGE
from .methods import (CEInner, CEOuter, ComposedMethod, Method, MethodSpec, OuterLoss, Perturbation, PGD,
                      Runtime, StepOutput, TradesOuter, _detached, _pgd_step_size, inner_entropy_weight,
                      needs_two_examples, register_method)


def _run(rt: Runtime, net: nn.Module, *args: torch.Tensor):
    """A generator or q-network forward under the run's precision (autocast for bf16)."""
    with rt.autocast():
        return net(*args)


# ------------------------------------------------------------------------------------------------
# Generator perturbations: x_adv still attached to the generator (and q), and an entropy term.
# ------------------------------------------------------------------------------------------------
class GeneratorPerturbation:
    """A perturbation drawn from a trained generator.

    ``__call__(model, x, y, rt)`` returns ``(x_adv, entropy)``: x_adv differentiable with respect
    to the generator's parameters, and the per-example entropy estimate or bound (None for L2L).
    The inputs ``[x, g1, g2]`` are taken with the classifier in eval mode and detached
    (``amortized.generator_inputs``); nothing reaches the classifier's ``.grad``.
    """

    mode = "direct"

    def __init__(self, generator: PerturbationGenerator, *, epsilon: float, batch_mean: bool = False):
        if generator.mode != self.mode:
            raise ValueError(f"{type(self).__name__} needs a {self.mode} generator, got {generator.mode}")
        self.generator, self.epsilon, self.batch_mean = generator, epsilon, batch_mean

    def modules(self) -> dict:
        return {"generator": self.generator}

    def networks_needing_two_examples(self, x: torch.Tensor) -> list:
        """See Method.networks_needing_two_examples; the generator keeps the image size (stride 1)."""
        return []

    def inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rt: Runtime) -> torch.Tensor:
        return am.generator_inputs(model, x, y, self.epsilon, forward=lambda inp: rt.forward(model, inp),
                                   batch_mean=self.batch_mean, batch_size=rt.batch_size(x))

    def __call__(self, model, x, y, rt) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError


class DirectGenerator(GeneratorPerturbation):
    """L2L (Chen et al., D.5): delta = eps * tanh(G(x, g1, g2)), one example, no entropy."""

    mode = "direct"

    def __call__(self, model, x, y, rt):
        x_adv, _ = am.tanh_perturbation(_run(rt, self.generator, self.inputs(model, x, y, rt)), x, self.epsilon)
        return x_adv, None


class ExplicitGenerator(GeneratorPerturbation):
    """ADT_EXP-AM (Alg. 3): one sample of the tanh-Gaussian whose (mu, rho) the generator outputs,
    and its exact -log p per dimension (Eq. A.1), from the torch generator of x's device."""

    mode = "explicit"

    def __call__(self, model, x, y, rt):
        out = _run(rt, self.generator, self.inputs(model, x, y, rt))
        return am.explicit_perturbation(out, x, self.epsilon, backend=rt.backend, noise=rt.op_noise(x, 1))


class ImplicitGenerator(GeneratorPerturbation):
    """ADT_IMP-AM (Alg. 4): delta = eps * tanh(G(x, g1, g2, z)), z ~ U(-1, 1)^64, and the bound
    U(q) = mean_j log q(z_j | delta) of Eq. A.2 / A.3 (hinged at -hinge unless hinge is None).
    Under data parallelism the batch hinge acts on the global batch's mean of the bound."""

    mode = "implicit"

    def __init__(self, generator: PerturbationGenerator, q: QNetwork, *, epsilon: float,
                 hinge: Optional[float] = am.DEFAULT_HINGE, hinge_over: str = "batch", batch_mean: bool = False):
        super().__init__(generator, epsilon=epsilon, batch_mean=batch_mean)
        if q.noise_dim != generator.noise_dim:
            raise ValueError(f"q reads {q.noise_dim}-dim noise, the generator draws {generator.noise_dim}")
        self.q, self.hinge, self.hinge_over = q, hinge, hinge_over

    def modules(self) -> dict:
        return {"generator": self.generator, "q": self.q}

    def networks_needing_two_examples(self, x):
        """q ends in 1x1 features on images of up to 23 px (smaller ones are padded to 20)."""
        return ["the q-network"] if needs_two_examples(self.q, torch.zeros_like(x)) else []

    def __call__(self, model, x, y, rt):
        inputs = self.inputs(model, x, y, rt)
        z = rt.draw(lambda like: am.sample_noise(like.shape[0], self.generator.noise_dim, like.device), x)
        x_adv, t = am.tanh_perturbation(_run(rt, self.generator, inputs, z), x, self.epsilon)
        q_mean, q_std = _run(rt, self.q, t)
        return x_adv, am.entropy_lower_bound(q_mean, q_std, z, hinge=self.hinge, hinge_over=self.hinge_over,
                                             hinge_mean=None if rt.shard is None else rt.shard.global_mean)


# ------------------------------------------------------------------------------------------------
# The amortised method: generator perturbation + a shared outer loss, one backward.
# ------------------------------------------------------------------------------------------------
class AmortizedMethod(Method):
    """A generator perturbation trained jointly with the classifier by gradient reversal.

    ``optimisers`` maps the names of the perturbation's modules ("generator", "q") to their
    optimisers; ``schedulers`` their per-epoch schedules (none by default: constant lr).
    """

    def __init__(self, config, model, runtime, perturbation: GeneratorPerturbation, outer: OuterLoss,
                 lbd: float, optimisers: dict, name: str, schedulers: Optional[dict] = None):
        super().__init__(config, model, runtime)
        if set(optimisers) != set(perturbation.modules()):
            raise ValueError(f"optimisers {sorted(optimisers)} do not match the modules "
                             f"{sorted(perturbation.modules())}")
        self.perturbation, self.outer, self.lbd, self.name = perturbation, outer, lbd, name
        self._optimisers, self._schedulers = dict(optimisers), dict(schedulers or {})

    def modules(self) -> dict:
        return self.perturbation.modules()

    def optimisers(self) -> dict:
        return self._optimisers

    def schedulers(self) -> dict:
        return self._schedulers

    def networks_needing_two_examples(self, x):
        return self.perturbation.networks_needing_two_examples(x)

    def step(self, model, x, y):
        x_adv, entropy = self.perturbation(model, x, y, self.runtime)
        per_example, clean_logits = self.outer(model, x, am.reverse_gradient(x_adv), y, self.runtime)
        objective = am.amortized_loss(per_example, entropy, self.lbd)
        return StepOutput(per_example.mean(), _detached(clean_logits),
                          x_adv.detach(),
                          objective=objective,
                          entropy=None if entropy is None else entropy.detach().mean())


# ------------------------------------------------------------------------------------------------
# Baseline pieces
# ------------------------------------------------------------------------------------------------
class LeastLikelyFGSM(Perturbation):
    """AT-FGSM's examples: one targeted FGSM step toward the least-likely class (Kurakin et al.,
    "step l.l."), classifier in eval mode, through the shared engine."""

    def __init__(self, *, epsilon: float):
        self.epsilon = epsilon

    def __call__(self, model, x, y, rt):
        return am.least_likely_fgsm(model, x, self.epsilon, forward=lambda inp: rt.forward(model, inp))


def _mixed_batch(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, rt: Runtime):
    """f(x) and f(x') from one train-mode forward of the mixed batch [x; x'] of 2B inputs (Kurakin
    et al.'s and Kannan et al.'s mixed minibatch): BatchNorm normalises both halves with the same
    statistics."""
    logits = rt.forward(model, torch.cat([x, x_adv]))
    return logits[:x.shape[0]], logits[x.shape[0]:]


class MixedCEOuter(OuterLoss):
    """AT-FGSM (Kurakin et al.): clean_weight * CE(f(x)) + (1 - clean_weight) * CE(f(x')) on one
    mixed batch. Returns the clean half's logits for train accuracy."""

    def __init__(self, clean_weight: float = am.AT_FGSM_CLEAN_WEIGHT):
        self.clean_weight = clean_weight

    def __call__(self, model, x, x_adv, y, rt):
        clean, adv = _mixed_batch(model, x, x_adv, rt)
        return am.mixed_cross_entropy(clean, adv, y, self.clean_weight), clean


class ALPOuter(OuterLoss):
    """ALP (Kannan et al.): the even mixed CE (CE(f(x)) + CE(f(x'))) / 2 plus the pairing term
    weight * mean_c (f(x) - f(x'))^2, on one mixed batch. Returns the clean half's logits."""

    def __init__(self, weight: float = am.ALP_WEIGHT):
        self.weight = weight

    def __call__(self, model, x, x_adv, y, rt):
        clean, adv = _mixed_batch(model, x, x_adv, rt)
        return am.alp_loss(clean, adv, y, self.weight), clean


# ------------------------------------------------------------------------------------------------
# Builders and registration
# ------------------------------------------------------------------------------------------------
GENERATOR_PARAMS = {"generator_lr": am.GENERATOR_LR, "generator_width": 256, "generator_grad": "per-example"}
# --loss trades: the generator ascends beta * (KL + lambda * H), lambda against the KL as in the
# authors' TRADES variants (adt_expam.py, adt_impam.py up to 69294c5: the gradient through x_adv
# divided by beta, the entropy's not). Runs recorded before the flag existed ran with it off.
ADT_EXP_AM_PARAMS = {"lbd": am.EXP_AM_LAMBDA, "loss": "ce", "beta": 6.0, "beta_scales_entropy": True,
                     **GENERATOR_PARAMS}
ADT_IMP_AM_PARAMS = {"lbd": am.IMP_AM_LAMBDA, "hinge": am.DEFAULT_HINGE, "loss": "ce", "beta": 6.0,
                     "beta_scales_entropy": True, **GENERATOR_PARAMS}
AM_FORMER_DEFAULTS = {"beta_scales_entropy": False}
ALP_PARAMS = {"steps": 7, "step_size": _pgd_step_size, "alp_weight": am.ALP_WEIGHT}


def _generator(cfg, model: nn.Module, rt: Runtime, mode: str) -> PerturbationGenerator:
    """A generator for the classifier's input shape (channels, image size)."""
    shape = classifier_config(model)
    return PerturbationGenerator(shape["in_channels"], shape["image_size"], mode,
                                 width=cfg.generator_width).to(rt.device)


def _batch_mean(cfg) -> bool:
    """--generator-grad batch-mean: g1, g2 of the batch-mean CE, as the authors' code (C.2 says per example)."""
    return cfg.generator_grad == "batch-mean"


def _outer(cfg) -> OuterLoss:
    return TradesOuter(cfg.beta) if getattr(cfg, "loss", None) == "trades" else CEOuter()


def _build_adt_exp_am(cfg, model, rt):
    generator = _generator(cfg, model, rt, "explicit")
    perturbation = ExplicitGenerator(generator, epsilon=cfg.epsilon, batch_mean=_batch_mean(cfg))
    return AmortizedMethod(cfg, model, rt, perturbation, _outer(cfg), inner_entropy_weight(cfg),
                           {"generator": am.generator_optimizer(generator, lr=cfg.generator_lr)}, "adt-exp-am")


def _build_adt_imp_am(cfg, model, rt):
    generator = _generator(cfg, model, rt, "implicit")
    shape = classifier_config(model)
    q = QNetwork(shape["in_channels"], shape["image_size"], noise_dim=generator.noise_dim).to(rt.device)
    hinge = None if cfg.hinge == NO_HINGE else cfg.hinge
    perturbation = ImplicitGenerator(generator, q, epsilon=cfg.epsilon, hinge=hinge, batch_mean=_batch_mean(cfg))
    optimisers = {"generator": am.generator_optimizer(generator, lr=cfg.generator_lr), "q": am.q_optimizer(q)}
    return AmortizedMethod(cfg, model, rt, perturbation, _outer(cfg), inner_entropy_weight(cfg), optimisers,
                           "adt-imp-am")


def _build_l2l(cfg, model, rt):
    generator = _generator(cfg, model, rt, "direct")
    return AmortizedMethod(cfg, model, rt, DirectGenerator(generator, epsilon=cfg.epsilon, batch_mean=_batch_mean(cfg)),
                           CEOuter(), 0.0, {"generator": am.generator_optimizer(generator, lr=cfg.generator_lr)}, "l2l")


def _build_at_fgsm(cfg, model, rt):
    """--clean-weight 0 trains on the adversarial batch alone: a mixed batch would also put the
    clean half into BatchNorm's statistics, which the adversarial-only loss never had."""
    outer = CEOuter() if cfg.clean_weight == 0 else MixedCEOuter(cfg.clean_weight)
    return ComposedMethod(cfg, model, rt, LeastLikelyFGSM(epsilon=cfg.epsilon), outer, "at-fgsm")


def _build_alp(cfg, model, rt):
    pgd = PGD(CEInner(), epsilon=cfg.epsilon, steps=cfg.steps, step_size=cfg.step_size, start="uniform")
    return ComposedMethod(cfg, model, rt, pgd, ALPOuter(cfg.alp_weight), "alp")


register_method(MethodSpec("adt-exp-am", _build_adt_exp_am, dict(ADT_EXP_AM_PARAMS), losses=("ce", "trades"),
                           uses_sampling_op=True, former_defaults=dict(AM_FORMER_DEFAULTS),
                           description="ADT_EXP-AM (Alg. 3): a generator outputs the explicit distribution, "
                                       "one sample, one simultaneous update"))
register_method(MethodSpec("adt-imp-am", _build_adt_imp_am, dict(ADT_IMP_AM_PARAMS), losses=("ce", "trades"),
                           former_defaults=dict(AM_FORMER_DEFAULTS),
                           description="ADT_IMP-AM (Alg. 4): a noise-driven generator and q-network, "
                                       "entropy lower bound, one simultaneous update"))
register_method(MethodSpec("at-fgsm", _build_at_fgsm, {"clean_weight": am.AT_FGSM_CLEAN_WEIGHT},
                           former_defaults={"clean_weight": 0.0},
                           description="Kurakin et al.: train on a mix of clean and least-likely targeted "
                                       "FGSM examples"))
register_method(MethodSpec("alp", _build_alp, dict(ALP_PARAMS),
                           description="Kannan et al.'s adversarial logit pairing on PGD examples "
                                       "(T=7, step eps/4)"))
register_method(MethodSpec("l2l", _build_l2l, dict(GENERATOR_PARAMS),
                           description="Chen et al.'s learning-to-learn: a generator trained to maximise CE, "
                                       "one example, no entropy"))

__all__ = ["ALPOuter", "AmortizedMethod", "DirectGenerator", "ExplicitGenerator",
           "GeneratorPerturbation", "ImplicitGenerator", "LeastLikelyFGSM", "MixedCEOuter"]
