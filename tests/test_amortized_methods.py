"""The amortised methods (ADT_EXP-AM, ADT_IMP-AM, their TRADES variants) and the AT-FGSM, ALP and
L2L baselines in the training loop and the command: end to end, resume, checkpoints, flags, and the
one-backward simultaneous update."""

import copy
import dataclasses
import json

import pytest
import torch

import adt_fast
from adt_fast import amortized as am
from adt_fast.attacks.losses import cross_entropy, trades_loss
from adt_fast.cli import main
from adt_fast.models import build_model
from adt_fast.models.generators import PerturbationGenerator, QNetwork
from adt_fast.train import ComposedMethod, ConfigError, Runtime, TrainConfig, build_method, fit, read_metrics
from adt_fast.train import checkpoint as ckpt
from adt_fast.train.amortized_methods import AmortizedMethod, ImplicitGenerator, LeastLikelyFGSM, MixedCEOuter
from adt_fast.train.methods import CEOuter

from test_train import _kill_after, _same_state  # the loop's resume-test helpers

FAST = ["--dataset", "synthetic", "--epochs", "1", "--max-batches", "2", "--batch-size", "32",
        "--no-tensorboard"]
SMALL_GEN = ["--generator-width", "8"]  # Table 7's 256 is ~10 M parameters: too slow for a test

# (command-line method and flags, the method's own networks)
CASES = [
    (["adt-exp-am", *SMALL_GEN], {"generator"}),
    (["adt-imp-am", *SMALL_GEN], {"generator", "q"}),
    (["l2l", *SMALL_GEN], {"generator"}),
    (["at-fgsm"], set()),
    (["alp"], set()),
    (["adt-exp-am", "--loss", "trades", "--beta", "1.0", *SMALL_GEN], {"generator"}),
    (["adt-imp-am", "--loss", "trades", "--beta", "6", *SMALL_GEN], {"generator", "q"}),
]
IDS = ["adt-exp-am", "adt-imp-am", "l2l", "at-fgsm", "alp", "adt-exp-am-trades", "adt-imp-am-trades"]


@pytest.mark.parametrize("args,networks", CASES, ids=IDS)
def test_every_method_runs_end_to_end(tmp_path, capsys, args, networks):
    out = tmp_path / "run"
    assert main(["train", "--method", *args, *FAST, "--out", str(out)]) == 0
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "model.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == args[0]
    if "--loss" in args:
        assert config["loss"] == "trades" and config["beta"] == float(args[args.index("--beta") + 1])
    [record] = read_metrics(out)
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("train_loss", "train_acc", "test_acc"))
    model = adt_fast.load_model(out)
    with torch.no_grad():
        assert model(torch.rand(4, 3, 8, 8)).shape == (4, 10)
    assert str(out / "model.pt") in capsys.readouterr().out

    state = ckpt.load(out / ckpt.LATEST)
    assert set(state["modules"]) == networks
    assert set(state["optimisers"]) == {"model"} | networks
    for name in networks:  # trained: Adam took one step per batch
        steps = {float(s["step"]) for s in state["optimisers"][name]["state"].values()}
        assert steps == {2.0}, name
        assert state["modules"][name], name


