"""The shared pieces of amortised ADT and of the AT-FGSM / ALP / L2L baselines."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adt_fast import amortized as am
from adt_fast.attacks.losses import cross_entropy
from adt_fast.models.generators import PerturbationGenerator, QNetwork
from adt_fast.ops import sample_and_entropy

NUM_CLASSES = 4


# ------------------------------------------------------------------------------------------------
# Fixtures: a small fixed classifier on 1x8x8 "digits"
# ------------------------------------------------------------------------------------------------
def _bn_classifier(channels=1, classes=NUM_CLASSES):
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes))


@pytest.fixture(scope="module")
def task():
    """Four classes of 1x8x8 images (a template each, plus noise) and a linear classifier trained
    on them to low loss; returned frozen."""
    gen = torch.Generator().manual_seed(0)
    templates = torch.rand(NUM_CLASSES, 1, 8, 8, generator=gen)
    y = torch.arange(64) % NUM_CLASSES
    x = (templates[y] * 0.6 + 0.2 + 0.05 * torch.randn(64, 1, 8, 8, generator=gen)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, NUM_CLASSES))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        optimiser.zero_grad()
        cross_entropy(model(x), y).mean().backward()
        optimiser.step()
    model.requires_grad_(False)
    model.eval()
    return model, x, y


# ------------------------------------------------------------------------------------------------
# generator_inputs
# ------------------------------------------------------------------------------------------------
def test_generator_inputs_match_manual_gradients_in_eval_mode():
    torch.manual_seed(1)
    model = _bn_classifier()
    with torch.no_grad():                 # make running stats differ from any batch's statistics
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    model.train()
    running = model[1].running_mean.clone()
    x = torch.rand(5, 1, 8, 8)
    y = torch.randint(0, NUM_CLASSES, (5,))
    eps = 0.1

    out = am.generator_inputs(model, x, y, eps)

    reference = _bn_classifier()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    x0 = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(F.cross_entropy(reference(x0), y, reduction="sum"), x0)
    x_fgsm = (x + eps * g1.sign()).clamp(0, 1).requires_grad_(True)
    (g2,) = torch.autograd.grad(F.cross_entropy(reference(x_fgsm), y, reduction="sum"), x_fgsm)

    assert out.shape == (5, 3, 8, 8) and not out.requires_grad
    torch.testing.assert_close(out[:, :1], x)
    torch.testing.assert_close(out[:, 1:2], g1)
    torch.testing.assert_close(out[:, 2:3], g2)
    assert model.training and model[1].training                       # flags restored
    torch.testing.assert_close(model[1].running_mean, running)       # eval mode: stats untouched
    assert all(p.grad is None for p in model.parameters())           # never accumulates
    assert x.grad is None

    batch_mean = am.generator_inputs(model, x, y, eps, batch_mean=True)
    torch.testing.assert_close(batch_mean[:, 1:], out[:, 1:] / 5)


def test_generator_inputs_use_the_given_forward():
    model = _bn_classifier()
    calls = []

    def forward(inp):
        calls.append(inp.shape)
        return model(inp)
    am.generator_inputs(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 0.1, forward=forward)
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------------
# reverse_gradient
# ------------------------------------------------------------------------------------------------
def test_reverse_gradient_gives_classifier_plus_and_generator_minus_the_same_loss():
    """L = CE(f_theta(g_phi(u))) - lbd * H(g_phi(u)), with reverse_gradient on g_phi(u) only where
    it enters f. One backward must give theta.grad = +dCE/dtheta and
    phi.grad = -dCE/dphi - lbd * dH/dphi (descent on it is ascent on CE + lbd * H)."""
    torch.manual_seed(2)
    classifier = nn.Linear(4, 3)
    generator = nn.Sequential(nn.Linear(5, 4), nn.Tanh())
    u, y, lbd = torch.randn(6, 5), torch.randint(0, 3, (6,)), 0.7

    def entropy(d):
        return torch.log1p(d ** 2).sum(1)

    delta = generator(u)
    total = am.amortized_loss(cross_entropy(classifier(am.reverse_gradient(delta)), y), entropy(delta), lbd)
    total.backward()

    theta, phi = list(classifier.parameters()), list(generator.parameters())
    delta = generator(u)
    ce = cross_entropy(classifier(delta), y).mean()
    h = entropy(delta).mean()
    d_ce_theta = torch.autograd.grad(ce, theta, retain_graph=True)
    d_ce_phi = torch.autograd.grad(ce, phi, retain_graph=True)
    d_h_phi = torch.autograd.grad(h, phi)
    for p, g in zip(theta, d_ce_theta):
        torch.testing.assert_close(p.grad, g)
    for p, g_ce, g_h in zip(phi, d_ce_phi, d_h_phi):
        torch.testing.assert_close(p.grad, -g_ce - lbd * g_h)
        assert p.grad.abs().sum() > 0


def test_reverse_gradient_is_the_identity_forward():
    t = torch.randn(3, 4, requires_grad=True)
    r = am.reverse_gradient(t)
    torch.testing.assert_close(r, t)
    (grad,) = torch.autograd.grad((r * 2).sum(), t)
    torch.testing.assert_close(grad, torch.full_like(t, -2.0))
    (grad,) = torch.autograd.grad(am.reverse_gradient(am.reverse_gradient(t)).sum(), t)
    torch.testing.assert_close(grad, torch.ones_like(t))


# ------------------------------------------------------------------------------------------------
# Perturbations from the generator's output
# ------------------------------------------------------------------------------------------------
def test_explicit_perturbation_is_one_sample_of_the_op_with_per_dim_entropy():
    torch.manual_seed(3)
    x = torch.rand(4, 3, 5, 5)
    out = torch.randn(4, 6, 5, 5, requires_grad=True)
    noise = torch.randn(1, 4, 3, 5, 5)
    x_adv, entropy = am.explicit_perturbation(out, x, 0.1, noise=noise)
    ref_adv, ref_nlp = sample_and_entropy(out[:, :3].detach(), out[:, 3:].detach(), 1, 0.1, x=x,
                                          noise=noise, backend="reference")
    assert x_adv.shape == x.shape and entropy.shape == (4,)
    torch.testing.assert_close(x_adv, ref_adv[0])
    torch.testing.assert_close(entropy, ref_nlp[0] / 75)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    (x_adv.sum() + entropy.sum()).backward()
    assert out.grad.abs().sum() > 0

    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, _ = am.explicit_perturbation(out, x, 0.1, gen_a)
    b, _ = am.explicit_perturbation(out, x, 0.1, gen_b)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="generator_out"):
        am.explicit_perturbation(out[:, :3], x, 0.1)
    for flat in (x.flatten(2), x.flatten(1)):  # the shape check once crashed building its message
        with pytest.raises(ValueError, match=r"x must be a batch of images \(B, C, H, W\)"):
            am.explicit_perturbation(out, flat, 0.1)


def test_tanh_perturbation():
    torch.manual_seed(4)
    x = torch.rand(4, 1, 8, 8)
    out = torch.randn(4, 1, 8, 8, requires_grad=True)
    x_adv, t = am.tanh_perturbation(out, x, 0.2)
    torch.testing.assert_close(t, torch.tanh(out))
    torch.testing.assert_close(x_adv, (x + 0.2 * torch.tanh(out)).clamp(0, 1))
    x_adv.sum().backward()
    inside = ((x + 0.2 * torch.tanh(out)) > 0) & ((x + 0.2 * torch.tanh(out)) < 1)
    torch.testing.assert_close(out.grad[inside], (0.2 * (1 - torch.tanh(out) ** 2))[inside].detach())


@pytest.mark.parametrize("epsilon", [-0.1, 0.0, math.nan, math.inf, 2.0])
def test_perturbations_refuse_a_bad_epsilon(epsilon):
    x, out = torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="epsilon must be a finite number"):
        am.tanh_perturbation(out, x, epsilon)  # a negative one once clamped every pixel to x - |epsilon|
    with pytest.raises(ValueError, match="epsilon must be a finite number"):
        am.explicit_perturbation(torch.randn(2, 2, 8, 8), x, epsilon)  # 2.0 once passed the op's wider check
    with pytest.raises(ValueError, match="epsilon must be a finite number"):
        am.generator_inputs(nn.Flatten(), x, torch.zeros(2, dtype=torch.long), epsilon)


@pytest.mark.parametrize("perturb,channels", [(am.tanh_perturbation, 1), (am.explicit_perturbation, 2)])
def test_perturbations_refuse_integer_images_and_reversed_bounds(perturb, channels):
    """uint8 images once cast the generator's output to uint8: no gradient, truncated values, and
    no error (explicit_perturbation's error named the op's `mean`); bounds (1, 0) once set every pixel to 1."""
    x, out = torch.rand(2, 1, 8, 8), torch.randn(2, channels, 8, 8, requires_grad=True)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        perturb(out, (x * 255).to(torch.uint8), 0.1)
    with pytest.raises(ValueError, match=r"bounds must satisfy lo < hi, got \(1.0, 0.0\)"):
        perturb(out, x, 0.1, bounds=(1.0, 0.0))


def test_explicit_perturbation_of_an_empty_batch_is_empty():
    """Its per-dimension scale once read x[0], an IndexError at B = 0, where the op itself is fine."""
    x_adv, entropy = am.explicit_perturbation(torch.randn(0, 2, 8, 8), torch.rand(0, 1, 8, 8), 0.1)
    assert x_adv.shape == (0, 1, 8, 8) and entropy.shape == (0,)


@pytest.mark.parametrize("batch_size", [0, -4])
def test_generator_inputs_refuse_a_batch_size_below_one(batch_size):
    """-4 once flipped g1's and g2's signs, 0 silently meant x's rows."""
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        am.generator_inputs(nn.Flatten(), x, torch.zeros(2, dtype=torch.long), 0.1, batch_mean=True,
                            batch_size=batch_size)


