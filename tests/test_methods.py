"""The training methods' pieces: perturbations, inner and outer losses, the registry."""

import re

import pytest
import torch

from adt_fast import sample_and_entropy
from adt_fast.attacks.losses import cross_entropy, trades_loss
from adt_fast.data import load
from adt_fast.models import build_model
from adt_fast.train import (METHODS, PGD, CEInner, CEOuter, ComposedMethod, ExplicitDistribution,
                            Runtime, TradesInner, TradesKLInner, TradesOuter, TrainConfig,
                            build_method)
from adt_fast.train.methods import inner_entropy_weight

EPS = 8 / 255


@pytest.fixture(scope="module")
def batch():
    x, y = load("synthetic", "train")
    return x[:16], y[:16]


@pytest.fixture(scope="module")
def trained_state():
    """A small CNN trained briefly on synthetic data: a fixed model whose loss perturbations move."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, in_channels=3, image_size=8).train()
    x, y = load("synthetic", "train")
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(40):
        idx = torch.arange(step * 32, step * 32 + 32) % x.shape[0]
        optimiser.zero_grad()
        cross_entropy(model(x[idx]), y[idx]).mean().backward()
        optimiser.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def model(trained_state):
    """The trained model in train mode (BatchNorm statistics non-trivial), no gradients."""
    model = build_model("small-cnn", 10, in_channels=3, image_size=8)
    model.load_state_dict(trained_state)
    return model.train()


def _buffers(model):
    return {name: b.clone() for name, b in model.named_buffers()}


def _assert_untouched(model, buffers):
    assert all(p.grad is None for p in model.parameters()), "the inner loop wrote into .grad"
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), f"the inner loop changed BatchNorm buffer {name}"
    assert model.training, "the model's train/eval flag was not restored"


def test_registry_holds_the_four_methods():
    assert {"standard", "at-pgd", "trades", "adt-exp"} <= set(METHODS)
    assert METHODS["adt-exp"].losses == ("ce", "trades")


@pytest.mark.parametrize("inner,start", [(CEInner(), "uniform"), (TradesKLInner(), "trades")])
def test_pgd_stays_in_the_ball_and_box_and_leaves_the_classifier_alone(batch, model, inner, start):
    x, y = batch
    x = x.clone()
    x[:4] = 0.0  # corners of the box, where the clamp binds
    x[4:8] = 1.0
    buffers = _buffers(model)
    torch.manual_seed(1)
    pgd = PGD(inner, epsilon=EPS, steps=7, step_size=EPS / 4, start=start)
    x_adv = pgd(model, x, y, Runtime())
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > EPS / 2, "PGD did not move"
    _assert_untouched(model, buffers)


def test_pgd_raises_the_loss(batch, model):
    x, y = batch
    model = model.eval()
    torch.manual_seed(2)
    x_adv = PGD(CEInner(), epsilon=EPS, steps=7, step_size=EPS / 4)(model, x, y, Runtime())
    with torch.no_grad():
        assert cross_entropy(model(x_adv), y).mean() > cross_entropy(model(x), y).mean()


@pytest.mark.parametrize("setting,value,message", [
    ("step_size", -EPS / 4, "step_size must be a finite number in (0, 1]"),
    ("step_size", 0.0, "step_size must be a finite number in (0, 1]"),
    ("step_size", float("nan"), "step_size must be a finite number in (0, 1]"),
    ("step_size", 1.5, "step_size must be a finite number in (0, 1]"),
    ("epsilon", 0.0, "epsilon must be a finite number in (0, 1]"),
    ("epsilon", float("inf"), "epsilon must be a finite number in (0, 1]"),
    ("steps", -1, "steps must be an integer from 0 to 100000"), ("steps", 7.0, "steps must be an integer from 0 to 100000"),
    ("steps", 100001, "steps must be an integer from 0 to 100000"),
])
def test_pgd_composed_in_python_refuses_what_the_cli_refuses(setting, value, message):
    """A negative step once descended the loss and a NaN one returned NaN inputs, silently, for a
    method composed from the pieces (docs/training.md) rather than built from a TrainConfig."""
    settings = {"epsilon": EPS, "steps": 7, "step_size": EPS / 4, setting: value}
    with pytest.raises(ValueError, match=re.escape(message)):
        PGD(CEInner(), **settings)


@pytest.mark.parametrize("inner", [CEInner(), TradesInner(beta=6.0)], ids=["ce", "trades"])
def test_adt_exp_inner_objective_rises_and_classifier_untouched(batch, model, inner):
    x, y = batch
    buffers = _buffers(model)
    torch.manual_seed(3)
    dist = ExplicitDistribution(inner, epsilon=EPS, steps=7, samples=5, lbd=0.01, track=True)
    x_adv = dist(model, x, y, Runtime())
    objective = dist.last_fit.objective
    assert len(objective) == 7
    assert objective[-1] > objective[0] + 1e-3, objective
    rises = sum(b > a for a, b in zip(objective, objective[1:]))
    assert rises >= len(objective) - 2, objective
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() < EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    _assert_untouched(model, buffers)


def test_batched_k_gradients_match_a_loop_over_k(batch, model):
    """One forward of k*B inputs gives the same distribution gradients as k separate forwards."""
    x, y = batch
    x = x.double()
    model = model.double().eval()
    k, lbd = 5, 0.01
    dims = x[0].numel()
    gen = torch.Generator().manual_seed(4)
    mean0 = 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    std0 = 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    noise = torch.randn((k, *x.shape), generator=gen, dtype=torch.float64)
    loss_fn = CEInner().bind(model, x, y, Runtime())

    def grads(batched):
        mean, std = mean0.clone().requires_grad_(), std0.clone().requires_grad_()
        if batched:
            x_adv, nlp = sample_and_entropy(mean, std, k, EPS, x=x, noise=noise)
            loss = loss_fn(x_adv.flatten(0, 1)).view(k, -1).mean(0)
            objective = loss + lbd * nlp.mean(0) / dims
        else:
            objective = 0
            for j in range(k):
                x_adv, nlp = sample_and_entropy(mean, std, 1, EPS, x=x, noise=noise[j:j + 1])
                objective = objective + (loss_fn(x_adv[0]) + lbd * nlp[0] / dims) / k
        g = torch.autograd.grad(objective.sum(), [mean, std])
        assert all(p.grad is None for p in model.parameters())
        return g

    for batched_grad, loop_grad in zip(grads(True), grads(False)):
        torch.testing.assert_close(batched_grad, loop_grad, rtol=1e-10, atol=1e-12)
        assert batched_grad.abs().sum() > 0


def test_trades_outer_is_the_trades_loss_and_returns_clean_logits(batch, model):
    x, y = batch
    model = model.eval()
    x_adv = (x + 0.01).clamp(0, 1)
    loss, clean = TradesOuter(beta=6.0)(model, x, x_adv, y, Runtime())
    with torch.no_grad():
        expected = trades_loss(model(x_adv), model(x), y, 6.0)
        torch.testing.assert_close(loss.detach(), expected)
        torch.testing.assert_close(clean.detach(), model(x))


def test_ce_outer_returns_clean_logits_only_for_clean_inputs(batch, model):
    x, y = batch
    model = model.eval()
    _, clean = CEOuter()(model, x, x, y, Runtime())
    assert clean is not None
    _, clean = CEOuter()(model, x, x.clone(), y, Runtime())
    assert clean is None


def _config(method, **kw):
    return TrainConfig(method, "synthetic", "unused", tensorboard=False, **kw).resolve()


@pytest.mark.parametrize("method,kw", [("standard", {}), ("at-pgd", {}), ("trades", {}),
                                       ("adt-exp", {}), ("adt-exp", {"loss": "trades"})])
def test_each_method_steps_with_clean_logits_when_it_has_them(batch, model, method, kw):
    x, y = batch
    cfg = _config(method, steps=2, samples=2, **kw) if method == "adt-exp" else _config(method)
    built = build_method(cfg, model, Runtime())
    assert isinstance(built, ComposedMethod) and built.modules() == {} and built.optimisers() == {}
    out = built.step(model, x, y)
    assert out.loss.dim() == 0 and out.loss.requires_grad
    # Clean logits only where the outer loss computes them; train_step adds them on request.
    if method in ("standard", "trades") or kw:
        assert out.clean_logits.shape == (x.shape[0], 10) and not out.clean_logits.requires_grad
    else:
        assert out.clean_logits is None
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    sgd = {"model": torch.optim.SGD(model.parameters(), lr=0.0)}
    measured = built.train_step(model, x, y, sgd, measure_accuracy=True)
    assert measured.clean_logits.shape == (x.shape[0], 10) and not measured.clean_logits.requires_grad


def test_method_settings_resolve_per_method():
    pgd = _config("at-pgd")
    assert (pgd.steps, pgd.step_size, pgd.samples, pgd.lbd, pgd.beta) == (7, EPS / 4, None, None, None)
    adt = _config("adt-exp")
    assert (adt.steps, adt.samples, adt.lbd, adt.dist_lr, adt.dist_betas, adt.loss, adt.beta) == \
        (7, 5, 0.01, 0.3, (0.0, 0.0), "ce", None)
    assert _config("adt-exp", loss="trades").beta == 6.0
    assert _config("trades", beta=1.0).beta == 1.0


def test_bf16_and_channels_last_runtime(batch, model):
    x, y = batch
    model = model.to(memory_format=torch.channels_last)
    rt = Runtime(precision="bf16", channels_last=True)
    assert rt.forward(model, x).dtype == torch.bfloat16
    cfg = _config("adt-exp", steps=2, samples=2, precision="bf16", channels_last=True)
    out = build_method(cfg, model, rt).step(model, x, y)
    out.loss.backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


# TRADES' start and ADT's entropy weight, which no other test pinned (mutation review).
def test_trades_start_is_0_001_times_a_standard_normal():
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 3, 8).eval()
    x = torch.full((64, 3, 8, 8), 0.5)
    out = PGD(TradesKLInner(), epsilon=8 / 255, steps=0, step_size=2 / 255, start="trades")(
        model, x, torch.zeros(64, dtype=torch.long), Runtime())
    assert (out - x).std().item() == pytest.approx(0.001, rel=0.05)


def test_trades_method_starts_its_inner_loop_like_trades():
    torch.manual_seed(0)
    cfg = TrainConfig("trades", "synthetic", "unused", tensorboard=False).resolve()
    assert build_method(cfg, build_model("small-cnn", 10, 3, 8), Runtime()).perturbation.start == "trades"


def test_beta_scales_entropy_weight():
    cfg = TrainConfig("adt-exp", "synthetic", "unused", tensorboard=False, loss="trades", beta=6.0,
                      beta_scales_entropy=True, lbd=0.01).resolve()
    assert inner_entropy_weight(cfg) == pytest.approx(0.06)


# Killers from a mutation review of the training methods (starts, inner losses on stacked
# batches, ADT_EXP's final sample, TRADES' outer mode, the per-method wiring).
def _textbook_kl(clean_logits, adv_logits):
    p = clean_logits.softmax(1)
    return (p * (p.log() - adv_logits.log_softmax(1))).sum(1)


def test_pgd_uniform_start_is_uniform_in_the_ball():
    """AT-PGD (Madry et al.) starts at x + U(-eps, eps): with no steps the output is that start,
    whose spread is eps / sqrt(3) per pixel (a missing start would return x itself)."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 3, 8).eval()
    x = torch.full((64, 3, 8, 8), 0.5)
    out = PGD(CEInner(), epsilon=EPS, steps=0, step_size=EPS / 4, start="uniform")(
        model, x, torch.zeros(64, dtype=torch.long), Runtime())
    delta = out - x
    assert delta.abs().max() <= EPS + 1e-7
    assert delta.std().item() == pytest.approx(EPS / 3 ** 0.5, rel=0.05)


