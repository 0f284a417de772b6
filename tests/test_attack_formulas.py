"""The attacks, their losses and the evaluation's bookkeeping against formulas written out here,
independently of the code: MI-FGSM, the C&W margin, TRADES' KL, the random start, FeaAttack's
direction, the distribution attack's rule, the PGD columns and worst cases. Each test was written
to fail on a mutation of the code that every other test let pass (a mutation-testing review,
2026-12-05)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adt_fast.attacks import AttackContext, DistributionAttack, evaluate, make_attack, suite
from adt_fast.attacks import losses
from adt_fast.attacks.distribution import _losses_and_input_grads, fit_distribution
from adt_fast.attacks.engine import (apgd, example_seed, iterative_attack, per_example_normals,
                                     per_example_start)
from adt_fast.attacks.evaluation import masking_gains

from test_attacks import TinyNet


def test_trades_kl_and_loss_match_the_textbook_formulas():
    g = torch.Generator().manual_seed(0)
    clean, adv = 2 * torch.randn(6, 5, generator=g), 2 * torch.randn(6, 5, generator=g)
    y = torch.randint(5, (6,), generator=g)
    p, q = clean.softmax(1), adv.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1)                              # KL(p_clean || p_adv)
    torch.testing.assert_close(losses.trades_kl(adv, clean), kl)
    ce_clean = -clean.log_softmax(1).gather(1, y[:, None]).squeeze(1)  # CE on the CLEAN logits
    torch.testing.assert_close(losses.trades_loss(adv, clean, y, 6.0), ce_clean + 6.0 * kl)


def test_cw_margin_is_capped_at_kappa_50():
    logits, y = torch.tensor([[0.0, 100.0, -3.0]]), torch.tensor([0])
    assert losses.cw_margin(logits, y).item() == 50.0
    assert make_attack("cw", 0.1).settings()["kappa"] == 50.0


def _tiny_batch():
    """TinyNet and 8 inputs with their labels and example ids, the same in every test."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, x, torch.arange(8) % 10, torch.arange(8)


def test_cw_attack_ascends_the_cw_margin_not_the_cross_entropy():
    model, x, y, ids = _tiny_batch()
    got = make_attack("cw", 0.1).perturb(model, x, y, seed=0, example_ids=ids)
    start = per_example_start(x, ids, suite.stream_seed(0, "cw"))
    want = iterative_attack(lambda z: losses.cw_margin(model(z), y, 50.0), x, epsilon=0.1, steps=30,
                            step_size=0.1 / 4, start=start)
    torch.testing.assert_close(got, want)


def _mim_reference(model, x, y, eps, steps, step, decay, start):
    """Dong et al.'s MI-FGSM written out: g <- mu g + grad / mean|grad|, x <- proj(x + a sign(g))."""
    x_adv = torch.clamp(x + eps * start, 0, 1)
    g = torch.zeros_like(x)
    for _ in range(steps):
        z = x_adv.clone().requires_grad_()
        (grad,) = torch.autograd.grad(F.cross_entropy(model(z), y, reduction="sum"), z)
        g = decay * g + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
        x_adv = torch.clamp(torch.min(torch.max(x_adv + step * g.sign(), x - eps), x + eps), 0, 1)
    return x_adv


def test_mim_is_mi_fgsm_with_decay_1_and_normalised_gradient():
    model, x, y, ids = _tiny_batch()
    got = make_attack("mim", 0.1).perturb(model, x, y, seed=0, example_ids=ids)
    start = per_example_start(x, ids, suite.stream_seed(0, "mim"))
    want = _mim_reference(model, x, y, 0.1, 20, 0.1 / 4, 1.0, start)
    mismatch = ((got - want).abs() > 1e-6).float().mean().item()
    assert mismatch < 0.01, mismatch


def test_random_start_is_uniform_over_the_whole_ball():
    x = torch.full((64, 3, 8, 8), 0.5)
    s = per_example_start(x, torch.arange(64), 7)
    assert s.min() < -0.95 and s.max() > 0.95 and abs(s.mean().item()) < 0.02
    out = iterative_attack(lambda z: z.sum((1, 2, 3)), x, epsilon=0.1, steps=0, step_size=0.01, start=s)
    torch.testing.assert_close(out, x + 0.1 * s)


def test_minimize_steps_against_the_gradient():
    x = torch.full((2, 4), 0.5)
    out = iterative_attack(lambda z: z.sum(1), x, epsilon=0.1, steps=1, step_size=0.1, minimize=True)
    torch.testing.assert_close(out, x - 0.1)


def test_feature_attack_minimises_with_step_eps_over_8(monkeypatch):
    seen = {}
    real = suite.iterative_attack

    def spy(loss_fn, x, **kw):
        seen.update(kw)
        return real(loss_fn, x, **kw)
    monkeypatch.setattr(suite, "iterative_attack", spy)
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(4, 3, 8, 8)
    suite.feature_attack(model, x, torch.tensor([0, 1, 2, 3]), 0.08, targets=1, steps=2)
    assert seen["minimize"] is True and seen["step_size"] == pytest.approx(0.01)