def test_sample_noise_is_uniform_and_seedable():
    z = am.sample_noise(1000, 64, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1000, 64) and z.min() >= -1 and z.max() < 1
    assert abs(z.mean().item()) < 0.02 and abs(z.pow(2).mean().item() - 1 / 3) < 0.01
    torch.testing.assert_close(z, am.sample_noise(1000, 64, generator=torch.Generator().manual_seed(0)))


# ------------------------------------------------------------------------------------------------
# The entropy lower bound
# ------------------------------------------------------------------------------------------------
def test_entropy_bound_is_the_gaussian_log_density_per_dimension():
    torch.manual_seed(5)
    mean, std, z = torch.randn(7, 3), torch.rand(7, 3) + 0.1, torch.rand(7, 3) * 2 - 1
    expected = torch.distributions.Normal(mean, std).log_prob(z).mean(1)
    torch.testing.assert_close(am.entropy_lower_bound(mean, std, z, hinge=None), expected)


def test_entropy_bound_equals_true_entropy_for_a_linear_generator_and_the_optimal_q():
    """A case with a known answer (B.3).

    B.3 views the generator's Dirac p(delta | z) as a peaked Gaussian with a fixed covariance, so
    take delta = A z + b + s * e, with z ~ N(0, I_d) (the prior p(z)), e ~ N(0, I_d), and A =
    diag(a) invertible. Then, per dimension j:
      true entropy    H(delta_j) = 1/2 log(2 pi e (a_j^2 + s^2));
      posterior       p(z_j | delta_j) = N(m_j, v_j), v_j = s^2 / (a_j^2 + s^2),
                      m_j = a_j (delta_j - b_j) / (a_j^2 + s^2), diagonal, so q can equal it.
    B.3's identity H(delta) = H(z) - H(z | delta) + H(delta | z), with q = the exact posterior
    (the KL term is 0, so the bound is tight), gives
      H(delta) = E log q(z | delta) + c,   c = H(p(z)) + H(p(delta | z))
                                             = d/2 log(2 pi e) + d/2 log(2 pi e s^2),
    the constant of Eq. A.2: it does not depend on the generator's parameters (a, b).
    Check it by Monte Carlo (d * the per-dimension bound + c against the closed form), and that
    a worse q gives strictly less (it is a lower bound). As s -> 0 (a deterministic generator),
    c -> -inf while E log q -> +inf: the bound stays exact but its two parts diverge, which is
    why the unhinged objective is unbounded above for a deterministic generator.
    """
    gen = torch.Generator().manual_seed(6)
    n, a, b, s = 400_000, torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64), 0.25, 0.3
    d = a.numel()
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    delta = a * z + b + s * torch.randn(n, d, generator=gen, dtype=torch.float64)
    q_var = s ** 2 / (a ** 2 + s ** 2)
    q_mean = a * (delta - b) / (a ** 2 + s ** 2)
    q_std = q_var.sqrt().expand(n, d)

    bound = am.entropy_lower_bound(q_mean, q_std, z, hinge=None)
    c = d / 2 * math.log(2 * math.pi * math.e) + d / 2 * math.log(2 * math.pi * math.e * s ** 2)
    true_entropy = (0.5 * torch.log(2 * math.pi * math.e * (a ** 2 + s ** 2))).sum().item()
    estimate = d * bound.mean().item() + c
    assert abs(estimate - true_entropy) < 0.02                 # MC std is about 0.003

    worse_std = am.entropy_lower_bound(q_mean, 1.5 * q_std, z, hinge=None)
    worse_mean = am.entropy_lower_bound(q_mean + 0.5 * q_std, q_std, z, hinge=None)
    for worse in (worse_std, worse_mean):
        assert d * worse.mean().item() + c < true_entropy - 0.3