@pytest.mark.parametrize("method", ["at-pgd", "alp"])
def test_at_pgd_and_alp_start_their_pgd_uniformly(method):
    """Both train on Madry et al.'s PGD, which starts uniformly in the ball (docs/training.md)."""
    cfg = TrainConfig(method, "synthetic", "unused", tensorboard=False).resolve()
    assert build_method(cfg, build_model("small-cnn", 10, 3, 8), Runtime()).perturbation.start == "uniform"


def test_inner_losses_score_each_example_of_a_stacked_batch_against_its_own_clean_input(batch, model):
    """Inner losses take n*B sample-major inputs (k samples of ADT_EXP): input j*B + i pairs with
    example i's label and clean logits, and the KL is KL(f(x) || f(x + delta)) (TRADES), not the
    reverse."""
    x, y = batch
    model = model.eval()
    gen = torch.Generator().manual_seed(5)
    stacked = (x.repeat(2, 1, 1, 1) + 0.05 * torch.randn((2 * x.shape[0], *x.shape[1:]), generator=gen)).clamp(0, 1)
    with torch.no_grad():
        clean, adv = model(x).repeat(2, 1), model(stacked)
        kl = _textbook_kl(clean, adv)
        torch.testing.assert_close(TradesKLInner().bind(model, x, y, Runtime())(stacked), kl)
        torch.testing.assert_close(TradesInner(beta=6.0).bind(model, x, y, Runtime())(stacked),
                                   cross_entropy(clean, y.repeat(2)) + 6.0 * kl)
        torch.testing.assert_close(CEInner().bind(model, x, y, Runtime())(stacked),
                                   cross_entropy(adv, y.repeat(2)))


