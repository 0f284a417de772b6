"""Defects other helpers' reviews found in clean_accuracy, the shared argument checks, the command
line's parsers, worst_case and parse_attacks, each pinned by the call that hit it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adt_fast.train import clean_accuracy


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize("x, y, message", [
    (torch.rand(2, 1, 2, 2).to_sparse(), torch.tensor([0, 1]), "x must be a dense tensor"),
    (torch.rand(2, 1, 2, 2, device="meta"), torch.tensor([0, 1]), "x is on the meta device"),
    (torch.rand(4), torch.tensor([0, 1, 2, 0]), r"x must be batched, shape \(N, ...\), got \(4,\)"),
    (torch.rand(2, 1, 2, 2), torch.tensor([0.0, 1.0]), "y must be an integer tensor of class labels, got torch.float32"),
    (torch.rand(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64), r"no examples \(x is empty\)"),
    (torch.rand(2, 1, 2, 2), torch.tensor([0, 1, 2]), r"y must have shape \(2,\) to match x, got \(3,\)"),
    (torch.rand(2, 1, 2, 2) * 255, torch.tensor([0, 1]), r"x must lie in \[0, 1\]"),
])
def test_clean_accuracy_refuses_a_batch_it_cannot_score_naming_the_argument(x, y, message):
    with pytest.raises((TypeError, ValueError), match=message):
        clean_accuracy(_model(), x, y)


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": -5}, "batch_size must be an integer >= 1, got -5"),     # scored 0.0
    ({"max_batches": 0}, "max_batches must be an integer >= 1, got 0"),     # scored 0.0
    ({"max_batches": -1}, "max_batches must be an integer >= 1, got -1"),   # dropped the last batch
])
def test_clean_accuracy_refuses_batch_settings_that_score_too_few_examples(settings, message):
    with pytest.raises(ValueError, match=message):
        clean_accuracy(_model(), torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]), **settings)


def test_clean_accuracy_still_scores_int32_labels_of_a_good_batch():
    model, x = _model(), torch.rand(4, 1, 2, 2)
    y = model(x).argmax(1)
    assert clean_accuracy(model, x, y.int(), batch_size=3) == 1.0
