"""`adt-fast eval` end to end on tiny checkpoints: the table, the three files, the errors."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from adt_fast.progress import progress_enabled
from adt_fast.cli import main
from adt_fast.models import build_model
from adt_fast.train.checkpoint import save_atomic


def _checkpoint(path, num_classes=10, in_channels=3, image_size=8, seed=0):
    torch.manual_seed(seed)
    model = build_model("small-cnn", num_classes, in_channels, image_size)
    return save_atomic({"model_config": model.config, "model": model.state_dict()}, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    run_dir = root / "run"
    _checkpoint(run_dir / "model.pt")
    return {"run": run_dir, "source": _checkpoint(root / "source.pt", seed=1),
            "five": _checkpoint(root / "five.pt", num_classes=5),
            "digits": _checkpoint(root / "digits.pt", in_channels=1), "root": root}


def test_eval_on_a_run_directory_writes_json_csv_png(checkpoints, capsys):
    out = checkpoints["root"] / "reports" / "run.json"
    code = main(["eval", "--checkpoint", str(checkpoints["run"]), "--dataset", "synthetic",
                 "--n-examples", "6", "--batch-size", "4", "--feature-targets", "1",
                 "--dist-steps", "2", "--epsilon-curve", "0,1", "--seed", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    header = next(line for line in printed.splitlines() if line.startswith("Model"))
    assert header.split() == ["Model", "Anat", "FGSM", "PGD-20", "PGD-100", "MIM", "C&W",
                              "FeaAttack", "Dist", "Arob-paper", "Arob"]
    assert "sanity checks" in printed
    report = json.loads(out.read_text())
    assert report["n_examples"] == 6
    assert report["epsilon"] == pytest.approx(8 / 255)
    assert set(report["robust_accuracy"]) == {"fgsm", "pgd20", "pgd100", "mim", "cw", "feature", "dist"}
    assert 0 <= report["worst_case_accuracy"] <= min(report["robust_accuracy"].values())
    assert isinstance(report["warnings"], list)
    assert report["attacks"]["cw"]["kappa"] == 50 and report["attacks"]["cw"]["steps"] == 30
    assert report["attacks"]["feature"]["targets"] == 1
    assert len(report["curves"]["pgd_steps"]["points"]) == 101
    assert len(report["curves"]["dist"]["points"]) == 3
    assert report["meta"]["checkpoint"].endswith("model.pt")
    scored = Path(report["meta"]["checkpoint"]).read_bytes()
    assert report["meta"]["checkpoint_sha256"] == hashlib.sha256(scored).hexdigest()
    assert out.with_suffix(".csv").read_text().startswith("section,name,steps,epsilon,accuracy")
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_eval_says_which_epoch_of_a_run_it_scored(checkpoints, capsys):
    """A checkpoint.pt written mid-run is a legitimate target; the report must not pass it off as
    the finished model."""
    model = build_model("small-cnn", 10, 3, 8)
    path = save_atomic({"model_config": model.config, "model": model.state_dict(), "method": "adt-exp",
                        "epoch": 3, "config": {"epochs": 10}}, checkpoints["root"] / "mid" / "checkpoint.pt")
    out = checkpoints["root"] / "mid.json"
    assert main(["eval", "--checkpoint", str(path.parent), "--dataset", "synthetic", "--n-examples", "2",
                 "--attacks", "fgsm", "--epsilon-curve", "", "--out", str(out)]) == 0
    assert f"model: adt-exp after 3 of 10 epochs, from {path} (training had not finished)" in capsys.readouterr().out
    assert json.loads(out.read_text())["meta"]["trained"] == {"method": "adt-exp", "epoch": 3, "epochs": 10}


def test_eval_with_a_source_checkpoint_adds_the_transfer_column_and_is_deterministic(checkpoints, capsys):
    outs = [checkpoints["root"] / f"transfer{i}.json" for i in range(2)]
    for out in outs:
        code = main(["eval", "--checkpoint", str(checkpoints["run"] / "model.pt"), "--dataset",
                     "synthetic", "--n-examples", "5", "--attacks", "fgsm,pgd:3", "--epsilon", "16/255",
                     "--source-checkpoint", str(checkpoints["source"]), "--epsilon-curve", "",
                     "--out", str(out)])
        assert code == 0
    assert "Transfer" in capsys.readouterr().out
    report = json.loads(outs[0].read_text())
    assert set(report["robust_accuracy"]) == {"fgsm", "pgd3", "transfer"}
    assert report["epsilon"] == pytest.approx(16 / 255)
    assert report["attacks"]["transfer"]["steps"] == 20
    assert "pgd_epsilon" not in report["curves"]
    assert outs[0].read_text() == outs[1].read_text()


def test_eval_on_digits(checkpoints):
    out = checkpoints["root"] / "digits.json"
    assert main(["eval", "--checkpoint", str(checkpoints["digits"]), "--dataset", "digits",
                 "--n-examples", "4", "--attacks", "fgsm,pgd:2", "--epsilon-curve", "",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["epsilon"] == pytest.approx(0.1)


def _fails(argv, capsys):
    code = main(argv)
    assert code == 2
    return capsys.readouterr().err


def test_missing_checkpoint(checkpoints, capsys):
    err = _fails(["eval", "--checkpoint", str(checkpoints["root"] / "nope.pt"), "--dataset",
                  "synthetic", "--out", str(checkpoints["root"] / "x.json")], capsys)
    assert "--checkpoint" in err and "does not exist" in err


def test_checkpoint_for_another_number_of_classes(checkpoints, capsys):
    err = _fails(["eval", "--checkpoint", str(checkpoints["five"]), "--dataset", "synthetic",
                  "--out", str(checkpoints["root"] / "x.json")], capsys)
    assert "--checkpoint" in err and "5 classes" in err and "10" in err
    err = _fails(["eval", "--checkpoint", str(checkpoints["run"]), "--dataset", "synthetic",
                  "--source-checkpoint", str(checkpoints["five"]),
                  "--out", str(checkpoints["root"] / "x.json")], capsys)
    assert "--source-checkpoint" in err and "5 classes" in err


def test_transfer_without_a_source(checkpoints, capsys):
    err = _fails(["eval", "--checkpoint", str(checkpoints["run"]), "--dataset", "synthetic",
                  "--attacks", "transfer", "--out", str(checkpoints["root"] / "x.json")], capsys)
    assert "--source-checkpoint" in err


@pytest.mark.parametrize("flag, value", [("--epsilon", "0"), ("--epsilon", "-0.1"),
                                         ("--epsilon", "nan"), ("--attacks", "fgsm,foo"),
                                         ("--attacks", "pgd:0"), ("--n-examples", "0"),
                                         ("--precision", "fp16")])
def test_bad_arguments_name_the_flag(flag, value, checkpoints, capsys):
    argv = ["eval", "--checkpoint", str(checkpoints["run"]), "--dataset", "synthetic",
            "--out", str(checkpoints["root"] / "x.json"), flag, value]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_an_unknown_dataset_names_the_flag(checkpoints, capsys):
    assert main(["eval", "--checkpoint", str(checkpoints["run"]), "--dataset", "imagenet",
                 "--out", str(checkpoints["root"] / "x.json")]) == 2
    assert "--dataset: --dataset 'imagenet' is neither a dataset name" in capsys.readouterr().err


def test_progress_bar_switch(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("ADT_FAST_NO_PROGRESS", raising=False)
    assert progress_enabled(Terminal())
    assert not progress_enabled(io.StringIO())
    monkeypatch.setenv("ADT_FAST_NO_PROGRESS", "1")
    assert not progress_enabled(Terminal())


def test_eval_hands_evaluate_the_seed_precision_and_curve_it_was_given(checkpoints, monkeypatch, tmp_path):
    """The flags reach evaluate() as given, and the epsilon curve defaults to evaluate()'s own."""
    from adt_fast.attacks import evaluation

    class Called(Exception):
        pass

    seen = {}

    def record(model, x, y, **kwargs):
        seen.update(kwargs)
        raise Called

    monkeypatch.setattr(evaluation, "evaluate", record)
    with pytest.raises(Called):
        main(["eval", "--checkpoint", str(checkpoints["run"]), "--dataset", "synthetic", "--n-examples", "4",
              "--seed", "7", "--precision", "bf16", "--out", str(tmp_path / "r.json")])
    assert seen["seed"] == 7 and seen["precision"] == "bf16"
    assert seen["epsilon_curve"] == list(evaluation.DEFAULT_EPSILON_CURVE)


def test_eval_epsilon_may_be_the_whole_input_range():
    """--epsilon takes (0, 1] for inputs in [0, 1]: 1 is allowed, more is not."""
    from adt_fast.attacks.suite import MAX_EPSILON
    from adt_fast.cli import build_parser

    args = ["eval", "--checkpoint", "run", "--out", "r.json", "--epsilon"]
    assert build_parser().parse_args([*args, str(MAX_EPSILON)]).epsilon == MAX_EPSILON
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, str(MAX_EPSILON * 1.01)])
