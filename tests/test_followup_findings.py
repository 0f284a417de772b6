"""Defects other helpers' reviews found in clean_accuracy, the shared argument checks, the command
line's parsers, worst_case and parse_attacks, each pinned by the call that hit it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from adt_fast.attacks import APGDAttack, DistributionAttack, FABAttack, FeatureAttack, SquareAttack, evaluate, pgd
from adt_fast.attacks.report import worst_case
from adt_fast.attacks.suite import check_epsilon, check_step_size, mim_attack, parse_attacks, pgd_attack
from adt_fast.checks import check_finite, check_int, check_non_negative, check_steps, check_tries
from adt_fast.cli import main
from adt_fast.train import clean_accuracy


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize("x, y, message", [
    (torch.rand(2, 1, 2, 2).to_sparse(), torch.tensor([0, 1]), "x must be a dense tensor"),
    (torch.rand(2, 1, 2, 2, device="meta"), torch.tensor([0, 1]), "x is on the meta device"),
    (torch.rand(4), torch.tensor([0, 1, 2, 0]), r"x must be batched, shape \(N, ...\), got \(4,\)"),
    (torch.rand(2, 1, 2, 2), torch.tensor([0.0, 1.0]),
     "y must be an integer tensor of class labels, got torch.float32"),
    (torch.rand(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64), r"no examples \(x is empty\)"),
    (torch.rand(2, 1, 2, 2), torch.tensor([0, 1, 2]), r"y must have shape \(2,\) to match x, got \(3,\)"),
    (torch.rand(2, 1, 2, 2), torch.tensor([0, -1]), r"labels must be >= 0 \(y\)"),
    # "labels must be >= 0": the uint64 2**63 is read as int64's -2**63
    (torch.rand(2, 1, 2, 2), torch.tensor([0, 2**63], dtype=torch.uint64),
     r"^labels must be < 2\*\*63 \(y, a uint64 tensor, is read as int64\)$"),
    # scored 0.0 (8536697 dropped the finiteness check with the [0, 1] rule)
    (torch.full((2, 1, 2, 2), float("nan")), torch.tensor([0, 1]), r"^x must be finite, got NaN or inf in it$"),
    (torch.rand(2, 1, 2, 2).index_fill(0, torch.tensor([1]), float("inf")), torch.tensor([0, 1]),
     r"^x must be finite"),
])
def test_clean_accuracy_refuses_a_batch_it_cannot_score_naming_the_argument(x, y, message):
    with pytest.raises((TypeError, ValueError), match=message):
        clean_accuracy(_model(), x, y)


@pytest.mark.parametrize("settings, message", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": -5}, "batch_size must be an integer >= 1, got -5"),     # scored 0.0
    ({"max_batches": 0}, "max_batches must be an integer >= 1, got 0"),     # scored 0.0
    ({"max_batches": -1}, "max_batches must be an integer >= 1, got -1"),   # dropped the last batch
])
def test_clean_accuracy_refuses_batch_settings_that_score_too_few_examples(settings, message):
    with pytest.raises(ValueError, match=message):
        clean_accuracy(_model(), torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]), **settings)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16])
def test_clean_accuracy_and_the_attacks_take_labels_of_any_integer_dtype(dtype):
    """int8 labels were refused (uint8 taken) for no reason: both read the labels as int64."""
    model, x = _model(), torch.rand(4, 1, 2, 2)
    y = model(x).argmax(1)
    assert clean_accuracy(model, x, y.to(dtype), batch_size=3) == 1.0
    assert pgd(model, x, y.to(dtype), 0.1, 2).shape == x.shape


def test_clean_accuracy_scores_a_normalised_batch_that_the_attacks_refuse():
    """clean_accuracy clamps nothing, so a classifier of normalised inputs has a clean accuracy; it
    took check_batch's [0, 1] rule, whose reason is the attacks' clamp, and raised on it."""
    model, x = _model(), torch.randn(8, 1, 2, 2)
    y = model(x).argmax(1)
    assert clean_accuracy(model, x, y) == 1.0
    with pytest.raises(ValueError, match=r"^x must lie in \[0, 1\] \(the attacks clamp to that range"):
        pgd(model, x, y, 0.1, 2)


# --- numpy scalars (a sweep over np.arange / np.linspace) are the numbers they hold -------------

@pytest.mark.parametrize("check, value, plain", [
    (check_int, np.int64(20), 20), (check_int, np.uint8(3), 3),
    (check_steps, np.int32(7), 7), (check_tries, np.int16(5), 5),
    (check_finite, np.float32(0.5), 0.5), (check_finite, np.int64(-2), -2.0),
    (check_non_negative, np.float16(0.25), 0.25), (check_step_size, np.float32(0.125), 0.125),
])
def test_the_checks_take_numpy_scalars_and_return_python_numbers(check, value, plain):
    checked = check(value, "n")
    assert checked == plain and type(checked) is type(plain)


def test_check_epsilon_takes_a_numpy_scalar_and_returns_a_python_float():
    checked = check_epsilon(np.float32(0.125))
    assert checked == 0.125 and type(checked) is float


@pytest.mark.parametrize("check, value", [
    (check_int, True), (check_int, np.bool_(True)), (check_int, 5.0), (check_int, np.float64(5)),
    (check_finite, True), (check_finite, np.bool_(False)), (check_finite, "1"),
    (check_finite, 10 ** 400), (check_finite, np.float32("inf")),
    (check_non_negative, -(10 ** 400)), (check_non_negative, np.float32(-1)),
], ids=lambda v: v.__name__ if callable(v) else repr(v)[:20])
def test_the_checks_still_refuse_bools_and_non_finite_numbers_in_their_words(check, value):
    with pytest.raises(ValueError, match="^n must be a"):
        check(value, "n")


def test_attacks_built_with_numpy_scalars_run_and_report_python_numbers():
    model, x = _model(), torch.rand(4, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0])
    attacks = [pgd_attack(np.float32(0.1), np.int64(2)), mim_attack(np.float64(0.1), np.int64(2), np.float32(1)),
               APGDAttack("apgd-ce", np.float32(0.1), steps=np.int64(2), restarts=np.int64(1),
                          rho=np.float32(0.75), momentum=np.float32(0.75)),
               FABAttack(np.float32(0.1), targets=np.int64(2), steps=np.int64(2), eta=np.float32(1.05)),
               SquareAttack(np.float32(0.1), queries=np.int64(2), p_init=np.float32(0.8)),
               FeatureAttack(np.float32(0.1), targets=np.int64(1), steps=np.int64(1)),
               DistributionAttack(np.float32(0.1), steps=np.int64(1), samples=np.int64(2), lr=np.float32(0.3))]
    for attack in attacks:
        settings = json.loads(json.dumps(attack.settings()))     # numpy numbers are no JSON
        assert settings["epsilon"] == pytest.approx(0.1)
    x_adv = pgd(model, x, y, np.float32(0.1), np.int64(2), seed=np.int64(3))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_evaluate_with_numpy_scalars_writes_a_report_of_python_numbers(tmp_path):
    model, x = _model(), torch.rand(4, 1, 2, 2)
    report = evaluate(model, x, torch.tensor([0, 1, 2, 0]), epsilon=np.float32(0.125), attacks="fgsm,pgd:2,dist",
                      seed=np.int64(3), batch_size=np.int64(2), dist_steps=np.int64(1), dist_samples=np.int64(2),
                      dist_lambda=np.float32(0), epsilon_curve=np.array([0.5]))
    report.save(tmp_path / "report.json", plot=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["epsilon"] == 0.125 and saved["seed"] == 3 and saved["batch_size"] == 2
    assert saved["attacks"]["dist"]["steps"] == 1 and saved["attacks"]["dist"]["samples"] == 2


# --- the command line takes flags by their full names only --------------------------------------

@pytest.mark.parametrize("argv, command, unknown", [
    (["train", "--method", "standard", "--dataset", "synthetic", "--epoch", "1", "--max-b", "1"], "train",
     "--epoch 1 --max-b 1"),
    (["eval", "--checkpoint", "run", "--attack", "fgsm", "--out", "r.json"], "eval", "--attack fgsm"),
    (["eval", "--checkpoint", "run", "--out=r.json", "--epsilon=0.1", "--seed=1", "--dist-step=3"], "eval",
     "--dist-step=3"),
])
def test_an_abbreviated_flag_is_refused_as_unknown_by_its_command(tmp_path, capsys, argv, command, unknown):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(tmp_path / "run")] if command == "train" else argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and not (tmp_path / "run").exists()
    assert err == (f"adt-fast {command}: error: unrecognized arguments: {unknown} "
                   f"(see adt-fast {command} --help)\n")


def test_adt_fast_s_own_flags_are_not_abbreviated_either(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:      # --vers was --version: it printed the version
        main(["--vers", "train", "--method", "standard", "--dataset", "synthetic", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "adt-fast: error: unrecognized arguments: --vers (see adt-fast --help)\n"


# --- worst_case and parse_attacks name what they were given ------------------------------------

@pytest.mark.parametrize("mask, shape", [(torch.ones(4, dtype=torch.bool), "(4,)"),
                                         (torch.zeros(1, dtype=torch.bool), "(1,)"),   # broadcast silently
                                         (torch.ones(3, 1, dtype=torch.bool), "(3, 1)")])
def test_worst_case_names_a_mask_of_another_shape(mask, shape):
    masks = {"fgsm": torch.ones(3, dtype=torch.bool), "pgd20": mask}
    with pytest.raises(ValueError, match=re.escape(f"worst_case: the mask of 'pgd20' has shape {shape}, not the "
                                                   f"natural mask's (3,) (one entry per example)")):
        worst_case(torch.ones(3, dtype=torch.bool), masks)


@pytest.mark.parametrize("spec, given", [(5, "5 (int)"), (b"fgsm", "b'fgsm' (bytes)"), (None, "None (NoneType)")])
def test_parse_attacks_says_what_it_takes_and_what_it_got(spec, given):
    expected = re.escape(f"attacks must be a comma-separated string or a list of attack names, got {given}")
    with pytest.raises(TypeError, match=f"^{expected}$"):
        parse_attacks(spec)


@pytest.mark.parametrize("spec", [5, b"fgsm"])
def test_evaluate_says_what_attacks_it_takes(spec):
    with pytest.raises(TypeError, match="^attacks must be a comma-separated string or a list of attack names, got "):
        evaluate(_model(), torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), attacks=spec)
