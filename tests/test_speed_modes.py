"""Issue 13: ADT_EXP's split inner passes, the recorded speed settings, and train accuracy
without an extra forward per step."""

import dataclasses
import functools
import json
import math
import warnings
import weakref

import pytest
import torch

from adt_fast import devices
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


def test_accumulated_grads_step_on_the_running_sum(classifier_loss, monkeypatch):
    """--dist-grad accumulated (the authors' adt_exp.py): step t's Adam sees the sum of the t + 1
    gradients so far. With lr 0 and the same normals every step, each step's own gradient is the
    same, so the sum is (t + 1) times it."""
    loss_fn, x = classifier_loss
    normals = torch.randn(SAMPLES, *x.shape, generator=torch.Generator().manual_seed(2))
    seen = {}

    def recording_step(self, *args, **kwargs):
        seen[mode].append(self.param_groups[0]["params"][0].grad.clone())

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    for mode in (False, True):
        seen[mode] = []
        fit_distribution(loss_fn, x, epsilon=8 / 255, steps=3, num_samples=SAMPLES, lbd=0.01, lr=0.0,
                         accumulate_grads=mode, noise=lambda step: normals)
    assert seen[False][0].abs().max() > 0
    for t, (own, summed) in enumerate(zip(seen[False], seen[True])):
        torch.testing.assert_close(summed, (t + 1) * own)


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


def test_a_pass_that_runs_out_of_memory_is_no_choice(classifier_loss, monkeypatch):
    """Passes of more than 2 samples raise torch's out-of-memory error (as a large model's would
    on a GPU): they are left out, not measured, and their input is freed before the others are
    timed; the choice is among 1 and 2; when not even one sample fits, torch's error comes through."""
    loss_fn, x = classifier_loss
    sizes, inputs_of = [], {}

    def limited(inputs):
        sizes.append(inputs.shape[0] // x.shape[0])
        if inputs.shape[0] > 2 * x.shape[0]:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return loss_fn(inputs)

    def recording_partial(run, loss, copies, m):  # each pass's m copies of the batch, weakly
        inputs_of[m] = weakref.ref(copies)
        return functools.partial(run, loss, copies, m)

    timing = distribution.best_seconds

    def timed(*args, **kwargs):
        assert inputs_of[4]() is None, "the failed pass's input is still held"
        return timing(*args, **kwargs)
    monkeypatch.setattr(distribution, "partial", recording_partial)
    monkeypatch.setattr(distribution, "best_seconds", timed)
    best, seconds = choose_samples_per_pass(limited, x, SAMPLES, repeats=1)
    assert set(seconds) == {1, 2} and best in (1, 2)
    # the first call of a pass is its warm-up (no second one), then one timed call (repeats=1);
    # 4 is tried once, the rest never
    assert sizes == [1, 2, 4, 1, 2]
    with pytest.raises(torch.OutOfMemoryError):
        choose_samples_per_pass(lambda inputs: limited(inputs.repeat(3, *[1] * (x.dim() - 1))), x, SAMPLES)


def _cfg(out, method="adt-exp", **kw):
    # CPU on any machine: the tests compare runs bit for bit and read "mode: cpu"
    settings = dict(epochs=1, max_batches=2, batch_size=16, tensorboard=False, lr_drop=[], device="cpu")
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
    recorded.pop(tuning.MEMORY_FORMAT)
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


def test_mode_line_names_precision_memory_format_and_passes(monkeypatch):
    monkeypatch.setattr(devices, "has_native_bf16", lambda device: True)
    cfg = _cfg("unused", precision="bf16", channels_last=True).resolve()
    memory = {"channels_last": True, "chosen_by": "--channels-last"}
    line = tuning.mode_line(cfg, {"samples_per_pass": 1, "chosen_by": "measurement", tuning.MEMORY_FORMAT: memory},
                            16)
    assert line.startswith("mode: cpu, bf16 autocast") and "channels_last, chosen by --channels-last" in line
    assert "3 samples x 16 inputs in passes of 1 sample, chosen by measurement" in line
    parallel = tuning.mode_line(cfg, {"samples_per_pass": 1, "chosen_by": "measurement",
                                      tuning.MEMORY_FORMAT: memory}, 8, processes=2)
    assert "3 samples x 8 inputs per process in passes of 1 sample" in parallel
    memory = {"channels_last": False, "chosen_by": "measurement",
              "seconds": {"contiguous": 0.0441, "channels_last": 0.0893}}
    plain = tuning.mode_line(_cfg("unused", method="at-pgd").resolve(), {tuning.MEMORY_FORMAT: memory}, 16)
    assert plain == ("mode: cpu, fp32, memory format contiguous (NCHW), chosen by measurement (contiguous "
                     "44.1 ms, channels_last 89.3 ms per forward + input gradient)")


@pytest.mark.parametrize("record", ['{"samples_per_pass": 0, "chosen_by": "measurement"}',
                                    '{"samples_per_pass": "2", "chosen_by": "measurement"}', "not json",
                                    '{"samples_per_pass": 2, "chosen_by": "measurement", '
                                    '"memory_format": {"channels_last": "yes", "chosen_by": "measurement"}}'])
def test_invalid_record_is_measured_again(tmp_path, record):
    fit(_cfg(tmp_path / "run"))
    (tmp_path / "run" / tuning.TUNING_FILE).write_text(record)
    fit(_cfg(tmp_path / "run", epochs=2, resume=True))
    recorded = json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text())
    assert recorded["chosen_by"] == "measurement" and recorded["samples_per_pass"] in (1, 2, 3)
    assert recorded[tuning.MEMORY_FORMAT] == {"channels_last": False, "chosen_by": "measurement",
                                              "seconds": {"contiguous": 0.001, "channels_last": 0.002}}


