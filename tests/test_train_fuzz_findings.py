"""Defects found by fuzzing `adt-fast train`, each pinned by the command line (or call) that hit it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adt_fast.cli import main
from adt_fast.train import tuning


def _train(capsys, *argv) -> tuple[int, str]:
    code = main(["train", "--epochs", "1", "--max-batches", "1", "--device", "cpu", "--no-tensorboard", *argv])
    return code, capsys.readouterr().err


def test_npz_images_without_channels_are_refused_naming_the_file(tmp_path, capsys):
    """x_train of shape (N, 8, 8, 0) passed every check, then crashed hashing the arrays (TypeError)."""
    path = tmp_path / "no-channels.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8, 0), np.uint8), y_train=np.array([0, 1, 0, 1]),
             x_test=np.zeros((2, 8, 8, 0), np.uint8), y_test=np.array([0, 1]))
    code, err = _train(capsys, "--method", "standard", "--dataset", str(path), "--out", str(tmp_path / "run"))
    assert code == 2
    assert "Traceback" not in err
    assert f"{path.resolve()}: x_train: shape (4, 8, 8, 0) read as N x H x W x C (channels last): images of 8x8 " \
           f"with 0 channels" in err
    assert not (tmp_path / "run").exists()


def test_an_empty_dataset_or_data_dir_is_refused_not_taken_as_the_working_directory(tmp_path, capsys, monkeypatch):
    """`--dataset "$DATA"` with DATA unset read the working directory as an image folder, and
    `--data-dir ""` looked for (or downloaded) the dataset files there."""
    monkeypatch.chdir(tmp_path)
    code, err = _train(capsys, "--method", "standard", "--dataset", "", "--out", "run")
    assert code == 2 and "--dataset is empty" in err and str(tmp_path) not in err
    code, err = _train(capsys, "--method", "standard", "--dataset", "synthetic", "--data-dir", "", "--out", "run")
    assert code == 2 and "--data-dir is empty" in err
    assert not (tmp_path / "run").exists()


def test_an_out_name_too_long_for_the_file_system_is_a_one_line_error(tmp_path, capsys):
    """A 300-character folder name (runs named after their settings) was an OSError traceback."""
    out = tmp_path / ("x" * 300)
    code, err = _train(capsys, "--method", "standard", "--dataset", "synthetic", "--out", str(out))
    assert code == 2
    assert err.startswith(f"adt-fast train: error: --out {out}: cannot write the run there (File name too long")


def test_a_tuning_record_with_seconds_that_are_not_numbers_is_measured_again(tmp_path, capsys):
    """A hand-edited tuning.json whose memory format had text for seconds passed as valid, and the
    mode line then failed formatting it (ValueError traceback) on every --resume."""
    run = tmp_path / "run"
    assert _train(capsys, "--method", "standard", "--dataset", "synthetic", "--out", str(run))[0] == 0
    record = json.loads((run / tuning.TUNING_FILE).read_text())
    record[tuning.MEMORY_FORMAT] = {"channels_last": True, "chosen_by": "measurement",
                                    "seconds": {"contiguous": "fast", "channels_last": "faster"}}
    (run / tuning.TUNING_FILE).write_text(json.dumps(record))
    code, err = _train(capsys, "--resume", "--epochs", "2", "--out", str(run))
    assert code == 0, err
    seconds = json.loads((run / tuning.TUNING_FILE).read_text())[tuning.MEMORY_FORMAT]["seconds"]
    assert all(isinstance(value, float) for value in seconds.values())


def test_model_pt_copied_over_checkpoint_pt_is_refused_saying_what_it_lacks(tmp_path, capsys):
    """model.pt copied to checkpoint.pt (to train a finished run further) was refused as
    'it holds modules None, this run has []', which says nothing a user can act on."""
    run = tmp_path / "run"
    assert _train(capsys, "--method", "standard", "--dataset", "synthetic", "--out", str(run))[0] == 0
    (run / "checkpoint.pt").write_bytes((run / "model.pt").read_bytes())
    code, err = _train(capsys, "--resume", "--epochs", "2", "--out", str(run))
    assert code == 2
    assert "it holds a final model (model.pt's content: the classifier's weights) without the training state" in err
    assert "start a new run in another --out" in err and "None" not in err


@pytest.mark.parametrize("method", ["at-pgd", "trades", "adt-exp", "alp"])
def test_inner_steps_past_max_attack_steps_are_refused_by_the_config(method, tmp_path):
    """--steps 10000000000 (a typo) was accepted, and every batch's inner loop then ran for days;
    the bound is eval's attacks' own, MAX_ATTACK_STEPS, which is still accepted (only resolved here)."""
    from adt_fast.checks import MAX_ATTACK_STEPS
    from adt_fast.train.config import ConfigError, TrainConfig

    def config(steps):
        return TrainConfig(method=method, dataset="synthetic", out=str(tmp_path / "run"), device="cpu", steps=steps)

    assert config(MAX_ATTACK_STEPS).resolve().steps == MAX_ATTACK_STEPS
    for steps in (MAX_ATTACK_STEPS + 1, 10**12):
        with pytest.raises(ConfigError, match=rf"^--steps must be an integer from 0 to {MAX_ATTACK_STEPS}, "
                                              rf"got {steps}$"):
            config(steps).resolve()


def test_train_refuses_inner_steps_past_the_bound_in_one_line_before_the_run_starts(tmp_path, capsys):
    code, err = _train(capsys, "--method", "at-pgd", "--dataset", "synthetic", "--steps", "10000000000",
                       "--out", str(tmp_path / "run"))
    assert code == 2
    assert err == "adt-fast train: error: --steps must be an integer from 0 to 100000, got 10000000000\n"
    assert not (tmp_path / "run").exists()


def test_a_pgd_perturbation_composed_in_python_takes_at_most_max_attack_steps():
    from adt_fast.checks import MAX_ATTACK_STEPS
    from adt_fast.train.methods import PGD, CEInner

    assert PGD(CEInner(), epsilon=0.1, steps=MAX_ATTACK_STEPS, step_size=0.025).steps == MAX_ATTACK_STEPS
    with pytest.raises(ValueError, match=rf"^steps must be an integer from 0 to {MAX_ATTACK_STEPS}, got 10000000000$"):
        PGD(CEInner(), epsilon=0.1, steps=10**10, step_size=0.025)


@pytest.mark.parametrize("field, method, bound, low", [
    ("epochs", "standard", 2**63 - 1, 1),          # 10**400: OverflowError in the lr-drop epoch's float
    ("batch_size", "standard", 2**63 - 1, 1),      # 10**400: epochs of no batch, loss 0, nothing trained
    ("save_freq", "standard", 2**63 - 1, 0),
    ("max_batches", "standard", 2**63 - 1, 1),
    ("samples", "adt-exp", 1000, 1),               # 10**400: the process was killed for memory (24 GB)
    ("generator_width", "adt-exp-am", 4096, 1),    # 100000: a traceback asking for 720 GB
])
def test_counts_past_their_bound_are_refused_by_the_config(field, method, bound, low, tmp_path):
    """argparse reads any integer, so a typo or a huge number reached the run: each count now has a
    bound (MAX_COUNT, MAX_ATTACK_TRIES, MAX_GENERATOR_WIDTH), which is still accepted."""
    from adt_fast.train.config import ConfigError, TrainConfig

    def config(value):
        return TrainConfig(method=method, dataset="synthetic", out=str(tmp_path / "run"), device="cpu",
                           **{field: value})

    assert getattr(config(bound).resolve(), field) == bound
    for value in (bound + 1, 10**400):
        shown = str(value) if value < 10**40 else "an integer of about 400 digits"
        with pytest.raises(ConfigError, match=rf"^--{field.replace('_', '-')} must be an integer from {low} to "
                                              rf"{bound}, got {shown}$"):
            config(value).resolve()


@pytest.mark.parametrize("field, method, value", [("samples", "adt-exp", 1001), ("generator_width", "adt-exp-am", 4097)])
def test_a_run_made_before_a_bound_resumes_as_it_ran(field, method, value, tmp_path):
    """The bounds on --samples and --generator-width came later than runs that may hold more."""
    from adt_fast.train.config import TrainConfig

    resumed = TrainConfig(method=method, dataset="synthetic", out=str(tmp_path / "run"), device="cpu", resume=True,
                          **{field: value}).resolve()
    assert getattr(resumed, field) == value


def test_lr_drop_epochs_past_the_count_bound_are_refused(tmp_path):
    from adt_fast.train.config import ConfigError, TrainConfig

    for drop in ([2**63], [10**400]):
        with pytest.raises(ConfigError, match=r"^--lr-drop must be a list of epochs from 2 to 9223372036854775807"):
            TrainConfig(method="standard", dataset="synthetic", out=str(tmp_path / "run"), device="cpu",
                        lr_drop=drop).resolve()


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size", "--seed", "--steps", "--lr-drop", "--max-batches"])
def test_an_integer_flag_of_5000_digits_is_one_short_line(flag, tmp_path, capsys):
    """argparse's int() refuses more than 4,300 digits and the message quoted all 5,000 of them."""
    with pytest.raises(SystemExit) as stopped:  # argparse's usage error
        _train(capsys, "--method", "at-pgd", "--dataset", "synthetic", flag, "1" * 5000, "--out", str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err) < 300 and err.count("\n") == 1, err
    assert f"argument {flag}: " in err and "(5002 characters)" in err  # the repr's, quotes included
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method, field", [("adt-exp", "dist_lr"), ("adt-exp-am", "generator_lr")])
def test_adam_learning_rates_past_float32_are_refused(method, field, tmp_path):
    """1e300 passed the config, then Adam's first step failed: 'value cannot be converted to type
    float without overflow'. The largest float32 is the bound, as for --lr."""
    from adt_fast.train.config import FLOAT32_MAX, ConfigError, TrainConfig

    def config(value):
        return TrainConfig(method=method, dataset="synthetic", out=str(tmp_path / "run"), device="cpu",
                           **{field: value})

    assert getattr(config(FLOAT32_MAX).resolve(), field) == FLOAT32_MAX
    with pytest.raises(ConfigError, match=rf"^--{field.replace('_', '-')} must be <= 3.40282e\+38, got 1e\+300$"):
        config(1e300).resolve()