def test_adt_exp_trains_on_a_random_sample_of_the_fitted_distribution(batch, model):
    """Alg. 2 trains on a sample delta ~ p_phi, not on the distribution's mode: with no fitting
    steps (mu = rho = 0) the sample is eps * tanh(softplus(0) * r), spread over the ball, and two
    calls draw different samples."""
    x, y = batch
    dist = ExplicitDistribution(CEInner(), epsilon=EPS, steps=0, samples=2, lbd=0.01)
    torch.manual_seed(6)
    first = dist(model, x, y, Runtime())
    second = dist(model, x, y, Runtime())
    inside = (x > EPS) & (x < 1 - EPS)  # no clamping at the box
    assert (first - x)[inside].abs().mean() > EPS / 4
    assert not torch.equal(first, second)


def test_trades_outer_runs_both_forwards_in_train_mode(batch, model):
    """TRADES' code computes f(x) and f(x + delta) in train mode (docs/training.md): with the
    model in train mode, the returned clean logits are train-mode BatchNorm logits."""
    x, y = batch
    x_adv = (x + 0.01).clamp(0, 1)
    _, clean = TradesOuter(beta=6.0)(model, x, x_adv, y, Runtime())
    assert model.training
    with torch.no_grad():
        torch.testing.assert_close(clean.detach(), model(x))


