"""Defects found by fuzzing the Python training API (TrainConfig, fit, register_method, load_model),
each pinned by the call that hit it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adt_fast.attacks.losses import cross_entropy
from adt_fast.data import DatasetFileError
from adt_fast.train import (METHODS, CheckpointError, ConfigError, Method, MethodSpec, StepOutput, TrainConfig, fit,
                            load_model, register_method)
from adt_fast.train.methods import _build_standard

TINY = dict(dataset="synthetic", epochs=1, max_batches=1, device="cpu", tensorboard=False)


def test_numpy_scalars_are_taken_as_the_numbers_they_hold(tmp_path, capsys):
    """Settings from a numpy sweep were refused ('--epochs must be an integer >= 1, got
    np.int64(1)'), np.float64 taken but np.float32 not; and a resume naming one that differs from
    the run crashed writing the conflict (TypeError: Object of type int64 is not JSON serializable)."""
    run = tmp_path / "run"
    fit(TrainConfig(method="at-pgd", out=str(run), **{**TINY, "epochs": np.int64(1)}, batch_size=np.int32(8),
                    lr=np.float32(0.5), epsilon=np.float32(0.25), steps=np.int64(1), lr_drop=[np.int64(2)],
                    exact_train_acc=np.bool_(False)))
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["batch_size"], saved["lr"], saved["epsilon"], saved["steps"]) == (1, 8, 0.5, 0.25, 1)
    with pytest.raises(ConfigError, match=r"--seed 1 \(the run has 0\)"):
        fit(TrainConfig(method="at-pgd", out=str(run), **TINY, resume=True, seed=np.int64(1)))


@pytest.mark.parametrize("out, message", [(None, "--out must be a path"), (5, "--out must be a path"),
                                          (b"run", "--out must be a path"), ("", "--out is empty")])
def test_an_out_that_is_no_path_is_named(out, message, tmp_path, monkeypatch):
    """out=None/5/b"run" was a TypeError from pathlib; out="" trained into the working directory
    when it was empty (and else blamed '--out .')."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        fit(TrainConfig(method="standard", out=out, **TINY))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out, message", [(None, "--out must be a path"), (5, "--out must be a path"),
                                          (b"run", "--out must be a path"), ("", "--out is empty")])
def test_resolve_refuses_an_out_that_is_no_path(out, message):
    """TrainConfig.resolve turned out=5 into the folder '5' and out=None into 'None', where fit
    refused them (data_dir, a few lines below, was checked already)."""
    with pytest.raises(ConfigError, match=message):
        TrainConfig(method="standard", out=out, **TINY).resolve()
    assert TrainConfig(method="standard", out=Path("runs") / "a", **TINY).resolve().out == os.path.join("runs", "a")



@pytest.mark.parametrize("name", ["lr", "weight_decay"])
def test_an_lr_or_weight_decay_past_float32_is_refused_before_the_run_begins(name, tmp_path):
    """lr=1e300 passed the checks, then torch's SGD raised 'value cannot be converted to type float
    without overflow' after the run directory was made; the largest float32 itself still trains."""
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{flag} must be <= 3.40282e\\+38, got 1e\\+300"):
        fit(TrainConfig(method="standard", out=str(tmp_path / "run"), **TINY, **{name: 1e300}))
    assert list(tmp_path.iterdir()) == []
    fit(TrainConfig(method="standard", out=str(tmp_path / "run"), **TINY, **{name: float(np.finfo(np.float32).max)}))

def test_given_that_is_not_a_collection_is_named(tmp_path):
    """given=5 was "TypeError: 'int' object is not iterable" from inside fit."""
    with pytest.raises(ConfigError, match="given must be a collection of TrainConfig field names, got 5"):
        fit(TrainConfig(method="standard", out=str(tmp_path / "run"), **TINY, resume=True), given=5)


def _register_once(spec):
    if spec.name not in METHODS:
        register_method(spec)
    return spec.name


@pytest.mark.parametrize("spec, message", [
    (MethodSpec(5, _build_standard), "MethodSpec.name must be a non-empty string"),
    (MethodSpec("", _build_standard), "MethodSpec.name must be a non-empty string"),
    (MethodSpec("fuzz-build", 5), "'fuzz-build': build must be callable"),
    (MethodSpec("fuzz-params", _build_standard, params=["steps"]), "params must be a dict"),
    (MethodSpec("fuzz-knob", _build_standard, params={"my_knob": 3}), "params names 'my_knob', which TrainConfig"),
    (MethodSpec("fuzz-losses", _build_standard, params={"loss": "ce"}, losses="ce"), "losses must be a tuple"),
])
def test_register_method_refuses_a_spec_the_registry_cannot_use(spec, message):
    """A name of 5 was registered and then broke every 'choose one of' message (TypeError in join);
    a params key TrainConfig has no field for was silently ignored; losses="ce" let --loss "c" pass
    (a substring test); a build that is no function failed only inside fit."""
    with pytest.raises(ValueError, match=message):
        register_method(spec)
    assert spec.name not in METHODS