def test_an_lr_gamma_that_raises_the_lr_past_float32_is_refused_before_the_run(tmp_path):
    """--lr-gamma 1e300 --lr-drop 2 trained epoch 1, then SGD failed at epoch 2 with a traceback."""
    from adt_fast.train.config import ConfigError, TrainConfig

    def config(gamma, drops, epochs=3):
        return TrainConfig(method="standard", dataset="synthetic", out=str(tmp_path / "run"), device="cpu",
                           lr=0.1, lr_gamma=gamma, lr_drop=drops, epochs=epochs)

    with pytest.raises(ConfigError, match=r"^--lr-gamma 1e\+300 at the 1 drop\(s\) of --lr-drop takes --lr 0.1 to "
                                          r"about 10\^299, past the largest float32"):
        config(1e300, [2]).resolve()
    with pytest.raises(ConfigError, match=r"at the 2 drop\(s\)"):
        config(1e20, [2, 3]).resolve()                  # 0.1 * 1e40: past float32 only at the second drop
    assert config(1e20, [2]).resolve().lr_gamma == 1e20  # 1e19 fits
    assert config(1e300, [5]).resolve().lr_gamma == 1e300  # a drop after the last epoch never happens
    assert config(1e-300, [2, 3]).resolve().lr_gamma == 1e-300  # a falling lr only reaches 0


def test_a_config_json_edited_to_hold_nan_is_refused_for_the_nan(tmp_path, capsys):
    """It was refused as a change: '--generator-lr NaN (the run has NaN)', since NaN != NaN."""
    from adt_fast.train.config import resume_differences

    nan = float("nan")
    assert resume_differences({"generator_lr": nan}, {"generator_lr": nan}) == {}
    assert list(resume_differences({"generator_lr": nan}, {"generator_lr": 1e-3})) == ["generator_lr"]
    out = tmp_path / "run"
    assert _train(capsys, "--method", "standard", "--dataset", "synthetic", "--out", str(out))[0] == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "lr": nan}))
    code, err = _train(capsys, "--resume", "--epochs", "2", "--out", str(out))
    assert code == 2 and err == "adt-fast train: error: --lr must be a finite number, got nan\n", err
