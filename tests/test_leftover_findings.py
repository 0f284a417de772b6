"""Leftovers of earlier reviews on the attacks' argument checks, each pinned by the call that hit it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adt_fast.attacks import DistributionAttack
from adt_fast.attacks.distribution import fit_distribution
from adt_fast.attacks.suite import canonical_name, parse_attacks

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