@pytest.mark.parametrize("args,networks", CASES[:5], ids=IDS[:5])
def test_interrupted_then_resumed_run_is_bit_identical(tmp_path, monkeypatch, args, networks):
    method, flags = args[0], {"generator_width": 8} if networks else {}

    def cfg(out, **kw):  # on CPU on any machine: the bit-for-bit guarantee is CPU's (docs/training.md)
        return TrainConfig(method, "synthetic", str(out), epochs=2, max_batches=2, batch_size=16,
                           tensorboard=False, device="cpu", **flags, **kw)

    fit(cfg(tmp_path / "straight"))
    cls = AmortizedMethod if networks else ComposedMethod
    with monkeypatch.context() as patch:
        _kill_after(patch, cls, 3)  # 2 batches per epoch: killed inside epoch 2
        with pytest.raises(KeyboardInterrupt):
            fit(cfg(tmp_path / "killed"))
    assert ckpt.load(tmp_path / "killed" / ckpt.LATEST)["epoch"] == 1
    fit(cfg(tmp_path / "killed", resume=True))
    a, b = _same_state(tmp_path / "straight" / ckpt.LATEST, tmp_path / "killed" / ckpt.LATEST)
    assert set(a["modules"]) == set(b["modules"]) == networks
    for name in networks:
        for key, value in a["modules"][name].items():
            assert torch.equal(value, b["modules"][name][key]), (name, key)
        for index, slot in a["optimisers"][name]["state"].items():
            for key, value in slot.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimisers"][name]["state"][index][key]))
    for key, value in a["optimisers"]["model"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimisers"]["model"]["state"][key]["momentum_buffer"])


# ------------------------------------------------------------------------------------------------
# One backward: the classifier descends, the generator (and q) ascend the same objective.
# ------------------------------------------------------------------------------------------------
def _params(module):
    return [p for p in module.parameters()]


def _manual(method, model, gen, q, x, y, cfg):
    """The step computed without gradient reversal: L (the classifier's loss), the gradients and, for
    ADT_IMP-AM, the unhinged bound's batch mean."""
    eps, bound = cfg.epsilon, None
    inputs = am.generator_inputs(model, x, y, eps)
    if method == "adt-exp-am":
        x_adv, entropy = am.explicit_perturbation(gen(inputs), x, eps)
    elif method == "adt-imp-am":
        z = am.sample_noise(x.shape[0], gen.noise_dim)
        x_adv, t = am.tanh_perturbation(gen(inputs, z), x, eps)
        q_mean, q_std = q(t)
        entropy = am.entropy_lower_bound(q_mean, q_std, z, hinge=None if cfg.hinge == "none" else cfg.hinge)
        bound = am.entropy_lower_bound(q_mean, q_std, z, hinge=None).mean().item()
    else:
        (x_adv, _), entropy = am.tanh_perturbation(gen(inputs), x, eps), None
    if cfg.loss == "trades":
        clean = model(x)
        loss = trades_loss(model(x_adv), clean, y, cfg.beta).mean()
    else:
        loss = cross_entropy(model(x_adv), y).mean()
    grad = lambda out, net: torch.autograd.grad(out, _params(net), retain_graph=True)  # noqa: E731
    # with --loss trades beta * lambda by default: the authors' KL + lambda * H, times beta
    lbd = (cfg.lbd or 0.0) * (cfg.beta if cfg.beta_scales_entropy else 1.0)
    g_model = grad(loss, model)
    g_gen = grad(loss + lbd * entropy.mean(), gen) if entropy is not None else grad(loss, gen)
    g_q = grad(lbd * entropy.mean(), q) if q is not None else None
    return loss, g_model, g_gen, g_q, bound


# The bound starts at -1.22 here: the hinge of 2.0 binds (it caps the bound, so q gets no gradient
# and the generator only its loss's), the default 0.9 and 0.5 do not, "none" never does.
@pytest.mark.parametrize("method,extra", [("adt-exp-am", {}), ("adt-imp-am", {"hinge": "none"}), ("l2l", {}),
                                          ("adt-imp-am", {"hinge": "none", "loss": "trades", "beta": 2.0}),
                                          ("adt-imp-am", {}), ("adt-imp-am", {"hinge": 0.5}), ("adt-imp-am", {"hinge": 2.0})],
                         ids=["exp", "imp", "l2l", "imp-trades", "imp-hinge-default", "imp-hinge-0.5", "imp-hinge-2"])
def test_one_step_descends_for_the_classifier_and_ascends_for_the_generator(method, extra):
    torch.manual_seed(0)
    cfg = TrainConfig(method, "synthetic", "unused", generator_width=4, epsilon=0.1, **extra).resolve()
    model = build_model("small-cnn", 10, in_channels=3, image_size=8).train()
    amortised = build_method(cfg, model, Runtime())
    nets = amortised.modules()
    gen, q = nets["generator"].train(), nets.get("q")
    if q is not None:
        q.train()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    model_c, gen_c, q_c = copy.deepcopy(model), copy.deepcopy(gen), copy.deepcopy(q)

    # The method's step, with plain SGD (lr 1, no momentum) in place of its optimisers: the update
    # is then minus the gradient of the one backwarded scalar.
    sgd = {"model": torch.optim.SGD(model.parameters(), lr=1.0)}
    sgd.update({name: torch.optim.SGD(net.parameters(), lr=1.0) for name, net in nets.items()})
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in
              {"model": model, **nets}.items()}
    torch.manual_seed(1)
    out = amortised.train_step(model, x, y, sgd)
    torch.manual_seed(1)
    loss, g_model, g_gen, g_q, bound = _manual(method, model_c, gen_c, q_c, x, y, cfg)

    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-6)  # reports the classifier's loss
    moved = {name: [p.detach() - b for p, b in zip(net.parameters(), before[name])]
             for name, net in {"model": model, **nets}.items()}
    for delta, grad in zip(moved["model"], g_model):   # theta <- theta - dL/dtheta: descent
        torch.testing.assert_close(delta, -grad, rtol=1e-4, atol=1e-6)
    for delta, grad in zip(moved["generator"], g_gen):  # phi <- phi + d(L + lbd H)/dphi: ascent
        torch.testing.assert_close(delta, grad, rtol=1e-4, atol=1e-6)
    if q is not None:                                   # psi <- psi + lbd dH/dpsi: ascent on the bound
        for delta, grad in zip(moved["q"], g_q):
            torch.testing.assert_close(delta, grad, rtol=1e-4, atol=1e-6)
        binds = cfg.hinge != "none" and bound > -cfg.hinge
        assert binds == (cfg.hinge == 2.0), f"the setup changed: the bound is {bound}"
        assert bool(sum(d.abs().sum() for d in moved["q"]) > 0) == (not binds)
    assert sum((d * g).sum() for d, g in zip(moved["model"], g_model)) < 0
    assert sum((d * g).sum() for d, g in zip(moved["generator"], g_gen)) > 0
    # The generator's inputs and the train-accuracy logits came from eval-mode forwards: BatchNorm
    # statistics moved exactly as the manual step's train-mode forwards moved them.
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, dict(model_c.named_buffers())[name], rtol=1e-6, atol=1e-7)
    assert all(p.grad is not None for p in model.parameters()) and model.training


