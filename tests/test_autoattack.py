"""AutoAttack on the shared engine: APGD's step-size rules on scripted losses, the l_inf contract,
batch independence, zero-gradient models, the ensemble in `evaluate`, the gradient-masking
checks, the paper protocol's two A_rob figures, and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adt_fast.attacks import autoattack, evaluate, sanity_warnings
from adt_fast.attacks.autoattack import (APGDAttack, AutoAttack, FABAttack, SquareAttack,
                                         linf_hyperplane_projection, square_p)
from adt_fast.attacks.engine import apgd, apgd_checkpoints
from adt_fast.attacks.losses import dlr, dlr_targeted
from adt_fast.attacks.suite import AttackContext, parse_attacks

from test_attacks import TinyNet

EPS = 0.1


def _random_net(seed: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 8 * 8, classes)).eval()


def _small(name: str, epsilon: float = EPS):
    """The components with budgets small enough for a unit test."""
    return {"apgd-ce": APGDAttack("apgd-ce", epsilon, loss="ce", steps=12),
            "apgd-dlr": APGDAttack("apgd-dlr", epsilon, loss="dlr", steps=12),
            "apgd-t": APGDAttack("apgd-t", epsilon, loss="dlr-targeted", steps=8, targets=3),
            "fab-t": FABAttack(epsilon, steps=8, targets=3),
            "square": SquareAttack(epsilon, queries=60)}[name]


def _small_autoattack(name: str, epsilon: float = EPS) -> AutoAttack:
    return AutoAttack(name, epsilon, [_small(c, epsilon) for c in autoattack.COMPONENTS[name]])


def _batch(n: int = 6, seed: int = 5, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=generator, dtype=dtype)
    return x


# ----------------------------------------------------------------------------- APGD's rules


def test_checkpoint_schedule_is_the_papers():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # p_j = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 -> ceil(p_j * 10), duplicates dropped
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(1) == [1]
    assert apgd_checkpoints(0) == []


def _scripted(values):
    """A loss that ignores the input's value and returns values[k] at the k-th evaluation."""
    calls = {"k": 0}

    def loss_fn(z):
        value = torch.full((len(z),), float(values[calls["k"]]), dtype=z.dtype)
        calls["k"] += 1
        return value + 0 * z.flatten(1).sum(1), torch.zeros(len(z), dtype=torch.bool)
    return loss_fn


def _run_scripted(values, steps=100):
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    return apgd(_scripted(values), x, epsilon=EPS, steps=steps).step_sizes[:, 0]


def test_a_loss_that_rises_every_step_keeps_the_first_step_size():
    sizes = _run_scripted(range(101))
    assert torch.all(sizes == 2 * EPS)


def test_a_flat_loss_halves_the_step_at_every_checkpoint():
    sizes = _run_scripted([1.0] * 101)
    expected = [2 * EPS / 2 ** sum(w <= i for w in apgd_checkpoints(100)) for i in range(100)]
    torch.testing.assert_close(sizes, torch.tensor(expected, dtype=sizes.dtype))


def test_condition_one_counts_rises_against_rho():
    # 17 rises of 22 transitions up to w_1 = 22 is more than 0.75 * 22 = 16.5: no halving;
    # 16 rises is not: halved.
    for rises, halved in ((17, False), (16, True)):
        values = [float(t) if t <= rises else float(rises) for t in range(23)] + \
                 [100.0 + t for t in range(78)]
        sizes = _run_scripted(values)
        assert float(sizes[22]) == pytest.approx(EPS if halved else 2 * EPS), rises
        assert float(sizes[21]) == pytest.approx(2 * EPS)


def test_condition_two_halves_when_the_best_loss_stalls():
    # rising to 22 until w_1 = 22 (no halving), then a saw tooth below that best: 18 rises of 19
    # transitions up to w_2 = 41 keep condition (1) quiet, but the best loss has not improved
    # and the step was not halved at w_1, so condition (2) halves it; then the loss rises again.
    values = list(range(23)) + list(range(19)) + [100 + t for t in range(59)]
    sizes = _run_scripted(values)
    assert torch.all(sizes[:41] == 2 * EPS)
    assert torch.all(sizes[41:] == EPS)


def test_halving_restarts_from_the_best_point():
    # The loss is highest at the start (x itself) and its gradient points up. Step 0 goes to the
    # ball's edge x + eps, where the iterate stays, never beating the start: at w_1 = 22 the step
    # is halved to eps and the iterate goes back to x. Step 22 is then
    # P(x + 0.75 * eps + 0.25 * (x - (x + eps))) = x + eps / 2; without the restart it would stay
    # at x + eps.
    x = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    seen = []

    def loss_fn(z):
        seen.append(z.detach().clone())
        bonus = 100.0 if len(seen) == 1 else 0.0
        return z.flatten(1).sum(1) + bonus, torch.zeros(1, dtype=torch.bool)

    run = apgd(loss_fn, x, epsilon=EPS, steps=100)
    assert float(seen[22]) == pytest.approx(0.5 + EPS)
    assert float(seen[23]) == pytest.approx(0.5 + EPS / 2)
    assert float(run.step_sizes[22, 0]) == pytest.approx(EPS)


def test_dlr_losses_match_their_formulas():
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0, 2.0]])
    y, t = torch.tensor([0]), torch.tensor([4])
    # sorted: 3, 2, 1, 0.5, -1
    assert float(dlr(logits, y)) == pytest.approx(-(3 - 2) / (3 - 1))
    assert float(dlr_targeted(logits, y, t)) == pytest.approx(-(3 - 2) / (3 - 0.5 * (1 + 0.5)))
    # invariant to shifting and scaling the logits
    assert float(dlr(5 * logits + 7, y)) == pytest.approx(float(dlr(logits, y)))


# ----------------------------------------------------------------------------- FAB and Square pieces


def test_linf_hyperplane_projection_is_the_smallest_move_onto_the_plane():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(50, 7, generator=generator, dtype=torch.float64)
    w = torch.randn(50, 7, generator=generator, dtype=torch.float64)
    w[:5, :3] = 0
    b = (w * torch.rand(50, 7, generator=generator, dtype=torch.float64)).sum(1)  # reachable
    d = linf_hyperplane_projection(points, w, b)
    moved = points + d
    assert torch.all(moved >= -1e-12) and torch.all(moved <= 1 + 1e-12)
    torch.testing.assert_close((w * moved).sum(1), b)
    # optimality: with any smaller radius the best achievable move falls short of the plane
    radius = d.abs().amax(1)
    gap = b - (w * points).sum(1)
    direction = gap.sign()[:, None] * w.sign()
    room = torch.where(direction > 0, 1 - points, points)
    smaller = (radius * 0.999)[:, None]
    assert torch.all((w.abs() * torch.minimum(smaller, room)).sum(1) < gap.abs())


