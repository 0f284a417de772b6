"""Findings of fuzzing the amortised methods' Python API (generators, amortized.py) over the inputs
users have: numbers of other types than Python's, image sizes as sequences, out-of-range sizes."""

import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from adt_fast import amortized as am
from adt_fast.models.generators import MAX_WIDTH, PerturbationGenerator, QNetwork


def _classifier():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


# The checks accept any real number (a Fraction, numpy's) but the value was dropped: a Fraction then
# failed deep in torch ("unsupported operand type(s) for *: 'Fraction' and 'Tensor'").
def test_checked_numbers_are_used_as_the_floats_the_checks_return():
    torch.manual_seed(0)
    x, out, y = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0, 2])
    model = _classifier()
    eps, eps_f = Fraction(1, 8), 0.125
    for a, b in zip(am.tanh_perturbation(out, x, eps), am.tanh_perturbation(out, x, eps_f)):
        assert torch.equal(a, b)
    assert torch.equal(am.generator_inputs(model, x, y, eps, batch_mean=True, batch_size=np.int64(4)),
                       am.generator_inputs(model, x, y, eps_f, batch_mean=True, batch_size=4))
    assert torch.equal(am.least_likely_fgsm(model, x, eps), am.least_likely_fgsm(model, x, eps_f))
    loss, entropy = torch.rand(2), torch.rand(2)
    assert torch.equal(am.amortized_loss(loss, entropy, Fraction(1, 2)), am.amortized_loss(loss, entropy, 0.5))
    logits = torch.rand(2, 3), torch.rand(2, 3)
    assert torch.equal(am.alp_penalty(*logits, Fraction(1, 2)), am.alp_penalty(*logits, 0.5))


def test_generator_lr_factor_is_a_float_for_any_integer_epoch_counts():
    factor = am.generator_lr_factor(120, constant_epochs=np.int64(100), decay_epochs=np.int64(50))
    assert type(factor) is float and factor == am.generator_lr_factor(120)
    # an int too large for a float divided without converting it (was an OverflowError)
    assert am.generator_lr_factor(120, constant_epochs=100, decay_epochs=2**2000) == 1.0


# _pair's hint said any Sequence of ints, but it took only tuple, list and torch.Size, and refused
# numpy's integers, which every other count of these networks (in_channels, width) accepts.
@pytest.mark.parametrize("image_size", [range(5, 8, 2), (np.int64(5), 7), [5, np.int32(7)], torch.Size([5, 7])])
def test_image_size_is_any_sequence_of_two_integers(image_size):
    for net in (PerturbationGenerator(2, image_size, "implicit", width=2), QNetwork(2, image_size)):
        assert net.image_size == (5, 7) and all(type(s) is int for s in net.image_size)
    assert PerturbationGenerator(2, np.int64(6), "implicit", width=2).image_size == (6, 6)


@pytest.mark.parametrize("image_size", ["ab", (5, 7.0), (5, True), np.array([5, 7]), torch.tensor([5, 7]), (5,),
                                        range(10**12), 0, None, 8.0])
def test_image_size_that_is_not_two_positive_integers_is_refused_naming_it(image_size):
    with pytest.raises(ValueError, match="image_size must be a positive int or an \\(H, W\\) pair"):
        PerturbationGenerator(2, image_size, "implicit", width=2)


# A huge width reached the allocator (10**9: "you tried to allocate 360000000000 bytes") or overflowed
# inside torch (2**70: "Overflow when unpacking long long").
@pytest.mark.parametrize("width", [MAX_WIDTH + 1, 10**9, 2**70, np.int64(2**40)])
def test_a_generator_width_past_the_bound_is_refused_naming_it(width):
    why = rf"^width must be an integer from 1 to {MAX_WIDTH}, got {re.escape(repr(width))}$"
    with pytest.raises(ValueError, match=why):
        PerturbationGenerator(3, 8, "direct", width=width)


# min_std refused numpy's floats, which every other number of the package accepts; negative_slope was
# not checked: NaN made q's outputs NaN without a word, a string failed at the first forward; a numpy
# in_channels was checked but its numpy value used (out_channels a numpy integer).
def test_q_network_takes_any_real_min_std_and_refuses_a_bad_negative_slope_and_counts_are_ints():
    q = QNetwork(np.int64(1), 8, min_std=np.float32(0.5))
    assert type(q.min_std) is float and q.min_std == 0.5 and type(q.in_channels) is int
    for slope in (float("nan"), float("inf"), "x", None, True):
        with pytest.raises(ValueError, match=r"^negative_slope must be a finite number, got"):
            QNetwork(1, 8, negative_slope=slope)
    assert QNetwork(1, 8, negative_slope=np.float64(0.2)).features[2].negative_slope == 0.2
    assert type(PerturbationGenerator(np.int64(1), 8, width=2).out_channels) is int
