"""Issue 13: ADT_EXP's split inner passes, the recorded speed settings, and train accuracy
without an extra forward per step."""

import json
import math

import pytest
import torch

from adt_fast.attacks import distribution
from adt_fast.attacks.distribution import choose_samples_per_pass, fit_distribution
from adt_fast.attacks.engine import eval_mode
from adt_fast.attacks.losses import cross_entropy
from adt_fast.models import build_model
from adt_fast.train import ConfigError, TrainConfig, fit, read_metrics
from adt_fast.train import checkpoint as ckpt
from adt_fast.train import loop, tuning

SAMPLES, BATCH = 5, 6


@pytest.fixture
def classifier_loss():
    """A BatchNorm classifier in eval mode (as every inner problem runs) and its batched CE."""
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, in_channels=3, image_size=8)
    for module in model.modules():  # non-trivial running statistics, so eval-mode BN matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.rand(BATCH, 3, 8, 8)
    y = torch.randint(0, 10, (BATCH,))

    def loss_fn(x_adv):
        return cross_entropy(model(x_adv), y.repeat(x_adv.shape[0] // BATCH))
    with eval_mode(model):
        yield loss_fn, x


def _fit(loss_fn, x, samples_per_pass):
    torch.manual_seed(1)
    return fit_distribution(loss_fn, x, epsilon=8 / 255, steps=3, num_samples=SAMPLES, lbd=0.01,
                            track=True, samples_per_pass=samples_per_pass)


@pytest.mark.parametrize("per_pass", [1, 2, 3, SAMPLES, 50])
def test_split_passes_give_bit_identical_distributions(classifier_loss, per_pass):
    """On CPU in fp32 each example's forward and input gradient do not depend on the batch they
    run in (oneDNN, eval-mode BatchNorm), so every split gives exactly one pass's result."""
    whole = _fit(*classifier_loss, None)
    split = _fit(*classifier_loss, per_pass)
    assert torch.equal(whole.mean, split.mean) and torch.equal(whole.std_param, split.std_param)
    assert whole.objective == split.objective and whole.loss == split.loss
    assert whole.mean.abs().max() > 0  # the fit moved


def test_bad_samples_per_pass_is_refused(classifier_loss):
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="samples_per_pass"):
            _fit(*classifier_loss, bad)


def test_choice_of_samples_per_pass_measures_every_candidate_without_randomness(classifier_loss):
    state = torch.get_rng_state()
    best, seconds = choose_samples_per_pass(*classifier_loss, SAMPLES, repeats=1)
    assert torch.equal(state, torch.get_rng_state())
    assert set(seconds) == {1, 2, 4, SAMPLES} and best in seconds
    assert seconds[best] == min(seconds.values()) and all(t > 0 for t in seconds.values())


def _cfg(out, method="adt-exp", **kw):
    settings = dict(epochs=1, max_batches=2, batch_size=16, tensorboard=False, lr_drop=[])
    if method == "adt-exp":
        settings.update(steps=1, samples=3)
    settings.update(kw)
    return TrainConfig(method, "synthetic", str(out), **settings)


def test_measured_choice_is_recorded_and_reused_on_resume(tmp_path, monkeypatch, capsys):
    measured = []
    real = distribution.choose_samples_per_pass

    def counting(*args, **kwargs):
        measured.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr("adt_fast.train.methods.choose_samples_per_pass", counting)
    fit(_cfg(tmp_path / "run"))
    recorded = json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text())
    assert measured == [1] and recorded["chosen_by"] == "measurement"
    assert recorded["samples_per_pass"] in (1, 2, 3)
    assert "in passes of" in capsys.readouterr().out

    # Resume with a recorded choice different from anything a measurement would give: it is used.
    recorded["samples_per_pass"] = 2
    (tmp_path / "run" / tuning.TUNING_FILE).write_text(json.dumps(recorded))
    applied = []
    original_fit = distribution.fit_distribution
    monkeypatch.setattr("adt_fast.train.methods.fit_distribution",
                        lambda *a, **kw: applied.append(kw["samples_per_pass"]) or original_fit(*a, **kw))
    fit(_cfg(tmp_path / "run", epochs=2, resume=True))
    assert measured == [1] and set(applied) == {2}
    assert json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text()) == recorded


