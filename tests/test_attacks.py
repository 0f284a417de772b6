"""The attack suite: analytic worst cases, the l_inf contract, batch independence, strength on a
standard-trained model, FeaAttack's targets, the distribution attack's curve, transfer, errors."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from adt_fast.attacks import (AttackContext, DistributionAttack, FeatureAttack,
                              TransferAttack, cw, evaluate, feature_attack, fgsm, make_attack, mim,
                              parse_attacks, pgd, transfer)
from adt_fast.attacks import suite
from adt_fast.attacks.engine import iterative_attack
from adt_fast.attacks.losses import cw_margin

EPS = 0.1


class TinyNet(nn.Module):
    """A two-stage classifier (features before global pooling, then a head) that trains in a second."""

    def __init__(self, channels: int = 3, classes: int = 10, width: int = 8, batchnorm: bool = False):
        super().__init__()
        layers = [nn.Conv2d(channels, width, 3, padding=1)]
        if batchnorm:
            layers.append(nn.BatchNorm2d(width))
        layers += [nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(2 * width, classes)

    def features(self, x):
        return self.body(x)

    def head(self, features):
        return self.linear(features.mean((2, 3)))

    def forward(self, x):
        return self.head(self.features(x))


def _train(model: nn.Module, x, y, epochs: int = 12, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for begin in range(0, len(x), 100):
            index = order[begin:begin + 100]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def synthetic():
    from adt_fast.data import load

    x_train, y_train = load("synthetic", "train")
    x_test, y_test = load("synthetic", "test")
    return x_train, y_train, x_test[:40], y_test[:40]


@pytest.fixture(scope="module")
def trained(synthetic):
    x_train, y_train, _, _ = synthetic
    torch.manual_seed(0)
    return _train(TinyNet(), x_train, y_train)


@pytest.fixture(scope="module")
def trained_report(trained, synthetic):
    _, _, x, y = synthetic
    return evaluate(trained, x, y, epsilon=EPS, seed=0, batch_size=40, feature_targets=2,
                    dist_steps=8, epsilon_curve=(0, 0.5, 1))


def _random_net(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet(**kwargs).eval()


# ----------------------------------------------------------------------------- analytic worst case


class TwoClassLinear(nn.Module):
    """Logits (-w.x, w.x): the cross-entropy and the C&W margin rise along sign(w) for label 0."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        score = x.flatten(1) @ self.w
        return torch.stack([-score, score], dim=1)


@pytest.mark.parametrize("name", ["fgsm", "pgd20", "pgd100", "mim", "cw"])
def test_linear_model_attacks_reach_the_analytic_worst_case(name):
    generator = torch.Generator().manual_seed(1)
    dims = 12
    magnitude = 0.05 + torch.rand(dims, generator=generator, dtype=torch.float64) * 0.2
    w = magnitude * torch.where(torch.rand(dims, generator=generator) < 0.5, -1.0, 1.0).double()
    model = TwoClassLinear(w)
    x = (0.3 + 0.4 * torch.rand(6, 1, 3, 4, generator=generator, dtype=torch.float64))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    attack = make_attack(name, EPS)
    x_adv = attack.perturb(model, x, y, seed=3)
    # label 0: push w.x up; label 1: push it down (away from the [0, 1] bounds, nothing clamps)
    direction = torch.where(y == 0, 1.0, -1.0).double().view(-1, 1, 1, 1)
    expected = x + EPS * direction * torch.sign(w).view(1, 1, 3, 4)
    torch.testing.assert_close(x_adv, expected, atol=1e-12, rtol=0)


def test_functional_wrappers_match_the_named_attacks():
    model = _random_net()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4])
    for function, name in ((pgd, "pgd20"), (mim, "mim"), (cw, "cw")):
        torch.testing.assert_close(function(model, x, y, EPS, seed=2),
                                   make_attack(name, EPS).perturb(model, x, y, seed=2))
    torch.testing.assert_close(fgsm(model, x, y, EPS), make_attack("fgsm", EPS).perturb(model, x, y))


# ----------------------------------------------------------------------------- the l_inf contract