def test_square_p_schedule_is_autoattacks_not_rescaled():
    assert square_p(0.8, 0) == 0.8
    assert square_p(0.8, 10) == 0.8 and square_p(0.8, 11) == 0.4
    assert square_p(0.8, 3500) == 0.8 / 64  # AutoAttack (resc_schedule=False); rescaled to 5,000: 0.8 / 256
    assert square_p(0.8, 4999) == 0.8 / 128  # the last of its 5,000 queries
    assert square_p(0.8, 9000) == 0.8 / 512


# ----------------------------------------------------------------------------- the l_inf contract


ALL = ["apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "autoattack", "autoattack-fast"]


def _attack(name):
    return _small_autoattack(name) if name.startswith("autoattack") else _small(name)


@pytest.mark.parametrize("name", ALL)
def test_adversarial_inputs_stay_in_the_ball_and_range_and_inputs_are_untouched(name):
    model = _random_net(0).double()
    x = _batch(8)
    x[0] = 0.0  # corners of the box
    x[1] = 1.0
    y = model(x).argmax(1)  # every point starts correct
    y[-1] = (y[-1] + 1) % 10  # one starts wrong: it is broken without attack
    x_copy, y_copy = x.clone(), y.clone()
    outcome = _attack(name).run(AttackContext(model, seed=1), x, y, torch.arange(8))
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert (outcome.x_adv - x).abs().max() <= EPS + 1e-12
    assert outcome.x_adv.min() >= 0 and outcome.x_adv.max() <= 1
    assert not bool(outcome.correct[-1])
    # an example reported broken is misclassified at the returned input
    with torch.no_grad():
        wrong = model(outcome.x_adv).argmax(1) != y
    assert torch.all(wrong[~outcome.correct])


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_result_whatever_the_batch_size_and_order(name):
    model = _random_net(0).double()
    x = _batch(5)
    y = torch.tensor([0, 1, 2, 1, 0])
    ids = torch.tensor([17, 3, 250, 9, 42])
    ctx = AttackContext(model, seed=11)
    attack = _attack(name)
    whole = attack.run(ctx, x, y, ids)
    order = torch.tensor([3, 0, 4, 2, 1])
    shuffled = attack.run(ctx, x[order], y[order], ids[order])
    torch.testing.assert_close(shuffled.x_adv, whole.x_adv[order], atol=1e-12, rtol=0)
    assert torch.equal(shuffled.correct, whole.correct[order])
    for i in (0, 2):
        alone = attack.run(ctx, x[i:i + 1], y[i:i + 1], ids[i:i + 1])
        torch.testing.assert_close(alone.x_adv[0], whole.x_adv[i], atol=1e-12, rtol=0)
        assert bool(alone.correct[0]) == bool(whole.correct[i])
    again = attack.run(ctx, x, y, ids)
    assert torch.equal(again.x_adv, whole.x_adv)


class DetachedLinear(nn.Module):
    """Logit 0 = sum(x - 0.5), the others 0, with the input detached: zero input gradients.

    At x = 0.55 everywhere, the margin of class 0 is 0.05 * 64 = 3.2; moving every pixel down by
    epsilon = 0.1 makes it -3.2, while a random start moves it by about +-0.5.
    """

    def forward(self, x):
        score = (x.detach() - 0.5).flatten(1).sum(1) + 0 * x.flatten(1).sum(1)
        return torch.cat([score[:, None], torch.zeros(len(x), 9, dtype=x.dtype)], 1)


def test_a_zero_gradient_model_defeats_gradient_attacks_but_not_square():
    model = DetachedLinear()
    x = torch.full((4, 1, 8, 8), 0.55, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    ctx = AttackContext(model, seed=0)
    for name in ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t"):
        assert bool(_small(name).run(ctx, x, y, torch.arange(4)).correct.all()), name
    square = SquareAttack(EPS, queries=300).run(ctx, x, y, torch.arange(4))
    assert not bool(square.correct.any())


def test_bf16_runs_and_keeps_the_contract():
    model = _random_net(0)
    x = _batch(4, dtype=torch.float32)
    y = model(x).argmax(1)
    outcome = _small("apgd-ce").run(AttackContext(model, precision="bf16"), x, y, torch.arange(4))
    assert (outcome.x_adv - x).abs().max() <= EPS + 1e-6
    assert outcome.x_adv.dtype == torch.float32


# ----------------------------------------------------------------------------- evaluate


@pytest.fixture
def small_components(monkeypatch):
    monkeypatch.setattr(autoattack, "make_component",
                        lambda name, eps: _small_autoattack(name, eps) if name.startswith("autoattack")
                        else _small(name, eps))


def test_autoattack_in_evaluate_reports_components_and_joins_the_worst_case(small_components):
    model = _random_net(0)
    x = _batch(12, dtype=torch.float32)
    y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10
    report = evaluate(model, x, y, epsilon=0.03, attacks="pgd:3,autoattack,square", seed=0,
                      epsilon_curve=(), batch_size=5)
    assert set(report.robust_accuracy) == {"pgd3", "autoattack", "square"}
    curve = report.curves["autoattack"]["points"]
    assert [p["attack"] for p in curve] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert curve[0]["attacked"] == 10  # the naturally correct points
    for before, after in zip(curve, curve[1:]):
        assert after["attacked"] == before["robust"]
    assert curve[-1]["accuracy"] == report.robust_accuracy["autoattack"]
    worst = report.correct["worst_case"]
    assert torch.all(worst <= report.correct["autoattack"])
    assert report.worst_case_accuracy <= report.robust_accuracy["autoattack"]
    assert report.paper_worst_case_accuracy is None
    table = report.table("m")
    assert "AutoAttack" in table and "robust/attacked per component" in table
    assert report.to_dict()["attacks"]["autoattack"]["components"]["apgd-ce"]["loss"] == "cross_entropy"


def test_paper_protocol_keeps_both_figures(monkeypatch):
    from adt_fast.attacks import evaluation

    torch.manual_seed(0)
    model = TinyNet(width=4).eval()  # with the .features / .head split FeaAttack needs
    x = _batch(6, dtype=torch.float32)
    y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # two classes at least, so FeaAttack has targets
    monkeypatch.setattr(evaluation, "PAPER_FEATURE_TARGETS", 2)  # 200 in earnest
    report = evaluate(model, x, y, epsilon=0.03, protocol="paper", attacks="dist", dist_steps=1,
                      epsilon_curve=())
    assert set(report.robust_accuracy) == {"fgsm", "pgd20", "pgd100", "mim", "cw", "feature", "dist"}
    assert report.attacks["cw"]["steps"] == 20 and report.attacks["feature"]["targets"] == 2
    assert report.paper_worst_case_accuracy >= report.worst_case_accuracy
    data = report.to_dict()
    assert data["paper_worst_case_over"] == ["natural", "fgsm", "pgd20", "pgd100", "mim", "cw", "feature"]
    assert "dist" in data["worst_case_over"] and data["protocol"] == "paper"
    lines = report.table("m").splitlines()
    assert lines[1].split()[-2:] == ["Arob-paper", "Arob"]
    assert any(line.startswith("Arob-paper: worst case over") for line in lines)


def test_masking_checks():
    natural = torch.ones(100, dtype=torch.bool)
    masks = {"autoattack": torch.ones(100, dtype=torch.bool)}
    assert sanity_warnings(natural, masks, gradient_free_gain=1) == []
    assert "Square" in sanity_warnings(natural, masks, gradient_free_gain=2)[0]
    assert sanity_warnings(natural, masks, targeted_gain=5) == []
    assert "APGD-T" in sanity_warnings(natural, masks, targeted_gain=6)[0]


def test_square_beating_gradient_attacks_is_flagged_by_evaluate(monkeypatch):
    model = DetachedLinear()
    x = torch.full((4, 1, 8, 8), 0.55)
    y = torch.zeros(4, dtype=torch.long)
    aa = AutoAttack("autoattack", EPS, [_small(c) for c in ("apgd-ce", "apgd-t", "fab-t")]
                    + [SquareAttack(EPS, queries=300)])
    monkeypatch.setattr(autoattack, "make_component", lambda name, eps: aa)
    report = evaluate(model, x, y, epsilon=EPS, attacks="autoattack", epsilon_curve=())
    assert report.robust_accuracy["autoattack"] == 0
    assert any("gradient-free Square" in w for w in report.warnings)


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("build, message", [
    (lambda: APGDAttack("apgd-ce", EPS, loss="mse"), "loss"),
    (lambda: APGDAttack("apgd-ce", EPS, steps=0), "steps"),
    (lambda: APGDAttack("apgd-ce", EPS, restarts=0), "restarts"),
    (lambda: APGDAttack("apgd-ce", EPS, rho=1.5), "rho"),
    (lambda: APGDAttack("apgd-ce", -1.0), "epsilon"),
    (lambda: FABAttack(EPS, targets=0), "targets"),
    (lambda: SquareAttack(EPS, queries=0), "queries"),
    (lambda: SquareAttack(EPS, p_init=0), "p_init"),
    (lambda: SquareAttack(EPS, p_init=True), "p_init"),
    (lambda: APGDAttack("apgd-ce", EPS, momentum=True), "momentum"),
    (lambda: APGDAttack("apgd-ce", EPS, rho=float("nan")), "rho"),
    # FAB's factors, which ran with any value before (NaN, a mix weight above 1, an undershoot)
    (lambda: FABAttack(EPS, alpha_max=float("nan")), "alpha_max"),
    (lambda: FABAttack(EPS, alpha_max=1.5), "alpha_max"),
    (lambda: FABAttack(EPS, alpha_max=-0.1), "alpha_max"),
    (lambda: FABAttack(EPS, eta=0.5), r"eta .* must lie in \[1, inf\)"),
    (lambda: FABAttack(EPS, eta=float("inf")), "eta"),
    (lambda: FABAttack(EPS, beta=0.0), "beta"),
    (lambda: FABAttack(EPS, beta=1.0), "beta"),
    (lambda: FABAttack(EPS, beta=float("nan")), "beta"),
    (lambda: AutoAttack("autoattack-plus", EPS), "version"),
])
def test_bad_settings_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_evaluate_arguments():
    model = _random_net(0)
    x = _batch(2, dtype=torch.float32)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="protocol"):
        evaluate(model, x, y, protocol="robustbench")
    with pytest.raises(ValueError, match="feature_targets"):
        evaluate(model, x, y, protocol="paper", feature_targets=5)
    with pytest.raises(ValueError, match="listed twice"):
        parse_attacks("autoattack,AutoAttack")
    with pytest.raises(ValueError, match="unknown attack"):
        parse_attacks("apgd")


def test_targeted_attacks_need_enough_classes():
    model = _random_net(0, classes=3).double()
    x = _batch(2)
    y = model(x).argmax(1)
    with pytest.raises(ValueError, match="at least 10 classes"):
        APGDAttack("apgd-t", EPS, loss="dlr-targeted").run(AttackContext(model), x, y, torch.arange(2))


class _CountingForwards(nn.Module):
    """A model that counts its forwards, to see whether any attack step ran."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return self.model(x)


@pytest.mark.parametrize("classes, attacks, refused, needed", [
    (5, "pgd20,mim,apgd-t", "'apgd-t'", "at least 10 classes"),
    (5, "fgsm,fab-t", "'fab-t'", "at least 10 classes"),
    (5, "pgd20,autoattack", "'autoattack'", "at least 10 classes"),
    (2, "pgd20,apgd-dlr", "'apgd-dlr'", "at least 3 classes"),
])
def test_too_few_classes_stop_evaluate_before_any_attack_runs(classes, attacks, refused, needed):
    model = _CountingForwards(_random_net(0, classes=classes))
    x = _batch(4, dtype=torch.float32)
    y = torch.arange(4) % classes
    with pytest.raises(ValueError) as caught:
        evaluate(model, x, y, epsilon=EPS, attacks=attacks, epsilon_curve=())
    message = str(caught.value)
    assert message.startswith("attacks: ") and refused in message and needed in message
    assert f"the model returns {classes}" in message
    assert model.forwards <= 1  # the one forward that reads the number of classes


def test_dlr_refuses_too_few_classes_clearly():
    two_classes = torch.tensor([[1.0, 0.0]])
    with pytest.raises(ValueError, match="DLR loss needs .* at least 3 classes"):
        dlr(two_classes, torch.tensor([0]))
    with pytest.raises(ValueError, match="targeted DLR loss needs .* at least 4 classes"):
        dlr_targeted(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([1]))
    model = _random_net(0, classes=2).double()
    x = _batch(2)
    with pytest.raises(ValueError, match="'apgd-dlr' .* at least 3 classes"):
        APGDAttack("apgd-dlr", EPS, loss="dlr").perturb(model, x, torch.tensor([0, 1]))


def test_autoattack_on_too_few_classes_names_its_attacks_that_can_run():
    """A 3-class model: AutoAttack's refusal says which of its attacks run there, not only why it
    cannot (apgd-t's 9 targets and fab-t's need 10 classes)."""
    problem = AutoAttack("autoattack", EPS).too_few_classes(3)
    assert problem.endswith("; of its attacks, apgd-ce, square can run on it: name them in the attacks instead")
    assert AutoAttack("autoattack-fast", EPS).too_few_classes(3).endswith("of its attacks, apgd-ce can run on it: "
                                                                           "name them in the attacks instead")
    assert AutoAttack("autoattack", EPS).too_few_classes(10) is None
    # components of your own, none of which can run: no empty list of attacks to name
    only_targeted = AutoAttack("autoattack", EPS, components=[APGDAttack("apgd-t", EPS, loss="dlr-targeted")])
    assert only_targeted.too_few_classes(3).endswith("the model returns 3")


def test_class_needs_follow_the_number_of_targets():
    assert APGDAttack("apgd-t", EPS, loss="dlr-targeted", targets=5).classes_needed()[0] == 6
    assert APGDAttack("apgd-t", EPS, loss="dlr-targeted", targets=1).classes_needed()[0] == 4
    assert FABAttack(EPS, targets=2).classes_needed()[0] == 3
    assert APGDAttack("apgd-ce", EPS).classes_needed() is None
    assert SquareAttack(EPS).classes_needed() is None
    assert AutoAttack("autoattack", EPS).classes_needed()[0] == 10


# APGD's step rule and targets, FAB's update, Square's stripes, size and reach, against the
# reference's rules (tests written to fail on mutations the ones above let pass; review 2026-12-05).
class Ladder(nn.Module):
    """Ten logits 0, -1, -2, ..., -9 at x = 0.5; only class 2's moves, by 40 * mean(x - 0.5).

    Moving every pixel up by epsilon = 0.1 lifts logit 2 to +2: the point is broken, and only
    through class 2, the third-highest class. Class 1 (second) cannot be reached, the untargeted
    DLR loss (whose runner-up is class 1) pushes class 2 down, and so do the targeted DLR toward
    class 1 and FAB toward class 1 (a constant gap: zero gradient).
    """

    def forward(self, x):
        s = 40.0 * (x - 0.5).flatten(1).mean(1)
        base = -torch.arange(10, dtype=x.dtype).expand(len(x), 10)
        return base + torch.nn.functional.one_hot(torch.tensor(2), 10).to(x.dtype) * s[:, None]


def _ladder_batch(n=4):
    generator = torch.Generator().manual_seed(0)
    return 0.5 + 0.002 * (torch.rand(n, 1, 8, 8, generator=generator, dtype=torch.float64) - 0.5)


@pytest.mark.parametrize("attack", [
    APGDAttack("apgd-ce", EPS, loss="ce", steps=12),
    APGDAttack("apgd-t", EPS, loss="dlr-targeted", steps=8, targets=2),
    FABAttack(EPS, steps=8, targets=2),
    SquareAttack(EPS, queries=60),
    AutoAttack("autoattack", EPS, [APGDAttack("apgd-ce", EPS, loss="dlr", steps=8),  # misled on purpose
                                   APGDAttack("apgd-t", EPS, loss="dlr-targeted", steps=8, targets=2)]),
], ids=["apgd-ce", "apgd-t", "fab-t", "square", "autoattack"])
def test_every_attack_breaks_a_point_only_the_third_class_can_break(attack):
    model = Ladder()
    x = _ladder_batch()
    y = torch.zeros(len(x), dtype=torch.long)
    assert torch.all(model(x).argmax(1) == 0)
    assert torch.equal(model(x).argsort(1, descending=True)[:, :3], torch.tensor([[0, 1, 2]] * len(x)))
    outcome = attack.run(AttackContext(model, seed=0), x, y, torch.arange(len(x)))
    assert not bool(outcome.correct.any())
    assert torch.all(model(outcome.x_adv).argmax(1) != y)
    assert (outcome.x_adv - x).abs().max() <= EPS + 1e-12


def test_the_untargeted_dlr_and_the_first_target_alone_cannot_break_the_ladder():
    """The two halves of the test above: what makes its targeted attacks need their 2nd target."""
    model, x = Ladder(), _ladder_batch()
    y = torch.zeros(len(x), dtype=torch.long)
    ctx = AttackContext(model, seed=0)
    for attack in (APGDAttack("apgd-dlr", EPS, loss="dlr", steps=8),
                   APGDAttack("apgd-t", EPS, loss="dlr-targeted", steps=8, targets=1),
                   FABAttack(EPS, steps=8, targets=1)):
        assert bool(attack.run(ctx, x, y, torch.arange(len(x))).correct.all()), attack.name


# ----------------------------------------------------------------------------- starts, eval mode, settings


class Recording(nn.Module):
    """A model with zero input gradients (nothing ever gets broken) that records its inputs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        score = (x.detach() - 0.5).flatten(1).sum(1) + 0 * x.flatten(1).sum(1)
        return torch.cat([score[:, None] + 10, torch.zeros(len(x), 9, dtype=x.dtype)], 1)


def test_apgd_starts_each_try_at_its_own_random_point_on_the_sphere():
    """APGD's start is x + eps * t / ||t||_inf (Croce & Hein 2020, as the reference code), one per
    restart and per target. With 1 step each try makes two forwards after the clean one."""
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    for attack, tries in ((APGDAttack("apgd-ce", EPS, steps=1, restarts=3), 3),
                          (APGDAttack("apgd-t", EPS, loss="dlr-targeted", steps=1, targets=3), 3)):
        model = Recording()
        attack.run(AttackContext(model, seed=0), x, y, torch.arange(1))
        starts = [model.seen[1 + 2 * k] for k in range(tries)]
        assert len(model.seen) == 1 + 2 * tries
        for start in starts:
            assert float((start - x).abs().max()) == pytest.approx(EPS, abs=1e-12)
        for a in range(tries):
            for b in range(a):
                assert not torch.equal(starts[a], starts[b]), (attack.name, a, b)


@pytest.mark.parametrize("name", ALL)
def test_attacks_run_in_eval_mode_and_leave_batchnorm_alone(name):
    torch.manual_seed(0)
    model = TinyNet(batchnorm=True).double()
    with torch.no_grad():  # running statistics far from any batch's
        model.body[1].running_mean.fill_(0.2)
        model.body[1].running_var.fill_(3.0)
    x = _batch(6)
    y = model.eval()(x).argmax(1)
    expected = _attack(name).run(AttackContext(model, seed=3), x, y, torch.arange(6))
    model.train()
    running = model.body[1].running_mean.clone()
    outcome = _attack(name).run(AttackContext(model, seed=3), x, y, torch.arange(6))
    assert model.training and model.body[1].training
    torch.testing.assert_close(model.body[1].running_mean, running, rtol=0, atol=0)
    assert torch.equal(outcome.correct, expected.correct)
    torch.testing.assert_close(outcome.x_adv, expected.x_adv, rtol=0, atol=1e-12)


def test_components_have_the_reference_settings():
    """AutoAttack's standard version (Croce & Hein 2020, autoattack.py, version='standard')."""
    eps = 8 / 255
    parts = AutoAttack("autoattack", eps).settings()["components"]
    assert list(parts) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    for name in ("apgd-ce", "apgd-t"):
        s = parts[name]
        assert (s["steps"], s["restarts"], s["rho"], s["momentum"]) == (100, 1, 0.75, 0.75), name
        assert s["initial_step_size"] == 2 * eps
    assert parts["apgd-t"]["targets"] == 9
    fab = parts["fab-t"]
    assert (fab["steps"], fab["targets"], fab["alpha_max"], fab["eta"], fab["beta"]) == (100, 9, 0.1, 1.05, 0.9)
    assert (parts["square"]["queries"], parts["square"]["p_init"]) == (5000, 0.8)


def test_apgd_attack_passes_its_settings_to_the_engine(monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return apgd(*args, **kwargs)
    monkeypatch.setattr(autoattack, "apgd", spy)
    model = _random_net(0).double()
    x = _batch(2)
    APGDAttack("apgd-ce", 0.02, steps=3, rho=0.6, momentum=0.9).run(
        AttackContext(model), x, model(x).argmax(1), torch.arange(2))
    assert seen and all((k["steps"], k["rho"], k["momentum"], k["epsilon"]) == (3, 0.6, 0.9, 0.02) for k in seen)


@pytest.mark.parametrize("name", ALL)
def test_batch_independence_with_every_point_attacked(name):
    """As test_same_seed_same_result_whatever_the_batch_size_and_order, but with every point
    classified correctly, so that all of them are attacked (there, 4 of 5 start misclassified)."""
    model = _random_net(0).double()
    x = _batch(6)
    y = model(x).argmax(1)
    ids = torch.tensor([17, 3, 250, 9, 42, 5])
    ctx = AttackContext(model, seed=11)
    attack = _attack(name)
    whole = attack.run(ctx, x, y, ids)
    assert not bool(whole.correct.all())  # something was broken by the attack itself
    order = torch.tensor([3, 0, 4, 2, 1, 5])
    shuffled = attack.run(ctx, x[order], y[order], ids[order])
    torch.testing.assert_close(shuffled.x_adv, whole.x_adv[order], atol=1e-12, rtol=0)
    assert torch.equal(shuffled.correct, whole.correct[order])
    for i in range(6):
        alone = attack.run(ctx, x[i:i + 1], y[i:i + 1], ids[i:i + 1])
        torch.testing.assert_close(alone.x_adv[0], whole.x_adv[i], atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- FAB's update


class LinearGap(nn.Module):
    """Class 1's logit a . (z - x) - r * ||a||_1, class 0's 0, the others -5: the l_inf distance
    from x to class 1's side is exactly r, along sign(a)."""

    def __init__(self, x, a, r):
        super().__init__()
        self.x, self.a, self.r = x, a, r

    def forward(self, z):
        s = (z - self.x).flatten(1) @ self.a - self.r * self.a.abs().sum()
        return torch.cat([torch.zeros(len(z), 1, dtype=z.dtype), s[:, None],
                          torch.full((len(z), 8), -5.0, dtype=z.dtype)], 1)


def _fab_on_a_line(steps, alpha_max, eta, beta):
    """FAB's iteration in units of r along the one direction a linear gap leaves it: p is the
    iterate's position (1 = on the plane), both projections are exact, no box face binds."""
    p, best = 0.0, math.inf
    for _ in range(steps):
        a_iterate, a_original = abs(1 - p), 1.0
        alpha = min(a_iterate / (a_iterate + a_original), alpha_max)
        p = (p + eta * (1 - p)) * (1 - alpha) + eta * alpha
        if p > 1:
            best = min(best, p)
            p = beta * p
    return best


@pytest.mark.parametrize("steps,beta", [(1, 0.9), (3, 0.9), (8, 0.9), (8, 0.5)])
def test_fab_follows_its_update_rule_on_a_linear_model(steps, beta):
    """Croce & Hein (ICML 2020b), Alg. 1: the mix with weight min(alpha, alpha_max), the
    overshoot eta on both projections, the step back by beta, and the smallest adversarial
    point kept."""
    x = 0.3 + 0.4 * torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = torch.randn(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = EPS / 1.1
    attack = FABAttack(EPS, steps=steps, targets=1, beta=beta)
    outcome = attack.run(AttackContext(LinearGap(x, a, r)), x, torch.zeros(3, dtype=torch.long), torch.arange(3))
    expected = _fab_on_a_line(steps, attack.alpha_max, attack.eta, beta) * r
    assert expected <= EPS
    assert not bool(outcome.correct.any())
    norms = (outcome.x_adv - x).flatten(1).abs().amax(1)
    torch.testing.assert_close(norms, torch.full_like(norms, expected), rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------- Square


def test_square_reports_the_rule_it_scores_by():
    """Square stops at margin <= 0 but scores argmax != y (docs/evaluation.md); at an exact tie of
    the logits the two differ, and the report must state the one the accuracy follows."""
    tie = nn.Sequential(nn.Flatten(), nn.Linear(48, 10)).double()
    nn.init.zeros_(tie[1].weight), nn.init.zeros_(tie[1].bias)  # all logits tie: margin 0, argmax 0
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    attack = SquareAttack(EPS, queries=2)
    outcome = attack.run(AttackContext(tie), x, torch.zeros(2, dtype=torch.long), torch.arange(2))
    assert bool(outcome.correct.all())  # margin 0, yet classified correctly: not broken
    assert "argmax != y" in attack.settings()["broken_if"]
    assert "margin" not in attack.settings()["broken_if"]


class Counting(nn.Module):
    """Logit 0 = K - (number of pixels moved by about epsilon from the image x), the others 0."""

    def __init__(self, x, k):
        super().__init__()
        self.x, self.k = x, k

    def forward(self, z):
        moved = ((z - self.x).abs() > EPS / 2).flatten(1).sum(1).to(z.dtype)
        score = self.k - moved + 0 * z.flatten(1).sum(1)
        return torch.cat([score[:, None], torch.zeros(len(z), 9, dtype=z.dtype)], 1)


def test_square_starts_from_vertical_stripes():
    """Andriushchenko et al. (2020), Alg. 2 and the reference code: x + eps * a random sign per
    channel and column moves every pixel; one query can move at most a 7 x 7 square of 8 x 8."""
    image = 0.3 + 0.4 * torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = image.expand(4, -1, -1, -1).clone()  # one image, four example ids: four random stripes
    model = Counting(image, 63.5)  # correct at x, broken once all 64 pixels move
    outcome = SquareAttack(EPS, queries=1).run(AttackContext(model), x, torch.zeros(4, dtype=torch.long),
                                               torch.arange(4))
    assert not bool(outcome.correct.any())


class Corner(nn.Module):
    """Logit 0 = 1 + 2 * (z - image)[..., -1, -1] / eps: broken only by moving the last row's last pixel down."""

    def __init__(self, x):
        super().__init__()
        self.x = x

    def forward(self, z):
        score = 1 + 2 * (z - self.x)[:, 0, -1, -1] / EPS
        return torch.cat([score[:, None], torch.zeros(len(z), 9, dtype=z.dtype)], 1)


def test_square_reaches_the_last_row_and_column():
    """The paper's sampler draws positions from [0, h - s] (docs/evaluation.md): the last row and
    column can be moved."""
    image = 0.3 + 0.4 * torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = image.expand(8, -1, -1, -1).clone()
    outcome = SquareAttack(EPS, queries=300).run(AttackContext(Corner(image), seed=0), x,
                                                torch.zeros(8, dtype=torch.long), torch.arange(8))
    assert not bool(outcome.correct.any())


class Constant(nn.Module):
    """Always class 0 by a margin of 1 (Square never improves), recording its inputs."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, z):
        self.seen.append(z.detach().clone())
        return torch.cat([torch.ones(len(z), 1, dtype=z.dtype), torch.zeros(len(z), 9, dtype=z.dtype)], 1) \
            + 0 * z.flatten(1).sum(1, keepdim=True)


def test_square_side_is_the_rounded_root_of_p_times_the_pixels():
    """s = round(sqrt(p * h * w)) (the reference: int(round(math.sqrt(p * n_features / c)))):
    9 on 10 x 10 images at p = 0.8, where truncation would give 8."""
    x = 0.3 + 0.4 * torch.rand(6, 3, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = Constant()
    SquareAttack(EPS, queries=1).run(AttackContext(model), x, torch.zeros(6, dtype=torch.long), torch.arange(6))
    # forwards: the clean x, the stripes, the first proposal
    stripes, proposal = model.seen[1], model.seen[2]
    changed = (stripes != proposal).any(1)  # (B, H, W)
    rows = changed.any(2).sum(1)  # stripes are vertical: a square changes all its rows or none
    assert int(rows.max()) == 9


def test_square_redraws_signs_that_would_not_move_the_point():
    """The reference's `while` loop redraws a square's signs while the proposal equals the current
    point. Without it, on grayscale images (one sign per square) and small late squares about half
    the queries were spent on the current point again; with up to 8 redraws, 1 in 256 of those."""
    x = 0.3 + 0.4 * torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = Constant()  # never improves, so the current point stays the stripes
    SquareAttack(EPS, queries=600).run(AttackContext(model), x, torch.zeros(4, dtype=torch.long),
                                       torch.arange(4))
    stripes, proposals = model.seen[1], torch.stack(model.seen[2:])
    assert len(proposals) == 600
    wasted = int((proposals == stripes).flatten(2).all(2).sum())
    assert wasted <= 0.005 * proposals.shape[0] * proposals.shape[1], wasted  # 344 of 2,400 without
    alone = Constant()  # the redraws come from the example's own stream: the batch plays no part
    SquareAttack(EPS, queries=600).run(AttackContext(alone), x[2:3], torch.zeros(1, dtype=torch.long),
                                       torch.tensor([2]))
    assert torch.equal(torch.stack(alone.seen[2:])[:, 0], proposals[:, 2])


def test_square_side_stays_below_the_image_side():
    """The reference's s = min(max(s, 1), h - 1): at p_init = 1 a square covers at most 7 x 7 of an
    8 x 8 image, never all of it."""
    x = 0.3 + 0.4 * torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = Constant()
    SquareAttack(EPS, queries=1, p_init=1.0).run(AttackContext(model), x, torch.zeros(6, dtype=torch.long),
                                                 torch.arange(6))
    stripes, proposal = model.seen[1], model.seen[2]
    changed = (stripes != proposal).any(1)  # (B, H, W); stripes are vertical: a square changes all its rows or none
    assert int(changed.any(2).sum(1).max()) == 7


# ----------------------------------------------------------------------------- APGD's step rule corners


def test_the_first_step_is_a_plain_sign_step_of_twice_epsilon():
    """Alg. 1: x_1 = P(x_0 + eta * sign(grad)), no momentum yet; later steps mix in 0.25 of the last move."""
    x = torch.full((1, 1, 1, 1), 0.2, dtype=torch.float64)
    seen = []

    def loss_fn(z):
        seen.append(z.detach().clone())
        return z.flatten(1).sum(1), torch.zeros(1, dtype=torch.bool)

    apgd(loss_fn, x, epsilon=0.3, steps=2)
    assert float(seen[1]) == pytest.approx(0.5)        # P(0.2 + 0.6) = 0.5, not 0.2 + 0.75 * 0.3


def test_condition_one_halves_at_exactly_rho_times_the_span():
    """check_oscillation in the reference: halve when rises <= rho * span. Between w_2 = 41 and
    w_3 = 57 the span is 16 and rho * 16 = 12: exactly 12 rises halve the step."""
    values = list(range(42)) + [42 + t for t in range(12)] + [52, 51, 50, 49] + [200 + t for t in range(43)]
    assert len(values) == 101
    sizes = _run_scripted(values)
    assert torch.all(sizes[:57] == 2 * EPS)
    assert float(sizes[57]) == pytest.approx(EPS)


def test_condition_two_cannot_fire_at_the_first_checkpoint():
    """The start is the best point up to w_1 = 22 but the loss rose 21 times of 22: neither
    condition halves (condition (2) needs a previous checkpoint without halving)."""
    values = [50.0] + [float(t) for t in range(22)] + [100.0 + t for t in range(78)]
    sizes = _run_scripted(values)
    assert torch.all(sizes == 2 * EPS)


def test_condition_two_does_not_fire_after_a_halving():
    """Halved at w_1 (a flat loss); then 18 rises of 19 below the best up to w_2 = 41: no
    improvement, but the step was halved at w_1, so condition (2) stays quiet."""
    values = [1.0] * 23 + [0.01 * t for t in range(19)] + [100.0 + t for t in range(59)]
    sizes = _run_scripted(values)
    assert torch.all(sizes[:22] == 2 * EPS)
    assert torch.all(sizes[22:] == EPS)


def test_halving_restarts_from_the_best_point_with_its_gradient():
    """At a halving APGD goes back to x_best *and* its gradient (the reference restores grad_best)."""
    x = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    seen = []

    def loss_fn(z):
        seen.append(z.detach().clone())
        bonus = 100.0 if len(seen) == 1 else 0.0
        return -(z.flatten(1).sum(1) - 0.58) ** 2 + bonus, torch.zeros(1, dtype=torch.bool)

    run = apgd(loss_fn, x, epsilon=EPS, steps=100)
    assert float(run.step_sizes[22, 0]) == pytest.approx(EPS)
    # step 22 from x_best = 0.5 with sign(grad at 0.5) = +1: P(0.5 + 0.75 * 0.1 + 0.25 * (0.5 - x_prev))
    x_prev = float(seen[21])
    expected = min(max(0.5 + 0.75 * EPS + 0.25 * (0.5 - x_prev), 0.5 - EPS), 0.5 + EPS)
    assert float(seen[22]) > 0.58  # where the gradient points down
    assert float(seen[23]) == pytest.approx(expected)


def test_a_broken_point_returns_an_iterate_that_was_a_hit():
    """x_adv of a broken example must be an iterate at which the loss reported a hit, even when
    later iterates have a higher loss."""
    x = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    seen = []

    def loss_fn(z):
        seen.append(z.detach().clone())
        hit = torch.tensor([len(seen) == 1])
        return z.flatten(1).sum(1), hit

    run = apgd(loss_fn, x, epsilon=EPS, steps=5)
    assert bool(run.broken[0])
    torch.testing.assert_close(run.x_adv, seen[0])


def test_square_keeps_only_proposals_that_lower_the_margin():
    """Reference: idx_improved = loss_new < loss_min. On a model whose margin never changes no
    proposal is kept, so each one differs from the stripes in one square at most."""
    x = 0.3 + 0.4 * torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = Constant()
    SquareAttack(EPS, queries=10).run(AttackContext(model), x, torch.zeros(4, dtype=torch.long), torch.arange(4))
    stripes = model.seen[1]
    assert len(model.seen) == 12
    for proposal in model.seen[2:]:
        changed = (stripes != proposal).any(1)
        assert int(changed.any(2).sum(1).max()) <= 9


def _scripted_signs(signs, hits=(), flat=False):
    """Gradient sign s_k at the k-th evaluation, value k (a loss that rises every step, so that no
    checkpoint halves) or 0 (flat); hit at the calls in `hits`; records every evaluated point."""
    seen = []

    def loss_fn(z):
        k = len(seen)
        seen.append(z.detach().clone())
        s = signs[k] if k < len(signs) else 1.0
        value = s * (z - z.detach()).flatten(1).sum(1) + (0.0 if flat else float(k))
        return value, torch.tensor([k in hits])
    return loss_fn, seen


def test_the_second_step_already_mixes_in_the_last_move():
    """Alg. 1: only step 0 is a plain step; from step 1 on x_{k+1} = P(x_k + 0.75 (z - x_k) +
    0.25 (x_k - x_{k-1})). Gradient up, then down: 0.5 -> 0.6 -> 0.6 + 0.75 (0.4 - 0.6) + 0.25 * 0.1."""
    loss_fn, seen = _scripted_signs([1.0, -1.0])
    apgd(loss_fn, torch.full((1, 1), 0.5, dtype=torch.float64), epsilon=EPS, steps=2)
    assert float(seen[1]) == pytest.approx(0.6)
    assert float(seen[2]) == pytest.approx(0.475)


def test_apgd_projects_the_momentum_step_onto_the_ball():
    """The mix with the last move can point out of the ball (x_k on the edge, the last move
    outwards): every iterate APGD evaluates stays within eps of x."""
    loss_fn, seen = _scripted_signs([1.0] * 10)
    x = torch.full((1, 1), 0.5, dtype=torch.float64)
    apgd(loss_fn, x, epsilon=EPS, steps=5)
    assert max(float((z - x).abs().max()) for z in seen) <= EPS + 1e-12


def test_apgd_returns_the_first_adversarial_iterate():
    """APGDRun.x_adv: 'the first adversarial iterate where one was found' (later hits do not replace it)."""
    loss_fn, seen = _scripted_signs([1.0, -1.0, 1.0, 1.0], hits=(2, 3))
    run = apgd(loss_fn, torch.full((1, 1), 0.5, dtype=torch.float64), epsilon=EPS, steps=4)
    assert bool(run.broken[0]) and not torch.equal(seen[2], seen[3])
    torch.testing.assert_close(run.x_adv, seen[2])


def test_apgd_keeps_the_earliest_point_of_the_highest_loss():
    """x_best moves only when the loss rises strictly (the reference: loss > loss_best): on a flat
    loss with a non-zero gradient the best point stays the start."""
    loss_fn, seen = _scripted_signs([1.0] * 10, flat=True)
    x = torch.full((1, 1), 0.5, dtype=torch.float64)
    run = apgd(loss_fn, x, epsilon=EPS, steps=5)
    assert not torch.equal(seen[-1], x)
    torch.testing.assert_close(run.x_adv, x)


def test_halving_restores_the_gradient_of_a_best_point_that_is_not_the_start():
    """At a halving APGD restarts from x_best with x_best's own gradient (the reference's
    grad_best), here the first iterate 0.6 (loss +100) whose gradient points down, unlike the
    start's. Step 22 is then P(0.6 + 0.75 (0.5 - 0.6) + 0.25 (0.6 - x_21))."""
    x = torch.full((1, 1), 0.5, dtype=torch.float64)
    seen = []

    def loss_fn(z):
        seen.append(z.detach().clone())
        bonus = 100.0 if len(seen) == 2 else 0.0
        return -(z.flatten(1).sum(1) - 0.58) ** 2 + bonus, torch.zeros(1, dtype=torch.bool)

    run = apgd(loss_fn, x, epsilon=EPS, steps=100)
    assert float(seen[1]) == pytest.approx(0.6)
    assert float(run.step_sizes[22, 0]) == pytest.approx(EPS)
    expected = min(max(0.6 + 0.75 * (0.5 - 0.6) + 0.25 * (0.6 - float(seen[21])), 0.4), 0.6)
    assert float(seen[23]) == pytest.approx(expected)


def test_dlr_is_not_capped_like_the_cw_margin():
    """Eq. 6 has no kappa: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3) = 200 / 200 here."""
    logits = torch.tensor([[0.0, 200.0, 100.0]])
    assert float(dlr(logits, torch.tensor([0]))) == pytest.approx(1.0)


def test_dlr_losses_stay_finite_on_tied_logits():
    """The 1e-12 in the denominators: logits whose top three (four) tie give 0, not NaN."""
    logits = torch.zeros(2, 10)
    y = torch.tensor([0, 1])
    assert torch.equal(dlr(logits, y), torch.zeros(2))
    assert torch.equal(dlr_targeted(logits, y, torch.tensor([2, 3])), torch.zeros(2))


def test_square_stripes_are_constant_down_each_column():
    """Andriushchenko et al. (2020), Alg. 2: the start is x + eps * one sign per channel and
    column (vertical stripes), the same in every row."""
    image = 0.3 + 0.4 * torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = image.expand(4, -1, -1, -1).clone()
    outcome = SquareAttack(EPS, queries=1).run(AttackContext(Counting(image, 63.5)), x,
                                               torch.zeros(4, dtype=torch.long), torch.arange(4))
    delta = outcome.x_adv - x
    assert not bool(outcome.correct.any())
    torch.testing.assert_close(delta, delta[:, :, :1, :].expand_as(delta))
    assert bool((delta[:, :, 0, :].std(-1) > 0).all())  # and not one sign for the whole image


class _WrongOnlyAtX(nn.Module):
    """Misclassified (class 1) exactly at its anchor x and correct (class 0) everywhere else in
    the ball, with zero input gradient there: only the unattacked point is adversarial."""

    def __init__(self, anchor):
        super().__init__()
        self.anchor = anchor

    def forward(self, z):
        d = (z - self.anchor).flatten(1).abs().amax(1)
        score = torch.clamp(1e3 * d, max=1.0) - 0.5 + 0 * z.flatten(1).sum(1)
        return torch.cat([score[:, None], torch.zeros(len(z), 9, dtype=z.dtype)], 1)


@pytest.mark.parametrize("attack", [APGDAttack("apgd-ce", EPS, steps=3), SquareAttack(EPS, queries=20)],
                         ids=["apgd-ce", "square"])
def test_a_naturally_misclassified_point_is_broken_and_not_attacked(attack):
    """Every AutoAttack component runs only on the points the model gets right; the others are
    broken by x itself (docs: 'and only on points the model gets right unattacked'), even when
    every perturbed point in the ball would be classified correctly."""
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    outcome = attack.run(AttackContext(_WrongOnlyAtX(x)), x, torch.zeros(1, dtype=torch.long), torch.arange(1))
    assert not bool(outcome.correct[0])
    torch.testing.assert_close(outcome.x_adv, x)


def test_every_target_and_restart_of_apgd_t_starts_at_its_own_point():
    """The start of try (target t, restart r) is keyed by id * tries + t * restarts + r: with 2
    targets x 2 restarts the four starts differ (t + r would give targets 0/1 shared starts)."""
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    model = Recording()
    APGDAttack("apgd-t", EPS, loss="dlr-targeted", steps=1, targets=2, restarts=2).run(
        AttackContext(model, seed=0), x, torch.zeros(1, dtype=torch.long), torch.arange(1))
    starts = [model.seen[1 + 2 * k] for k in range(4)]
    assert len(model.seen) == 9
    for a in range(4):
        for b in range(a):
            assert not torch.equal(starts[a], starts[b]), (a, b)


class _Tied(nn.Module):
    """Classes 0 and 3 tie for every input; argmax picks 0."""

    def forward(self, x):
        out = torch.full((len(x), 10), -1.0, dtype=x.dtype) + 0 * x.flatten(1).sum(1, keepdim=True)
        out[:, 0] = out[:, 3] = 1.0
        return out


def test_square_scores_a_tie_as_the_model_classifies_it():
    """A point whose returned x_adv the model still classifies as y (argmax, the rule of natural
    accuracy and of every other attack) is not broken."""
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.long)
    model = _Tied()
    outcome = SquareAttack(0.1, queries=20).run(AttackContext(model), x, y, torch.arange(4))
    assert torch.equal(outcome.correct, model(outcome.x_adv).argmax(1) == y)