def test_imp_am_hinge_setting_reaches_the_bound():
    def hinge_of(**kw):
        cfg = TrainConfig("adt-imp-am", "synthetic", "unused", generator_width=4, **kw).resolve()
        perturbation = build_method(cfg, build_model("small-cnn", 10, in_channels=3, image_size=8),
                                    Runtime()).perturbation
        assert isinstance(perturbation, ImplicitGenerator)
        return cfg.hinge, perturbation.hinge, perturbation.hinge_over

    assert hinge_of() == (am.DEFAULT_HINGE, am.DEFAULT_HINGE, "batch")
    assert hinge_of(hinge="none") == ("none", None, "batch")
    assert hinge_of(hinge=0.5) == (0.5, 0.5, "batch")


def test_defaults_follow_the_paper():
    exp = TrainConfig("adt-exp-am", "synthetic", "unused").resolve()
    imp = TrainConfig("adt-imp-am", "synthetic", "unused").resolve()
    alp = TrainConfig("alp", "synthetic", "unused").resolve()
    assert (exp.lbd, exp.loss, exp.beta, exp.generator_lr, exp.generator_width) == (0.01, "ce", None, 2e-4, 256)
    assert (imp.lbd, imp.hinge, imp.generator_lr) == (1.0, 0.9, 2e-4)
    assert (alp.steps, alp.step_size, alp.alp_weight) == (7, pytest.approx(2 / 255), 0.5)
    fgsm = TrainConfig("at-fgsm", "synthetic", "unused").resolve()
    assert all(getattr(fgsm, p) is None for p in ("steps", "lbd", "generator_lr", "alp_weight", "hinge"))
    assert fgsm.clean_weight == 0.5 and alp.clean_weight is None and exp.clean_weight is None
    model = build_model("small-cnn", 10, in_channels=3, image_size=8)
    method = build_method(dataclasses.replace(imp, generator_width=4), model, Runtime())
    gen_opt, q_opt = method.optimisers()["generator"], method.optimisers()["q"]
    assert gen_opt.defaults["lr"] == 2e-4 and gen_opt.defaults["betas"] == (0.5, 0.999)
    assert q_opt.defaults["lr"] == 2e-4 and method.schedulers() == {}  # constant lr
    assert method.optimisers() is method.optimisers() and method.modules()["q"] is method.modules()["q"]


