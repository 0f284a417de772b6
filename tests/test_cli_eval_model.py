"""`adt-fast eval --model MODULE:FACTORY --weights FILE [--mean --std]` and --protocol paper."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import sys

import pytest
import torch
from torch import nn

from adt_fast.cli import main
from adt_fast.models import Normalized, load_external_model
from adt_fast.models.external import ExternalModelError

import external_models

FACTORY = "external_models:build"
FAST = ["--dataset", "synthetic", "--n-examples", "4", "--epsilon-curve", "", "--attacks", "pgd:2"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    model = external_models.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    torch.save(model.state_dict(), root / "plain.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, root / "wrapped.pt")
    torch.save(external_models.wide().state_dict(), root / "wide.pt")
    with open(root / "pickled.pt", "wb") as handle:
        pickle.dump({"weights": object()}, handle)
    return root, model


def test_eval_a_model_from_a_factory_with_weights_and_normalisation(weights, tmp_path, capsys):
    root, trained = weights
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", FACTORY, "--weights", str(root / "wrapped.pt"),
                 "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", *FAST, "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert report["meta"]["model"] == FACTORY and report["meta"]["mean"] == [0.5, 0.5, 0.5]
    # the loaded weights are the ones in the file, behind the normalisation
    model = load_external_model(FACTORY, root / "plain.pt", mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(model(x), trained((x - 0.5) / 0.25))
    assert isinstance(model, Normalized)


@pytest.mark.parametrize("args, flag, message", [
    (["--model", "no_such_module_xyz:build"], "--model", "cannot import"),
    (["--model", "external_models:missing"], "--model", "no attribute"),
    (["--model", "external_models"], "--model", "MODULE:FACTORY"),
    (["--model", "external_models:"], "--model", "MODULE:FACTORY"),
    (["--model", "external_models:fails"], "--model", "factory exploded"),
    (["--model", "external_models:not_a_module"], "--model", "not a torch.nn.Module"),
    (["--model", FACTORY, "--weights", "WIDE"], "--weights", "do not fit"),
    (["--model", FACTORY, "--weights", "PICKLED"], "--weights", "weights-only"),
    (["--model", FACTORY, "--weights", "MISSING"], "--weights", "does not exist"),
    (["--model", "external_models:wide"], "--model", "fails on"),
    (["--model", FACTORY, "--mean", "0.5,0.5,0.5"], "--mean/--std", "both"),
    (["--model", FACTORY, "--mean", "0.5", "--std", "0.2"], "--mean", "3 input channels"),
    (["--model", FACTORY, "--mean", "0.5,0.5,0.5", "--std", "0.2,0,0.2"], "--mean/--std", "> 0"),
    (["--weights", "WIDE", "--checkpoint", "x"], "--weights", "goes with --model"),
    (["--model", FACTORY, "--weights", "WIDE", "--checkpoint", "x"], "--weights", "goes with --model alone"),
    (["--model", FACTORY, "--checkpoint", "x"], "--checkpoint", "checkpoint x does not exist"),
    ([], "--checkpoint/--model", "give --checkpoint for an adt_fast run or --model"),
    (["--model", FACTORY, "--protocol", "paper", "--feature-targets", "5"], "--feature-targets", "paper"),
])
def test_bad_model_arguments_name_the_flag(args, flag, message, weights, tmp_path, capsys):
    root, _ = weights
    names = {"WIDE": root / "wide.pt", "PICKLED": root / "pickled.pt", "MISSING": root / "nope.pt"}
    args = [str(names.get(a, a)) for a in args]
    code = main(["eval", *args, *FAST, "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {flag}:" in err and message in err, err
    assert not (tmp_path / "e.json").exists()


def test_python_loader_errors_are_typed():
    with pytest.raises(ExternalModelError, match="cannot import"):
        load_external_model("no_such_module_xyz:build")


def test_model_needs_a_dataset(tmp_path, capsys):
    code = main(["eval", "--model", FACTORY, "--n-examples", "4", "--out", str(tmp_path / "e.json")])
    assert code == 2
    assert "error: --dataset: required with --model" in capsys.readouterr().err


def test_attacks_needing_more_classes_than_the_dataset_has_blame_attacks(tmp_path, monkeypatch, capsys):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(10) % 5
    np.savez(tmp_path / "five.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    (tmp_path / "five_class_models.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["eval", "--model", "five_class_models:build", "--dataset", str(tmp_path / "five.npz"),
                 "--attacks", "pgd20,mim,apgd-t", "--epsilon-curve", "", "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: --attacks: 'apgd-t'" in err and "at least 10 classes" in err, err
    assert "returns 5" in err and "Traceback" not in err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("factory", ["Detached", "NoGradForward"])
def test_a_model_without_input_gradients_is_evaluated_and_flagged_as_masking(factory, tmp_path, capsys):
    """A detached or no_grad forward is a gradient-masking defence to score, not a crash."""
    out = tmp_path / "e.json"
    code = main(["eval", "--model", f"external_models:{factory}", *FAST[:-2], "--attacks", "fgsm,pgd:2,square",
                 "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert report["gradient_check"]["zero_fraction"] == 1.0
    assert "input gradient is exactly zero on 4 of 4 examples" in printed.out


@pytest.mark.parametrize("spec, weights, message", [
    ("external_models:ThroughNumpy", None, "fails on a (2, 3, 8, 8) input of synthetic that requires grad"),
    ("external_models:FailsOnBigBatches", None, "the model failed during the attacks: RuntimeError: only small batches"),
    ("RAISES:build", None, "importing 'raises_on_import' failed: RuntimeError: broken module"),
    ("EXITS:build", None, "importing 'exits_on_import' failed: it called sys.exit(0) (argparse does on a command "
                          "line it does not know, such as adt-fast's); put a script's own code under "
                          "if __name__ == \"__main__\":"),
    ("external_models:exits", None, "calling external_models:exits() failed: it called sys.exit(0)"),
    ("external_models:ExitsInForward", None, "requires grad, as the attacks give it: it called sys.exit(3)"),
    ("external_models:ExitsOnBigBatches", None, "the model failed during the attacks: it called sys.exit(0)"),
    ("external_models.py:build", None, "is a file path; give the module's import name"),
    ("some_folder/external_models:build", None, "is a file path; give the module's import name"),
    ("external_models:FailsInBackward", None, "fails on a (2, 3, 8, 8) input of synthetic that requires grad, as the "
                                              "attacks give it: RuntimeError: no backward here"),
    ("external_models:BatchMean", None, "the model returns (1, 10) for two inputs; it must return logits of shape "
                                        "(2, number of classes)"),
    (FACTORY, "DIRECTORY", "is a directory, not a weights file"),
    (FACTORY, "WHOLE", "holds an object of class torch.nn.modules.container.Sequential"),
    (FACTORY, "TEXT", "weights-only loading stopped at 'Unsupported operand"),
    (FACTORY, "EMPTY", "as a torch.save file (EOFError"),
    (FACTORY, "WIDE", "1 shape differs (3.weight (10, 100) vs (10, 256))"),
    (FACTORY, "RENAMED", "4 missing (0.weight, 0.bias, 3.weight and 1 more); 4 unexpected (net.0.weight"),
])
def test_model_failures_are_one_line_errors_naming_the_flag(spec, weights, message, tmp_path, monkeypatch, capsys):
    """The user's import, forward and weights file fail with the flag and the cause, no traceback;
    a sys.exit() there too, which would otherwise end the command silently (and with 0)."""
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('broken module')\n")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "folder").mkdir()
    torch.save(external_models.build(), tmp_path / "whole.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    wide = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(100, 10))
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    torch.save(external_models.Detached().state_dict(), tmp_path / "renamed.pt")
    files = {"DIRECTORY": "folder", "WHOLE": "whole.pt", "TEXT": "text.pt", "EMPTY": "empty.pt",
             "WIDE": "wide.pt", "RENAMED": "renamed.pt"}
    args = ["--model", spec.replace("RAISES", "raises_on_import").replace("EXITS", "exits_on_import")]
    if weights is not None:
        args += ["--weights", str(tmp_path / files[weights])]
    code = main(["eval", *args, *FAST, "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    flag = "--weights" if weights else "--model"
    assert f"error: {flag}: " in err and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e.json").exists()


def test_running_out_of_device_memory_names_the_batch_size(tmp_path, capsys):
    """Not "the model failed": a smaller --batch-size is the fix, and no result depends on it."""
    code = main(["eval", "--model", "external_models:OutOfMemoryOnBigBatches", *FAST, "--batch-size", "3",
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert ("adt-fast eval: error: --batch-size: 3 examples a batch ran out of memory during the "
            "attacks (CUDA out of memory. Tried to allocate 20.00 GiB (stand-in)); a smaller --batch-size "
            "needs less, and no result depends on it") in err, err
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_weights_saved_from_a_wrapped_model_load_without_their_prefix(prefix, tmp_path):
    """DistributedDataParallel and torch.compile prefix every key; such files are the common case."""
    trained = external_models.build()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    torch.save({prefix + k: v for k, v in trained.state_dict().items()}, tmp_path / "w.pt")
    model = load_external_model(FACTORY, tmp_path / "w.pt")
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(model(x), trained(x))


def test_a_model_instance_can_be_named_instead_of_a_factory(tmp_path, capsys):
    code = main(["eval", "--model", "external_models:instance", *FAST, "--out", str(tmp_path / "e.json")])
    assert code == 0, capsys.readouterr().err


def test_the_seed_repeats_a_randomised_model(tmp_path, capsys):
    """--seed seeds the randomness inside the user's forward too: same seed, same report."""
    args = ["eval", "--model", "external_models:Randomised", *FAST[:3], "32", *FAST[4:-2],
            "--attacks", "fgsm,pgd:2"]
    reports = []
    for name in ("a.json", "b.json"):
        torch.manual_seed(len(reports))  # whatever the process drew before must not matter
        assert main([*args, "--out", str(tmp_path / name)]) == 0, capsys.readouterr().err
        reports.append((tmp_path / name).read_bytes())
    assert reports[0] == reports[1]


