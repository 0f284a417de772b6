"""evaluate()'s input checks, curve bookkeeping and report fields, each against the docstring or
the formula it states (tests that fail on mutations of adt_fast/attacks/evaluation.py that the
existing tests let pass)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from adt_fast.attacks import evaluate
from adt_fast.attacks.evaluation import check_attacks_can_run, check_epsilon_curve


def _linear(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, classes)).eval()


def _data(n: int = 6):
    x = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return x, torch.arange(n) % 10


def test_negative_labels_are_refused():
    x, y = _data()
    y[2] = -1
    with pytest.raises(ValueError, match="labels must be >= 0"):
        evaluate(_linear(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=())


def test_a_label_equal_to_the_number_of_classes_is_refused():
    x, y = _data()
    y[0] = 10  # classes are 0..9
    with pytest.raises(ValueError, match="labels go up to 10"):
        evaluate(_linear(10), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=())


def test_inputs_of_another_dtype_than_the_models_are_named():
    """A float64 batch straight from numpy once failed inside the model with torch's 'mat1 and mat2
    must have the same dtype'; a model that casts its inputs itself still takes them."""
    x, y = _data()
    with pytest.raises(TypeError, match=r"the inputs are torch.float64 but the model's parameters are torch.float32"):
        evaluate(_linear(), x.double(), y, epsilon=0.1, attacks="fgsm", epsilon_curve=())
    casting = nn.Sequential(_Float(), _linear())
    ours = evaluate(casting, x.double(), y, epsilon=0.1, attacks="fgsm", epsilon_curve=())
    theirs = evaluate(_linear(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=())
    assert torch.equal(ours.correct["natural"], theirs.correct["natural"])
    # a model that fails on inputs of its own dtype fails with its own error, not a dtype story
    with pytest.raises(ValueError, match=r"the model fails on x, of shape \(N, 2, 4, 4\): RuntimeError: mat1 and "
                                         r"mat2 shapes cannot be multiplied"):
        evaluate(_linear(), x[:, :2], y, epsilon=0.1, attacks="fgsm", epsilon_curve=())


def test_inputs_the_model_fails_on_are_named_with_their_shape_whatever_their_rank():
    """A 3-D x for an image model failed with torch's conv error, which names neither x nor its
    shape; an x of other ranks that the model takes is scored: the model decides its inputs."""
    from adt_fast.attacks import fgsm

    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10)).eval()
    x, y = _data()
    conv(x)  # the lazy layer's size
    why = r"the model fails on x, of shape \(N, 4, 4\): RuntimeError: .*; x must hold the inputs the model's forward"
    with pytest.raises(ValueError, match=why):
        evaluate(conv, x[:, 0], y, epsilon=0.1, attacks="fgsm", epsilon_curve=())
    with pytest.raises(ValueError, match=why):
        fgsm(conv, x[:, 0], y, epsilon=0.1)
    flat = nn.Linear(48, 10).eval()
    evaluate(flat, x.flatten(1), y, epsilon=0.1, attacks="fgsm", epsilon_curve=())


class _Float(nn.Module):
    def forward(self, x):
        return x.float()


def test_inputs_square_cannot_take_are_refused_before_any_attack_runs():
    """Square needs images: evaluate once ran every attack before it and failed at Square's turn.
    Now the model sees one forward (the class count's probe), and Attack.perturb refuses too."""
    from adt_fast.attacks import make_attack

    calls = []
    model = nn.Sequential(nn.Linear(12, 10)).eval()
    model.register_forward_hook(lambda *_: calls.append(1))
    x, y = torch.rand(4, 12), torch.arange(4)
    with pytest.raises(ValueError, match=re.escape("attacks: its 'square' (Square) needs images (N, C, H, W), "
                                                   "got shape (4, 12)")):
        evaluate(model, x, y, epsilon=0.1, attacks=["pgd20", "autoattack"], epsilon_curve=())
    assert len(calls) == 1
    with pytest.raises(ValueError, match=re.escape("'square' (Square) needs images")):
        make_attack("square", 0.1).perturb(model, x, y)


