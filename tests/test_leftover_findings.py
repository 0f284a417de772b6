"""Leftovers of earlier reviews on the attacks' argument checks, each pinned by the call that hit it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adt_fast.attacks import APGDAttack, DistributionAttack, FeatureAttack, evaluate, feature_attack, pgd
from adt_fast.attacks.distribution import fit_distribution
from adt_fast.attacks.suite import canonical_name, parse_attacks
from adt_fast.train.loop import clean_accuracy

from split_net import SplitNet, split_data

EPS = 0.1


def test_the_distribution_attacks_numpy_betas_come_back_as_floats():
    """numpy betas reached the settings, and so a report's JSON, as numpy floats."""
    attack = DistributionAttack(EPS, betas=np.array([0.0, 0.5], dtype=np.float32))
    assert attack.betas == (0.0, 0.5) and all(type(b) is float for b in attack.betas)
    json.dumps(attack.settings())


@pytest.mark.parametrize("betas", [(-0.1, 0.0), (0.0, 1.0), (float("nan"), 0.0), (0.0,), (0.1, 0.2, 0.3), "0.9",
                                   0.9, (True, 0.0), ("0.1", "0.2")])
def test_bad_betas_are_named(betas):
    """Each failed inside torch's Adam (or later, at its first step), naming no argument."""
    with pytest.raises(ValueError, match=r"^the distribution attack's betas must be two numbers in \[0, 1\)"):
        DistributionAttack(EPS, betas=betas)
    with pytest.raises(ValueError, match=r"^betas must be two numbers in \[0, 1\)"):
        fit_distribution(lambda z: z.flatten(1).sum(1), torch.rand(2, 3), epsilon=EPS, steps=1, num_samples=1,
                         lbd=0.0, betas=betas)


@pytest.mark.parametrize("call", [canonical_name, lambda name: parse_attacks(["fgsm", name])],
                         ids=["canonical_name", "parse_attacks"])
def test_an_attack_name_that_is_no_string_is_quoted(call):
    """'attack names are strings, got int' did not say which entry of a list was meant."""
    with pytest.raises(TypeError, match=r"^attack names are strings, got 20 \(int\)$"):
        call(20)


class _Constant(torch.nn.Module):
    """Ten logits whatever the input, so that only the checks can refuse an input of no values."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.bias.expand(len(x), 10)


@pytest.mark.parametrize("shape", [(2, 0), (2, 3, 0, 4)])
@pytest.mark.parametrize("call", [lambda m, x, y: pgd(m, x, y, EPS, 1),
                                  lambda m, x, y: evaluate(m, x, y, epsilon=EPS, attacks="fgsm", epsilon_curve=()),
                                  lambda m, x, y: clean_accuracy(m, x, y)], ids=["pgd", "evaluate", "clean_accuracy"])
def test_an_x_of_inputs_with_no_values_is_named(call, shape):
    """aminmax's 'Expected reduction dim to be specified for input.numel() == 0' for the attacks;
    clean_accuracy scored the model's constant guesses."""
    with pytest.raises(ValueError, match=r"^x holds inputs of no values, shape \(2, [0-9, ]*\): each input needs at "
                                         r"least one$"):
        call(_Constant(), torch.zeros(shape), torch.tensor([0, 1]))


@pytest.mark.parametrize("call", [lambda x, y: pgd(SplitNet().eval(), x, y, 5e-324, 1),
                                  lambda x, y: DistributionAttack(1e-310, steps=1),
                                  lambda x, y: feature_attack(SplitNet().eval(), x, y, 1e-310, targets=1, steps=1),
                                  lambda x, y: APGDAttack("apgd-ce", 1e-310, steps=1),
                                  lambda x, y: evaluate(SplitNet().eval(), x, y, epsilon=5e-324, attacks="fgsm")],
                         ids=["pgd", "DistributionAttack", "feature_attack", "APGDAttack", "evaluate"])
def test_a_subnormal_epsilon_is_refused_by_every_attack_as_by_evaluate(call):
    """The stand-alone attacks took a budget below the smallest normal double, which evaluate refused."""
    with pytest.raises(ValueError, match=r"^epsilon \S+ is below 2\.23e-308, where the attacks' steps \(epsilon/4, "
                                         r"epsilon/8\) may round to 0$"):
        call(*split_data())


def test_a_subnormal_step_of_a_small_normal_epsilon_is_taken():
    """A fixed fraction of a budget just above the smallest normal double is a subnormal step, still above 0."""
    x, y = split_data()
    assert FeatureAttack(3e-308).step_size == 3e-308 / 8
    assert pgd(SplitNet().eval(), x, y, 3e-308, 1, step_size=1e-310).shape == x.shape


def test_a_feaattack_pool_label_the_model_lacks_is_named():
    """pool_y labels past the model's classes were taken as one more class to draw targets from."""
    x, y = split_data()
    with pytest.raises(ValueError, match=r"^pool_y's labels go up to 12 but the model returns 10 logits: pool_y's "
                                         r"labels and the model come from different datasets$"):
        feature_attack(SplitNet().eval(), x, y, EPS, targets=1, steps=1, pool_x=x, pool_y=y + 7)