def test_a_feature_split_that_exits_skips_feaattack_as_one_that_fails(tmp_path, monkeypatch, capsys):
    """FeaAttack's check of head(features(x)) reports a sys.exit() as any error there: the attack is
    skipped with the reason and the others run (it ended eval as a model failure)."""
    (tmp_path / "exiting_split.py").write_text(
        "import sys\nfrom torch import nn\n\nfrom external_models import _Wrapped\n\n\n"
        "class ExitingHead(_Wrapped):\n    def features(self, x):\n        return self.net[0](x)\n\n"
        "    def head(self, features):\n        sys.exit(4)\n\n"
        "    def forward(self, x):\n        return self.net(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "e.json"
    code = main(["eval", "--model", "exiting_split:ExitingHead", *FAST, "--attacks", "fgsm,feature", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    attacks = json.loads(out.read_text())["attacks"]
    assert attacks["feature"]["skipped"] == ("head(features(x)) fails on the model (it called sys.exit(4)), so "
                                             "FeaAttack cannot run")
    assert "fgsm" in json.loads(out.read_text())["robust_accuracy"]


def test_a_module_in_the_working_folder_is_found_when_it_is_not_on_sys_path(tmp_path, monkeypatch, capsys):
    """The installed adt-fast script's sys.path starts at its own folder, not at the working one."""
    (tmp_path / "my_local_models.py").write_text(
        "from external_models import build\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), ".")])
    code = main(["eval", "--model", "my_local_models:build", *FAST, "--out", str(tmp_path / "e.json")])
    assert code == 0, capsys.readouterr().err


def test_the_report_names_the_weights_it_scored_by_their_hash(weights, tmp_path, capsys):
    """A path can be overwritten by the next training run; the hash says which weights were scored."""
    root, _ = weights
    out = tmp_path / "e.json"
    assert main(["eval", "--model", FACTORY, "--weights", str(root / "plain.pt"), *FAST,
                 "--out", str(out)]) == 0, capsys.readouterr().err
    meta = json.loads(out.read_text())["meta"]
    assert meta["weights"] == str((root / "plain.pt").resolve())
    assert meta["weights_sha256"] == hashlib.sha256((root / "plain.pt").read_bytes()).hexdigest()


def test_a_factory_takes_literal_arguments_from_the_spec(tmp_path, capsys):
    """Constructors such as torchvision's resnet18(num_classes=10) need arguments to fit a dataset."""
    model = load_external_model("external_models:sized(6, num_classes=10)")
    assert model[0].out_channels == 6 and model[3].out_features == 10
    out = tmp_path / "e.json"
    assert main(["eval", "--model", "external_models:sized(num_classes=10)", *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "\nsized " in printed
    assert json.loads(out.read_text())["meta"]["model"] == "external_models:sized(num_classes=10)"


@pytest.mark.parametrize("spec, message", [
    ("external_models:sized(__import__('os'))", "must be Python literals"),
    ("external_models:sized(**{'width': 3})", "must be Python literals"),
    ("external_models:sized(3", "arguments go in parentheses at the end"),
    ("external_models:sized(3) + sized(4)", "must close the spec, as one call"),
    ("external_models:sized(3)(4)", "must close the spec, as one call"),
    ("external_models:sized(depth=3)", "calling external_models:sized(depth=3) failed: TypeError"),
    ("external_models:instance(3)", "is a model, not a factory"),
    ("external_models:instance(width=3)", "is a model, not a factory"),
])
def test_factory_arguments_that_are_not_literals_or_do_not_fit_are_refused(spec, message):
    with pytest.raises(ExternalModelError, match=re.escape(message)):
        load_external_model(spec)


def _source_weights(path):
    """Weights for external_models.sized(6) that differ from its initialisation."""
    source = external_models.sized(6)
    with torch.no_grad():
        for p in source.parameters():
            p.mul_(-1.5)
    torch.save(source.state_dict(), path)
    return source


SOURCE = ["--source-model", "external_models:sized(6)", "--source-mean", "0.5,0.5,0.5",
          "--source-std", "0.25,0.25,0.25"]


def test_a_source_model_trained_elsewhere_crafts_the_transfer_attack(tmp_path, capsys):
    """--source-model/--source-weights/--source-mean/--source-std build the transfer attack's source
    as --model builds the evaluated model; the report names it and the hash of its weights."""
    from adt_fast.attacks.command import plan
    from adt_fast.cli import build_parser

    trained = _source_weights(tmp_path / "source.pt")
    argv = ["eval", "--model", FACTORY, *FAST, *SOURCE, "--source-weights", str(tmp_path / "source.pt")]
    job = plan(build_parser().parse_args([*argv, "--out", str(tmp_path / "p.json")]))
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(job.source(x), trained((x - 0.5) / 0.25))
    reports = []
    for name in ("a.json", "b.json"):
        out = tmp_path / name
        assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
        reports.append(out.read_text())
    assert reports[0] == reports[1]
    report = json.loads(reports[0])
    assert set(report["robust_accuracy"]) == {"pgd2", "transfer"}
    meta = report["meta"]
    assert meta["source_model"] == "external_models:sized(6)" and meta["source_mean"] == [0.5] * 3
    assert meta["source_weights"] == str((tmp_path / "source.pt").resolve())
    assert meta["source_weights_sha256"] == hashlib.sha256((tmp_path / "source.pt").read_bytes()).hexdigest()


@pytest.mark.parametrize("args, flag, message", [
    (["--source-model", FACTORY, "--source-checkpoint", "x"], "--source-checkpoint", "checkpoint x does not exist"),
    (["--source-model", FACTORY, "--source-checkpoint", "x", "--source-weights", "SOURCE"], "--source-weights",
     "goes with --source-model alone"),
    (["--source-weights", "SOURCE"], "--source-weights", "goes with --source-model"),
    (["--source-mean", "0.5,0.5,0.5", "--source-std", "0.2,0.2,0.2"], "--source-mean/--source-std",
     "goes with --source-model"),
    (["--source-model", FACTORY, "--source-mean", "0.5,0.5,0.5"], "--source-mean/--source-std", "both"),
    (["--source-model", FACTORY, "--source-mean", "0.5", "--source-std", "0.2"], "--source-mean", "3 input channels"),
    (["--source-model", "external_models:wide"], "--source-model", "fails on"),
    (["--source-model", "external_models:fails"], "--source-model", "factory exploded"),
    (["--source-model", "external_models:sized(6)", "--source-weights", "WIDE"], "--source-weights", "do not fit"),
    (["--source-model", "external_models:sized(num_classes=5)"], "--source-model", "needs logits of shape (2, 10)"),
    (["--source-model", "external_models:on_meta"], "--source-model",
     "cannot move the model to cpu: NotImplementedError: Cannot copy out of meta tensor"),
    (["--source-model", "external_models:FailsOnBigBatches"], "--model/--source-model",
     "one of the models failed during the attacks: RuntimeError: only small batches"),
    (["--attacks", "transfer"], "--attacks", "'transfer' needs --source-checkpoint or --source-model"),
    (["--source-model", "external_models:ValueErrorOnBigBatches"], "--model/--source-model",
     "one of the models failed during the attacks: ValueError: only small batches"),
])
def test_bad_source_model_arguments_name_the_flag(args, flag, message, weights, tmp_path, capsys):
    root, _ = weights
    _source_weights(tmp_path / "source.pt")
    names = {"WIDE": root / "wide.pt", "SOURCE": tmp_path / "source.pt"}
    args = [str(names.get(a, a)) for a in args]
    code = main(["eval", "--model", FACTORY, *FAST, *args, "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: {flag}: " in err and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e.json").exists()


def test_a_factory_that_hands_out_one_object_cannot_serve_as_model_and_source(tmp_path, capsys):
    """Loading the source's weights would have replaced the evaluated model's."""
    code = main(["eval", "--model", "external_models:cached", "--source-model", "external_models:cached", *FAST,
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and "error: --source-model: the factory returned the very model object" in err, err


def test_a_factory_may_be_a_dotted_attribute_of_its_module():
    """MODULE:FACTORY's factory may be dotted (build_from_factory): a class in a submodule, a class's
    factory method."""
    model = load_external_model("torch.nn:modules.linear.Linear(2, 3)")
    assert isinstance(model, nn.Linear) and (model.in_features, model.out_features) == (2, 3)


def test_a_model_instance_that_cannot_be_copied_is_refused_by_name(tmp_path, monkeypatch):
    """Each load copies a named instance (two loads must not share weights); one that deepcopy
    refuses is an ExternalModelError that says to name a factory, not deepcopy's own TypeError."""
    (tmp_path / "uncopyable_models.py").write_text(
        "import threading\n"
        "from external_models import build\n\n"
        "instance = build()\n"
        "instance.lock = threading.Lock()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ExternalModelError) as refused:
        load_external_model("uncopyable_models:instance")
    message = str(refused.value)
    assert message.startswith("uncopyable_models:instance is a model instance that cannot be copied (TypeError: ")
    assert message.endswith("name a factory that builds it instead"), message


def test_a_relative_weights_path_is_recorded_absolute(weights, tmp_path, monkeypatch, capsys):
    """The report names the file scored wherever it is read from later: a path relative to the
    folder eval ran in would name another file, or none."""
    root, _ = weights
    monkeypatch.chdir(root)
    out = tmp_path / "e.json"
    assert main(["eval", "--model", FACTORY, "--weights", "plain.pt", *FAST, "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert json.loads(out.read_text())["meta"]["weights"] == str((root / "plain.pt").resolve())


def _factory_checkpoint(path, arch, model):
    """A checkpoint of `model` as `adt-fast train --arch ARCH` writes it (synthetic's shape)."""
    from adt_fast.train import checkpoint as ckpt

    config = {"arch": arch, "num_classes": 10, "in_channels": 3, "image_size": 8}
    return ckpt.save_atomic({"model_config": config, "model": model.state_dict(), "method": "standard",
                             "epoch": 1}, path)


def test_a_checkpoints_factory_is_found_in_the_working_folder(tmp_path, monkeypatch, capsys):
    """As for --model alone: with --checkpoint, --model may name a module in the folder eval runs
    in, which the installed adt-fast script does not have on sys.path."""
    (tmp_path / "my_local_factory.py").write_text("from external_models import build\n")
    path = _factory_checkpoint(tmp_path / "model.pt", "my_local_factory:build", external_models.build())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path), ".")])
    monkeypatch.delitem(sys.modules, "my_local_factory", raising=False)
    code = main(["eval", "--checkpoint", str(path), "--model", "my_local_factory:build", *FAST,
                 "--out", str(tmp_path / "e.json")])
    assert code == 0, capsys.readouterr().err


def test_the_seed_repeats_a_randomised_model_loaded_from_a_checkpoint(tmp_path, capsys):
    """--seed seeds the randomness of a checkpoint's factory-built model too (its forward's noise):
    whatever the process drew before, same seed, same report."""
    path = _factory_checkpoint(tmp_path / "model.pt", "external_models:Randomised", external_models.Randomised())
    reports = []
    for name in ("a.json", "b.json"):
        torch.manual_seed(len(reports))
        assert main(["eval", "--checkpoint", str(path), "--model", "external_models:Randomised", *FAST[:3], "32",
                     *FAST[4:-2], "--attacks", "fgsm,pgd:2", "--out", str(tmp_path / name)]) == 0, \
            capsys.readouterr().err
        reports.append((tmp_path / name).read_bytes())
    assert reports[0] == reports[1]


def test_transfer_alone_runs_with_a_source_model(tmp_path, capsys):
    """--attacks transfer needs a source: --source-model is one, as --source-checkpoint is."""
    out = tmp_path / "e.json"
    assert main(["eval", "--model", FACTORY, *FAST[:-2], "--attacks", "transfer", "--source-model",
                 "external_models:sized(6)", "--out", str(out)]) == 0, capsys.readouterr().err
    assert set(json.loads(out.read_text())["robust_accuracy"]) == {"transfer"}


def test_a_source_checkpoint_beside_a_model_and_a_source_model_beside_a_checkpoint(tmp_path, capsys):
    """Each model is loaded with its own flags (the source checkpoint without --model's factory),
    and the report hashes each one's own file."""
    from adt_fast.models import build_model
    from adt_fast.train import checkpoint as ckpt

    builtin = build_model("small-cnn", 10, 3, 8)
    run = ckpt.save_atomic({"model_config": dict(builtin.config), "model": builtin.state_dict(),
                            "method": "standard", "epoch": 1}, tmp_path / "builtin" / "model.pt")
    sha = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "a.json"
    assert main(["eval", "--model", FACTORY, *FAST, "--source-checkpoint", str(run), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    meta = json.loads(out.read_text())["meta"]
    assert meta["source_checkpoint"] == str(run) and meta["source_checkpoint_sha256"] == sha(run)
    _source_weights(tmp_path / "source.pt")
    out = tmp_path / "b.json"
    assert main(["eval", "--checkpoint", str(run), *FAST, *SOURCE, "--source-weights", str(tmp_path / "source.pt"),
                 "--out", str(out)]) == 0, capsys.readouterr().err
    meta = json.loads(out.read_text())["meta"]
    assert meta["checkpoint_sha256"] == sha(run)
    assert meta["source_weights_sha256"] == sha(tmp_path / "source.pt")


def test_evaluates_own_refusal_of_a_source_model_blames_source_model(tmp_path, capsys):
    """evaluate's own check of the source's logits (on the data: 5 classes for labels up to 8) is
    adt_fast's ValueError, not the model's: it names --source-model, the flag that gave that model."""
    code = main(["eval", "--model", FACTORY, *FAST, "--source-model", "external_models:FewerClassesOnData",
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("adt-fast eval: error: --source-model: the labels go up to "), err
    assert "but the source model returns 5 logits" in err and len(err.strip().splitlines()) == 1, err


def test_the_cpu_allocators_refusal_is_out_of_memory_too(tmp_path, capsys, monkeypatch):
    """On CPU torch raises a RuntimeError, not torch.OutOfMemoryError, when the system refuses an
    allocation: the same line, with the allocator's words from 'DefaultCPUAllocator' on."""
    def refused(self, x):
        if x.shape[0] > 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 1000000000000 bytes. Error code 12 (Cannot allocate memory)")
        return self.net(x)
    monkeypatch.setattr(external_models.OutOfMemoryOnBigBatches, "forward", refused)
    code = main(["eval", "--model", "external_models:OutOfMemoryOnBigBatches", *FAST, "--batch-size", "3",
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and err == (
        "adt-fast eval: error: --batch-size: 3 examples a batch ran out of memory during the attacks "
        "(DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000000000000 bytes. Error code 12 "
        "(Cannot allocate memory)); a smaller --batch-size needs less, and no result depends on it\n"), err