def test_entropy_bound_hinge():
    torch.manual_seed(8)
    z = torch.rand(16, 64) * 2 - 1
    q_std = torch.full((16, 64), 0.2)
    # q centred on z: a high bound (about 0.69 per dimension), above -0.9.
    good = z + 0.01 * torch.randn(16, 64)
    plain = am.entropy_lower_bound(good, q_std, z, hinge=None)
    assert plain.mean() > -0.9
    mean = good.clone().requires_grad_(True)
    hinged = am.entropy_lower_bound(mean, q_std, z)              # default: 0.9 on the batch mean
    torch.testing.assert_close(hinged.mean(), torch.tensor(-0.9))
    (grad,) = torch.autograd.grad(hinged.mean(), mean)
    assert grad.abs().max() < 1e-6                               # no more reward above the hinge

    # a poor q (ignores delta, too narrow): below -0.9, the hinge is inactive
    poor = torch.zeros(16, 64)
    torch.testing.assert_close(am.entropy_lower_bound(poor, q_std, z),
                               am.entropy_lower_bound(poor, q_std, z, hinge=None))

    mixed_mean = torch.cat([good[:8], poor[:8]])
    per_example = am.entropy_lower_bound(mixed_mean, q_std[:16], z, hinge=0.9, hinge_over="example")
    plain = am.entropy_lower_bound(mixed_mean, q_std[:16], z, hinge=None)
    torch.testing.assert_close(per_example, plain.clamp(max=-0.9))
    with pytest.raises(ValueError, match="hinge_over"):
        am.entropy_lower_bound(poor, q_std, z, hinge_over="dims")


