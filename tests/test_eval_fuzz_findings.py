"""Bad input and broken models found by fuzzing `adt-fast eval` and the Python evaluation API:
each gets a clear error naming what was wrong, or an honest result, never a stray traceback."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adt_fast.attacks import cw, evaluate, mim, pgd, transfer

from split_net import SplitNet as _Split, split_data as _data


def test_a_model_whose_weights_went_nan_is_scored_broken_by_feaattack_not_a_crash():
    # A run that diverged leaves NaN weights: the split check's tolerance came from the NaN
    # logits (atol = NaN), and torch.allclose raised.
    model = _Split().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    x, y = _data()
    report = evaluate(model, x, y, epsilon=0.1, attacks="fgsm,feature", epsilon_curve=())
    assert "feature" not in report.skipped
    assert report.robust_accuracy["feature"] == 0.0  # NaN logits are never a correct answer
    assert report.natural_accuracy == 0.0


@pytest.mark.parametrize("wrap", [lambda z: (z, z), lambda z: {"logits": z}], ids=["tuple", "dict"])
def test_a_model_returning_no_tensor_is_named(wrap):
    class Wrapped(_Split):
        def forward(self, x):
            return wrap(super().forward(x))

    x, y = _data()
    for call in (lambda: evaluate(Wrapped(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=()),
                 lambda: pgd(Wrapped(), x, y, 0.1, steps=2)):
        with pytest.raises(TypeError, match=r"the model must return a tensor of logits .*, got (tuple|dict)"):
            call()
    with pytest.raises(TypeError, match=r"the source model must return a tensor of logits .*, got (tuple|dict)"):
        transfer(Wrapped(), _Split(), x, y, 0.1, steps=2)


@pytest.mark.parametrize("model", [lambda z: z.flatten(1)[:, :10], None], ids=["function", "none"])
def test_a_model_that_is_no_module_is_named(model):
    x, y = _data()
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module .*, got (function|NoneType)"):
        evaluate(model, x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=())
    with pytest.raises(TypeError, match=r"^source_model must be a torch.nn.Module"):
        evaluate(_Split(), x, y, epsilon=0.1, attacks="fgsm", source_model=model or (lambda z: z),
                 epsilon_curve=())
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module"):
        pgd(model, x, y, 0.1, steps=2)
    with pytest.raises(TypeError, match=r"^source_model must be a torch.nn.Module"):
        transfer(model or (lambda z: z), _Split(), x, y, 0.1, steps=2)


@pytest.mark.parametrize("device", ["nonsense", "cuda:x", 1.5])
def test_a_device_that_is_no_torch_device_is_named(device):
    x, y = _data()
    with pytest.raises(ValueError, match=r"^device must be a torch device"):
        evaluate(_Split(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=(), device=device)


@pytest.mark.parametrize("attack", [pgd, mim, cw])
@pytest.mark.parametrize("epsilon", ["0.1", None])
def test_an_epsilon_that_is_no_number_is_named_by_the_stand_alone_attacks(attack, epsilon):
    # The default step (epsilon / 4) was computed before epsilon was checked: "unsupported
    # operand type(s) for /: 'str' and 'int'".
    x, y = _data()
    with pytest.raises(TypeError, match=r"^epsilon must be a number"):
        attack(_Split(), x, y, epsilon, steps=2)


def test_report_save_under_a_file_says_the_folder_is_a_file(tmp_path):
    # mkdir(parents=True) said "[Errno 17] File exists: '.../notes'", as if the report existed.
    x, y = _data()
    report = evaluate(_Split(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=())
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(OSError, match=r"^cannot write the report in .*notes \(.*notes is a file, not a folder\)"):
        report.save(tmp_path / "notes" / "eval.json", plot=False)
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_model_with_a_single_logit_is_refused_not_scored_fully_robust():
    # argmax over one logit is always 0: every example of class 0 counted as robust, at any epsilon.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 1))
    x, _ = _data()
    y = torch.zeros(len(x), dtype=torch.long)
    with pytest.raises(ValueError, match=r"the model returns 1 logit\(s\) per input: a classifier needs at least 2"):
        evaluate(model, x, y, epsilon=1.0, attacks="fgsm,pgd:2", epsilon_curve=())
    with pytest.raises(ValueError, match=r"at least 2 logits"):
        pgd(model, x, y, 1.0, steps=2)


def test_eval_refuses_a_single_logit_model_under_model(tmp_path, capsys):
    import numpy as np

    from adt_fast.cli import main

    data = tmp_path / "zeros.npz"
    np.savez(data, x_test=np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32),
             y_test=np.zeros(4, dtype=np.int64))
    code = main(["eval", "--model", "external_models:one_logit", "--dataset", str(data), "--attacks", "fgsm",
                 "--epsilon-curve", "", "--device", "cpu", "--out", str(tmp_path / "eval.json")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--model: the model returns (2, 1) for two inputs: a classifier needs at least 2 logits" in err
    assert not (tmp_path / "eval.json").exists()


def test_the_json_report_of_a_nan_model_is_strict_json(tmp_path):
    # The dist curve's loss of a model gone NaN was written as a bare NaN token, which JSON does
    # not have: jq, JavaScript's JSON.parse and other strict readers refused the whole report.
    import json

    model = _Split().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    x, y = _data(4)
    report = evaluate(model, x, y, epsilon=0.1, attacks="dist", dist_steps=1, epsilon_curve=())

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    saved = json.loads(report.json_text(), parse_constant=refuse)
    assert [point["loss"] for point in saved["curves"]["dist"]["points"]] == [None, None]
    assert saved["robust_accuracy"]["dist"] == 0.0


def test_an_epsilon_curve_budget_just_above_one_is_printed_as_such():
    # ':g' printed "multiple 2 of epsilon 0.5 is a budget of 1, above 1".
    from adt_fast.attacks.evaluation import check_epsilon_curve

    with pytest.raises(ValueError, match=r"multiple 2\.0000001 of epsilon 0\.5 is a budget of 1\.00000005, above 1 "):
        check_epsilon_curve([2.0000001], 0.5)


@pytest.mark.parametrize("ids, error, message", [
    ([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], TypeError, "example_ids must be integers, got torch.float32"),
    ([0, 1, 2, 3, 4, 4], ValueError, "distinct integers >= 0"),
    ([-1, 1, 2, 3, 4, 5], ValueError, "distinct integers >= 0"),
    ([0, 1, 2], ValueError, "example_ids has 3 entries for 6 examples"),
])
def test_example_ids_that_would_share_random_draws_are_refused_by_evaluate_and_every_attack(ids, error, message):
    # float ids were truncated (0.5 and 0.7 both became 0), and the stand-alone attacks took
    # repeated or negative ones: two examples then share their random start
    model, (x, y) = _Split().eval(), _data()
    with pytest.raises(error, match=message):
        evaluate(model, x, y, epsilon=0.1, attacks="fgsm", example_ids=ids)
    for attack in (pgd, mim):
        with pytest.raises(error, match=message):
            attack(model, x, y, 0.1, steps=1, example_ids=ids)


# ----------------------------------------------------------------------------- step counts
# `--attacks pgd:99999999999999999999` (a typo) was accepted and ran for days, PGD's per-step
# record of survivors growing by a byte per example and step; every attack's step or query count
# now has the one bound MAX_ATTACK_STEPS, and MAX_ATTACK_STEPS itself is still accepted.


def _bounded_attacks():
    from adt_fast.attacks import APGDAttack, DistributionAttack, FABAttack, FeatureAttack, SquareAttack, TransferAttack
    from adt_fast.attacks.suite import cw_attack, mim_attack, pgd_attack

    return [  # (id, build(count), what the error calls the count, its least value)
        ("pgd", lambda n: pgd_attack(0.1, n), "steps", 1),
        ("mim", lambda n: mim_attack(0.1, n), "steps", 1),
        ("cw", lambda n: cw_attack(0.1, n), "steps", 1),
        ("transfer", lambda n: TransferAttack(0.1, steps=n), "steps", 1),
        ("feature", lambda n: FeatureAttack(0.1, steps=n), "FeaAttack's steps", 0),
        ("dist", lambda n: DistributionAttack(0.1, steps=n), "the distribution attack's steps", 1),
        ("apgd", lambda n: APGDAttack("apgd-ce", 0.1, steps=n), "APGD's steps", 1),
        ("fab", lambda n: FABAttack(0.1, steps=n), "FAB's steps", 1),
        ("square", lambda n: SquareAttack(0.1, queries=n), "Square's queries", 1),
    ]


@pytest.mark.parametrize("build, what, least", [case[1:] for case in _bounded_attacks()],
                         ids=[case[0] for case in _bounded_attacks()])
def test_every_attack_takes_at_most_max_attack_steps(build, what, least):
    import re

    from adt_fast.checks import MAX_ATTACK_STEPS

    build(MAX_ATTACK_STEPS)  # only built: running it would take that many steps
    for count in (MAX_ATTACK_STEPS + 1, 10**12):
        with pytest.raises(ValueError, match=re.escape(f"{what} must be an integer from {least} to {MAX_ATTACK_STEPS}, "
                                                       f"got {count}")):
            build(count)


def _tried_attacks():
    from adt_fast.attacks import APGDAttack, DistributionAttack, FABAttack, FeatureAttack

    return [  # (id, build(count), what the error calls the count)
        ("apgd-restarts", lambda n: APGDAttack("apgd-ce", 0.1, restarts=n), "APGD's restarts"),
        ("apgd-targets", lambda n: APGDAttack("apgd-t", 0.1, loss="dlr-targeted", targets=n), "APGD's targets"),
        ("fab-targets", lambda n: FABAttack(0.1, targets=n), "FAB's targets"),
        ("feature-targets", lambda n: FeatureAttack(0.1, targets=n), "the number of FeaAttack targets"),
        ("dist-samples", lambda n: DistributionAttack(0.1, samples=n), "the distribution attack's samples"),
    ]


@pytest.mark.parametrize("build, what", [case[1:] for case in _tried_attacks()],
                         ids=[case[0] for case in _tried_attacks()])
def test_every_attack_makes_at_most_max_attack_tries_per_example(build, what):
    """Restarts, targets and samples each multiply an attack's cost, and were unbounded: a typo such
    as 100000000 ran for days (or, as samples, exhausted the memory)."""
    from adt_fast.checks import MAX_ATTACK_TRIES

    assert MAX_ATTACK_TRIES == 1000
    build(MAX_ATTACK_TRIES)  # only built
    for count in (MAX_ATTACK_TRIES + 1, 10**8):
        with pytest.raises(ValueError, match=f"^{what} must be an integer from 1 to 1000, got {count}$"):
            build(count)


def test_evaluate_refuses_feature_targets_and_dist_samples_past_the_bound_before_any_attack():
    model, (x, y) = _Split().eval(), _data()
    for kwargs, name in (({"dist_samples": 10**8}, "dist_samples"), ({"feature_targets": 10**8}, "feature_targets")):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer from 1 to 1000, got 100000000$"):
            evaluate(model, x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=(), **kwargs)


@pytest.mark.parametrize("spec, got", [("pgd:100001", "100001"), ("pgd100001", "100001"), ("PGD-100001", "100001"),
                                       ("pgd:99999999999999999999", "99999999999999999999"), ("pgd0", "0")])
def test_parse_attacks_refuses_a_pgd_step_count_past_the_bound_naming_the_attack(spec, got):
    from adt_fast.attacks.suite import parse_attacks

    with pytest.raises(ValueError) as info:
        parse_attacks(f"fgsm,{spec}")
    assert str(info.value) == f"attack {spec!r}: PGD's steps must be an integer from 1 to 100000, got {got!r}"
    assert parse_attacks("pgd:100000") == ["pgd100000"]


def test_a_pgd_step_count_of_5000_digits_is_refused_in_a_short_message():
    """The name was echoed whole: 5,000 digits of error message."""
    from adt_fast.attacks.suite import parse_attacks

    for spec in ("pgd:" + "9" * 5000, "pgd:" + "9" * 5000 + "x"):
        with pytest.raises(ValueError, match=r"^(attack|unknown attack) 'pgd:9+\.\.\. \(50\d\d characters\)") as info:
            parse_attacks(spec)
        assert len(str(info.value)) < 400


def test_the_stand_alone_attacks_and_evaluate_refuse_a_step_count_past_the_bound_before_any_step():
    from adt_fast.attacks import feature_attack
    from adt_fast.attacks.distribution import fit_distribution
    from adt_fast.attacks.engine import apgd, iterative_attack

    model, (x, y) = _Split().eval(), _data()
    for call in (lambda: pgd(model, x, y, 0.1, steps=10**12), lambda: mim(model, x, y, 0.1, steps=10**12),
                 lambda: cw(model, x, y, 0.1, steps=10**12), lambda: transfer(model, model, x, y, 0.1, steps=10**12),
                 lambda: feature_attack(model, x, y, 0.1, steps=10**12)):
        with pytest.raises(ValueError, match=r"steps must be an integer from [01] to 100000, got 1000000000000"):
            call()
    never = lambda z: pytest.fail("a step ran")  # noqa: E731
    for call in (lambda: iterative_attack(never, x, epsilon=0.1, steps=10**12, step_size=0.1),
                 lambda: apgd(never, x, epsilon=0.1, steps=10**12),
                 lambda: fit_distribution(never, x, epsilon=0.1, steps=10**12, num_samples=1, lbd=0.0)):
        with pytest.raises(ValueError, match=r"^steps must be an integer from 0 to 100000, got 1000000000000"):
            call()
    for kwargs, name in (({"dist_steps": 100001}, "dist_steps"), ({"cw_steps": 100001}, "cw_steps")):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer from [01] to 100000, got 100001"):
            evaluate(model, x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=(), **kwargs)
    with pytest.raises(ValueError, match=r"^attack 'pgd:100001': PGD's steps must be an integer from 1 to 100000"):
        evaluate(model, x, y, epsilon=0.1, attacks="pgd:100001", epsilon_curve=())


@pytest.mark.parametrize("flag, value, message", [
    ("--attacks", "fgsm,pgd:100001",
     "argument --attacks: attack 'pgd:100001': PGD's steps must be an integer from 1 to 100000, got '100001'"),
    ("--attacks", "pgd:99999999999999999999", "argument --attacks: attack 'pgd:99999999999999999999': PGD's steps "
                                              "must be an integer from 1 to 100000, got '99999999999999999999'"),
    ("--dist-steps", "100001", "argument --dist-steps: must be an integer from 1 to 100000, got '100001'"),
    # int() refused the 5,000 digits, and the message quoted them all
    ("--dist-steps", "9" * 5000, "argument --dist-steps: must be an integer from 1 to 100000, got '"
                                 + "9" * 39 + "... (5002 characters)"),
    ("--feature-targets", "1001", "argument --feature-targets: must be an integer from 1 to 1000, got '1001'"),
    # as pgd:0: a Dist column of 0 steps scored random noise under the attack's name
    ("--dist-steps", "0", "argument --dist-steps: must be an integer from 1 to 100000, got '0'"),
])
def test_eval_refuses_a_count_past_its_bound_when_it_parses_the_flag(flag, value, message, capsys):
    from adt_fast.cli import build_parser

    args = ["eval", "--checkpoint", "run", "--out", "r.json"]
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*args, flag, value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"adt-fast eval: error: {message} (see adt-fast eval --help)"
    parsed = build_parser().parse_args([*args, "--attacks", "pgd:100000", "--dist-steps", "100000",
                                        "--feature-targets", "1000"])
    assert (parsed.attacks, parsed.dist_steps, parsed.feature_targets) == (["pgd100000"], 100000, 1000)


def _npz(tmp_path):
    import numpy as np

    data = tmp_path / "data.npz"
    np.savez(data, x_test=np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32),
             y_test=np.arange(4, dtype=np.int64))
    return data


def test_an_out_name_too_long_for_the_reports_temporary_files_is_refused_before_the_attacks(tmp_path, monkeypatch, capsys):
    # A 255-byte name fit the file system, but write_atomic's '.NAME.xxxxxxxx.tmp' beside it did
    # not: every attack ran, then the save failed with 'File name too long'.
    import adt_fast.attacks.evaluation as evaluation
    from adt_fast.cli import main

    def no_attacks(*args, **kwargs):
        raise AssertionError("the attacks ran")

    monkeypatch.setattr(evaluation, "evaluate", no_attacks)
    for name in ("x" * 250 + ".json", "y" * 251 + ".json"):
        code = main(["eval", "--model", "external_models:build", "--dataset", str(_npz(tmp_path)),
                     "--attacks", "fgsm", "--device", "cpu", "--out", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"--out: {tmp_path / name}: a name of {len(name)} bytes; the report's file names here may " \
               f"have at most 241" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]


def test_report_save_refuses_an_out_name_too_long_before_writing(tmp_path):
    from adt_fast.attacks.report import report_paths

    x, y = _data()
    report = evaluate(_Split(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=())
    with pytest.raises(ValueError, match=r"a name of 255 bytes; the report's file names here may have at most 241"):
        report.save(tmp_path / ("x" * 250 + ".json"), plot=False)
    assert list(tmp_path.iterdir()) == []
    # the longest name that fits is written, and unicode counts in bytes
    assert report_paths(tmp_path / ("x" * 236 + ".json"))
    with pytest.raises(ValueError, match=r"a name of 243 bytes"):
        report_paths(tmp_path / ("é" * 119 + ".json"))


@pytest.mark.parametrize("name", [".json", ".JSON"])
def test_an_out_of_only_the_suffix_says_it_needs_a_name(name, tmp_path):
    # Path('.json').suffix is '': "'.json' must name the JSON report, ending in .json".
    from adt_fast.attacks.report import report_paths

    with pytest.raises(ValueError, match=rf"{name} needs a name before its \.json"):
        report_paths(tmp_path / name)


def test_a_negative_zero_multiple_is_a_budget_of_zero_not_minus_zero():
    # '--epsilon-curve -0' wrote "epsilon": -0.0 in the JSON and -0 in the CSV.
    from adt_fast.attacks.evaluation import check_epsilon_curve

    x, y = _data()
    report = evaluate(_Split(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=[-0.0, 1])
    points = report.curves["pgd_epsilon"]["points"]
    assert [(p["multiple"], p["epsilon"]) for p in points] == [(0.0, 0.0), (1.0, 0.1)]
    assert math.copysign(1, points[0]["multiple"]) == math.copysign(1, points[0]["epsilon"]) == 1
    assert "pgd_epsilon,pgd20,0,0," in report.csv_text()
    assert check_epsilon_curve([-0.0, 0.0], 0.1) == [0.0]


def _parse_error(argv: list, monkeypatch, capsys) -> str:
    """The one line `adt-fast eval ARGV` fails with (exit 2) before the data is read: your own
    test split is read and hashed in full first."""
    import adt_fast.attacks.command as command
    from adt_fast.cli import main

    monkeypatch.setattr(command, "_dataset", lambda *args: pytest.fail("the data was read"))
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", "external_models:build", "--dataset", "data.npz", "--attacks", "fgsm",
              "--device", "cpu", "--out", "r.json", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_a_multiple_that_is_not_finite_is_called_so_before_the_data_is_read(value, monkeypatch, capsys):
    # "multiples of epsilon must be >= 0, got nan"; the flag's rule is evaluate's, in its words,
    # and no budget is needed to check it (2f2126d checked it after the data was read)
    from adt_fast.attacks.evaluation import check_epsilon_curve

    assert _parse_error(["--epsilon-curve", f"0,{value}"], monkeypatch, capsys) == (
        f"adt-fast eval: error: argument --epsilon-curve: epsilon_curve holds finite multiples of epsilon >= 0, "
        f"got {value} (see adt-fast eval --help)\n")
    with pytest.raises(ValueError, match=rf"epsilon_curve holds finite multiples of epsilon >= 0, got {value}"):
        check_epsilon_curve([float(value)], 0.1)


def test_an_epsilon_curve_of_more_multiples_than_an_attack_makes_tries_is_refused(monkeypatch, capsys):
    # --epsilon-curve with 10,000 multiples ran 10,000 PGD-20s over every example.
    from adt_fast.attacks.evaluation import check_epsilon_curve
    from adt_fast.checks import MAX_ATTACK_TRIES

    many = [m / 10_000 for m in range(10_000)]
    assert _parse_error(["--epsilon-curve", ",".join(map(str, many))], monkeypatch, capsys) == (
        "adt-fast eval: error: argument --epsilon-curve: the number of epsilon_curve's distinct multiples (each a "
        "PGD-20 run over every example) must be an integer from 0 to 1000, got 10000 (see adt-fast eval --help)\n")
    x, y = _data()
    with pytest.raises(ValueError, match=r"^the number of epsilon_curve's distinct .* from 0 to 1000, got 1001$"):
        evaluate(_Split(), x, y, epsilon=0.1, attacks="fgsm", epsilon_curve=many[:MAX_ATTACK_TRIES + 1])
    assert len(check_epsilon_curve(many[:MAX_ATTACK_TRIES] * 3, 0.1)) == MAX_ATTACK_TRIES  # repeats count once


def test_a_curve_beyond_the_epsilon_given_is_refused_before_the_data_is_read(monkeypatch, capsys):
    # 70b48b1 checked the multiples as the flag is parsed, but their budgets against --epsilon
    # only after _dataset had read and hashed your own test split in full.
    import adt_fast.attacks.command as command
    from adt_fast.cli import main

    monkeypatch.setattr(command, "_dataset", lambda *args: pytest.fail("the data was read"))
    code = main(["eval", "--model", "external_models:build", "--dataset", "data.npz", "--attacks", "fgsm",
                 "--epsilon", "0.1", "--epsilon-curve", "0,20", "--device", "cpu", "--out", "r.json"])
    assert code == 2
    assert capsys.readouterr().err == ("adt-fast eval: error: --epsilon-curve: epsilon_curve's multiple 20 of epsilon "
                                       "0.1 is a budget of 2, above 1 (inputs lie in [0, 1])\n")


def test_a_fraction_in_the_epsilon_curve_is_told_the_curve_takes_multiples_of_epsilon(capsys):
    # --epsilon takes 8/255; --epsilon-curve 2/255,8/255 said "expected comma-separated numbers",
    # leaving the user to guess that the curve wants multiples of epsilon, not budgets.
    from adt_fast.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--checkpoint", "run", "--out", "r.json", "--epsilon-curve", "0,2/255,8/255"])
    assert ("argument --epsilon-curve: '2/255' is no number: the curve takes multiples of --epsilon such as "
            "0,0.5,1,2 (budgets m * epsilon), not budgets") in capsys.readouterr().err


def test_a_large_epsilon_is_not_refused_for_the_default_curve_it_never_asked_for(tmp_path, capsys):
    # --epsilon 0.6 (or 1, which --epsilon allows) failed with "--epsilon-curve: epsilon_curve's
    # multiple 2 of epsilon 0.6 is a budget of 1.2, above 1": a flag the user never gave.
    import json

    from adt_fast.attacks.evaluation import check_epsilon_curve
    from adt_fast.cli import main

    x, y = _data()
    report = evaluate(_Split(), x, y, epsilon=0.6, attacks="fgsm")
    assert [p["multiple"] for p in report.curves["pgd_epsilon"]["points"]] == [0.0, 0.25, 0.5, 1.0, 1.5]
    with pytest.raises(ValueError, match="multiple 2 of epsilon 0.6 is a budget of 1.2"):
        check_epsilon_curve([0, 2], 0.6)  # asked for, still refused
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", "external_models:build", "--dataset", str(_npz(tmp_path)), "--attacks", "fgsm",
                 "--epsilon", "1", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    points = json.loads(out.read_text())["curves"]["pgd_epsilon"]["points"]
    assert [p["multiple"] for p in points] == [0.0, 0.25, 0.5, 1.0]
    code = main(["eval", "--model", "external_models:build", "--dataset", str(_npz(tmp_path)), "--attacks", "fgsm",
                 "--epsilon", "1", "--epsilon-curve", "1,2", "--device", "cpu", "--out", str(out)])
    assert code == 2
    assert "--epsilon-curve: epsilon_curve's multiple 2 of epsilon 1 is a budget of 2, above 1" in capsys.readouterr().err


def test_a_budget_whose_attack_steps_round_to_zero_is_refused_by_the_flag_that_gave_it(tmp_path, capsys):
    # --epsilon 5e-324 --attacks pgd:2 ended in a traceback (PGD's step epsilon/4 is 0.0), and
    # --epsilon-curve 1e-322 in "--checkpoint: step_size must be a finite number in (0, 1], got 0.0".
    # Budgets below the smallest normal double are refused: a fixed fraction of one is then above 0.
    from adt_fast.attacks.evaluation import check_epsilon_curve
    from adt_fast.cli import build_parser, main

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--checkpoint", "run", "--out", "r.json", "--epsilon", "5e-324"])
    assert "argument --epsilon: epsilon 4.94065645841e-324 is below 2.23e-308, where the attacks' steps (epsilon/4, " \
           "epsilon/8) may round to 0" in capsys.readouterr().err
    code = main(["eval", "--model", "external_models:build", "--dataset", str(_npz(tmp_path)), "--attacks", "fgsm",
                 "--epsilon-curve", "0,1e-307", "--device", "cpu", "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert ("--epsilon-curve: epsilon_curve's multiple 1e-307 of epsilon 0.0313725490196 is a budget of "
            "3.13725490196e-309, below 2.23e-308") in capsys.readouterr().err
    x, y = _data()
    with pytest.raises(ValueError, match=r"^epsilon 4\.94065645841e-324 is below 2\.23e-308"):
        evaluate(_Split(), x, y, epsilon=5e-324, attacks="pgd:2", epsilon_curve=())
    assert check_epsilon_curve([0, 1e-300], 0.1) == [0.0, 1e-300]  # small, but its steps are not 0


@pytest.mark.parametrize("which", ["json", "csv", "png"])
def test_an_out_that_is_a_fifo_is_refused_not_waited_on_forever(which, tmp_path):
    # Checking whether REPORT.json (or its CSV or PNG) was an earlier report opened it for reading:
    # on a named pipe that blocks until some writer comes, so eval hung before any attack.
    import os

    from conftest import returns_in_time

    from adt_fast.attacks.report import report_paths

    fifo = tmp_path / f"eval.{which}"
    os.mkfifo(fifo)
    error = returns_in_time(fifo, lambda: report_paths(tmp_path / "eval.json"))
    assert error is not None, "report_paths waited on the FIFO"
    assert isinstance(error, FileExistsError) and str(error) == (
        f"{fifo} exists and is not an earlier adt_fast report; choose another name (nothing else is ever overwritten)")


def test_a_large_json_that_is_no_report_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    # Telling an earlier report from another JSON parsed the whole file: --out naming a data set's
    # 1 GB annotations.json read and parsed all of it (GBs of memory) before refusing it.
    import adt_fast.attacks.report as report_module

    big = tmp_path / "annotations.json"
    with open(big, "wb") as handle:
        handle.write(b"[")
        handle.truncate(getattr(report_module, "MAX_REPORT_BYTES", 64 << 20) + 1)

    def parse(*args, **kwargs):
        raise AssertionError("parsed the whole file")

    monkeypatch.setattr(report_module.json, "loads", parse)
    with pytest.raises(FileExistsError, match="exists and is not an earlier adt_fast report"):
        report_module.report_paths(big)


def test_a_tiny_epsilon_is_not_refused_for_the_default_curve_it_never_asked_for():
    """--epsilon 3e-308 passed its own check, then the default multiple 0.25 (a budget of 7.5e-309)
    failed as '--epsilon-curve: ... below 2.23e-308': a flag the user never gave."""
    from adt_fast.attacks.evaluation import check_epsilon_curve, default_epsilon_curve

    curve = default_epsilon_curve(3e-308)
    assert 0.25 not in curve and 0.0 in curve and 1.0 in curve
    check_epsilon_curve(curve, 3e-308)  # every default multiple left is one the attacks take