def test_attacks_draw_from_distinct_streams():
    seeds = {suite.stream_seed(5, s) for s in suite._STREAMS}
    assert len(seeds) == len(suite._STREAMS)


def test_distribution_attack_breaks_an_example_iff_some_sample_is_misclassified():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval()
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1).detach()
    k = 10
    out = DistributionAttack(0.01, steps=2, samples=k).run(AttackContext(model), x, y, torch.arange(32))
    sc = out.trace["sample_correct"][-1]
    assert ((0 < sc) & (sc < k)).any(), "no example with mixed samples: pick another epsilon"
    assert torch.equal(out.correct, sc == k)
    with torch.no_grad():
        assert torch.equal(model(out.x_adv).argmax(1) == y, out.correct)


def test_input_grads_are_minus_the_sample_mean_of_the_loss():
    k, b = 3, 4
    xa = torch.rand(k, b, 5, dtype=torch.float64)
    w = torch.randn(5, dtype=torch.float64)
    loss_fn = lambda z: (z @ w) ** 2  # noqa: E731
    _, grad = _losses_and_input_grads(loss_fn, xa, 2)
    z = xa.clone().requires_grad_()
    (want,) = torch.autograd.grad(-loss_fn(z.flatten(0, 1)).view(k, b).mean(0).sum(), z)
    torch.testing.assert_close(grad, want)


def test_fit_starts_at_zero_and_tracks_loss_plus_lambda_entropy():
    x = torch.rand(3, 1, 8, 8)
    w = torch.randn(64)
    loss_fn = lambda z: (z.flatten(1) @ w)  # noqa: E731
    fit0 = fit_distribution(loss_fn, x, epsilon=0.1, steps=0, num_samples=2, lbd=0.5)
    assert (fit0.mean == 0).all() and (fit0.std_param == 0).all()
    fit = fit_distribution(loss_fn, x, epsilon=0.1, steps=3, num_samples=2, lbd=0.5, track=True)
    for o, l, h in zip(fit.objective, fit.loss, fit.entropy_per_dim):
        assert o == pytest.approx(l + 0.5 * h, rel=1e-6)


class Wobbly(nn.Module):
    """An oscillating score: PGD's correctness keeps flipping from step to step."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3 * 8 * 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        s = torch.sin(200 * (x.flatten(1) @ self.w))
        return torch.stack([s, 0.3 * torch.ones_like(s)], 1)


def test_pgd_columns_and_eps_curve_are_the_right_iterates():
    model = Wobbly().eval()
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(64, dtype=torch.long)
    report = evaluate(model, x, y, epsilon=0.05, attacks="pgd20,pgd25", epsilon_curve=(1,), batch_size=64)
    alone = make_attack("pgd20", 0.05).run(AttackContext(model), x, y, torch.arange(64)).correct
    assert torch.equal(report.correct["pgd20"], alone)
    points = report.curves["pgd_steps"]["points"]
    assert points[20]["accuracy"] != points[25]["accuracy"], "pick data where PGD-20 != PGD-25"
    assert report.curves["pgd_epsilon"]["points"][0]["accuracy"] == report.robust_accuracy["pgd20"]


class NanNet(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3] * float("nan")


def test_nan_logits_are_never_counted_correct():
    x = torch.rand(4, 1, 2, 2)
    report = evaluate(NanNet(), x, torch.zeros(4, dtype=torch.long), epsilon=0.1, attacks="fgsm",
                      epsilon_curve=())
    assert report.natural_accuracy == 0.0


class NanAwayFromData(nn.Module):
    """10 logits, finite while every pixel is <= 0.5 and NaN as soon as one is above: natural
    inputs below 0.45 are class 0, and raising the pixels (what the loss wants) breaks the model.
    features / head: the identity and the logits, for FeaAttack."""

    def features(self, x):
        return x

    def head(self, features):
        flat = features.flatten(1)
        base = torch.tensor([5.0] + [0.0] * 9)
        slope = torch.tensor([-1.0] + [1.0] * 9)
        gate = 0 * torch.sqrt(0.5 - flat.amax(1, keepdim=True))  # 0, or NaN above 0.5
        return base + slope * flat.mean(1, keepdim=True) + gate

    def forward(self, x):
        return self.head(self.features(x))


def test_an_attack_that_drives_the_logits_to_nan_breaks_the_example():
    # argmax of an all-NaN row is 0, the label: every attack used to score these "robust"
    x = 0.4 + 0.05 * torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.long)
    # pgd1 is read from pgd3's trajectory: its first iterate's score, not the final one's
    attacks = "fgsm,pgd1,pgd:3,mim,cw,feature,dist,apgd-ce,apgd-t,apgd-dlr,square,autoattack"
    report = evaluate(NanAwayFromData(), x, y, epsilon=0.1, attacks=attacks, dist_steps=1,
                      source_model=NanAwayFromData(), epsilon_curve=())
    assert report.natural_accuracy == 1.0
    assert "pgd1" in report.robust_accuracy
    assert report.robust_accuracy == {name: 0.0 for name in report.robust_accuracy}
    assert report.worst_case_accuracy == 0.0


def test_fab_and_feaattack_break_an_example_whose_iterate_gives_nan_logits():
    # evaluate's pool above holds one class (FeaAttack is skipped) and APGD-CE breaks every
    # example before FAB-T sees it, so each runs alone here; no finite point is misclassified
    x = 0.4 + 0.05 * torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.long)
    outcome = make_attack("fab-t", 1.0).run_checked(AttackContext(NanAwayFromData()), x, y)
    assert not outcome.correct.any()
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2] = 1.0  # a class-1 image whose features pull half the pixels up, past 0.5
    ctx = AttackContext(NanAwayFromData(), pool_x=torch.cat([x, target]),
                        pool_y=torch.cat([y, torch.ones(1, dtype=torch.long)]))
    assert not make_attack("feature", 0.1).run_checked(ctx, x, y).correct.any()


class NanAtData(nn.Module):
    """Class 0 by a margin of 5 wherever some pixel is above 0.5; NaN where every pixel is
    below (the natural inputs, so no attack needs to move them)."""

    def forward(self, x):
        flat = x.flatten(1)
        gate = 0 * torch.sqrt(flat.amax(1, keepdim=True) - 0.5)  # NaN below 0.5
        return torch.tensor([5.0] + [0.0] * 9) + gate + 0 * flat.mean(1, keepdim=True)


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "square"])
def test_an_autoattack_component_run_alone_breaks_an_input_with_nan_logits(name):
    # their first forward picks the examples worth attacking: a NaN row is not one of them
    x = 0.4 + 0.05 * torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    outcome = make_attack(name, 0.1).run_checked(AttackContext(NanAtData()), x,
                                                 torch.zeros(4, dtype=torch.long))
    assert not outcome.correct.any()


class NanWhenColumnSplits(nn.Module):
    """Constant finite logits (class 0 by a margin) while pixels (0, 0) and (3, 0) agree, NaN
    when they differ: Square's stripes keep them equal, only a square over one of them splits them."""

    def forward(self, x):
        split = (x[:, 0, 0, 0] - x[:, 0, 3, 0]).abs()[:, None]
        return torch.tensor([1.0, 0.0, 0.0]) + torch.where(split > 0, float("nan"), 0.0) + 0 * x.sum()