def test_the_default_hinge_sits_just_above_what_a_delta_blind_q_reaches():
    """Documented in docs/amortized.md: with z ~ U(-1, 1) a q that ignores delta and predicts
    N(0, 1/3) reaches -1/2 - 1/2 log(1/3) - 1/2 log(2 pi) = -0.8697 per dimension, above -0.9."""
    z = am.sample_noise(20_000, 64, generator=torch.Generator().manual_seed(0))
    blind = am.entropy_lower_bound(torch.zeros_like(z), torch.full_like(z, (1 / 3) ** 0.5), z, hinge=None)
    expected = -0.5 - 0.5 * math.log(1 / 3) - 0.5 * math.log(2 * math.pi)
    assert abs(blind.mean().item() - expected) < 2e-3 and expected > -am.DEFAULT_HINGE


# ------------------------------------------------------------------------------------------------
# A few generator steps raise the fixed classifier's loss
# ------------------------------------------------------------------------------------------------
def _train_generator(task, mode, steps=25, lr=1e-2, eps=0.15):
    model, x, y = task
    torch.manual_seed(9)
    gen = PerturbationGenerator(1, 8, mode, width=16)
    q = QNetwork(1, 8) if mode == "implicit" else None
    optimisers = [am.generator_optimizer(gen, lr=lr)] + ([am.q_optimizer(q, lr=lr)] if q else [])
    inputs = am.generator_inputs(model, x, y, eps)

    def attack(seed):
        rng = torch.Generator().manual_seed(seed)
        if mode == "explicit":
            x_adv, entropy = am.explicit_perturbation(gen(inputs), x, eps, rng)
            return x_adv, entropy, am.EXP_AM_LAMBDA
        z = am.sample_noise(x.shape[0], generator=rng)
        x_adv, t = am.tanh_perturbation(gen(inputs, z if mode == "implicit" else None), x, eps)
        if mode == "direct":
            return x_adv, None, 0.0
        return x_adv, am.entropy_lower_bound(*q(t), z), am.IMP_AM_LAMBDA

    def loss_at(seed=123):
        with torch.no_grad():
            return cross_entropy(model(attack(seed)[0]), y).mean().item()

    before = loss_at()
    for step in range(steps):
        for opt in optimisers:
            opt.zero_grad(set_to_none=True)
        x_adv, entropy, lbd = attack(step)
        loss = cross_entropy(model(am.reverse_gradient(x_adv)), y)
        am.amortized_loss(loss, entropy, lbd).backward()
        for opt in optimisers:
            opt.step()
    return before, loss_at()


