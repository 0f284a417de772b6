"""Training a classifier your own code builds: `adt-fast train --arch MODULE:FACTORY`, its
checkpoints, resume, and evaluating the run (`eval --checkpoint RUN --model MODULE:FACTORY`)."""

import json

import pytest
import torch

import adt_fast
from adt_fast.cli import main
from adt_fast.train import ComposedMethod, TrainConfig, fit
from adt_fast.train import checkpoint as ckpt

import external_models

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
])
def test_a_factory_that_cannot_train_on_the_data_is_refused_before_the_run_directory(arch, message, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", "--method", "at-pgd", "--arch", arch, *FAST, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"error: --arch {arch}: " in err and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


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