# ------------------------------------------------------------------------------------------------
# Memory format: measured at the start of a run, recorded, reused on resume; flags win
# ------------------------------------------------------------------------------------------------
def _conv_weight(model):
    return next(p for p in model.parameters() if p.dim() == 4)


@pytest.fixture
def built_models(monkeypatch):
    """The classifiers the runs build, to look at their memory format."""
    built, real = [], loop.build_classifier
    monkeypatch.setattr(loop, "build_classifier", lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    return built


def test_memory_format_is_measured_once_recorded_and_reused_on_resume(tmp_path, monkeypatch, capsys,
                                                                       built_models):
    timed, layouts = [], []
    monkeypatch.setattr(tuning, "time_memory_formats", lambda *a, **kw: timed.append(1) or
                        {"contiguous": 0.002, "channels_last": 0.001})
    real = distribution.choose_samples_per_pass

    def passes_in_layout(*args, **kwargs):  # the passes are measured in the chosen format
        layouts.append(_conv_weight(built_models[-1]).is_contiguous(memory_format=torch.channels_last))
        return real(*args, **kwargs)
    monkeypatch.setattr("adt_fast.train.methods.choose_samples_per_pass", passes_in_layout)
    fit(_cfg(tmp_path / "run"))
    recorded = json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text())
    assert recorded[tuning.MEMORY_FORMAT] == {"channels_last": True, "chosen_by": "measurement",
                                              "seconds": {"contiguous": 0.002, "channels_last": 0.001}}
    assert timed == [1] and layouts == [True]
    assert "memory format channels_last, chosen by measurement" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["channels_last"] == "auto"

    # Resume: the recorded choice, even against what a measurement would say now.
    monkeypatch.setattr(tuning, "time_memory_formats", lambda *a, **kw: pytest.fail("measured on resume"))
    fit(_cfg(tmp_path / "run", epochs=2, resume=True))
    assert _conv_weight(built_models[-1]).is_contiguous(memory_format=torch.channels_last)
    assert json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text()) == recorded
    assert "memory format channels_last, chosen by measurement" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [True, False])