@pytest.mark.parametrize("mode", ["explicit", "implicit", "direct"])
def test_a_few_generator_steps_raise_the_classifier_loss(task, mode):
    model, x, y = task
    clean = cross_entropy(model(x), y).mean().item()
    before, after = _train_generator(task, mode)
    assert after > before + 0.5 and after > 2 * clean, (clean, before, after)


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------
def test_least_likely_fgsm_moves_toward_the_least_likely_class(task):
    model, x, y = task
    eps = 0.1
    logits = model(x)
    target = logits.argmin(1)
    x_adv = am.least_likely_fgsm(model, x, eps)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    adv_logits = model(x_adv)
    assert (cross_entropy(adv_logits, target) < cross_entropy(logits, target)).all()
    share = F.softmax(adv_logits, 1).gather(1, target[:, None]).squeeze(1)
    assert (share > F.softmax(logits, 1).gather(1, target[:, None]).squeeze(1)).all()
    # exactly one signed step away from x where the clamp does not bind
    x_ = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cross_entropy(model(x_), target).sum(), x_)
    free = ((x - eps * grad.sign()) > 0) & ((x - eps * grad.sign()) < 1)
    torch.testing.assert_close(x_adv[free], (x - eps * grad.sign())[free])


def test_least_likely_fgsm_runs_in_eval_mode_and_leaves_grads_alone():
    model = _bn_classifier()
    model.train()
    running = model[1].running_mean.clone()
    am.least_likely_fgsm(model, torch.rand(4, 1, 8, 8), 0.1)
    assert model.training
    torch.testing.assert_close(model[1].running_mean, running)
    assert all(p.grad is None for p in model.parameters())


def test_alp_penalty():
    torch.manual_seed(10)
    logits = torch.randn(5, 10, requires_grad=True)
    zero = am.alp_penalty(logits, logits.detach().clone())
    assert zero.shape == (5,) and torch.equal(zero, torch.zeros(5))
    other = logits.detach() + torch.randn(5, 10)
    penalty = am.alp_penalty(logits, other, weight=0.5)
    torch.testing.assert_close(penalty, 0.5 * ((logits - other) ** 2).mean(1))
    torch.testing.assert_close(penalty.mean(), 0.5 * F.mse_loss(logits, other))
    assert am.ALP_WEIGHT == 0.5
    y = torch.randint(0, 10, (5,))
    torch.testing.assert_close(am.alp_loss(logits, logits, y), cross_entropy(logits, y))
    torch.testing.assert_close(am.alp_loss(logits, other, y),
                               0.5 * (cross_entropy(logits, y) + cross_entropy(other, y)) + penalty)