def test_explicit_distribution_fits_with_its_own_settings(batch, model):
    """ExplicitDistribution is fit_distribution on the inner loss, with the steps, samples,
    lambda, Adam lr and betas and step rule it was given (non-default here), nothing else; the
    accumulated rule takes Adam's eps at the authors' gradient scale (B/k times torch's)."""
    from adt_fast.attacks.distribution import fit_distribution
    x, y = batch
    settings = dict(epsilon=EPS, steps=3, lbd=0.5)
    adam = dict(lr=0.2, betas=(0.5, 0.9), accumulate_grads=True)
    dist = ExplicitDistribution(CEInner(), samples=3, track=True, **settings, **adam)
    torch.manual_seed(7)
    dist(model, x, y, Runtime())
    torch.manual_seed(7)
    loss_fn = CEInner().bind(model.eval(), x, y, Runtime())  # the inner problem's eval mode
    fit = fit_distribution(loss_fn, x, num_samples=3, track=True, adam_eps=1e-8 * len(x) / 3, **settings, **adam)
    torch.testing.assert_close(dist.last_fit.mean, fit.mean)
    torch.testing.assert_close(dist.last_fit.std_param, fit.std_param)


def test_adt_exp_builds_its_distribution_from_the_config():
    """Every ADT_EXP setting of the config reaches the inner problem (Alg. 2: T, k, lambda, Adam's
    lr and betas, the step rule), and --loss trades uses the TRADES loss inside and out."""
    cfg = TrainConfig("adt-exp", "synthetic", "unused", tensorboard=False, steps=3, samples=2, lbd=0.2,
                      dist_lr=0.1, dist_betas=(0.5, 0.9), dist_grad="accumulated").resolve()
    dist = build_method(cfg, build_model("small-cnn", 10, 3, 8), Runtime()).perturbation
    assert (dist.steps, dist.samples, dist.lbd, dist.lr, dist.betas, dist.accumulate_grads) == \
        (3, 2, 0.2, 0.1, (0.5, 0.9), True)
    cfg = TrainConfig("adt-exp", "synthetic", "unused", tensorboard=False, loss="trades", beta=2.0,
                      lbd=0.01, beta_scales_entropy=True).resolve()
    built = build_method(cfg, build_model("small-cnn", 10, 3, 8), Runtime())
    assert isinstance(built.perturbation.inner, TradesInner) and built.perturbation.inner.beta == 2.0
    assert isinstance(built.outer, TradesOuter) and built.outer.beta == 2.0
    assert built.perturbation.lbd == pytest.approx(0.02)


def test_trades_method_uses_the_configured_beta_outside():
    """--beta of --method trades weighs the KL of the outer loss."""
    cfg = TrainConfig("trades", "synthetic", "unused", tensorboard=False, beta=2.0).resolve()
    assert build_method(cfg, build_model("small-cnn", 10, 3, 8), Runtime()).outer.beta == 2.0


def test_a_method_is_labelled_by_its_configs_method_else_its_class_name(model):
    """Messages name a method by Method.name_in_messages, one rule for the loop, tuning and train_step (the
    getattr was copied where each needed it)."""
    from types import SimpleNamespace

    from adt_fast.train import Method

    plugin = type("Plugin", (Method,), {"name": "plugin"})
    assert plugin(SimpleNamespace(method="my-method"), model, Runtime()).name_in_messages == "my-method"
    assert plugin(SimpleNamespace(), model, Runtime()).name_in_messages == "plugin"