def _method_stepping(step):
    return type("Fuzz", (Method,), {"step": lambda self, model, x, y: step(model, x, y)})


@pytest.mark.parametrize("name, build, message", [
    ("fuzz-returns-none", lambda cfg, model, rt: None, "returned NoneType, not a Method"),
    ("fuzz-per-example", lambda cfg, model, rt: _method_stepping(
        lambda model, x, y: StepOutput(cross_entropy(model(x), y), None))(cfg, model, rt),
     r"the step's loss must be a scalar tensor \(the batch mean\), got \(8,\)"),
    ("fuzz-no-grad", lambda cfg, model, rt: _method_stepping(
        lambda model, x, y: StepOutput(cross_entropy(model(x), y).mean().detach(), None))(cfg, model, rt),
     "the step's loss has no gradient"),
    ("fuzz-module-list", lambda cfg, model, rt: type("Fuzz", (Method,), {"modules": lambda self: [nn.Linear(1, 1)]})(
        cfg, model, rt), "modules\\(\\) must return a dict of name -> nn.Module .*, got list"),
    ("fuzz-tuple", lambda cfg, model, rt: _method_stepping(
        lambda model, x, y: (cross_entropy(model(x), y).mean(), None))(cfg, model, rt),
     "step returned tuple, not a StepOutput"),
])
def test_a_registered_method_that_breaks_its_contract_is_named(name, build, message, tmp_path):
    """A build returning None was "AttributeError: 'NoneType' object has no attribute 'optimisers'"
    from the loop; a per-example loss, a detached one and a tuple failed inside backward."""
    _register_once(MethodSpec(name, build))
    with pytest.raises(TypeError, match=message):
        fit(TrainConfig(method=name, out=str(tmp_path / "run"), **{**TINY, "batch_size": 8}))


class _Counter:
    """Pickles, but weights-only loading refuses it (a class of the user's code)."""


@pytest.mark.parametrize("name, state, message", [
    ("fuzz-state-lambda", {"schedule": lambda epoch: epoch}, "extra_state\\(\\) must hold what a checkpoint can save"),
    ("fuzz-state-object", {"counter": _Counter()}, "it holds an object of class .*_Counter, which weights-only"),
])
def test_a_method_state_no_checkpoint_can_round_trip_is_refused_before_training(name, state, message, tmp_path):
    """A lambda in extra_state() failed at the first checkpoint, losing the epoch; an object of the
    user's class saved fine and was refused at the resume, after the whole run had trained."""
    method = type("Fuzz", (Method,), {"step": lambda self, model, x, y: StepOutput(cross_entropy(model(x), y).mean(),
                                                                                     None),
                                      "extra_state": lambda self: state})
    _register_once(MethodSpec(name, lambda cfg, model, rt: method(cfg, model, rt)))
    with pytest.raises(TypeError, match=message):
        fit(TrainConfig(method=name, out=str(tmp_path / "run"), **TINY))
    assert not (tmp_path / "run").exists()