# ------------------------------------------------------------------------------------------------
# Optimisers and the schedule
# ------------------------------------------------------------------------------------------------
def test_optimisers_and_generator_schedule():
    gen, q = nn.Linear(2, 2), nn.Linear(2, 2)
    g_opt, q_opt = am.generator_optimizer(gen), am.q_optimizer(q)
    assert g_opt.param_groups[0]["lr"] == 2e-4 and g_opt.param_groups[0]["betas"] == (0.5, 0.999)
    assert q_opt.param_groups[0]["lr"] == 2e-4
    assert all(am.generator_lr_factor(e) == 1.0 for e in range(76))     # constant for the paper's run
    assert am.generator_lr_factor(99) == 1.0 and am.generator_lr_factor(100) == pytest.approx(50 / 51)
    assert am.generator_lr_factor(149) == pytest.approx(1 / 51) and am.generator_lr_factor(400) == 0.0
    sched = am.generator_scheduler(g_opt, constant_epochs=1, decay_epochs=1)
    assert g_opt.param_groups[0]["lr"] == 2e-4
    g_opt.step()
    sched.step()
    assert g_opt.param_groups[0]["lr"] == pytest.approx(1e-4)


# The global batch of batch-mean gradients, the hinge over the batch mean, ALP's gradients, q's betas
# (mutation review 2026-12-05).
def test_batch_mean_gradients_divide_by_the_global_batch():
    """Under data parallelism x is one process's rows of a larger batch: batch_mean divides by
    batch_size (the global batch), as F.cross_entropy's mean over the whole batch does."""
    torch.manual_seed(1)
    model = _bn_classifier().eval()
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, NUM_CLASSES, (5,))
    per_example = am.generator_inputs(model, x, y, 0.1)
    global_mean = am.generator_inputs(model, x, y, 0.1, batch_mean=True, batch_size=20)
    torch.testing.assert_close(global_mean[:, 1:], per_example[:, 1:] / 20)
    torch.testing.assert_close(global_mean[:, :1], x)


def test_default_hinge_is_on_the_batch_mean_not_per_example():
    """The authors' relu(-mean_i U_i - th): with the batch mean above -0.9 every example loses the
    same amount, mean U + 0.9, even those below -0.9 (a per-example clamp would leave them alone)."""
    z = torch.zeros(2, 4)
    per_example = torch.tensor([-0.5, -1.2])                       # mean -0.85 > -0.9
    std = torch.exp(-per_example - 0.5 * math.log(2 * math.pi))[:, None].expand(2, 4)
    plain = am.entropy_lower_bound(torch.zeros(2, 4), std, z, hinge=None)
    torch.testing.assert_close(plain, per_example)
    hinged = am.entropy_lower_bound(torch.zeros(2, 4), std, z)      # hinge 0.9, over the batch
    torch.testing.assert_close(hinged, per_example - 0.05)
    torch.testing.assert_close(hinged.mean(), torch.tensor(-0.9))


def test_alp_gradients_flow_into_both_logits():
    """Kannan et al.'s code: the mixed-batch CE and the pairing term both reach clean and adversarial logits."""
    torch.manual_seed(10)
    clean = torch.randn(5, 10, requires_grad=True)
    adv = torch.randn(5, 10, requires_grad=True)
    y = torch.randint(0, 10, (5,))
    got = torch.autograd.grad(am.alp_loss(clean, adv, y, weight=0.5).sum(), (clean, adv))
    expected_loss = (0.5 * (F.cross_entropy(clean, y, reduction="none") + F.cross_entropy(adv, y, reduction="none"))
                     + 0.5 * ((adv - clean) ** 2).mean(1))
    expected = torch.autograd.grad(expected_loss.sum(), (clean, adv))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_q_optimiser_has_adams_default_betas():
    """The authors' optimizer_encoder = Adam(lr=2e-4): default betas (0.9, 0.999)."""
    q_opt = am.q_optimizer(nn.Linear(2, 2))
    assert q_opt.param_groups[0]["betas"] == (0.9, 0.999) and q_opt.param_groups[0]["lr"] == 2e-4