def test_square_keeps_a_proposal_that_the_model_cannot_classify():
    x = torch.full((2, 1, 4, 4), 0.5)
    outcome = make_attack("square", 0.1).run_checked(AttackContext(NanWhenColumnSplits()), x,
                                                      torch.zeros(2, dtype=torch.long))
    assert not outcome.correct.any()
    assert torch.isnan(NanWhenColumnSplits()(outcome.x_adv)).all()


class InfWhenColumnSplits(nn.Module):
    """As NanWhenColumnSplits, but the true class's logit is +inf when the pixels differ: the
    margin is then infinite, and a later point that joins them again lowers it."""

    def forward(self, x):
        split = (x[:, 0, 0, 0] - x[:, 0, 3, 0]).abs()[:, None] > 0
        true_logit = torch.where(split, float("inf"), 1.0)
        return torch.cat([true_logit, torch.zeros(len(x), 2)], 1) + 0 * x.sum()


def test_square_stops_at_a_point_whose_logits_are_not_finite_whatever_its_margin():
    # the search went on past such a point (margin +inf > 0) and gave it up for a finite one:
    # 26 of these 64 scored robust
    x = torch.full((64, 1, 4, 4), 0.5)
    outcome = make_attack("square", 0.1).run_checked(AttackContext(InfWhenColumnSplits()), x,
                                                      torch.zeros(64, dtype=torch.long))
    assert not outcome.correct.any()
    assert torch.isinf(InfWhenColumnSplits()(outcome.x_adv)[:, 0]).all()


class FirstPixel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([3.0, -3.0]))

    def forward(self, x):
        return x.flatten(1)[:, :1] * self.w


def test_zero_gradient_check_needs_every_component_zero():
    x = torch.rand(6, 1, 4, 4)
    report = evaluate(FirstPixel(), x, torch.zeros(6, dtype=torch.long), epsilon=0.1, attacks="fgsm",
                      epsilon_curve=())
    assert report.gradient_check["zero_fraction"] == 0.0


def test_dist_curve_sample_accuracy_is_a_fraction_of_all_samples():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(8, 3, 8, 8)
    y = model(x).argmax(1).detach()
    report = evaluate(model, x, y, epsilon=0.01, attacks="dist", dist_steps=1, dist_samples=4,
                      epsilon_curve=())
    for p in report.curves["dist"]["points"]:
        assert p["accuracy"] <= p["sample_accuracy"] <= 1.0


def test_targeted_gain_ignores_naturally_wrong_points():
    f, t = torch.tensor([False]), torch.tensor([True])
    gains = masking_gains(f, {"apgd-ce": t, "apgd-t": f}, {})
    assert gains["targeted_gain"] == 0


