"""Training a classifier your own code builds: `adt-fast train --arch MODULE:FACTORY`, its
checkpoints, resume, and evaluating the run (`eval --checkpoint RUN --model MODULE:FACTORY`)."""

import json
import subprocess
import sys

import pytest
import torch

import adt_fast
from adt_fast.cli import main
from adt_fast.train import METHODS, ComposedMethod, Method, MethodSpec, TrainConfig, fit, register_method
from adt_fast.train import checkpoint as ckpt

import external_models
from conftest import adt_fast_env

SPEC = "external_models:sized(4)"
FAST = ["--dataset", "synthetic", "--epochs", "2", "--max-batches", "2", "--batch-size", "16", "--device", "cpu",
        "--no-tensorboard", "--no-channels-last"]


def _cfg(out, method="at-pgd", **kw):
    settings = dict(epochs=2, max_batches=2, batch_size=16, tensorboard=False, device="cpu", channels_last=False,
                    arch=SPEC)
    settings.update(kw)
    return TrainConfig(method, "synthetic", str(out), **settings)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("factory") / "run"
    assert main(["train", "--method", "at-pgd", "--arch", SPEC, *FAST, "--steps", "2", "--out", str(out)]) == 0
    return out


def test_the_run_records_the_factory_and_its_weights_fit_the_factorys_model(run):
    """The weights are the model's own state dict (no wrapper prefix): the factory plus model.pt
    give the trained model in any code, with or without adt_fast."""
    assert json.loads((run / "config.json").read_text())["arch"] == SPEC
    payload = ckpt.load(run / "model.pt")
    assert payload["model_config"] == {"arch": SPEC, "num_classes": 10, "in_channels": 3, "image_size": 8}
    plain = external_models.sized(4)
    plain.load_state_dict(payload["model"])  # strict: the same keys and shapes
    assert not torch.equal(plain[0].weight, external_models.sized(4)[0].weight)  # trained, not the init
    model = adt_fast.load_model(run, factory=SPEC)
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(model(x), plain.eval()(x))


@pytest.mark.parametrize("factory, message", [
    (None, "was built by the factory 'external_models:sized(4)'"),
    ("external_models:sized(5)", "was built by the factory 'external_models:sized(4)', not 'external_models:sized(5)'"),
])
def test_loading_the_run_needs_its_factory_named_a_checkpoint_never_imports_code(run, factory, message):
    with pytest.raises(ckpt.CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adt_fast.load_model(run, factory=factory)


def test_a_built_in_classifier_refuses_a_factory(tmp_path):
    out = tmp_path / "builtin"
    fit(_cfg(out, method="standard", arch="small-cnn", epochs=1))
    with pytest.raises(ckpt.CheckpointError, match="is adt_fast's small-cnn"):
        adt_fast.load_model(out, factory=SPEC)


def test_eval_scores_the_run_with_its_factory_named(run, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(run), "--model", SPEC, "--attacks", "fgsm,pgd:2", "--n-examples", "8",
                 "--epsilon-curve", "", "--out", str(out)]) == 0, capsys.readouterr().err
    meta = json.loads(out.read_text())["meta"]
    assert meta["model"] == SPEC and meta["checkpoint"] == str(run / "model.pt")
    assert meta["trained"] == {"method": "at-pgd", "epoch": 2, "epochs": 2}
    code = main(["eval", "--checkpoint", str(run), "--attacks", "fgsm", "--out", str(tmp_path / "f.json")])
    err = capsys.readouterr().err
    assert code == 2 and "error: --checkpoint: " in err and f"--model '{SPEC}'" in err, err
    assert len(err.strip().splitlines()) == 1


def test_the_printed_eval_command_names_the_factory(tmp_path, capsys):
    assert main(["train", "--method", "standard", "--arch", SPEC, *FAST[:-4], "--epochs", "1",
                 "--out", str(tmp_path / "r")]) == 0
    assert f"--model '{SPEC}'" in capsys.readouterr().out