def test_duplicate_example_ids_are_refused():
    x, y = _data(4)
    with pytest.raises(ValueError, match="distinct"):
        evaluate(_linear(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=(),
                 example_ids=torch.tensor([0, 0, 1, 2]))


def test_epsilon_curve_allows_a_budget_of_exactly_one_and_is_sorted():
    # docstring: "sorted and distinct; each budget m * epsilon in [0, 1]" (closed interval)
    assert check_epsilon_curve([2.0], 0.5) == [2.0]
    got = check_epsilon_curve([3.0, 0.25, 2.0, 0.0, 1.0, 0.5, 1.5, 3.0], 0.1)
    assert got == [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]


def test_only_the_distribution_attack_needs_a_sampling_backend(monkeypatch):
    # A forced backend that cannot serve this device: the op-free attacks still run, 'dist' is refused.
    monkeypatch.setenv("ADT_FAST_BACKEND", "cuda" if not torch.cuda.is_available() else "nonsense")
    check_attacks_can_run(["fgsm", "pgd20"], torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="distribution attack cannot run"):
        check_attacks_can_run(["fgsm", "dist"], torch.device("cpu"), torch.float32)


def test_epsilon_curve_points_use_a_quarter_of_their_own_budget_as_step():
    # docs/evaluation.md: curves.pgd_epsilon ... `step_size` = eps'/4 (eps' = multiple * epsilon)
    x, y = _data()
    report = evaluate(_linear(), x, y, epsilon=0.04, attacks="fgsm", epsilon_curve=(0, 0.5, 2))
    points = report.curves["pgd_epsilon"]["points"]
    assert [p["multiple"] for p in points] == [0, 0.5, 2]
    assert [p["step_size"] for p in points] == pytest.approx([0.0, 0.02 / 4, 0.08 / 4])
    assert [p["epsilon"] for p in points] == pytest.approx([0.0, 0.02, 0.08])


def test_dist_curve_loss_is_the_mean_over_examples_not_the_sum():
    # docs/evaluation.md: curves.dist `loss` = mean cross-entropy of the samples
    from adt_fast.attacks import AttackContext, make_attack

    model = _linear()
    x, y = _data(6)
    report = evaluate(model, x, y, epsilon=0.05, attacks="dist", dist_steps=2, dist_samples=3,
                      epsilon_curve=(), batch_size=4)
    alone = make_attack("dist", 0.05, dist_steps=2, dist_samples=3).run(
        AttackContext(model, seed=0), x, y, torch.arange(6))
    want = alone.trace["loss"].double().mean(1)
    got = [p["loss"] for p in report.curves["dist"]["points"]]
    assert got == pytest.approx(want.tolist(), rel=1e-5)


class _Flat(nn.Module):
    """Logits that ignore the input: the cross-entropy's input gradient is exactly zero everywhere."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.tensor([1.0, 0.0, -1.0]))

    def forward(self, x):
        return self.b.expand(len(x), 3) + 0 * x.flatten(1)[:, :1]


def test_gradient_check_counts_zero_gradients_as_zero_not_as_nonfinite():
    x = torch.rand(5, 1, 2, 2)
    report = evaluate(_Flat(), x, torch.zeros(5, dtype=torch.long), epsilon=0.1, attacks="fgsm",
                      epsilon_curve=())
    assert report.gradient_check["zero_fraction"] == 1.0
    assert report.gradient_check["nonfinite_fraction"] == 0.0


def test_autoattack_curve_attacks_only_the_points_still_robust():
    # docs: per component in turn, how many points it `attacked` (those robust before it), how many
    # stayed `robust`, `accuracy_on_attacked` = robust / attacked, `accuracy` = robust / n
    from adt_fast.attacks.evaluation import autoattack_curve

    t, f = True, False
    stage = {"robust_before": torch.tensor([t, t, t, t, f]),
             "robust_after:apgd-ce": torch.tensor([t, t, f, f, f]),
             "robust_after:apgd-t": torch.tensor([t, f, f, f, f])}
    points = autoattack_curve(stage, 5)["points"]
    assert [(p["attack"], p["attacked"], p["robust"]) for p in points] == [("apgd-ce", 4, 2), ("apgd-t", 2, 1)]
    assert [p["accuracy_on_attacked"] for p in points] == [0.5, 0.5]
    assert [p["accuracy"] for p in points] == [0.4, 0.2]


def test_masking_gains_from_autoattack_stages():
    # Square's gain: points robust just before Square (after the gradient components) that Square
    # broke; APGD-T's gain: points APGD-CE left robust that APGD-T broke.
    from adt_fast.attacks.evaluation import masking_gains

    t, f = True, False
    natural = torch.tensor([t, t, t, t])
    stage = {"robust_before": torch.tensor([t, t, t, t]),
             "robust_after:apgd-ce": torch.tensor([t, t, t, f]),
             "robust_after:apgd-t": torch.tensor([t, t, f, f]),
             "robust_after:square": torch.tensor([t, f, f, f])}
    gains = masking_gains(natural, {}, {"autoattack-fast": stage})
    assert gains == {"gradient_free_gain": 1, "targeted_gain": 1}


def test_masking_gains_from_stand_alone_runs():
    from adt_fast.attacks.evaluation import masking_gains

    t, f = True, False
    natural = torch.tensor([t, t, t])
    gains = masking_gains(natural, {"apgd-ce": torch.tensor([t, t, f]), "square": torch.tensor([f, f, f])}, {})
    assert gains["gradient_free_gain"] == 2  # Square broke both points APGD-CE left robust
    gains = masking_gains(natural, {"apgd-ce": torch.tensor([t, t, f]), "square": torch.tensor([t, t, f])}, {})
    assert gains["gradient_free_gain"] == 0


def test_paper_protocol_refuses_other_settings_and_accepts_its_own():
    x, y = _data(4)
    # dist_samples=0 is refused after the protocol is checked: it stops each call before any attack
    with pytest.raises(ValueError, match="fixes cw_steps to 20"):
        evaluate(_linear(), x, y, epsilon=0.1, protocol="paper", cw_steps=30, dist_samples=0)
    with pytest.raises(ValueError, match="fixes feature_targets to 200"):
        evaluate(_linear(), x, y, epsilon=0.1, protocol="paper", feature_targets=5, dist_samples=0)
    with pytest.raises(ValueError, match="dist_samples"):
        evaluate(_linear(), x, y, epsilon=0.1, protocol="paper", cw_steps=20, feature_targets=200,
                 dist_samples=0)


def test_paper_protocol_adds_the_attacks_asked_for():
    # evaluate's docstring: protocol "paper" runs the six columns "plus any `attacks` given"
    x, y = _data(3)
    report = evaluate(_linear(), x, y, epsilon=0.05, protocol="paper", attacks="fgsm,pgd:2",
                      epsilon_curve=())  # FeaAttack is skipped: nn.Sequential has no .features
    assert set(report.robust_accuracy) == {"fgsm", "pgd20", "pgd100", "mim", "cw", "pgd2"}
    assert "feature" in report.skipped