def test_at_fgsm_trains_on_least_likely_fgsm_examples():
    torch.manual_seed(0)
    cfg = TrainConfig("at-fgsm", "synthetic", "unused").resolve()
    model = build_model("small-cnn", 10, in_channels=3, image_size=8).train()
    method = build_method(cfg, model, Runtime())
    assert isinstance(method.perturbation, LeastLikelyFGSM)
    x, y = torch.rand(8, 3, 8, 8) * 0.5 + 0.25, torch.randint(0, 10, (8,))
    expected = am.least_likely_fgsm(model, x, cfg.epsilon)
    out = method.step(model, x, y)
    torch.testing.assert_close(out.x_adv, expected)
    torch.testing.assert_close((out.x_adv - x).abs(), torch.full_like(x, cfg.epsilon))
    assert model.training


def test_alp_loss_is_the_mixed_batch_alp_loss():
    torch.manual_seed(0)
    cfg = TrainConfig("alp", "synthetic", "unused", alp_weight=2.0, steps=2).resolve()
    model = build_model("small-cnn", 10, in_channels=3, image_size=8).train()
    method = build_method(cfg, model, Runtime())
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    reference = copy.deepcopy(model)
    out = method.step(model, x, y)
    assert ((out.x_adv - x).abs() <= cfg.epsilon + 1e-6).all() and not torch.equal(out.x_adv, x)
    logits = reference(torch.cat([x, out.x_adv]))
    expected = am.alp_loss(logits[:8], logits[8:], y, 2.0).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Flags
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,changes,flag", [
    ("adt-imp-am", {"hinge": "sometimes"}, "--hinge"), ("adt-imp-am", {"hinge": float("inf")}, "--hinge"),
    ("adt-exp-am", {"generator_lr": 0.0}, "--generator-lr"), ("l2l", {"generator_width": 0}, "--generator-width"),
    ("alp", {"alp_weight": -1.0}, "--alp-weight"), ("adt-exp-am", {"hinge": 0.5}, "--hinge"),
    ("at-pgd", {"alp_weight": 0.5}, "--alp-weight"), ("l2l", {"lbd": 0.1}, "--lbd"),
    ("l2l", {"loss": "trades"}, "--loss"), ("at-fgsm", {"steps": 3}, "--steps"),
    ("adt-exp-am", {"beta": 1.0}, "--beta"), ("adt-imp-am", {"loss": "hinge"}, "--loss"),
    ("at-fgsm", {"generator_width": 8}, "--generator-width"), ("adt-exp", {"generator_lr": 1e-3}, "--generator-lr"),
    ("at-fgsm", {"clean_weight": 1.5}, "--clean-weight must be <= 1"),
    ("at-fgsm", {"clean_weight": -0.5}, "--clean-weight must be >= 0"),
    ("at-fgsm", {"clean_weight": "half"}, "--clean-weight must be a finite number"),
    ("alp", {"clean_weight": 0.5}, "--clean-weight does not apply to --method alp"),
])
def test_bad_or_inapplicable_settings_name_their_flag(method, changes, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(method, "synthetic", "unused", **changes).resolve()


@pytest.mark.parametrize("batch_size,holds", [
    ("479", "the last batch of each epoch would hold 1 of the 1438 training examples"),  # 1438 = 3 * 479 + 1
    ("1", "every training batch would hold one example"),
])
def test_adt_imp_am_refuses_a_training_batch_of_one_before_writing(tmp_path, capsys, batch_size, holds):
    """On 8 px digits the q-network's BatchNorm ends at 1x1 features: a batch of one example is a
    ValueError in training mode, which crashed the run at the first epoch's end."""
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--method", "adt-imp-am", *SMALL_GEN, "--batch-size", batch_size,
                 "--epochs", "1", "--no-tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"adt-fast train: error: --batch-size {batch_size}: {holds}, and the BatchNorm "
                          f"layers of the q-network need at least 2 examples in training")
    assert not out.exists()