@pytest.mark.parametrize("arch, message", [
    ("external_models:wide", "the model fails on a (2, 3, 8, 8) input of synthetic"),
    ("external_models:sized(num_classes=5)", "the model returns (2, 5) for two inputs; synthetic needs logits "
                                             "of shape (2, 10)"),
    ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
    ("external_models:sized(__import__('os'))", "must be Python literals (numbers, strings, True/False/None, "
                                                 "tuples, lists, dicts): __import__('os') is not one"),
    ("external_models:AuxInTraining", "in train mode the model returns tuple for two inputs"),
    ("external_models:NoParameters", "no parameters that require grad"),
    ("external_models:frozen", "no parameters that require grad"),
    ("external_models:FailsOnOne", "the model fails on a batch of one example: RuntimeError: needs two examples"),
    ("external_models:FailsInTrainBackward", "the model fails in train mode on a (2, 3, 8, 8) input: RuntimeError: "
                                             "no backward here"),
    ("external_models:on_meta", "cannot move the model to cpu: NotImplementedError: Cannot copy out of meta tensor"),
    ("external_models:exits", "calling external_models:exits() failed: it called sys.exit(0)"),
    ("external_models:ExitsInForward", "requires grad, as the attacks give it: it called sys.exit(3)"),
    ("external_models:sized(4, num_classes=5)", "the model returns (2, 5) for two inputs; synthetic needs logits of "
                                                "shape (2, 10)"),
])
def test_a_factory_that_cannot_train_on_the_data_is_refused_before_the_run_directory(arch, message, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", "--method", "at-pgd", "--arch", arch, *FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"error: --arch {arch}: " in err and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_a_script_whose_argparse_exits_when_imported_is_an_error_not_a_silent_end(tmp_path):
    """A training script imported for its factory parses adt-fast's command line and exits (2 here,
    0 for --help-like flags): the command must fail naming --arch, not end as if it had trained."""
    (tmp_path / "script.py").write_text("import argparse\nargparse.ArgumentParser().parse_args()\n"
                                        "def build():\n    pass\n")
    out = tmp_path / "r"
    done = subprocess.run([sys.executable, "-m", "adt_fast", "train", "--method", "standard", "--arch",
                           "script:build", *FAST, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=adt_fast_env())
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "adt-fast train: error: --arch script:build: importing 'script' failed: it called sys.exit(2) (argparse "
        "does on a command line it does not know, such as adt-fast's); put a script's own code under "
        "if __name__ == \"__main__\":")
    assert not out.exists()


def test_a_model_that_exits_during_training_says_what_was_kept(tmp_path, capsys):
    """After the probes, in training's batches: the line of what was kept, as for an interrupt."""
    out = tmp_path / "r"
    code = main(["train", "--method", "standard", "--arch", "external_models:ExitsOnBigBatches", *FAST,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == (f"adt-fast train: error: --arch external_models:ExitsOnBigBatches: the model failed (it called "
                   f"sys.exit(0)) before the first epoch finished, so there is no checkpoint yet; adt-fast train "
                   f"--resume --out {out} starts it again from epoch 1\n")


def _user_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    """Your own module `name`, importable for --arch name:FACTORY (it may use external_models)."""
    (tmp_path / f"{name}.py").write_text("import os\nimport sys\n\nfrom external_models import _Wrapped\n\n\n" + source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_model_that_exits_on_one_example_is_refused_as_one_that_fails_there(tmp_path, monkeypatch, capsys):
    """The one-example check reports a sys.exit() as it reports a RuntimeError: a ConfigError naming
    --arch before the run (exit 2), not a failure in training (exit 1)."""
    _user_module(tmp_path, monkeypatch, "exits_on_one", "class ExitsOnOne(_Wrapped):\n"
                 "    def forward(self, x):\n        if x.shape[0] == 1:\n            sys.exit(0)\n"
                 "        return self.net(x)\n")
    out = tmp_path / "r"
    code = main(["train", "--method", "standard", "--arch", "exits_on_one:ExitsOnOne", *FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == ("adt-fast train: error: --arch exits_on_one:ExitsOnOne: the model fails on a batch of one "
                   "example: it called sys.exit(0)\n")
    assert not out.exists()


def test_a_model_that_exits_in_channels_last_trains_in_contiguous_and_says_why(tmp_path, monkeypatch, capsys,
                                                                              steady_memory_format):
    """The memory-format timing falls back to contiguous on a sys.exit() as on any error of your model."""
    from adt_fast.train import tuning

    _user_module(tmp_path, monkeypatch, "exits_in_channels_last", "class ExitsInChannelsLast(_Wrapped):\n"
                 "    def forward(self, x):\n"
                 "        if not x.is_contiguous():\n            sys.exit(5)\n        return self.net(x)\n")
    monkeypatch.setattr(tuning, "time_memory_formats", steady_memory_format)  # the real measurement
    run = fit(_cfg(tmp_path / "run", method="standard", arch="exits_in_channels_last:ExitsInChannelsLast",
                   epochs=1, channels_last=None))
    recorded = json.loads((run / tuning.TUNING_FILE).read_text())[tuning.MEMORY_FORMAT]
    assert recorded == {"channels_last": False, "chosen_by": f"{tuning.CHANNELS_LAST_FAILED} (it called sys.exit(5))"}


def test_a_resumed_factory_run_whose_model_exits_says_what_was_kept(tmp_path, monkeypatch, capsys):
    """On --resume the arch comes from the run's config.json: the exit is still named, not silent."""
    _user_module(tmp_path, monkeypatch, "exits_when_told", "class ExitsWhenTold(_Wrapped):\n"
                 "    def forward(self, x):\n        if x.shape[0] > 2 and os.environ.get('EXIT_NOW'):\n"
                 "            sys.exit(0)\n        return self.net(x)\n")
    out = tmp_path / "r"
    assert main(["train", "--method", "standard", "--arch", "exits_when_told:ExitsWhenTold", *FAST, "--epochs", "1",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("EXIT_NOW", "1")
    code = main(["train", "--resume", "--epochs", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == (f"adt-fast train: error: --arch exits_when_told:ExitsWhenTold: the model failed (it called "
                   f"sys.exit(0)): {out / ckpt.LATEST} (the last completed epoch) is intact; continue with: "
                   f"adt-fast train --resume --out {out}\n")


class _ExitsInStep(Method):
    """A registered method whose own code ends the program."""

    def step(self, model, x, y):
        sys.exit(4)


def _exits_reading_the_settings(cfg):
    sys.exit(6)


@pytest.fixture
def exiting_method():
    """test-exits exits in its step; test-exits-reading in its --steps default, which --resume reads
    with config.json when the run was written before the setting existed."""
    register_method(MethodSpec("test-exits", _ExitsInStep, {}, description="test only"))
    register_method(MethodSpec("test-exits-reading", _ExitsInStep, {"steps": _exits_reading_the_settings}))
    yield "test-exits"
    METHODS.pop("test-exits")
    METHODS.pop("test-exits-reading")


@pytest.mark.parametrize("arch, whose", [
    (None, "--method test-exits: the registered method failed"),
    ("external_models:build", "--arch external_models:build or --method test-exits: your code failed"),
])
def test_a_registered_method_that_exits_is_named_not_silent(arch, whose, exiting_method, tmp_path, capsys):
    """adt_fast's own code never exits: with a built-in --arch the method's code did (the command ended
    silently, with exit code 0 here); with a factory too, either may have, so both are named."""
    out = tmp_path / "r"
    code = main(["train", "--method", exiting_method, *(["--arch", arch] if arch else []), *FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == (f"adt-fast train: error: {whose} (it called sys.exit(4)) before the first epoch finished, so "
                   f"there is no checkpoint yet; adt-fast train --resume --out {out} starts it again from epoch 1\n")


def test_an_exit_while_the_resumes_settings_are_read_is_named_too(exiting_method, tmp_path, capsys):
    """Before the settings are read there is no arch or method to name (it was an UnboundLocalError)."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"method": "test-exits-reading", "dataset": "synthetic",
                                                 "out": str(out)}))
    code = main(["train", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == (f"adt-fast train: error: your code (the --arch model or a registered method) failed (it called "
                   f"sys.exit(6)) before the first epoch finished, so there is no checkpoint yet; adt-fast train "
                   f"--resume --out {out} starts it again from epoch 1\n")


def test_an_arch_that_is_neither_a_built_in_name_nor_a_factory_is_refused(tmp_path, capsys):
    """--arch is no longer a parser choice (it takes factories), so the config names the choices."""
    assert main(["train", "--method", "at-pgd", "--arch", "vgg", *FAST, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == ("adt-fast train: error: unknown arch 'vgg' (--arch); choose one of wrn-28-10, resnet18, "
                   "small-cnn, madry-cnn, or name your own model's factory as MODULE:FACTORY\n")
    assert not (tmp_path / "r").exists()


def test_an_interrupted_factory_run_resumes_bit_identically(tmp_path, monkeypatch):
    fit(_cfg(tmp_path / "straight"))
    original, count = ComposedMethod.train_step, {"n": 0}

    def interrupted(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > 3:  # 2 batches an epoch: inside epoch 2
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(ComposedMethod, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg(tmp_path / "killed"))
    fit(_cfg(tmp_path / "killed", resume=True))
    straight, resumed = ckpt.load(tmp_path / "straight" / "model.pt"), ckpt.load(tmp_path / "killed" / "model.pt")
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


@pytest.mark.parametrize("method", ["adt-exp-am", "adt-imp-am"])
def test_amortised_methods_build_their_generators_for_the_factory_classifiers_input(method, tmp_path):
    """Their generators are sized from the recorded shape, which a factory's model does not carry."""
    out = fit(_cfg(tmp_path / method, method=method, epochs=1, max_batches=1, generator_width=8))
    assert ckpt.load(out / "model.pt")["model_config"]["arch"] == SPEC


def test_a_model_instance_spec_gives_a_fresh_copy_on_each_load(tmp_path):
    """Two loads of one instance once returned the same object: the second load's weights replaced
    the first's, and a second run in one process started from the first run's weights."""
    from adt_fast.models import load_external_model

    x = torch.rand(2, 3, 8, 8)
    a = load_external_model("external_models:instance")
    b = load_external_model("external_models:instance")
    assert a is not b and a is not external_models.instance
    with torch.no_grad():
        b[0].weight.add_(1.0)
    torch.testing.assert_close(a(x), external_models.instance.eval()(x))
    runs = [fit(_cfg(tmp_path / name, method="standard", arch="external_models:instance", epochs=1))
            for name in ("one", "two")]
    first_run, second_run = (ckpt.load(run / "model.pt")["model"] for run in runs)
    for name, value in first_run.items():
        assert torch.equal(value, second_run[name]), name


def test_eval_checks_a_factory_runs_recorded_shape_not_the_models_own_config(tmp_path, capsys):
    """The model's own .config (here with 1000 classes) is its business; the shape adt_fast trained
    it for is what eval compares with the data, as for the built-in classifiers."""
    np = pytest.importorskip("numpy")
    run = fit(_cfg(tmp_path / "run", method="standard", arch="external_models:Pooled", epochs=1))
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(run), "--model", "external_models:Pooled", "--attacks", "fgsm",
                 "--n-examples", "4", "--epsilon-curve", "", "--out", str(out)]) == 0, capsys.readouterr().err
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "big.npz", x_test=images, y_test=np.arange(6) % 5)
    code = main(["eval", "--checkpoint", str(run), "--model", "external_models:Pooled", "--dataset",
                 str(tmp_path / "big.npz"), "--attacks", "fgsm", "--out", str(tmp_path / "f.json")])
    err = capsys.readouterr().err
    assert code == 2 and "error: --checkpoint: " in err and "takes 8x8 images" in err and "16x16" in err, err


def test_a_model_that_fails_in_channels_last_trains_in_contiguous_and_says_why(tmp_path, capsys, monkeypatch,
                                                                              steady_memory_format):
    """The memory format is measured by default; .view after a convolution refuses channels_last."""
    from adt_fast.train import tuning

    monkeypatch.setattr(tuning, "time_memory_formats", steady_memory_format)  # the real measurement

    run = fit(_cfg(tmp_path / "run", method="standard", arch="external_models:ViewNet", epochs=1,
                   channels_last=None))
    recorded = json.loads((run / tuning.TUNING_FILE).read_text())[tuning.MEMORY_FORMAT]
    assert recorded["channels_last"] is False
    assert recorded["chosen_by"].startswith(f"{tuning.CHANNELS_LAST_FAILED} (RuntimeError: view size")
    assert tuning.CHANNELS_LAST_FAILED in capsys.readouterr().out


def test_the_train_mode_probe_leaves_batchnorm_statistics_as_they_were():
    from adt_fast.models.external import check_trainable

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(10))
    model(torch.rand(2, 3, 8, 8))  # materialise the lazy layer
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_trainable(model, 3, 8, "cpu", 10)
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_the_factory_named_for_a_checkpoint_is_compared_as_a_call_not_as_text(run, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(run), "--model", "external_models:sized( 4 )", "--attacks", "fgsm",
                 "--n-examples", "4", "--epsilon-curve", "", "--out", str(out)]) == 0, capsys.readouterr().err


def test_a_factory_named_for_a_built_in_checkpoint_blames_model(tmp_path, capsys):
    run = fit(_cfg(tmp_path / "builtin", method="standard", arch="small-cnn", epochs=1))
    code = main(["eval", "--checkpoint", str(run), "--model", SPEC, "--attacks", "fgsm",
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and "error: --model: " in err and "is adt_fast's small-cnn" in err, err


def test_a_checkpoint_with_a_malformed_arch_is_a_one_line_error(tmp_path):
    path = ckpt.save_atomic({"model_config": {"arch": [":"], "num_classes": 10}, "model": {}}, tmp_path / "m.pt")
    with pytest.raises(ckpt.CheckpointError, match="does not hold a usable model"):
        adt_fast.load_model(path)


def test_a_wrong_factory_named_for_a_factory_run_blames_model(run, tmp_path, capsys):
    """The checkpoint is fine; the factory named is not its own: the error names --model."""
    code = main(["eval", "--checkpoint", str(run), "--model", "external_models:sized(5)", "--attacks", "fgsm",
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("adt-fast eval: error: --model: "), err
    assert "was built by the factory 'external_models:sized(4)', not 'external_models:sized(5)'" in err, err


def test_a_factory_that_cannot_be_imported_for_its_checkpoint_blames_model(tmp_path, capsys):
    """The checkpoint names the factory given, whose module is gone: --model is what to fix."""
    config = {"arch": "no_such_module_xyz:build", "num_classes": 10, "in_channels": 3, "image_size": 8}
    path = ckpt.save_atomic({"model_config": config, "model": external_models.build().state_dict()},
                            tmp_path / "model.pt")
    code = main(["eval", "--checkpoint", str(path), "--model", "no_such_module_xyz:build", "--dataset", "synthetic",
                 "--attacks", "fgsm", "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("adt-fast eval: error: --model: "), err
    assert "cannot import 'no_such_module_xyz'" in err, err
    with pytest.raises(ckpt.WrongFactory, match="factory 'no_such_module_xyz:build' cannot build the classifier"):
        adt_fast.load_model(path, factory="no_such_module_xyz:build")


def test_same_spec_compares_the_calls_specs_name():
    """Spacing and the order of keyword arguments do not change the call; positional against
    keyword does (that depends on the factory)."""
    from adt_fast.models.external import same_spec

    assert same_spec("m:f(a=1, b=2)", "m:f(b=2, a=1)")
    assert same_spec("m:f (4)", "m:f(4)") and same_spec(" m:f(4) ", "m:f(4)") and same_spec("m:f", "m:f( )")
    assert not same_spec("m:f(4)", "m:f(width=4)") and not same_spec("m:f(a=1)", "m:f(a=2)")


def test_a_checkpoint_never_imports_its_factorys_module_unless_named(tmp_path, monkeypatch):
    """Refusing after building would already have run the factory's module: the check comes first."""
    (tmp_path / "counting_models.py").write_text("from external_models import build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "counting_models", raising=False)
    config = {"arch": "counting_models:build", "num_classes": 10, "in_channels": 3, "image_size": 8}
    path = ckpt.save_atomic({"model_config": config, "model": external_models.build().state_dict()},
                            tmp_path / "model.pt")
    for factory in (None, "counting_models:build(1)"):
        with pytest.raises(ckpt.CheckpointError):
            adt_fast.load_model(path, factory=factory)
        assert "counting_models" not in sys.modules, factory
    adt_fast.load_model(path, factory="counting_models:build")
    assert "counting_models" in sys.modules


def test_a_built_in_classifiers_own_failure_is_not_blamed_on_the_arch(tmp_path, monkeypatch):
    """Only your own model's forward is reported as "--arch ...: the model fails"; a failure of a
    built-in classifier is adt_fast's and keeps its traceback."""
    from adt_fast.train import loop

    def broken(*args, **kwargs):
        raise RuntimeError("a bug of adt_fast's own")
    monkeypatch.setattr(loop, "needs_two_examples", broken)
    with pytest.raises(RuntimeError, match="a bug of adt_fast's own"):
        fit(_cfg(tmp_path / "run", method="standard", arch="small-cnn", epochs=1))


def test_a_model_that_refuses_channels_last_with_any_error_trains_in_contiguous(tmp_path, capsys, monkeypatch,
                                                                             steady_memory_format):
    """Not only RuntimeError: whatever your model raises on channels_last inputs falls back to
    contiguous, and tuning.json keeps the first line of the message (mode line, one line)."""
    from adt_fast.train import tuning

    monkeypatch.setattr(tuning, "time_memory_formats", steady_memory_format)  # the real measurement
    run = fit(_cfg(tmp_path / "run", method="standard", arch="external_models:RefusesChannelsLast", epochs=1,
                   channels_last=None))
    recorded = json.loads((run / tuning.TUNING_FILE).read_text())[tuning.MEMORY_FORMAT]
    assert recorded == {"channels_last": False,
                        "chosen_by": f"{tuning.CHANNELS_LAST_FAILED} (ValueError: takes contiguous inputs only)"}


def test_the_probe_leaves_every_modules_mode_and_batchnorm_statistics_as_they_were():
    """The probe runs in eval mode throughout (no BatchNorm update, also in a submodule) and puts
    back each module's own mode, also a submodule kept in eval mode inside a training model."""
    from adt_fast.models.external import probe_classes

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 36, 10))
    model.train()
    model[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert probe_classes(model, 3, 8, "cpu", "synthetic") == 10
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_run_whose_factory_was_renamed_loads_with_the_route_the_error_names(run, tmp_path, monkeypatch, capsys):
    """model.pt holds the model's own state dict, so the renamed factory plus --weights gives the
    trained model; the refusal says so."""
    (tmp_path / "renamed_models.py").write_text("from external_models import sized\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["eval", "--checkpoint", str(run), "--model", "renamed_models:sized(4)", "--attacks", "fgsm",
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    route = f"eval --model 'renamed_models:sized(4)' --weights {run / 'model.pt'}"
    assert code == 2 and route in err, err
    out = tmp_path / "f.json"
    assert main(["eval", "--model", "renamed_models:sized(4)", "--weights", str(run / "model.pt"), "--dataset",
                 "synthetic", "--attacks", "fgsm", "--n-examples", "4", "--epsilon-curve", "",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    reference = tmp_path / "g.json"
    assert main(["eval", "--checkpoint", str(run), "--model", SPEC, "--attacks", "fgsm", "--n-examples", "4",
                 "--epsilon-curve", "", "--out", str(reference)]) == 0
    assert json.loads(out.read_text())["robust_accuracy"] == json.loads(reference.read_text())["robust_accuracy"]


def test_a_model_whose_logits_are_nan_scores_no_accuracy(tmp_path, capsys):
    """argmax reads an all-NaN row as class 0: the run log once gave such a model the share of
    class-0 examples as its train and test accuracy. Its loss is NaN, which the loop warns of."""
    out = fit(_cfg(tmp_path / "r", method="standard", arch="external_models:NaNLogits", exact_train_acc=True))
    assert "epoch 2/2: the training loss is nan, not a finite number" in capsys.readouterr().err
    assert [(r["train_acc"], r["test_acc"]) for r in adt_fast.train.read_metrics(out)] == [(0.0, 0.0)] * 2