def test_paper_worst_case_is_over_the_six_columns_only(monkeypatch):
    from adt_fast.attacks import evaluation
    from adt_fast.attacks.suite import AttackOutcome
    monkeypatch.setattr(evaluation, "PAPER_FEATURE_TARGETS", 2)
    monkeypatch.setattr(suite.DistributionAttack, "run",
                        lambda self, ctx, x, y, ids: AttackOutcome(torch.zeros(len(x), dtype=torch.bool), x))
    torch.manual_seed(0)
    model = TinyNet(width=4).eval()
    x = torch.rand(6, 3, 8, 8)
    y = model(x).argmax(1).detach()
    y[:2] = (y[:2] + 1) % 10
    report = evaluate(model, x, y, epsilon=0.001, protocol="paper", attacks="dist", dist_steps=1, epsilon_curve=())
    want = report.correct["natural"].clone()
    for name in suite.PAPER_ATTACKS:
        want &= report.correct[name]
    assert want.any(), "pick data that survives the six"
    assert torch.equal(report.correct["paper_worst_case"], want)


def test_distribution_attack_settings_are_d3s():
    s = make_attack("dist", 0.1).settings()
    assert (s["lr"], s["betas"], s["samples"], s["steps"], s["lambda"]) == (0.3, [0.0, 0.0], 10, 20, 0.0)


def test_a_nan_gradient_component_does_not_freeze_mim():
    x = torch.full((3, 5), 0.5)

    def loss_fn(z):
        return (z * torch.tensor([float("nan"), 1.0, -1.0, 0.0, 2.0])).sum(1)
    out = iterative_attack(loss_fn, x, epsilon=0.1, steps=3, step_size=0.05, momentum=1.0)
    torch.testing.assert_close(out - x, torch.tensor([[0.0, 0.1, -0.1, 0.0, 0.1]]).expand(3, 5))


def test_random_starts_depend_on_the_seed():
    """per_example_start is keyed by (seed, example id): another seed (or another attack's stream
    of the same seed) must give other starts, else --seed and the separate streams mean nothing."""
    x = torch.zeros(3, 1, 4, 4)
    ids = torch.arange(3)
    assert not torch.equal(per_example_start(x, ids, 0), per_example_start(x, ids, 1))
    assert not torch.equal(per_example_start(x, ids, suite.stream_seed(0, "pgd")),
                           per_example_start(x, ids, suite.stream_seed(0, "mim")))


def test_each_draw_of_per_example_normals_is_fresh():
    """The distribution attack's step t uses draw t: with k = 10 samples (3 Philox counters per
    element and draw) no normal may be reused by the next draw."""
    x = torch.zeros(2, 1, 2, 2)
    ids = torch.arange(2)
    first, second = (per_example_normals(x, ids, 7, draw, 10) for draw in (0, 1))
    shared = torch.isin(second.flatten(), first.flatten())
    assert not bool(shared.any())


def test_mim_with_another_decay_follows_mi_fgsm():
    """mim(decay=mu) is g <- mu g + grad / mean|grad|; with the default mu = 1 a dropped decay
    factor would go unnoticed. On a 1-d loss -(z - 0.53)^2 the normalised gradient is sign(0.53 - z):
    mu = 0 gives plain sign steps that turn back at once, mu = 1 keeps going."""
    x = torch.full((1, 1), 0.5)

    def loss_fn(z):
        return -((z - 0.53) ** 2).sum(1)

    def reference(mu, steps=4, step=0.02, eps=0.1):
        z, g = 0.5, 0.0
        for _ in range(steps):
            g = mu * g + (1.0 if z < 0.53 else -1.0)
            z = min(max(z + step * (1 if g > 0 else -1 if g < 0 else 0), 0.5 - eps), 0.5 + eps)
        return z

    for mu in (0.0, 0.5, 1.0):
        out = iterative_attack(loss_fn, x, epsilon=0.1, steps=4, step_size=0.02, momentum=mu)
        assert float(out) == pytest.approx(reference(mu), abs=1e-6), mu


def test_the_engine_refuses_a_zero_budget():
    """epsilon = 0 is no attack at all: iterative_attack refuses it as its docstring says (> 0)."""
    with pytest.raises(ValueError, match="epsilon"):
        iterative_attack(lambda z: z.sum(1), torch.zeros(1, 2), epsilon=0.0, steps=1, step_size=0.1)


def test_a_budget_of_exactly_one_is_accepted():
    """docs/evaluation.md refuses eps <= 0 or eps > 1 only: eps = 1 is a valid (if useless) budget."""
    assert suite.check_epsilon(1.0) == 1.0
    assert make_attack("pgd20", 1.0).epsilon == 1.0


def test_feature_attack_runs_c5s_50_steps_of_eps_over_8():
    """Appendix C.5: alpha = eps / 8 and 50 optimisation steps."""
    s = make_attack("feature", 0.08).settings()
    assert (s["steps"], s["step_size"]) == (50, pytest.approx(0.01))


def test_feature_targets_are_keyed_by_example_id():
    """Two inputs of the same class get their own random targets (keyed by (seed, example id)),
    not one shared draw for the whole class."""
    pool_y = torch.arange(200) % 2
    y = torch.zeros(2, dtype=torch.long)
    chosen = suite.choose_targets(y, torch.tensor([3, 4]), pool_y, 5, seed=0)
    assert not torch.equal(chosen[0], chosen[1])