def test_flag_overrides_the_measurement(tmp_path, monkeypatch):
    monkeypatch.setattr("adt_fast.train.methods.choose_samples_per_pass",
                        lambda *a, **kw: pytest.fail("measured although --samples-per-pass was given"))
    fit(_cfg(tmp_path / "run", samples_per_pass=1))
    recorded = json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text())
    assert recorded == {"samples_per_pass": 1, "chosen_by": "--samples-per-pass"}


@pytest.mark.parametrize("bad", [0, "fast", 1.5, True])
def test_bad_samples_per_pass_flag_names_the_flag(tmp_path, bad):
    with pytest.raises(ConfigError, match="--samples-per-pass"):
        _cfg(tmp_path / "run", samples_per_pass=bad).resolve()
    with pytest.raises(ConfigError, match="--samples-per-pass"):
        _cfg(tmp_path / "run", method="at-pgd", samples_per_pass=2).resolve()


def test_sampled_train_accuracy_matches_the_exact_figure(tmp_path, monkeypatch):
    """AT-PGD has no clean logits of its own: by default the eval-mode forward runs on every
    TRAIN_ACC_EVERY-th batch only. The extra forward uses no randomness and no BatchNorm update,
    so both runs train identically and the sampled figure estimates the exact one."""
    monkeypatch.setattr(loop, "TRAIN_ACC_EVERY", 3)
    original_step = loop.Method.train_step
    forwards = {}
    settings = dict(method="at-pgd", steps=1, epochs=2, max_batches=9, batch_size=32, lr_drop=[])
    for exact in (True, False):
        calls = []

        def counting(self, *args, measure_accuracy=False, **kwargs):
            calls.append(measure_accuracy)
            return original_step(self, *args, measure_accuracy=measure_accuracy, **kwargs)
        monkeypatch.setattr(loop.Method, "train_step", counting)
        fit(_cfg(tmp_path / str(exact), exact_train_acc=exact, **settings))
        forwards[exact] = calls
    assert all(forwards[True]) and sum(forwards[False]) == 6  # batches 0, 3, 6 of each epoch
    exact_state = ckpt.load(tmp_path / "True" / ckpt.FINAL_MODEL)["model"]
    sampled_state = ckpt.load(tmp_path / "False" / ckpt.FINAL_MODEL)["model"]
    assert all(torch.equal(exact_state[k], sampled_state[k]) for k in exact_state)
    for exact_record, sampled_record in zip(read_metrics(tmp_path / "True"), read_metrics(tmp_path / "False")):
        p, n = exact_record["train_acc"], 3 * 32
        # Three of nine batches, drawn systematically: well within 4 binomial standard errors.
        assert abs(sampled_record["train_acc"] - p) <= 4 * math.sqrt(max(p * (1 - p), 0.01) / n)
        assert sampled_record["train_loss"] == exact_record["train_loss"]


def test_standard_training_pays_no_extra_forward(monkeypatch):
    from adt_fast.train.methods import Runtime, build_method

    torch.manual_seed(0)
    model = build_model("small-cnn", 10, in_channels=3, image_size=8)
    method = build_method(_cfg("unused", method="standard").resolve(), model, Runtime())
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    out = method.train_step(model, x, y, {"model": torch.optim.SGD(model.parameters(), lr=0.1)},
                            measure_accuracy=True)
    assert calls == [1] and out.clean_logits.shape == (8, 10)


def test_mode_line_names_precision_memory_format_and_passes():
    cfg = _cfg("unused", precision="bf16", channels_last=True).resolve()
    line = tuning.mode_line(cfg, {"samples_per_pass": 1, "chosen_by": "measurement"})
    assert line.startswith("mode: cpu, bf16 autocast") and "channels_last" in line
    assert "3 samples x 16 inputs in passes of 1 sample, chosen by measurement" in line
    plain = tuning.mode_line(_cfg("unused", method="at-pgd").resolve(), {})
    assert plain == "mode: cpu, fp32, memory format contiguous (NCHW)"


@pytest.mark.parametrize("record", ['{"samples_per_pass": 0, "chosen_by": "measurement"}',
                                    '{"samples_per_pass": "2", "chosen_by": "measurement"}', "not json"])
def test_invalid_record_is_measured_again(tmp_path, record):
    fit(_cfg(tmp_path / "run"))
    (tmp_path / "run" / tuning.TUNING_FILE).write_text(record)
    fit(_cfg(tmp_path / "run", epochs=2, resume=True))
    recorded = json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text())
    assert recorded["chosen_by"] == "measurement" and recorded["samples_per_pass"] in (1, 2, 3)
