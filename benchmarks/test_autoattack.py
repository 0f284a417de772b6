"""AutoAttack, standard version: adt_fast's `autoattack` against torchattacks 3.5.1's AutoAttack,
on the same model and points, in one run.

torchattacks' AutoAttack keeps the class defaults of its APGD, APGDT and FAB: 10 steps, not the
reference's 100. So it runs twice: as shipped, and as the reference's standard version
(MultiAttack of its components with 100 steps); the latter does the same work as ours.
The model: a small CNN trained for a few seconds on the digits data (1 x 8 x 8, 10 classes);
32 test points at epsilon = 0.08, where about 70 % stay robust, so every component has work.
torchattacks is a test-only install (`pip install --no-deps torchattacks==3.5.1`); without it
only our row runs.
Run: flock /tmp/adt_fast_bench.lock pytest benchmarks/test_autoattack.py --benchmark-only
"""

import pytest
import torch
from torch import nn

from adt_fast.attacks.autoattack import AutoAttack
from adt_fast.attacks.suite import AttackContext

from conftest import synchronize

EPSILON, BATCH = 0.08, 32  # BATCH is also a parameter, so suites can be grouped by param:batch
ROUNDS = 3


@pytest.fixture(scope="module")
def digits_model():
    return train_digits_model()


def train_digits_model():
    from adt_fast.data import load

    x_train, y_train = load("digits", "train")
    x_test, y_test = load("digits", "test")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(8):
        order = torch.randperm(len(x_train))
        for begin in range(0, len(x_train), 64):
            index = order[begin:begin + 64]
            loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval(), x_test[:BATCH], y_test[:BATCH]


def _ours(model, x, y):
    attack = AutoAttack("autoattack", EPSILON)
    return attack.run(AttackContext(model, seed=0), x, y, torch.arange(len(x))).correct


def _torchattacks_as_shipped(model, x, y):
    """torchattacks' AutoAttack: its APGD, APGD-T and FAB keep their class default of 10 steps."""
    torchattacks = pytest.importorskip("torchattacks")
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=EPSILON, version="standard",
                                     n_classes=10, seed=0)
    return _correct(model, attack(x, y), y)


def _torchattacks_reference_settings(model, x, y):
    """torchattacks' components in the reference's standard version: 100 steps each."""
    ta = pytest.importorskip("torchattacks")
    attack = ta.MultiAttack([
        ta.APGD(model, eps=EPSILON, steps=100, n_restarts=1, loss="ce", seed=0),
        ta.APGDT(model, eps=EPSILON, steps=100, n_restarts=1, n_classes=10, seed=0),
        ta.FAB(model, eps=EPSILON, steps=100, n_restarts=1, multi_targeted=True, n_classes=10, seed=0),
        ta.Square(model, eps=EPSILON, n_queries=5000, n_restarts=1, resc_schedule=False, seed=0)])
    return _correct(model, attack(x, y), y)


def _correct(model, x_adv, y):
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).cpu()


@pytest.mark.parametrize("batch", [BATCH])
@pytest.mark.parametrize("implementation", ["adt_fast", "torchattacks-reference-settings",
                                            "torchattacks-as-shipped"])
def test_autoattack_standard(benchmark, digits_model, implementation, batch):
    model, x, y = digits_model
    run = {"adt_fast": _ours, "torchattacks-reference-settings": _torchattacks_reference_settings,
           "torchattacks-as-shipped": _torchattacks_as_shipped}[implementation]

    def call():
        correct = run(model, x, y)
        synchronize()
        return correct

    correct = benchmark.pedantic(call, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["robust_accuracy"] = float(correct.float().mean())
    assert 0 < float(correct.float().mean()) < 1