def test_feature_targets_are_distinct_when_exactly_enough_exist():
    """Without replacement whenever the pool holds at least as many images of other classes as
    targets asked for (docs: with replacement only when fewer)."""
    pool_y = torch.tensor([0, 1, 1, 1, 1])
    for example_id in range(20):
        chosen = suite.choose_targets(torch.tensor([0]), torch.tensor([example_id]), pool_y, 4, seed=0)
        assert sorted(chosen[0].tolist()) == [1, 2, 3, 4]


def test_feature_attack_keeps_an_input_broken_by_an_earlier_target_chunk(monkeypatch):
    """With batch_size = len(x) one target runs at a time; an input broken by target 0 is not
    attacked again, and later targets that fail cannot mark it robust again."""
    calls = []

    def fake_pairs(self, ctx, x, y, ids, target_features, seed):
        which = ids % self.targets
        calls.append(len(x))
        return which == 0, x.detach().clone()  # only the first target breaks its input
    monkeypatch.setattr(suite.FeatureAttack, "_attack_pairs", fake_pairs)
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(2, 3, 8, 8)
    outcome = suite.feature_attack(model, x, torch.tensor([0, 1]), 0.1, targets=3, batch_size=2)
    assert not bool(outcome.correct.any())
    assert calls == [2]  # targets 1 and 2 are never run: both inputs are already broken


def test_feature_attack_starts_each_target_at_its_own_point(monkeypatch):
    """Each (input, target) pair gets its own uniform start (keyed by example id x targets +
    target), so 5 targets are 5 attempts, not 5 copies of one start."""
    starts = []
    real = suite.iterative_attack

    def spy(loss_fn, x, **kw):
        starts.append(kw["start"].clone())
        return real(loss_fn, x, **kw)
    monkeypatch.setattr(suite, "iterative_attack", spy)
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.rand(1, 3, 8, 8)
    pool_x, pool_y = torch.rand(4, 3, 8, 8), torch.tensor([1, 2, 3, 4])
    suite.feature_attack(model, x, torch.tensor([0]), 0.001, targets=3, steps=1, pool_x=pool_x,
                         pool_y=pool_y, batch_size=3)
    rows = torch.cat(starts)
    assert len(rows) == 3
    assert not torch.equal(rows[0], rows[1]) and not torch.equal(rows[1], rows[2])


class _MeanSplit(nn.Module):
    """features = the image, head: class 0 iff the mean pixel exceeds 0.5 (a 2-class split)."""

    def features(self, x):
        return x

    def head(self, f):
        s = f.flatten(1).mean(1) - 0.5
        return torch.stack([s, -s], 1)

    def forward(self, x):
        return self.head(self.features(x))


def test_feature_attack_scores_its_final_iterate(monkeypatch):
    """'Broken' means that some iterate is misclassified (C.5, the original early stop); the
    iterate that the last step returns counts too, not only those the loss was evaluated at."""
    x = torch.full((1, 1, 4, 4), 0.6)
    monkeypatch.setattr(suite, "iterative_attack", lambda loss_fn, x, **kw: torch.full_like(x, 0.4))
    outcome = suite.feature_attack(_MeanSplit(), x, torch.tensor([0]), 0.3, targets=1, steps=1,
                                   pool_x=torch.cat([x, torch.full_like(x, 0.2)]), pool_y=torch.tensor([0, 1]))
    assert not bool(outcome.correct[0])
    torch.testing.assert_close(outcome.x_adv, torch.full_like(x, 0.4))


def test_distribution_attack_draws_fresh_normals_for_every_step_and_the_final_samples(monkeypatch):
    """D.3 / docs: each of the T steps estimates its gradient from new samples, and the k samples
    that score the fitted distribution are fresh too: draws 0, 1, ..., T."""
    draws = []
    real = suite.per_example_normals

    def spy(x, ids, seed, draw, k):
        draws.append(draw)
        return real(x, ids, seed, draw, k)
    monkeypatch.setattr(suite, "per_example_normals", spy)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    DistributionAttack(0.1, steps=3, samples=2).run(AttackContext(model), torch.rand(2, 1, 4, 4),
                                                    torch.tensor([0, 1]), torch.arange(2))
    assert draws == [0, 1, 2, 3]