def _all_attacks(epsilon: float):
    """Every kind of attack, with few steps so that property tests stay fast."""
    return [
        suite.fgsm_attack(epsilon),
        suite.pgd_attack(epsilon, steps=3),
        suite.mim_attack(epsilon, steps=3),
        suite.cw_attack(epsilon, steps=3),
        FeatureAttack(epsilon, targets=2, steps=3),
        DistributionAttack(epsilon, steps=2, samples=3),
        TransferAttack(epsilon, steps=3),
    ]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 4), size=st.sampled_from([4, 8]),
       epsilon=st.floats(1e-3, 0.5), seed=st.integers(0, 2**16), corners=st.booleans())
def test_adversarial_examples_stay_in_the_ball_and_in_range(batch, size, epsilon, seed, corners):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=generator)
    if corners:  # pixels exactly at the bounds, where the clamp binds
        x = torch.where(x < 0.3, torch.zeros_like(x), torch.where(x > 0.7, torch.ones_like(x), x))
    y = torch.randint(0, 10, (batch,), generator=generator)
    y[0] = 0
    if batch > 1:
        y[1] = 1
    original = x.clone()
    model = _random_net(seed % 7)
    ctx = AttackContext(model, seed=seed, source_model=_random_net(seed % 7 + 1),
                        pool_x=torch.rand(6, 3, size, size, generator=generator),
                        pool_y=torch.arange(6))
    ids = torch.arange(batch)
    for attack in _all_attacks(epsilon):
        outcome = attack.run(ctx, x, y, ids)
        assert torch.equal(x, original), f"{attack.name} modified its input"
        assert outcome.x_adv.shape == x.shape
        assert (outcome.x_adv - x).abs().max() <= epsilon * (1 + 1e-6) + 1e-7, attack.name
        assert outcome.x_adv.min() >= 0 and outcome.x_adv.max() <= 1, attack.name
        assert outcome.correct.dtype == torch.bool and outcome.correct.shape == (batch,)


def test_model_modes_are_restored_and_batchnorm_statistics_untouched():
    model = TinyNet(batchnorm=True)
    model.train()
    model.body[1].eval()  # a mixed state must come back exactly as it was
    flags = [module.training for module in model.modules()]
    stats = model.body[1].running_mean.clone()
    x = torch.rand(6, 3, 8, 8)
    y = torch.arange(6)
    evaluate(model, x, y, epsilon=EPS, attacks="fgsm,pgd:2,feature,dist", feature_targets=1,
             dist_steps=1, epsilon_curve=())
    assert [module.training for module in model.modules()] == flags
    assert torch.equal(model.body[1].running_mean, stats)


def test_nan_gradients_do_not_poison_the_iterate():
    x = torch.rand(3, 5)

    def loss_fn(z):
        return (z * torch.tensor([float("nan"), 1.0, -1.0, 0.0, 2.0])).sum(1)

    x_adv = iterative_attack(loss_fn, x, epsilon=0.1, steps=3, step_size=0.05)
    assert torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-7


def test_cw_margin_masks_the_true_class_when_every_other_logit_is_negative():
    logits = torch.tensor([[-5.0, -3.0, -9.0], [-1.0, -2.0, -0.5]])
    y = torch.tensor([1, 2])
    torch.testing.assert_close(cw_margin(logits, y), torch.tensor([-2.0, -0.5]))


# ----------------------------------------------------------------------------- batch independence