def test_memory_format_flag_overrides_the_measurement_and_the_record(tmp_path, monkeypatch, built_models, flag):
    fit(_cfg(tmp_path / "run", method="standard"))  # measured: contiguous (conftest)
    monkeypatch.setattr(tuning, "time_memory_formats", lambda *a, **kw: pytest.fail("measured despite the flag"))
    fit(_cfg(tmp_path / "new", method="standard", channels_last=flag))
    fit(_cfg(tmp_path / "run", method="standard", epochs=2, resume=True, channels_last=flag))
    for run in ("new", "run"):
        recorded = json.loads((tmp_path / run / tuning.TUNING_FILE).read_text())
        assert recorded[tuning.MEMORY_FORMAT] == {"channels_last": flag,
                                                  "chosen_by": "--channels-last" if flag else "--no-channels-last"}
        assert json.loads((tmp_path / run / "config.json").read_text())["channels_last"] is flag
    assert _conv_weight(built_models[-1]).is_contiguous(memory_format=torch.channels_last) is flag


def test_old_runs_resume_in_the_contiguous_format_they_ran_in(tmp_path, monkeypatch):
    """Runs made before the measurement have channels_last false in config.json and no record."""
    fit(_cfg(tmp_path / "run", method="standard"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "channels_last": False}))
    (tmp_path / "run" / tuning.TUNING_FILE).unlink()
    monkeypatch.setattr(tuning, "time_memory_formats", lambda *a, **kw: pytest.fail("measured an old run"))
    fit(dataclasses.replace(TrainConfig.load(tmp_path / "run"), resume=True, epochs=2))
    recorded = json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text())
    assert recorded[tuning.MEMORY_FORMAT] == {"channels_last": False, "chosen_by": "--no-channels-last"}


def test_a_classifier_without_convolutions_is_not_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "time_memory_formats", lambda *a, **kw: pytest.fail("measured an MLP"))
    fit(_cfg(tmp_path / "run", method="standard", arch="external_models:mlp"))
    recorded = json.loads((tmp_path / "run" / tuning.TUNING_FILE).read_text())
    assert recorded[tuning.MEMORY_FORMAT] == {"channels_last": False, "chosen_by": tuning.NOT_A_CONV_NET}


def test_inputs_that_are_not_images_are_not_measured(monkeypatch):
    from adt_fast.train.methods import Runtime

    monkeypatch.setattr(tuning, "time_memory_formats", lambda *a, **kw: pytest.fail("measured flat inputs"))
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 4, 4)), torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    memory = tuning._memory_format("auto", None, model, torch.rand(4, 16), torch.zeros(4, dtype=torch.long),
                                   Runtime())
    assert memory == {"channels_last": False, "chosen_by": tuning.NOT_A_CONV_NET}


@pytest.mark.parametrize("contiguous,channels_last,chosen", [
    (0.050, 0.038, True),    # 24% faster: channels_last
    (0.0568, 0.0532, False),  # 6% faster: within noise, contiguous (a digits run measured this)
    (0.040, 0.036, True),    # exactly the 10% margin
    (0.040, 0.044, False),
])
def test_channels_last_must_win_by_the_margin(contiguous, channels_last, chosen):
    assert tuning.prefers_channels_last({"contiguous": contiguous, "channels_last": channels_last}) is chosen


def test_timing_the_formats_draws_no_random_numbers_and_leaves_batchnorm_alone(steady_memory_format):
    from adt_fast.train.methods import Runtime

    torch.manual_seed(0)
    model = build_model("small-cnn", 10, in_channels=3, image_size=8)
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    before = {name: t.clone() for name, t in model.state_dict().items()}
    state = torch.get_rng_state()
    runtime = Runtime()
    seconds = steady_memory_format(model, x, y, runtime, repeats=1)
    assert torch.equal(state, torch.get_rng_state())
    assert set(seconds) == {"contiguous", "channels_last"} and all(t > 0 for t in seconds.values())
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert _conv_weight(model).is_contiguous()