def test_flags_reach_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "adt-imp-am", *FAST, "--out", str(out), "--generator-width", "4",
                 "--generator-lr", "1e-3", "--hinge", "none", "--lbd", "0.5"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("generator_width", "generator_lr", "hinge", "lbd")} == \
        {"generator_width": 4, "generator_lr": 1e-3, "hinge": "none", "lbd": 0.5}
    out2 = tmp_path / "alp"
    assert main(["train", "--method", "alp", *FAST, "--out", str(out2), "--alp-weight", "1/4", "--steps", "1"]) == 0
    assert json.loads((out2 / "config.json").read_text())["alp_weight"] == 0.25
    out3 = tmp_path / "fgsm"
    assert main(["train", "--method", "at-fgsm", *FAST, "--out", str(out3), "--clean-weight", "1/4"]) == 0
    assert json.loads((out3 / "config.json").read_text())["clean_weight"] == 0.25
    with pytest.raises(SystemExit):
        main(["train", "--method", "adt-imp-am", *FAST, "--out", str(tmp_path / "x"), "--hinge", "big"])
    assert "--hinge" in capsys.readouterr().err
    assert main(["train", "--method", "at-fgsm", *FAST, "--out", str(tmp_path / "y"), "--hinge", "0.5"]) == 2
    assert "--hinge does not apply to --method at-fgsm" in capsys.readouterr().err
    # Resume takes the run's settings and refuses a different hinge.
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2"]) == 0
    assert main(["train", "--resume", "--out", str(out), "--hinge", "0.9"]) == 2
    assert "--hinge" in capsys.readouterr().err


# The generator's width, the runtime's backend and the hinge's batch-mean form through the methods
# (mutation review 2026-12-05).
@pytest.mark.parametrize("method", ["adt-exp-am", "adt-imp-am", "l2l"])
def test_the_generator_has_the_configured_width(method):
    cfg = TrainConfig(method, "synthetic", "unused", generator_width=4).resolve()
    built = build_method(cfg, build_model("small-cnn", 10, in_channels=3, image_size=8), Runtime())
    generator = built.modules()["generator"]
    assert generator.width == 4 and generator.body[0].out_channels == 4


def test_the_runtime_backend_reaches_the_sampling_op(monkeypatch):
    seen = []
    real = am.explicit_perturbation

    def spy(*args, **kwargs):
        seen.append(kwargs.get("backend", "auto"))
        return real(*args, **kwargs)
    monkeypatch.setattr(am, "explicit_perturbation", spy)
    cfg = TrainConfig("adt-exp-am", "synthetic", "unused", generator_width=4).resolve()
    model = build_model("small-cnn", 10, in_channels=3, image_size=8)
    method = build_method(cfg, model, Runtime(backend="reference"))
    method.step(model, torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    assert seen == ["reference"]


def test_implicit_generator_hinges_the_batch_mean_by_default():
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, in_channels=3, image_size=8).eval()
    gen = PerturbationGenerator(3, 8, "implicit", width=4).eval()
    q = QNetwork(3, 8).eval()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))

    def entropy(hinge):
        torch.manual_seed(5)
        return ImplicitGenerator(gen, q, epsilon=0.1, hinge=hinge)(model, x, y, Runtime())[1].detach()

    plain = entropy(None)
    hinge = -plain.mean().item() + 0.01          # binds on the batch mean, not on every example
    assert (plain < -hinge).any() and (plain > -hinge).any()
    torch.testing.assert_close(entropy(hinge), plain - 0.01)


# lambda 0 (issue review 2026-12-06): q stays in the step's graph, with zero gradients.
@pytest.mark.parametrize("extra", [{"lbd": 0.0}, {"loss": "trades", "beta": 0.0, "beta_scales_entropy": True}],
                         ids=["lbd-0", "trades-beta-0-scales-entropy"])