@pytest.mark.parametrize("name", ["fgsm", "pgd20", "mim", "cw", "feature", "transfer", "dist"])
def test_attacking_a_batch_equals_attacking_each_item_alone(name):
    model = _random_net(0).double()
    source = _random_net(1).double()
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(5, 3, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    ids = torch.tensor([17, 3, 250, 9, 42])  # dataset indices
    ctx = AttackContext(model, seed=11, source_model=source, pool_x=x, pool_y=y, batch_size=64)
    attack = make_attack(name, EPS, feature_targets=3)
    whole = attack.run(ctx, x, y, ids)
    for i in range(len(x)):
        alone = attack.run(ctx, x[i:i + 1], y[i:i + 1], ids[i:i + 1])
        torch.testing.assert_close(alone.x_adv[0], whole.x_adv[i], atol=1e-12, rtol=0)
        assert bool(alone.correct[0]) == bool(whole.correct[i])


def test_evaluation_does_not_depend_on_batch_size(synthetic, trained):
    _, _, x, y = synthetic
    kwargs = dict(epsilon=EPS, seed=4, attacks="pgd:5,feature,dist", feature_targets=2, dist_steps=3,
                  epsilon_curve=())
    model = copy.deepcopy(trained).double()
    x, y = x[:16].double(), y[:16]
    small = evaluate(model, x, y, batch_size=5, **kwargs)
    large = evaluate(model, x, y, batch_size=16, **kwargs)
    for name in small.correct:
        assert torch.equal(small.correct[name], large.correct[name]), name


def test_a_model_on_another_device_than_device_is_a_clear_error(synthetic):
    """evaluate moves the batches to `device`, not the models; a model left elsewhere used to fail
    inside its first forward with torch's device-mismatch error."""
    _, _, x, y = synthetic
    with pytest.raises(ValueError, match=r"model is on cpu but device='meta': move it there first"):
        evaluate(_random_net(), x[:4], y[:4], epsilon=EPS, attacks="fgsm", device="meta")
    # meta stands in for a second device: a model without parameters or buffers is taken to be on
    # any (a source model on meta is refused before, for holding no values)
    with pytest.raises(ValueError, match=r"source_model is on cpu but device='meta': move it there first"):
        evaluate(nn.Flatten(), x[:4], y[:4], epsilon=EPS, attacks="fgsm", source_model=_random_net(), device="meta")


def test_transfer_from_a_source_with_no_finite_logit_is_skipped_with_the_reason(synthetic):
    """A NaN source gave no gradient, so 'transfer' was PGD's random start alone, scored without a word."""
    _, _, x, y = synthetic

    class NaNSource(nn.Module):
        def forward(self, z):
            return torch.full((z.shape[0], 10), float("nan"))
    report = evaluate(_random_net(), x[:8], y[:8], epsilon=EPS, attacks="fgsm,transfer", source_model=NaNSource(),
                      epsilon_curve=())
    assert "transfer" not in report.robust_accuracy and "fgsm" in report.robust_accuracy
    assert "source model's logits are not finite" in report.attacks["transfer"]["skipped"]
    working = evaluate(_random_net(), x[:8], y[:8], epsilon=EPS, attacks="transfer", source_model=_random_net(3),
                       epsilon_curve=())
    assert "transfer" in working.robust_accuracy


class NormalisingNet(TinyNet):
    """Normalises in forward, which head(features(x)) skips: FeaAttack would attack another function."""

    def forward(self, x):
        return self.head(self.features((x - 0.5) / 0.25))


class PoolingInForwardNet(nn.Module):
    """A common layout: .features a conv stack, pooling in forward, .head a bare Linear that
    cannot take the feature map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class RandomisedSplitNet(TinyNet):
    """A randomised defence with a true split (noise added to the logits in forward): head(features(x))
    cannot equal a forward that is new noise each call, and the reason used to blame normalisation."""

    def forward(self, x):
        return self.head(self.features(x)) + torch.randn(x.shape[0], 10)


@pytest.mark.parametrize("net,reason", [(NormalisingNet, "does not give model"), (PoolingInForwardNet, "fails"),
                                        (RandomisedSplitNet, "other logits for the same inputs on each call "
                                                             "(a randomised model)")])
def test_feature_attack_is_skipped_when_the_split_is_not_the_forward(synthetic, net, reason):
    _, _, x, y = synthetic
    torch.manual_seed(0)
    report = evaluate(net().eval(), x[:8], y[:8], epsilon=EPS, attacks="fgsm,feature", feature_targets=1,
                      epsilon_curve=())
    assert "feature" not in report.robust_accuracy
    assert reason in report.attacks["feature"]["skipped"]
    torch.manual_seed(0)
    plain = evaluate(_random_net(), x[:8], y[:8], epsilon=EPS, attacks="feature", feature_targets=1,
                     epsilon_curve=())
    assert "feature" in plain.robust_accuracy


class NanGradientNet(TinyNet):
    """Finite logits, NaN input gradients: where() routes the NaN derivative of sqrt at the
    negative pre-activations it does not select into the backward."""

    def features(self, x):
        h = self.body[:-1](x)  # before the last ReLU
        return torch.where(h > 0, h, torch.sqrt(h))


def test_nan_gradients_do_not_turn_the_distribution_attack_into_nan(synthetic):
    _, _, x, y = synthetic
    torch.manual_seed(0)
    model = NanGradientNet().eval()
    ctx = AttackContext(model, seed=0)
    outcome = DistributionAttack(EPS, steps=3, samples=2).run(ctx, x[:8], y[:8], torch.arange(8))
    assert torch.isfinite(outcome.x_adv).all()
    assert ((outcome.x_adv - x[:8]).abs() <= EPS + 1e-6).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(dist_lambda=float("nan")), r"dist_lambda must be a finite number >= 0, got nan"),
    (dict(seed=2**32), r"seed must be an integer from 0 to 4294967295, got 4294967296"),
    (dict(epsilon_curve="0,1"), r"epsilon_curve is a sequence of numbers .* not the string '0,1'"),
    (dict(epsilon_curve=(0.5, "x")), r"epsilon_curve holds numbers"),
])
def test_bad_evaluation_arguments_name_themselves(synthetic, kwargs, message):
    _, _, x, y = synthetic
    with pytest.raises(ValueError, match=message):
        evaluate(_random_net(), x[:4], y[:4], epsilon=EPS, attacks="fgsm", **kwargs)


def test_epsilon_curve_takes_any_sequence_of_numbers():
    from adt_fast.attacks.evaluation import check_epsilon_curve

    for curve in ((1.0, 0.5), [0.5, 1.0, 1.0], np.array([1.0, 0.5]), torch.tensor([0.5, 1.0])):
        assert check_epsilon_curve(curve, EPS) == [0.5, 1.0]
    assert check_epsilon_curve(None, EPS) == check_epsilon_curve((), EPS) == []


def test_the_largest_seed_runs_every_random_stream(synthetic):
    _, _, x, y = synthetic
    report = evaluate(_random_net(), x[:4], y[:4], epsilon=EPS, attacks="pgd:1,mim,feature,dist",
                      feature_targets=1, dist_steps=1, seed=suite.MAX_SEED, epsilon_curve=())
    assert set(report.robust_accuracy) == {"pgd1", "mim", "feature", "dist"}


def test_the_same_seed_gives_the_same_report(synthetic, trained):
    _, _, x, y = synthetic
    kwargs = dict(epsilon=EPS, attacks="fgsm,pgd:5,feature,dist", feature_targets=1,
                  dist_steps=3, batch_size=8, epsilon_curve=(0.5,))
    first = evaluate(trained, x[:16], y[:16], seed=7, **kwargs)
    second = evaluate(trained, x[:16], y[:16], seed=7, **kwargs)
    assert first.to_dict() == second.to_dict()


# ----------------------------------------------------------------------------- strength


def test_each_attack_lowers_the_accuracy_of_a_standard_model(trained_report, trained, synthetic):
    report = trained_report
    assert report.natural_accuracy >= 0.9
    assert set(report.robust_accuracy) == {"fgsm", "pgd20", "pgd100", "mim", "cw", "feature", "dist"}
    for name, accuracy in report.robust_accuracy.items():
        assert accuracy < report.natural_accuracy, name
    _, _, x, y = synthetic
    outcome = transfer(trained, trained, x, y, EPS)
    assert outcome.correct.float().mean() < report.natural_accuracy


def test_worst_case_is_at_most_every_attack_and_counts_per_example(trained_report):
    report = trained_report
    assert report.worst_case_accuracy <= min(report.robust_accuracy.values())
    assert report.worst_case_accuracy <= report.natural_accuracy
    expected = report.correct["natural"].clone()
    for name in report.robust_accuracy:
        expected &= report.correct[name]
    assert torch.equal(report.correct["worst_case"], expected)
    assert report.worst_case_accuracy == expected.sum().item() / report.n_examples


def test_pgd_steps_curve_matches_the_pgd_columns(trained_report):
    points = trained_report.curves["pgd_steps"]["points"]
    assert [p["steps"] for p in points] == list(range(101))
    assert points[20]["accuracy"] == trained_report.robust_accuracy["pgd20"]
    assert points[100]["accuracy"] == trained_report.robust_accuracy["pgd100"]
    eps_points = trained_report.curves["pgd_epsilon"]["points"]
    assert [p["multiple"] for p in eps_points] == [0, 0.5, 1]
    assert eps_points[0]["accuracy"] == trained_report.natural_accuracy
    assert eps_points[-1]["accuracy"] == trained_report.robust_accuracy["pgd20"]


def test_distribution_attack_loss_rises_with_steps(trained, synthetic):
    _, _, x, y = synthetic
    attack = DistributionAttack(EPS / 2, steps=12, samples=10)
    outcome = attack.run(AttackContext(trained, seed=0), x, y, torch.arange(len(x)))
    loss = outcome.trace["loss"].mean(1)
    assert loss.shape == (13,)
    assert loss[-1] > loss[0]
    assert loss[6:].mean() > loss[:6].mean()
    assert (loss[1:] >= loss[:-1] - 0.05 * loss.abs().max()).all()  # no real drop along the way


def test_distribution_curve_is_reported(trained_report):
    curve = trained_report.curves["dist"]
    assert curve["samples"] == 10
    points = curve["points"]
    assert [p["steps"] for p in points] == list(range(9))
    assert points[-1]["loss"] > points[0]["loss"]
    assert points[-1]["accuracy"] == trained_report.robust_accuracy["dist"]
    for point in points:
        assert point["accuracy"] <= point["sample_accuracy"] + 1e-12


# ----------------------------------------------------------------------------- FeaAttack


@settings(max_examples=25, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=30), targets=st.integers(1, 8),
       seed=st.integers(0, 1000))
def test_feature_targets_are_always_of_another_class(labels, targets, seed):
    pool_y = torch.tensor(labels)
    if len(torch.unique(pool_y)) < 2:
        pool_y[0] = (pool_y[0] + 1) % 5
    y = pool_y[: max(1, len(pool_y) // 2)]
    chosen = suite.choose_targets(y, torch.arange(len(y)), pool_y, targets, seed)
    assert chosen.shape == (len(y), targets)
    assert (pool_y[chosen] != y[:, None]).all()


def test_feature_attack_uses_targets_of_another_class(monkeypatch, trained, synthetic):
    _, _, x, y = synthetic
    seen = []
    real = suite.choose_targets

    def spy(*args, **kwargs):
        chosen = real(*args, **kwargs)
        seen.append(chosen)
        return chosen

    monkeypatch.setattr(suite, "choose_targets", spy)
    outcome = feature_attack(trained, x[:10], y[:10], EPS, targets=2, pool_x=x, pool_y=y)
    assert seen and (y[seen[0]] != y[:10, None]).all()
    broken = ~outcome.correct
    assert broken.any()
    # a broken example comes with an adversarial input that the model misclassifies
    with torch.no_grad():
        predictions = trained(outcome.x_adv[broken]).argmax(1)
    assert (predictions != y[:10][broken]).all()


def test_feature_attack_is_skipped_with_a_reason_for_models_without_features(synthetic):
    _, _, x, y = synthetic
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    report = evaluate(model, x[:8], y[:8], epsilon=EPS, attacks="fgsm,feature", epsilon_curve=())
    assert "feature" not in report.robust_accuracy
    assert "features" in report.skipped["feature"]
    assert any(w.startswith("feature skipped") for w in report.warnings)
    assert "n/a" in report.table()
    with pytest.raises(ValueError, match="features"):
        feature_attack(model, x[:2], y[:2], EPS)


# ----------------------------------------------------------------------------- transfer, bf16


def test_transfer_path(trained, synthetic):
    _, _, x, y = synthetic
    other = _random_net(3)
    report = evaluate(trained, x, y, epsilon=EPS, attacks="pgd20", source_model=other,
                      epsilon_curve=())
    assert set(report.robust_accuracy) == {"pgd20", "transfer"}
    assert report.attacks["transfer"]["crafted_on"] == "source model"
    assert report.robust_accuracy["transfer"] >= report.robust_accuracy["pgd20"]
    self_transfer = evaluate(trained, x, y, epsilon=EPS, attacks="transfer", source_model=trained,
                             epsilon_curve=())
    assert self_transfer.robust_accuracy["transfer"] < self_transfer.natural_accuracy


def test_a_masked_model_is_flagged(trained, synthetic):
    """Rounding the input kills every gradient; transfer from the unmasked twin still works."""
    _, _, x, y = synthetic

    class Rounded(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            return self.inner(torch.round(z * 255) / 255)

    report = evaluate(Rounded(trained), x, y, epsilon=EPS, attacks="fgsm,pgd20",
                      source_model=trained, epsilon_curve=())
    text = "\n".join(report.warnings)
    assert "exactly zero" in text
    assert "weaker than the transfer" in text


def test_bf16_autocast(trained, synthetic):
    _, _, x, y = synthetic
    report = evaluate(trained, x[:16], y[:16], epsilon=EPS, attacks="fgsm,pgd:3,feature",
                      feature_targets=1, precision="bf16", epsilon_curve=())
    assert report.precision == "bf16"
    assert report.robust_accuracy["pgd3"] < report.natural_accuracy
    x_adv = pgd(trained, x[:4], y[:4], EPS, 3, precision="bf16")
    assert x_adv.dtype == torch.float32 and (x_adv - x[:4]).abs().max() <= EPS + 1e-6


@pytest.mark.parametrize("native", [False, True])
def test_bf16_evaluation_warns_where_bf16_is_emulated(trained, synthetic, monkeypatch, native):
    from adt_fast import devices

    monkeypatch.setattr(devices, "has_native_bf16", lambda device: native)
    _, _, x, y = synthetic
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(trained, x[:4], y[:4], epsilon=EPS, attacks="fgsm", precision="bf16", epsilon_curve=())
    said = [str(w.message) for w in caught if devices.CPU_BF16_CHECK in str(w.message)]
    assert said == ([] if native else [devices.bf16_emulation_warning("cpu")])


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("epsilon", [0, -0.1, float("nan"), float("inf")])
def test_bad_epsilon(epsilon, synthetic):
    _, _, x, y = synthetic
    with pytest.raises(ValueError, match="epsilon"):
        evaluate(_random_net(), x, y, epsilon=epsilon)
    with pytest.raises(ValueError, match="epsilon"):
        make_attack("pgd20", epsilon)


@pytest.mark.parametrize("spec", ["pgd", "fgsm,foo", "pgd:0", "PGD:x", "", "fgsm,fgsm"])
def test_bad_attack_names(spec, synthetic):
    _, _, x, y = synthetic
    with pytest.raises(ValueError, match="attack"):
        evaluate(_random_net(), x, y, epsilon=EPS, attacks=spec)


def test_attack_name_spellings():
    assert parse_attacks("FGSM, pgd:7,pgd-20,pgd100 ,mim,cw,feature,dist,transfer") == [
        "fgsm", "pgd7", "pgd20", "pgd100", "mim", "cw", "feature", "dist", "transfer"]


def test_other_bad_inputs(synthetic):
    _, _, x, y = synthetic
    model = _random_net()
    with pytest.raises(ValueError, match="source"):
        evaluate(model, x, y, epsilon=EPS, attacks="transfer")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(model, x * 2, y, epsilon=EPS, attacks="fgsm")
    with pytest.raises(ValueError, match="logits"):
        evaluate(_random_net(classes=5), x, y, epsilon=EPS, attacks="fgsm")
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, x, y, epsilon=EPS, attacks="fgsm", batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        evaluate(model, x, y, epsilon=EPS, attacks="fgsm", precision="fp8")
    with pytest.raises(ValueError, match="shape"):
        evaluate(model, x, y[:-1], epsilon=EPS, attacks="fgsm")


_STANDALONE = {
    "pgd": lambda model, x, y, **kw: pgd(model, x, y, EPS, steps=2, **kw),
    "perturb": lambda model, x, y, **kw: make_attack("square", EPS).perturb(model, x, y, **kw),
    "feature": lambda model, x, y, **kw: feature_attack(model, x, y, EPS, targets=1, steps=1, **kw),
    "transfer": lambda model, x, y, **kw: transfer(_random_net(1), model, x, y, EPS, steps=1, **kw),
}
_BAD_BATCHES = {
    # a normalised batch: the attacks would clamp it to [0, 1], far more than epsilon away
    "normalised x": (lambda x, y: ((x - 0.5) / 0.25, y), ValueError, r"x must lie in \[0, 1\]"),
    "x with a NaN": (lambda x, y: (x.index_fill(0, torch.tensor([2]), float("nan")), y), ValueError,
                     r"x must lie in \[0, 1\]"),
    "x with -inf": (lambda x, y: (x.index_fill(0, torch.tensor([5]), -float("inf")), y), ValueError,
                    r"x must lie in \[0, 1\]"),
    "float labels": (lambda x, y: (x, y.float()), TypeError, "y must be an integer tensor"),
    "labels of another length": (lambda x, y: (x, y[:-1]), ValueError, r"y must have shape \(6,\)"),
    "a label the model lacks": (lambda x, y: (x, y + 10), ValueError, "labels go up to 1[0-9] but the model returns 10"),
    "negative labels": (lambda x, y: (x, y - 1), ValueError, "labels must be >= 0"),
    "unbatched x": (lambda x, y: (x.flatten()[:6], y), ValueError, "x must be batched"),
}


@pytest.mark.parametrize("bad", list(_BAD_BATCHES))
@pytest.mark.parametrize("entry", list(_STANDALONE))
def test_stand_alone_attacks_check_their_batch_as_evaluate_does(entry, bad):
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    spoil, error, message = _BAD_BATCHES[bad]
    with pytest.raises(error, match=message):
        _STANDALONE[entry](_random_net(), *spoil(x, y))


def test_stand_alone_attacks_check_the_source_model_and_the_pool():
    x, y = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    with pytest.raises(ValueError, match="the source model returns 3 logits"):
        transfer(_random_net(classes=3), _random_net(), x, y, EPS, steps=1)
    with pytest.raises(ValueError, match="pool_x and pool_y go together"):
        feature_attack(_random_net(), x, y, EPS, targets=1, pool_x=x)
    with pytest.raises(ValueError, match=r"pool_x must lie in \[0, 1\]"):
        feature_attack(_random_net(), x, y, EPS, targets=1, pool_x=x * 3, pool_y=y)
    # narrower integer labels are taken, as evaluate takes them
    assert pgd(_random_net(), x, y.to(torch.int32), EPS, steps=1).shape == x.shape


@pytest.mark.parametrize("make,message", [
    (lambda: suite.mim_attack(EPS, decay=-1.0), "MIM's decay"),
    (lambda: suite.mim_attack(EPS, decay=float("nan")), "MIM's decay"),
    (lambda: suite.mim_attack(EPS, decay=float("inf")), "MIM's decay"),
    (lambda: suite.cw_attack(EPS, kappa=-5.0), "C&W's kappa"),
    (lambda: suite.cw_attack(EPS, kappa=float("nan")), "C&W's kappa"),
    (lambda: FeatureAttack(EPS, steps=1.5), "FeaAttack's steps"),
    (lambda: FeatureAttack(EPS, steps=-1), "FeaAttack's steps"),
    (lambda: FeatureAttack(EPS, step_size=float("nan")), "FeaAttack's step_size"),
    (lambda: FeatureAttack(EPS, step_size=-0.01), "FeaAttack's step_size"),
    (lambda: AttackContext(_random_net(), seed=-1), "seed"),
    (lambda: AttackContext(_random_net(), batch_size=0), "batch_size"),
])
def test_attack_settings_that_would_give_wrong_accuracies_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_settings_at_the_edge_of_their_range_run():
    """decay 0 is PGD on the normalised gradient, kappa 0 stops at the decision boundary (C&W's
    confidence 0), FeaAttack with 0 steps keeps its random start: all meaningful."""
    x, y = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(3)
    model = _random_net()
    for x_adv in (mim(model, x, y, EPS, steps=2, decay=0.0), cw(model, x, y, EPS, steps=2, kappa=0.0),
                  feature_attack(model, x, y, EPS, targets=1, steps=0).x_adv):
        assert (x_adv - x).abs().max() <= EPS + 1e-6


def test_per_example_normals_are_standard_normal_and_keyed_by_example():
    from adt_fast.attacks.engine import per_example_normals

    x = torch.zeros(3, 2, 50, 50)
    ids = torch.tensor([7, 8, 7])
    r = per_example_normals(x, ids, seed=3, draw=0, num_samples=6)
    assert r.shape == (6, *x.shape)
    assert abs(r.mean()) < 0.02 and abs(r.std() - 1) < 0.02
    assert torch.equal(r[:, 0], r[:, 2]) and not torch.equal(r[:, 0], r[:, 1])
    assert not torch.equal(r, per_example_normals(x, ids, seed=3, draw=1, num_samples=6))
    assert not torch.equal(r, per_example_normals(x, ids, seed=4, draw=0, num_samples=6))



def test_per_example_streams_use_every_bit_of_seed_and_id():
    """Stream seeds are seed * 16 + attack (up to 2^36), and Philox's key takes 32 bits of seed
    and id: evaluation seeds 0 and 2^28, and ids 2^32 apart, shared the distribution attack's
    normals and Square's words."""
    from adt_fast.attacks.engine import per_example_normals, per_example_words
    from adt_fast.attacks.suite import stream_seed

    x, ids, draws = torch.zeros(2, 1, 4, 4), torch.tensor([0, 5]), torch.arange(3)
    for name in ("dist", "square"):
        low, high = stream_seed(0, name), stream_seed(2**28, name)
        assert not torch.equal(per_example_normals(x, ids, low, 0, 4), per_example_normals(x, ids, high, 0, 4))
        assert not torch.equal(per_example_words(ids, low, draws), per_example_words(ids, high, draws))
    far = ids + 2**32
    assert not torch.equal(per_example_normals(x, ids, 9, 0, 4), per_example_normals(x, far, 9, 0, 4))
    assert not torch.equal(per_example_words(ids, 9, draws), per_example_words(far, 9, draws))
    # redraws (Square) get words of their own
    assert not torch.equal(per_example_words(ids, 9, draws), per_example_words(ids, 9, draws, attempt=1))


def test_per_example_streams_below_2_to_32_keep_their_published_values():
    """Values computed before the high bits of seed and id entered the counter: reports made with
    seeds and ids below 2^32 stay reproducible."""
    from adt_fast.attacks.engine import per_example_normals, per_example_words

    x, ids = torch.zeros(2, 1, 2, 2, dtype=torch.float64), torch.tensor([3, 2**31 + 5])
    normals = per_example_normals(x, ids, 2**32 - 7, 1, 5)
    assert normals[4, 1].flatten().tolist() == pytest.approx(
        [1.0494503915317315, -0.8023349345190366, 0.12893850413279107, -0.7055610267992679], rel=1e-12)
    assert normals[0, :, 0, 0, :2].flatten().tolist() == pytest.approx(
        [-0.06709168776409248, 0.6437661223006207, 0.4013538525882948, -1.018212748162426], rel=1e-12)
    assert per_example_words(ids, 123456789, torch.tensor([0, 4999])).tolist() == [
        [[1512538024, 3123925720, 2454667004, 2449799414], [2988583684, 3866642167, 256599912, 453210084]],
        [[1831573448, 3484631442, 2722264926, 1941271357], [3237809954, 1430512247, 241275368, 549123501]]]

def test_star_import_gives_every_public_name():
    import adt_fast.attacks as attacks

    namespace: dict = {}
    exec("from adt_fast.attacks import *", namespace)
    assert set(attacks.__all__) <= set(namespace)
    assert len(set(attacks.__all__)) == len(attacks.__all__)
