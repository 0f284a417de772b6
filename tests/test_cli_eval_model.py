"""`adt-fast eval --model MODULE:FACTORY --weights FILE [--mean --std]` and --protocol paper."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

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
    (["--model", FACTORY, "--checkpoint", "x"], "--checkpoint/--model", "exactly one"),
    ([], "--checkpoint/--model", "exactly one"),
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