# ------------------------------------------------------------------------------------------------
# bf16 where the device has no native bf16
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [False, True])
def test_emulated_bf16_is_announced_loudly(tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr(devices, "has_native_bf16", lambda device: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(_cfg(tmp_path / "run", method="standard", precision="bf16", max_batches=1))
    said = [str(w.message) for w in caught if devices.CPU_BF16_CHECK in str(w.message)]
    out = capsys.readouterr().out
    mode = next(line for line in out.splitlines() if line.startswith("mode:"))
    assert mode.startswith("mode: cpu, bf16 autocast (fp32 weights, op and distribution parameters)")
    if native:
        assert said == [] and "EMULATED" not in mode and "WARNING" not in out
    else:
        assert len(said) == 1 and "runs many times slower than fp32" in said[0]
        assert "bf16 autocast (fp32 weights, op and distribution parameters), EMULATED (SLOW)," in mode
        assert f"{mode}\nWARNING: bf16 is emulated on this CPU ({devices.CPU_BF16_CHECK} is False" in out


def test_each_memory_format_is_timed_under_its_own_name(steady_memory_format, monkeypatch):
    """time_memory_formats: the 'channels_last' time is of a run in channels_last, the 'contiguous'
    time of one in NCHW, so the faster format is the one chosen (not its opposite)."""
    from adt_fast.train.methods import Runtime

    model = build_model("small-cnn", 10, 3, 8)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    layouts = []
    first_conv.register_forward_pre_hook(  # copied with the model, so it sees both networks
        lambda module, args: layouts.append(
            (args[0].is_contiguous(), module.weight.is_contiguous(memory_format=torch.channels_last)
             and not module.weight.is_contiguous())))

    def each_run_once(runs, device, repeats):
        seen = {}
        for name, run in runs.items():
            layouts.clear()
            run()
            seen[name] = layouts[-1]
        return seen

    monkeypatch.setattr(tuning, "best_seconds", each_run_once)
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    seen = steady_memory_format(model, x, y, Runtime())
    assert seen == {"contiguous": (True, False), "channels_last": (False, True)}  # (input NCHW, weights NHWC)


def test_the_commands_say_emulated_bf16_once_and_warnings_without_library_source_lines(tmp_path, monkeypatch,
                                                                                        capsys):
    """`adt-fast train --precision bf16` printed the emulation warning twice (the mode line, then
    fit's UserWarning with the line `fit(config, given=...)`); eval's came with `report = evaluate(...`.
    Each command now says a warning once, as one line of its own."""
    from adt_fast.cli import main

    monkeypatch.setattr(devices, "has_native_bf16", lambda device: False)
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as escaped:  # what the commands left to Python's display
        warnings.simplefilter("always")
        assert main(["train", "--method", "standard", "--dataset", "synthetic", "--epochs", "1", "--max-batches",
                     "1", "--precision", "bf16", "--out", str(run), "--no-tensorboard", "--device", "cpu"]) == 0
        said = capsys.readouterr()
        assert main(["eval", "--checkpoint", str(run), "--attacks", "fgsm", "--epsilon-curve", "", "--n-examples",
                     "8", "--precision", "bf16", "--out", str(tmp_path / "r.json")]) == 0
        err = capsys.readouterr().err
    assert [str(w.message) for w in escaped if devices.BF16_EMULATED in str(w.message)] == []
    assert (said.out + said.err).count(devices.BF16_EMULATED) == 1 and "UserWarning" not in said.err
    assert f"adt-fast eval: warning: {devices.BF16_EMULATED} this CPU" in err
    assert err.count(devices.BF16_EMULATED) == 1 and "UserWarning" not in err and "evaluate(" not in err


def test_the_mode_line_counts_the_inputs_of_a_step_not_the_batch_size(tmp_path, capsys):
    """A --batch-size above the data's size steps on all of it: the mode line once printed
    'inner loop 3 samples x 1000000 inputs' for synthetic's 500 training images."""
    fit(_cfg(tmp_path / "run", batch_size=10**6, max_batches=1, samples_per_pass=1))
    assert "inner loop 3 samples x 500 inputs in passes of 1 sample" in capsys.readouterr().out