def test_adt_imp_am_without_entropy_weight_gives_q_zero_gradients_and_leaves_it_alone(extra):
    """The entropy term stays in the objective times 0: every q parameter gets a gradient (DDP
    fails on parameters without one), exactly zero, so q's Adam leaves it as built."""
    torch.manual_seed(0)
    cfg = TrainConfig("adt-imp-am", "synthetic", "unused", generator_width=4, **extra).resolve()
    model = build_model("small-cnn", 10, in_channels=3, image_size=8)
    method = build_method(cfg, model, Runtime())
    q = method.modules()["q"]
    before = copy.deepcopy(dict(q.named_parameters()))
    optimisers = {"model": torch.optim.SGD(model.parameters(), lr=0.1), **method.optimisers()}
    for _ in range(2):
        method.train_step(model, torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,)), optimisers)
        assert all(p.grad is not None and not p.grad.any() for p in q.parameters())
    for name, value in q.named_parameters():
        assert torch.equal(value, before[name]), name
    if "beta" not in extra:  # with beta 0 the generator's KL term has no weight either
        assert any(p.grad is not None and p.grad.any() for p in method.modules()["generator"].parameters())


# Killers from a mutation review of the AT-FGSM and ALP baselines: closed forms on a linear model.
class _Linear(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


def test_at_fgsm_steps_eps_against_the_least_likely_class_gradient():
    """Kurakin et al.'s step l.l.: x' = clamp(x - eps * sign(grad_x CE(f(x), argmin f(x)))), with
    no random start; for f(x) = W x that gradient is W^T (softmax(Wx) - onehot(argmin))."""
    gen = torch.Generator().manual_seed(0)
    model = _Linear(torch.randn(5, 12, generator=gen))
    x = 0.2 + 0.6 * torch.rand(4, 3, 2, 2, generator=gen)
    eps = 0.05
    x_adv = LeastLikelyFGSM(epsilon=eps)(model, x, torch.zeros(4, dtype=torch.long), Runtime())
    with torch.no_grad():
        logits = model(x)
        target = torch.nn.functional.one_hot(logits.argmin(1), 5).float()
        grad = ((logits.softmax(1) - target) @ model.weight).view_as(x)
    torch.testing.assert_close(x_adv, (x - eps * grad.sign()).clamp(0, 1))


def test_at_fgsm_picks_the_least_likely_class_with_the_classifier_in_eval_mode():
    """The target class and the gradient come from the eval-mode classifier (BatchNorm frozen):
    the step equals the one taken on an eval-mode copy, though the model is in train mode."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 3, 8).train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.rand(32, 3, 8, 8))
    x = torch.rand(8, 3, 8, 8)
    x_adv = LeastLikelyFGSM(epsilon=8 / 255)(model, x, torch.zeros(8, dtype=torch.long), Runtime())
    assert model.training
    expected = am.least_likely_fgsm(copy.deepcopy(model).eval(), x, 8 / 255)
    torch.testing.assert_close(x_adv, expected)


@pytest.mark.parametrize("clean_weight", [None, 0.3, 1.0])
def test_at_fgsm_loss_mixes_clean_and_adversarial_ce(clean_weight):
    """The authors' fgsm_loss (af3529d:trades.py) and Kurakin et al.: 0.5 * (CE(f(x)) + CE(f(x')))
    by default, W * CE(f(x)) + (1 - W) * CE(f(x')) with --clean-weight W; the clean logits come
    back for train accuracy. On a linear model the mixed batch is two plain forwards."""
    gen = torch.Generator().manual_seed(0)
    model = _Linear(torch.randn(10, 12, generator=gen))
    x, y = 0.2 + 0.6 * torch.rand(4, 3, 2, 2, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    given = {} if clean_weight is None else {"clean_weight": clean_weight}
    cfg = TrainConfig("at-fgsm", "synthetic", "unused", **given).resolve()
    method = build_method(cfg, model, Runtime())
    out = method.step(model, x, y)
    w = 0.5 if clean_weight is None else clean_weight
    with torch.no_grad():
        expected = w * cross_entropy(model(x), y) + (1 - w) * cross_entropy(model(out.x_adv), y)
        torch.testing.assert_close(out.clean_logits, model(x))
    torch.testing.assert_close(out.loss.detach(), expected.mean())


def test_at_fgsm_outer_is_one_mixed_batch():
    """Clean and adversarial halves share one train-mode forward (BatchNorm statistics of the 2B
    batch), as ALP's."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 3, 8).train()
    x, x_adv, y = torch.rand(8, 3, 8, 8), torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    outer = build_method(TrainConfig("at-fgsm", "synthetic", "unused").resolve(), model, Runtime()).outer
    assert isinstance(outer, MixedCEOuter)
    loss, clean = outer(model, x, x_adv, y, Runtime())
    with torch.no_grad():
        logits = model(torch.cat([x, x_adv]))
        torch.testing.assert_close(clean.detach(), logits[:8])
        expected = 0.5 * (cross_entropy(logits[:8], y) + cross_entropy(logits[8:], y))
        torch.testing.assert_close(loss.detach(), expected)


def test_at_fgsm_clean_weight_zero_trains_on_the_adversarial_batch_alone():
    """--clean-weight 0: CE(f(x')) of a B-batch forward (no clean half in BatchNorm's statistics),
    the loss AT-FGSM had before the flag existed."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 3, 8).train()
    cfg = TrainConfig("at-fgsm", "synthetic", "unused", clean_weight=0.0).resolve()
    method = build_method(cfg, model, Runtime())
    assert type(method.outer) is CEOuter
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    reference = copy.deepcopy(model)
    out = method.step(model, x, y)
    with torch.no_grad():
        torch.testing.assert_close(out.loss.detach(), cross_entropy(reference(out.x_adv), y).mean())
    assert out.clean_logits is None


def _forget_setting(run_dir, name):
    """The run as a version without `name` wrote it: no entry in config.json or in any checkpoint's
    recorded config."""
    path = run_dir / "config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != name}))
    for file in run_dir.glob("*.pt"):
        payload = ckpt.load(file)
        payload["config"] = {k: v for k, v in payload["config"].items() if k != name}
        ckpt.save_atomic(payload, file)


def test_an_at_fgsm_run_from_before_clean_weight_resumes_adversarial_only(tmp_path):
    """Such a run trained on the adversarial examples only; its resume goes on with that loss (bit
    for bit the run with --clean-weight 0), not with today's default half-and-half, and refuses
    --clean-weight 0.5 instead of switching objective mid-run."""
    def cfg(out, epochs, **kw):
        return TrainConfig("at-fgsm", "synthetic", str(out), epochs=epochs, max_batches=2, batch_size=16,
                           lr_drop=[], tensorboard=False, device="cpu", channels_last=False, **kw)

    fit(cfg(tmp_path / "straight", 2, clean_weight=0.0))
    old = tmp_path / "old"
    fit(cfg(old, 1, clean_weight=0.0))
    _forget_setting(old, "clean_weight")
    assert TrainConfig.load(old).clean_weight == 0.0
    with pytest.raises(ConfigError, match=r"--clean-weight 0\.5 \(the run has 0\.0\)"):
        fit(cfg(old, 2, clean_weight=0.5, resume=True))
    fit(cfg(old, 2, resume=True))
    assert json.loads((old / "config.json").read_text())["clean_weight"] == 0.0
    _same_state(tmp_path / "straight" / "checkpoint.pt", old / "checkpoint.pt")


@pytest.mark.parametrize("method", ["adt-exp-am", "adt-imp-am"])
def test_amortised_trades_variants_weigh_the_entropy_against_the_kl_by_default(method):
    """The authors' TRADES variants (adt_expam.py, adt_impam.py up to 69294c5) divide the generator's
    gradient through x_adv by beta and leave the entropy's alone: the generator ascends KL + lambda * H,
    i.e. the backwarded entropy weight is beta * lambda. --no-beta-scales-entropy gives lambda; ADT_EXP
    keeps lambda by default; with --loss ce the flag does not apply."""
    def built(name, **kw):
        cfg = TrainConfig(name, "synthetic", "unused", generator_width=4, lbd=0.5, **kw).resolve()
        return cfg, build_method(cfg, build_model("small-cnn", 10, 3, 8), Runtime())

    cfg, am_method = built(method, loss="trades", beta=4.0)
    assert cfg.beta_scales_entropy is True and am_method.lbd == 2.0
    assert built(method, loss="trades", beta=4.0, beta_scales_entropy=False)[1].lbd == 0.5
    cfg, ce_method = built(method)
    assert cfg.beta_scales_entropy is None and ce_method.lbd == 0.5
    exp = TrainConfig("adt-exp", "synthetic", "unused", loss="trades", beta=4.0, lbd=0.5).resolve()
    assert exp.beta_scales_entropy is False


def test_an_amortised_trades_run_from_before_beta_scales_entropy_resumes_with_its_objective(tmp_path):
    """A run written before --beta-scales-entropy existed ran CE + beta * KL + lambda * H: its
    resume goes on with it (bit for bit the run with --no-beta-scales-entropy), not with today's
    default, and refuses --beta-scales-entropy rather than switch objective mid-run."""
    def cfg(out, epochs, **kw):
        return TrainConfig("adt-imp-am", "synthetic", str(out), loss="trades", generator_width=4, epochs=epochs,
                           max_batches=2, batch_size=16, lr_drop=[], tensorboard=False, device="cpu",
                           channels_last=False, **kw)

    fit(cfg(tmp_path / "straight", 2, beta_scales_entropy=False))
    old = tmp_path / "old"
    fit(cfg(old, 1, beta_scales_entropy=False))
    _forget_setting(old, "beta_scales_entropy")
    assert TrainConfig.load(old).beta_scales_entropy is False
    with pytest.raises(ConfigError, match=r"--beta-scales-entropy true \(the run has false\)"):
        fit(cfg(old, 2, beta_scales_entropy=True, resume=True))
    fit(cfg(old, 2, resume=True))
    assert json.loads((old / "config.json").read_text())["beta_scales_entropy"] is False
    straight, resumed = _same_state(tmp_path / "straight" / "checkpoint.pt", old / "checkpoint.pt")
    for name in ("generator", "q"):
        for key, value in straight["modules"][name].items():
            assert torch.equal(value, resumed["modules"][name][key]), (name, key)


@pytest.mark.parametrize("former", [["clean_weight"], {"steps": 7}])
def test_register_method_refuses_former_defaults_of_settings_it_does_not_use(former):
    """A former default of a setting outside params would fill a field the method refuses."""
    from adt_fast.train.methods import METHODS, MethodSpec, register_method

    spec = MethodSpec("fuzz-former", lambda cfg, model, rt: None, {"clean_weight": 0.5}, former_defaults=former)
    with pytest.raises(ValueError, match="'fuzz-former': former_defaults must be a dict of setting name -> value "
                                         "for settings its params name"):
        register_method(spec)
    assert "fuzz-former" not in METHODS


def test_alp_loss_is_mixed_ce_plus_weighted_mean_squared_logit_gap():
    """Kannan et al.: (CE(f(x)) + CE(f(x'))) / 2 + w * mean_c (f(x) - f(x'))^2, gradients into both
    logits (d/d clean of the pairing term is -2 w (adv - clean) / C)."""
    clean = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    adv = torch.tensor([[0.0, 1.0, 0.5]])
    y = torch.tensor([0])
    loss = am.alp_loss(clean, adv, y, 0.3)
    gap = (1.0 + 9.0 + 0.0) / 3
    expected = 0.5 * (cross_entropy(clean, y) + cross_entropy(adv, y)) + 0.3 * gap
    torch.testing.assert_close(loss, expected.detach())
    assert am.ALP_WEIGHT == 0.5 and am.alp_loss(clean, adv, y).item() == pytest.approx(
        (0.5 * (cross_entropy(clean, y) + cross_entropy(adv, y)) + 0.5 * gap).item())
    (penalty_grad,) = torch.autograd.grad(am.alp_penalty(clean, adv, 0.3).sum(), clean)
    torch.testing.assert_close(penalty_grad, -2 * 0.3 * (adv - clean.detach()) / 3)


def test_alp_outer_is_one_mixed_batch_with_the_configured_weight():
    """ALP's outer loss runs clean and adversarial inputs as one 2B train-mode batch (shared
    BatchNorm statistics), returns the clean half's logits, and uses --alp-weight."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 3, 8).train()
    x, x_adv, y = torch.rand(8, 3, 8, 8), torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    cfg = TrainConfig("alp", "synthetic", "unused", tensorboard=False, alp_weight=0.2).resolve()
    outer = build_method(cfg, model, Runtime()).outer
    loss, clean = outer(model, x, x_adv, y, Runtime())
    with torch.no_grad():
        logits = model(torch.cat([x, x_adv]))
        torch.testing.assert_close(clean.detach(), logits[:8])
        torch.testing.assert_close(loss.detach(), am.alp_loss(logits[:8], logits[8:], y, 0.2))