def test_distribution_trace_loss_is_the_mean_over_samples():
    """trace['loss'] is each example's mean cross-entropy over its k samples: on a model whose
    logits ignore the input every sample has the same loss, which the mean must equal."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    y = torch.tensor([0, 2])
    out = DistributionAttack(0.1, steps=2, samples=4).run(AttackContext(model), torch.rand(2, 1, 4, 4), y,
                                                          torch.arange(2))
    want = F.cross_entropy(model[1].bias.detach().expand(2, 3), y, reduction="none")
    torch.testing.assert_close(out.trace["loss"], want.expand(3, 2))


def test_fit_steps_with_adam_betas_zero_are_lr_sign_steps():
    """D.3's optimiser is Adam with betas (0, 0): every step moves each mean by lr * sign(grad)
    (up to Adam's 1e-8). On a loss linear in x_adv the mean's gradient keeps the sign of w, so
    after 3 steps mean = 3 * lr * sign(w) exactly; Adam's default betas would not give that."""
    x = torch.full((2, 1, 4, 4), 0.5)
    w = torch.randn(16, generator=torch.Generator().manual_seed(0))
    fit = fit_distribution(lambda z: z.flatten(1) @ w, x, epsilon=0.1, steps=3, num_samples=4, lbd=0.0,
                           lr=0.3, betas=(0.0, 0.0), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fit.mean, (0.9 * w.sign()).view(1, 1, 4, 4).expand(2, -1, -1, -1),
                               rtol=0, atol=1e-5)


def test_losses_are_float32_even_for_bf16_logits():
    """docs/evaluation.md (Precision): losses stay in float32 whatever precision the model runs in."""
    logits = torch.randn(4, 10).bfloat16()
    y = torch.arange(4)
    ce = losses.cross_entropy(logits, y)
    assert ce.dtype == torch.float32
    torch.testing.assert_close(ce, F.cross_entropy(logits.float(), y, reduction="none"))


def test_per_example_streams_of_different_attacks_never_share_draws_for_large_ids():
    """FeaAttack's ids are example x targets + target (200 targets under --protocol paper), so on
    SVHN-sized evaluations they pass 1_000_003, the stride between streams' seeds: the stride alone
    gave FeaAttack's example 10001 (target 5) the transfer attack's start of example 199."""
    x = torch.zeros(1, 3, 4, 4)
    targets, stride = 200, 1_000_003
    feature = per_example_start(x, torch.tensor([10001 * targets + 5]), suite.stream_seed(0, "feature"))
    transfer = per_example_start(x, torch.tensor([10001 * targets + 5 - 2 * stride]), suite.stream_seed(0, "transfer"))
    assert not torch.equal(feature, transfer)
    keys = {example_seed(s, i) for s in range(3) for i in (0, 1, stride - 1, stride, 2 * stride, 5_000_000)}
    assert len(keys) == 18


def test_per_example_starts_of_ids_below_the_stride_keep_their_published_keys():
    """Reports made so far used seed * 1_000_003 + id; the same seed must give the same report."""
    x = torch.zeros(2, 3, 4, 4)
    start = per_example_start(x, torch.tensor([7, 999_999]), 41)
    for row, example_id in enumerate((7, 999_999)):
        expected = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(41 * 1_000_003 + example_id))
        torch.testing.assert_close(start[row], expected * 2 - 1, rtol=0, atol=0)