def _arrays(**replace):
    """Valid data= arrays (two classes of 8x8 grayscale images), some replaced."""
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 2
    return tuple(replace.get(key, value) for key, value in
                 (("x_train", x), ("y_train", y), ("x_test", x), ("y_test", y)))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("key, make, message", [
    ("x_train", lambda: torch.rand(8, 1, 8, 8).to_sparse(),
     r"x_train: must be a dense tensor, got a torch.sparse_coo one; convert it with \.to_dense\(\)$"),
    ("y_test", lambda: (torch.arange(8) % 2).to_sparse(),
     r"y_test: must be a dense tensor, got a torch.sparse_coo one"),
    ("x_train", lambda: torch.rand(8, 64).to_sparse_csr(),
     r"x_train: must be a dense tensor, got a torch.sparse_csr one"),
    ("x_test", lambda: torch.rand(8, 1, 8, 8, device="meta"), r"x_test: is on the meta device, which holds no values"),
    ("y_train", lambda: torch.zeros(8, dtype=torch.int64, device="meta"), r"y_train: is on the meta device"),
])
def test_sparse_or_meta_tensors_as_data_are_named(key, make, message, tmp_path):
    """A sparse tensor was torch's TypeError from the numpy conversion, a meta-device one
    "NotImplementedError: Cannot copy out of meta tensor; no data!", neither naming the array."""
    with pytest.raises(DatasetFileError, match=r"data \(mine\): " + message):
        fit(TrainConfig(method="standard", out=str(tmp_path / "run"), **{**TINY, "dataset": "mine"}),
            data=_arrays(**{key: make()}))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path, message", [
    (None, "the checkpoint must be a path .* naming a run directory or a checkpoint file, got None"),
    (5, "the checkpoint must be a path .*, got 5"), (b"run", "the checkpoint must be a path .*, got b'run'"),
    ("", "the checkpoint path is empty"),
])
def test_load_model_names_a_path_that_is_no_path(path, message, tmp_path, monkeypatch):
    """load_model(None) / load_model(5) was pathlib's TypeError ("expected str, bytes or os.PathLike
    object, not NoneType"); load_model("") blamed "run directory .", the working directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


@pytest.mark.parametrize("data_dir", [5, b"data", ["data"]])
def test_a_data_dir_that_is_no_path_is_named(data_dir, tmp_path):
    """data_dir=5 was taken as the folder "5" (str(5)) and recorded so in config.json."""
    with pytest.raises(ConfigError, match=f"--data-dir must be a path \\(a str or pathlib.Path\\) naming the folder "
                                          f"of the dataset files, got {re.escape(repr(data_dir))}"):
        fit(TrainConfig(method="standard", out=str(tmp_path / "run"), **TINY, data_dir=data_dir))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, tuned, message", [
    ("fuzz-tune-none", None, r"got NoneType"),
    ("fuzz-tune-tensor", {"seconds": {"fast": torch.ones(1)}},
     r"but tune\(\)\['seconds'\]\['fast'\] is of type Tensor \(tensor\(\[1\.\]\)\)"),
    ("fuzz-tune-set", {"passes": [1, {2, 3}]}, r"but tune\(\)\['passes'\]\[1\] is of type set"),
    ("fuzz-tune-key", {"per_pass": {4: 0.5}}, r"but tune\(\)\['per_pass'\] has the key 4 \(int\)"),
    ("fuzz-tune-numpy", {"per_pass": np.int64(4)}, r"but tune\(\)\['per_pass'\] is of type int64"),
])
def test_a_tune_that_returns_what_tuning_json_cannot_hold_is_named(name, tuned, message, tmp_path):
    """A tensor or a set in tune()'s dict was "TypeError: Object of type Tensor is not JSON
    serializable" from json's encoder, and None "'NoneType' object is not a mapping", neither naming
    the method's tune(); an int key was written as a string, so a resume read back another dict."""
    method = type("Fuzz", (Method,), {"step": lambda self, model, x, y: StepOutput(cross_entropy(model(x), y).mean(),
                                                                                     None),
                                      "tune": lambda self, model, x, y, recorded=None: tuned})
    _register_once(MethodSpec(name, lambda cfg, model, rt: method(cfg, model, rt)))
    with pytest.raises(TypeError, match=f"method {name}: tune\\(\\) must return a dict of JSON types .* for "
                                        f"tuning.json, " + message):
        fit(TrainConfig(method=name, out=str(tmp_path / "run"), **TINY))
    assert not (tmp_path / "run" / "tuning.json").exists()


def test_a_tune_that_returns_tuples_is_applied_as_its_resumes_read_it_back(tmp_path):
    """tuning.json writes a tuple as a list: the first run applied the tuple and every resume the
    list, so a method that compared or hashed it behaved differently after a resume."""
    applied = []
    method = type("FuzzTuples", (Method,), {
        "step": lambda self, model, x, y: StepOutput(cross_entropy(model(x), y).mean(), None),
        "tune": lambda self, model, x, y, recorded=None: recorded or {"sizes": (2, 4)},
        "apply_tuning": lambda self, tuning: applied.append(tuning)})
    name = _register_once(MethodSpec("fuzz-tune-tuples", lambda cfg, model, rt: method(cfg, model, rt)))
    fit(TrainConfig(method=name, out=str(tmp_path / "run"), **TINY))
    fit(TrainConfig(method=name, out=str(tmp_path / "run"), resume=True, **{**TINY, "epochs": 2}))
    assert [a["sizes"] for a in applied] == [[2, 4], [2, 4]]


@pytest.mark.parametrize("data_dir", [5, b"data"])
def test_the_data_functions_name_a_data_dir_that_is_no_path(data_dir):
    """adt_fast.data.load and download gave pathlib's TypeError ('expected str, bytes or
    os.PathLike object, not int'); fit's TrainConfig already named it."""
    from adt_fast import data

    for call in (lambda: data.load("cifar10", "train", data_dir=data_dir), lambda: data.download("cifar10", data_dir)):
        with pytest.raises(ValueError, match=f"^data_dir must be a path \\(a str or pathlib.Path\\) naming the folder "
                                             f"of the dataset files, got {re.escape(repr(data_dir))}$"):
            call()