# lambda 0 keeps q in the graph (DDP once failed without its gradients); the hinge's batch mean is
# the global batch's under data parallelism (issue review 2026-12-06).
def test_amortized_loss_at_lambda_0_gives_the_entropy_networks_zero_gradients_and_adam_no_step(task):
    """At lbd == 0 the objective's value and the generator's gradients are those without the
    entropy term, bit for bit; q gets gradients of exactly zero (not None: DDP expects a gradient
    for every parameter), and Adam's step on them leaves q as it was."""
    model, x, y = task
    torch.manual_seed(2)
    gen, q = PerturbationGenerator(1, 8, "implicit", width=4), QNetwork(1, 8)
    z = am.sample_noise(x.shape[0])
    inputs = am.generator_inputs(model, x, y, 0.1)

    def objective(with_entropy):
        x_adv, t = am.tanh_perturbation(gen(inputs, z), x, 0.1)
        loss = cross_entropy(model(am.reverse_gradient(x_adv)), y)
        return am.amortized_loss(loss, am.entropy_lower_bound(*q(t), z) if with_entropy else None, 0.0)

    without = objective(False)
    without.backward()
    expected = [p.grad.clone() for p in gen.parameters()]
    gen.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in q.parameters())
    total = objective(True)
    assert torch.equal(total, without)
    total.backward()
    for got, want in zip((p.grad for p in gen.parameters()), expected):
        assert torch.equal(got, want)
    assert all(p.grad is not None and not p.grad.any() for p in q.parameters())
    before = copy.deepcopy(q.state_dict())
    optimiser = am.q_optimizer(q)
    for _ in range(3):
        optimiser.step()
    for name, value in q.named_parameters():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("offset", [-0.02, 0.02], ids=["binds-on-a-share", "binds-on-the-batch"])
def test_the_batch_hinge_on_the_global_mean_gives_each_share_one_process_gradient(offset):
    """Two ranks' shares (uneven: 3 and 5 rows) with the hinge on the global batch's mean
    (``hinge_mean``): every row's hinged value is one process's, and DDP's average of the two
    objectives weighted by share (N x share / global batch, adt_fast.train.parallel) has one
    process's gradient; the hinge on each share's own mean (the former behaviour) has neither."""
    torch.manual_seed(3)
    z = am.sample_noise(8, 6)
    q_mean = (z + 0.3 * torch.randn(8, 6)).requires_grad_(True)
    q_std = torch.full((8, 6), 0.45)
    plain = am.entropy_lower_bound(q_mean, q_std, z, hinge=None)
    hinge = -plain.mean().item() + offset        # binds on the global batch iff offset > 0
    shares = [(0, 3), (3, 8)]
    assert any((plain[a:b].mean().item() > -hinge) != (offset > 0) for a, b in shares)  # not so on a share
    single = am.entropy_lower_bound(q_mean, q_std, z, hinge=hinge)
    (expected,) = torch.autograd.grad(single.mean(), q_mean)

    def ranks(global_mean):
        values, objective = [], 0
        for a, b in shares:
            # The all-reduced sum over the global batch, in one graph: its gradient reaches every
            # share's rows, as _AllReduceSum's backward sends each rank's gradient to all ranks.
            mean = (lambda v, a=a, b=b: (v.sum() + plain[:a].sum() + plain[b:].sum()) / 8) if global_mean else None
            hinged = am.entropy_lower_bound(q_mean[a:b], q_std[a:b], z[a:b], hinge=hinge, hinge_mean=mean)
            values.append(hinged)
            objective = objective + len(shares) * (b - a) / 8 * hinged.mean() / len(shares)
        return torch.cat(values), torch.autograd.grad(objective, q_mean)[0]

    values, grad = ranks(global_mean=True)
    torch.testing.assert_close(values, single)
    torch.testing.assert_close(grad, expected)
    values, grad = ranks(global_mean=False)
    assert not torch.allclose(values, single) and not torch.allclose(grad, expected)