# Killers from a mutation review of fit_distribution as ADT_EXP's inner loop (Alg. 2, C.3).
def test_fit_distribution_defaults_and_step_bookkeeping_are_alg2s():
    """Defaults are C.3's Adam lr 0.3 with betas (0, 0); T steps each draw their own normals
    (noise(step) for step 0..T-1) and record one objective; lambda < 0 is refused."""
    x = torch.full((2, 1, 4, 4), 0.5)
    w = torch.randn(16, generator=torch.Generator().manual_seed(0))
    loss_fn = lambda z: (z.flatten(1) @ w) ** 2  # noqa: E731
    asked = []

    def noise(step):
        asked.append(step)
        return torch.randn((3, *x.shape), generator=torch.Generator().manual_seed(10 + step))

    common = dict(epsilon=0.1, steps=3, num_samples=3, lbd=0.1, noise=noise, track=True)
    default = fit_distribution(loss_fn, x, **common)
    assert asked == [0, 1, 2] and len(default.objective) == 3
    explicit = fit_distribution(loss_fn, x, lr=0.3, betas=(0.0, 0.0), **common)
    torch.testing.assert_close(default.mean, explicit.mean)
    torch.testing.assert_close(default.std_param, explicit.std_param)
    with pytest.raises(ValueError, match="lbd"):
        fit_distribution(loss_fn, x, epsilon=0.1, steps=1, num_samples=1, lbd=-0.1)
    # counts that are not integers: 1.5 failed inside range(), True ran one step
    for bad in ({"steps": 1.5}, {"steps": True}, {"steps": -1}, {"num_samples": 0},
                {"samples_per_pass": 1.5}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be an integer"):
            fit_distribution(loss_fn, x, **{**dict(epsilon=0.1, steps=1, num_samples=1, lbd=0.0), **bad})


# Killers from a second mutation review of fit_distribution (Alg. 2's inner loop): the entropy's
# per-dimension scaling, and that both parameters are optimised and accumulated.
def test_fit_entropy_is_the_per_dimension_mean_of_minus_log_p_per_example():
    """The entropy term is -log p(delta) of one example divided by its own dimension count (not the
    batch's): at the start (mean 0, sigma = softplus(0) = log 2) with given normals r it is, per
    element, r^2/2 + log(2 pi)/2 + log(log 2) + log(1 - tanh(sigma r)^2) + log epsilon, averaged
    over elements, samples and examples, whatever the batch size."""
    x = torch.full((3, 1, 4, 4), 0.5)
    r = torch.randn(2, *x.shape, generator=torch.Generator().manual_seed(4))
    fit = fit_distribution(lambda z: z.flatten(1).sum(1), x, epsilon=0.1, steps=1, num_samples=2, lbd=0.5,
                           noise=lambda step: r, track=True)
    u = math.log(2.0) * r.double()
    per_element = (0.5 * r.double() ** 2 + 0.5 * math.log(2 * math.pi) + math.log(math.log(2.0))
                   + torch.log1p(-torch.tanh(u) ** 2) + math.log(0.1))
    assert fit.entropy_per_dim[0] == pytest.approx(per_element.mean().item(), rel=1e-5)


def test_fit_steps_both_the_mean_and_the_std_parameter_by_lr_sign():
    """Alg. 2 ascends over (mu, rho) together. With Adam betas (0, 0) the first step moves every
    component of both by exactly lr * sign(grad), so |mean| = |std_param| = lr after one step
    (the entropy term makes both gradients non-zero)."""
    x = torch.full((2, 1, 4, 4), 0.5)
    w = torch.randn(16, generator=torch.Generator().manual_seed(0))
    fit = fit_distribution(lambda z: z.flatten(1) @ w, x, epsilon=0.1, steps=1, num_samples=3, lbd=1.0,
                           lr=0.3, betas=(0.0, 0.0), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fit.mean.abs(), torch.full_like(x, 0.3), rtol=0, atol=1e-5)
    torch.testing.assert_close(fit.std_param.abs(), torch.full_like(x, 0.3), rtol=0, atol=1e-5)


def _authors_accumulated_fit(model, x, y, noise, *, epsilon, lbd, steps, samples):
    """The inner loop of the authors' adt_exp.py (adt_loss), written out: batch-mean CE and entropy
    per sample, one backward per sample, and Adam's gradients never zeroed."""
    mean = torch.zeros_like(x, requires_grad=True)
    var = torch.zeros_like(x, requires_grad=True)
    optimiser = torch.optim.Adam([mean, var], lr=0.3, betas=(0.0, 0.0))
    for step in range(steps):
        for s in range(samples):
            std, r = F.softplus(var), noise[step][s]
            adv = torch.tanh(mean + r * std)
            entropy = (r ** 2 / 2 + std.log() + (1 - adv ** 2).log()).mean()
            loss = -F.cross_entropy(model(torch.clamp(x + epsilon * adv, 0, 1)), y) - lbd * entropy
            loss.backward()
        optimiser.step()
    return mean.detach(), var.detach()


def test_accumulated_fit_takes_the_authors_steps_adam_eps_included():
    """Their gradients are k/B of ours; Adam is scale-free but for eps, so with eps scaled by B/k
    the fits agree to rounding. A classifier whose input gradients are near eps in places makes
    torch's default eps move some components elsewhere."""
    g = torch.Generator().manual_seed(0)
    batch, samples, steps, epsilon, lbd = 4, 5, 7, 8 / 255, 0.01
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 1e-3)
    x = torch.rand(batch, 3, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (batch,), generator=g)
    noise = torch.randn(steps, samples, *x.shape, generator=g, dtype=torch.float64)
    theirs = _authors_accumulated_fit(model, x, y, noise, epsilon=epsilon, lbd=lbd, steps=steps, samples=samples)

    def fit(adam_eps):
        return fit_distribution(lambda z: F.cross_entropy(model(z), y.repeat(z.shape[0] // batch), reduction="none"),
                                x, epsilon=epsilon, steps=steps, num_samples=samples, lbd=lbd, accumulate_grads=True,
                                adam_eps=adam_eps, backend="reference", noise=lambda step: noise[step])

    ours = fit(1e-8 * batch / samples)
    torch.testing.assert_close(ours.mean, theirs[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(ours.std_param, theirs[1], rtol=0, atol=1e-9)
    unscaled = fit(1e-8)
    assert (unscaled.mean - theirs[0]).abs().max() > 0.1


def test_adt_exp_passes_the_authors_adam_eps_only_with_accumulated_grads(monkeypatch):
    from adt_fast.distributed import BatchShard
    from adt_fast.train import methods

    seen = []

    def recording_fit(loss_fn, x, **kwargs):
        seen.append(kwargs["adam_eps"])
        return fit_distribution(loss_fn, x, **kwargs)

    monkeypatch.setattr(methods, "fit_distribution", recording_fit)
    model, x, y = TinyNet(), torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    for accumulate in (False, True):
        dist = methods.ExplicitDistribution(methods.CEInner(), epsilon=0.1, steps=1, samples=3, lbd=0.01,
                                            accumulate_grads=accumulate)
        dist(model, x, y, methods.Runtime())
    # A data-parallel rank holding 6 of a global batch of 12 scales by the global batch.
    dist(model, x, y, methods.Runtime(shard=BatchShard(0, 6, 12, 2)))
    assert seen == [1e-8, 1e-8 * 6 / 3, 1e-8 * 12 / 3]


def test_accumulated_grads_sum_every_step_for_both_parameters(monkeypatch):
    """--dist-grad accumulated (the authors' adt_exp.py never zeroes Adam's gradients): step t sees
    (t + 1) times the step's own gradient, for the mean and for std_param alike, when every step
    draws the same normals and the parameters do not move (Adam.step recorded, not run)."""
    x = torch.full((2, 1, 4, 4), 0.5)
    w = torch.randn(16, generator=torch.Generator().manual_seed(0))
    r = torch.randn(3, *x.shape, generator=torch.Generator().manual_seed(2))
    seen = {}

    def recording_step(self, *args, **kwargs):
        seen[mode].append([p.grad.clone() for p in self.param_groups[0]["params"]])

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    for mode in (False, True):
        seen[mode] = []
        fit_distribution(lambda z: (z.flatten(1) @ w) ** 2, x, epsilon=0.1, steps=3, num_samples=3, lbd=0.5,
                         accumulate_grads=mode, noise=lambda step: r)
    assert len(seen[True]) == 3
    for t, (own, summed) in enumerate(zip(seen[False], seen[True])):
        assert own[0].abs().max() > 0 and own[1].abs().max() > 0
        for mine, total in zip(own, summed):
            torch.testing.assert_close(total, (t + 1) * mine)


class _SqrtNet(nn.Module):
    """Logits from sqrt(x): the input gradient is +-inf at every zero pixel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 3)

    def forward(self, x):
        return self.linear(x.flatten(1).sqrt())


def test_mim_follows_infinite_gradients_as_pgd_does():
    """With two or more components at +-inf (taken as +-float max), the float32 mean |g| overflowed
    to inf: g / mean was 0 everywhere and MIM never moved. Its first step is PGD's sign step."""
    model = _SqrtNet().eval()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    x.view(4, -1)[:, :3] = 0.0  # three infinite gradient components per example
    y = model(x).argmax(1)

    def loss(z):
        return F.cross_entropy(model(z), y, reduction="none")
    z = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(z).sum(), z)
    assert int(torch.isinf(grad).flatten(1).sum(1).min()) >= 2
    pgd_step = iterative_attack(loss, x, epsilon=0.1, steps=1, step_size=0.025)
    mim_step = iterative_attack(loss, x, epsilon=0.1, steps=1, step_size=0.025, momentum=1.0)
    assert int(((pgd_step - x).abs() > 0).flatten(1).sum(1).min()) >= 13
    torch.testing.assert_close(mim_step, pgd_step, rtol=0, atol=0)


def _saturated_float64_model() -> nn.Module:
    """float64 logits with class 0 ahead by about 130: the cross-entropy's input gradient is
    about 1e-56, zero once cast to float32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    with torch.no_grad():
        model[1].weight.mul_(40)
        model[1].bias.zero_()
        model[1].bias[0] = 160.0
    return model


def test_float64_gradients_keep_their_sign_in_the_engine():
    """A float32 cast of the gradient rounded 1e-56 to 0 (sign 0): neither the sign step nor
    APGD moved. The losses and the engine keep float64 logits and gradients in float64."""
    model = _saturated_float64_model()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.long)

    def loss(z):  # the attacks' own cross-entropy: in float32 this gradient is 0
        return losses.cross_entropy(model(z), y)
    z = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(z).sum(), z)
    assert 0 < grad.abs().max() < 1e-50
    fgsm = iterative_attack(loss, x, epsilon=0.1, steps=1, step_size=0.1)
    torch.testing.assert_close(fgsm, torch.clamp(x + 0.1 * grad.sign(), 0, 1), rtol=0, atol=0)
    iterates = []

    def loss_and_hit(z):
        iterates.append(z.detach())
        return loss(z), torch.zeros(len(z), dtype=torch.bool)
    apgd(loss_and_hit, x, epsilon=0.1, steps=1)
    torch.testing.assert_close(iterates[1], torch.clamp(x + 0.1 * grad.sign(), 0, 1), rtol=0, atol=0)


def test_feature_targets_and_starts_draw_from_different_streams(monkeypatch):
    """FeaAttack's start for pair (input e, target t) is keyed by id e * targets + t; target choice
    used the same stream keyed by e, so input e' drew its targets from the generator of the start
    of pair (e' // targets, e' % targets)."""
    seeds = {}
    real_choose, real_start = suite.choose_targets, suite.per_example_start

    def choose(y, ids, pool_y, count, seed):
        seeds["targets"] = seed
        return real_choose(y, ids, pool_y, count, seed)

    def start(x, ids, seed):
        seeds["starts"] = seed
        return real_start(x, ids, seed)
    monkeypatch.setattr(suite, "choose_targets", choose)
    monkeypatch.setattr(suite, "per_example_start", start)
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, targets = torch.rand(4, 3, 8, 8), 2
    suite.feature_attack(model, x, torch.tensor([0, 1, 2, 3]), 0.08, targets=targets, steps=1)
    target_keys = {example_seed(seeds["targets"], e) for e in range(4)}
    start_keys = {example_seed(seeds["starts"], e * targets + t) for e in range(4) for t in range(targets)}
    assert not target_keys & start_keys