# ------------------------------------------------------------------------------------------------
# Argument checks of the Python API (the CLI's config validation refuses the same values)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [-0.1, 0.0, math.nan, math.inf, 5.0])
def test_least_likely_fgsm_refuses_a_bad_epsilon(epsilon):
    """NaN once returned an all-NaN batch, 5.0 a batch pushed to the bounds."""
    with pytest.raises(ValueError, match="epsilon must be a finite number"):
        am.least_likely_fgsm(_bn_classifier(), torch.rand(2, 1, 8, 8), epsilon)


def test_entropy_bound_refuses_a_hinge_that_is_not_a_finite_number():
    """hinge=NaN once made every value NaN; the q_std > 0 requirement is documented, not checked
    (the check would cost a device sync every training step, and QNetwork's std is > 0 by construction)."""
    z = am.sample_noise(4, 3, generator=torch.Generator().manual_seed(0))
    q_mean, q_std = torch.zeros(4, 3), torch.ones(4, 3)
    for hinge in (math.nan, math.inf, -math.inf, "0.9", True):
        with pytest.raises(ValueError, match="hinge must be a finite number"):
            am.entropy_lower_bound(q_mean, q_std, z, hinge=hinge)
    assert torch.isfinite(am.entropy_lower_bound(q_mean, q_std, z, hinge=-0.5)).all()  # any finite cap


@pytest.mark.parametrize("argument", ["constant_epochs", "decay_epochs"])
@pytest.mark.parametrize("value", [-1, 2.5, None, True])
def test_generator_schedule_refuses_a_bad_epoch_count(argument, value):
    """decay_epochs=-1 once raised ZeroDivisionError at the end of the constant phase."""
    with pytest.raises(ValueError, match=f"{argument} must be an integer >= 0"):
        am.generator_lr_factor(200, **{argument: value})
    with pytest.raises(ValueError, match=f"{argument} must be an integer >= 0"):
        am.generator_scheduler(am.generator_optimizer(nn.Linear(2, 2)), **{argument: value})


def test_generator_schedule_without_decay_steps_to_zero():
    """decay_epochs=0: the factor is 1 for constant_epochs epochs, then 0 (no linear phase)."""
    factors = [am.generator_lr_factor(e, constant_epochs=3, decay_epochs=0) for e in range(6)]
    assert factors == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert am.generator_lr_factor(0, constant_epochs=0, decay_epochs=0) == 0.0


def test_sample_noise_refuses_bad_shapes():
    """-1 once surfaced as torch's 'negative dimension' RuntimeError; an empty batch is fine."""
    with pytest.raises(ValueError, match="batch must be an integer >= 0"):
        am.sample_noise(-1)
    with pytest.raises(ValueError, match="batch must be an integer >= 0"):
        am.sample_noise(2.0)
    with pytest.raises(ValueError, match="noise_dim must be an integer from 1 to "):
        am.sample_noise(2, 0)
    assert am.sample_noise(0).shape == (0, am.NOISE_DIM)


@pytest.mark.parametrize("value", [-0.01, math.nan, math.inf, "1", True])
def test_entropy_and_pairing_weights_refuse_negative_or_non_finite_values(value):
    """A negative lbd once made the generator shrink the entropy, a negative ALP weight pushed the
    logits apart; NaN made the loss NaN. 0 stays allowed (L2L, no pairing)."""
    loss, entropy, logits = torch.rand(3), torch.rand(3), torch.randn(3, 4)
    with pytest.raises(ValueError, match="lbd must be a finite number >= 0"):
        am.amortized_loss(loss, entropy, value)
    with pytest.raises(ValueError, match="lbd must be a finite number >= 0"):
        am.amortized_loss(loss, None, value)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        am.alp_penalty(logits, logits + 1, value)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        am.alp_loss(logits, logits + 1, torch.zeros(3, dtype=torch.long), value)
    assert am.amortized_loss(loss, entropy, 0).item() == pytest.approx(loss.mean().item())
    assert torch.equal(am.alp_penalty(logits, logits + 1, 0.0), torch.zeros(3))
