"""A user-level review of `adt-fast train` / `adt-fast eval`: where a run's data lives, the commands
the run prints, hand-edited run records and flags that do nothing."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from adt_fast.cli import build_parser, main

ANY_LENGTH = ["--dataset", "synthetic", "--max-batches", "1", "--batch-size", "32", "--no-tensorboard", "--device",
              "cpu"]
FAST = [*ANY_LENGTH, "--epochs", "1"]
QUICK_EVAL = ["--attacks", "fgsm", "--n-examples", "4", "--epsilon-curve", ""]


def _printed_eval_command(printed: str) -> list:
    """The eval command a run printed at its end, as the shell splits it (without `adt-fast`)."""
    line = printed.split("evaluate it with:\n", 1)[1].splitlines()[0]
    return shlex.split(line)[1:]


@pytest.mark.parametrize("out", ["-dash", "with space", "-dash space"])
def test_the_printed_eval_command_runs_for_any_run_folder_name(tmp_path, monkeypatch, capsys, out):
    """--out=-dash printed `--checkpoint -dash`, which argparse takes for an option."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--method", "standard", *FAST, f"--out={out}"]) == 0
    command = _printed_eval_command(capsys.readouterr().out)
    assert command[:3] == ["eval", "--checkpoint", f"./{out}" if out.startswith("-") else out]
    assert main([*command, "--device", "cpu", *QUICK_EVAL]) == 0
    assert (tmp_path / out / "report.json").is_file()


def test_the_printed_resume_command_reads_a_run_folder_that_starts_with_a_dash(tmp_path, monkeypatch):
    from adt_fast.train import loop

    monkeypatch.chdir(tmp_path)
    (tmp_path / "-dash").mkdir()
    (tmp_path / "-dash" / "config.json").write_text("{}")
    note = loop.interrupted_message(Path("-dash"))
    command = note.split("adt-fast ", 1)[1].split(" starts it again")[0]
    assert build_parser().parse_args(shlex.split(command)).out == "./-dash"


def _cifar10_run(root, capsys, data_dir="fakedata"):
    """A standard run (cf) on a fake CIFAR-10 in root/fakedata, given as `data_dir`; its printed eval command."""
    from test_data_files import _cifar10  # torchvision's CIFAR-10 layout

    _cifar10(root / "fakedata")
    assert main(["train", "--method", "standard", "--dataset", "cifar10", "--data-dir", data_dir, "--arch",
                 "small-cnn", "--epochs", "1", "--no-tensorboard", "--device", "cpu", "--out", "cf"]) == 0
    return _printed_eval_command(capsys.readouterr().out)


def test_eval_reads_the_run_s_dataset_from_the_run_s_data_dir(tmp_path, monkeypatch, capsys):
    """eval --checkpoint RUN looked for the run's CIFAR-10 in the default folder, and the command
    the run printed did not name its --data-dir."""
    monkeypatch.chdir(tmp_path)
    folder = str(tmp_path / "fakedata")
    command = _cifar10_run(tmp_path, capsys, folder)
    assert command == ["eval", "--checkpoint", "cf", "--dataset", "cifar10", "--data-dir", folder,
                       "--out", "cf/report.json"]
    assert main([*command, "--device", "cpu", *QUICK_EVAL]) == 0
    capsys.readouterr()
    for dataset in (["--dataset", "cifar10"], []):  # given, or taken from the run
        assert main(["eval", "--checkpoint", "cf", *dataset, "--out", "cf/again.json", "--device", "cpu",
                     *QUICK_EVAL]) == 0
        assert f"data: cifar10 from {folder} (the run's --data-dir, recorded in cf/config.json)" in \
            capsys.readouterr().err


def test_an_explicit_data_dir_wins_over_the_run_s(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _cifar10_run(tmp_path, capsys)
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--checkpoint", "cf", "--data-dir", "empty", "--out", "cf/r.json", "--device", "cpu",
                 *QUICK_EVAL]) == 2
    err = capsys.readouterr().err
    assert "not found in empty/cifar-10-batches-py" in err and "the run's --data-dir" not in err


def test_a_relative_data_dir_is_recorded_absolute_so_a_resume_from_elsewhere_finds_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _cifar10_run(tmp_path, capsys)
    folder = str(tmp_path / "fakedata")
    assert json.loads((tmp_path / "cf" / "config.json").read_text())["data_dir"] == folder
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert main(["train", "--resume", "--out", "../cf", "--epochs", "2"]) == 0
    assert f"--data-dir {folder} --out ../cf/report.json" in capsys.readouterr().out


def test_an_old_run_s_relative_data_dir_resumes_from_its_folder_and_is_named_elsewhere(tmp_path, monkeypatch,
                                                                                     capsys):
    """Runs recorded --data-dir as typed; resumed from another folder, the data error named the
    relative folder there, and not --data-dir."""
    monkeypatch.chdir(tmp_path)
    _cifar10_run(tmp_path, capsys)
    config = tmp_path / "cf" / "config.json"
    recorded = json.loads(config.read_text())
    config.write_text(json.dumps({**recorded, "data_dir": "fakedata"}))  # as a run made before
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert main(["train", "--resume", "--out", "../cf", "--epochs", "2"]) == 2
    assert capsys.readouterr().err == (
        f"adt-fast train: error: --resume: the folder of the cifar10 files that the run recorded, --data-dir "
        f"fakedata in ../cf/config.json, does not exist here ({tmp_path / 'sub'}; the run recorded it relative "
        f"to the folder it was started in); pass --data-dir with the folder that holds them now\n")
    assert main(["train", "--resume", "--out", "../cf", "--epochs", "2", "--data-dir", "../fakedata"]) == 0
    config.write_text(json.dumps({**recorded, "data_dir": "fakedata"}))
    monkeypatch.chdir(tmp_path)  # where it was started
    assert main(["train", "--resume", "--out", "cf", "--epochs", "3"]) == 0
    assert json.loads(config.read_text())["data_dir"] == str(tmp_path / "fakedata")


def test_eval_of_an_old_run_with_a_relative_data_dir_reads_the_default_folder(tmp_path, monkeypatch, capsys):
    """A relative data_dir (a run recorded before it was made absolute) names no folder eval can
    find: eval reads the default folder, as it did for such runs, not sub/fakedata."""
    monkeypatch.chdir(tmp_path)
    _cifar10_run(tmp_path, capsys)
    config = tmp_path / "cf" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "data_dir": "fakedata"}))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.setenv("ADT_FAST_DATA_DIR", str(tmp_path / "fakedata"))
    assert main(["eval", "--checkpoint", "../cf", "--out", "r.json", "--device", "cpu", *QUICK_EVAL]) == 0
    assert "the run's --data-dir" not in capsys.readouterr().err


@pytest.mark.parametrize("data_dir, why", [("a\0b", "embedded null byte"), ("loop", "Symlink loop"),
                                           ("~no-such-user-here/data", "home directory")])
def test_a_data_dir_that_cannot_be_made_absolute_is_a_config_error(tmp_path, monkeypatch, data_dir, why):
    from adt_fast.train import ConfigError, TrainConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop").symlink_to("loop")
    refusal = f"^--data-dir {re.escape(repr(data_dir))} cannot be used as a folder .*{why}"
    with pytest.raises(ConfigError, match=refusal):
        TrainConfig(method="standard", dataset="cifar10", out="run", data_dir=data_dir).resolve()


def _edited_run(tmp_path, capsys, edit):
    """A finished synthetic run whose config.json `edit` changed; the --resume refusal."""
    out = tmp_path / "run"
    assert main(["train", "--method", "standard", *FAST, "--out", str(out)]) == 0
    config = out / "config.json"
    recorded = json.loads(config.read_text())
    edit(recorded)
    config.write_text(json.dumps(recorded))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2"]) == 2
    return out, capsys.readouterr().err


def test_a_hand_edited_config_json_is_named_as_such_not_as_another_run_s_checkpoint(tmp_path, capsys):
    out, err = _edited_run(tmp_path, capsys, lambda recorded: recorded.update(lr=0.05))
    assert err == (f"adt-fast train: error: cannot resume from {out / 'checkpoint.pt'}: the run settings it records "
                   f"and {out / 'config.json'} disagree: --lr 0.1 (config.json has 0.05). If you edited config.json, "
                   f"restore it (the checkpoint holds what the run trained with); if checkpoint.pt came from another "
                   f"run, put this run's own back (or copy its newest snapshot, checkpoint_epoch{{N}}.pt, over it)\n")


@pytest.mark.parametrize("edit", [lambda recorded: recorded.pop("lr"), lambda recorded: recorded.update(lr=None)],
                         ids=["deleted", "null"])
def test_a_setting_deleted_from_config_json_is_not_reported_as_a_flag(tmp_path, capsys, edit):
    """It read `--lr 0.1 (the run has null)`, a flag the user never passed."""
    out, err = _edited_run(tmp_path, capsys, edit)
    assert err == (f"adt-fast train: error: --resume: {out / 'config.json'} has no value for \"lr\" (a new run would "
                   f"take --lr 0.1); if you edited it, restore it (the run's checkpoints record the settings it "
                   f"trained with)\n")


@pytest.mark.parametrize("flags, warning", [
    (["--epochs", "2", "--lr-drop", "5"], "--lr-drop 5: past the run's last epoch (--epochs 2), so the lr does not "
                                          "drop there; a --resume with --epochs 5 or more reaches it"),
    (["--epochs", "2", "--lr-drop", "2", "4", "6"],
     "--lr-drop 4 6: past the run's last epoch (--epochs 2), so the lr does not drop there; a --resume with --epochs 4 "
     "or more reaches it"),
    (["--epochs", "1", "--lr-gamma", "0.5"], "--lr-gamma 0.5: the run has no --lr-drop epoch, so the lr never changes"),
    (["--epochs", "2", "--save-freq", "3"], "--save-freq 3: past the run's last epoch (--epochs 2), so no "
                                            "checkpoint_epoch{N}.pt is kept; a --resume with --epochs 3 or more keeps "
                                            "them"),
])
def test_a_flag_the_run_ends_before_is_warned_about_once(tmp_path, capsys, flags, warning):
    """--lr-drop 5 --epochs 2 did nothing, silently; it is not refused: a longer --resume reaches it."""
    assert main(["train", "--method", "standard", *ANY_LENGTH, *flags, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert err.splitlines().count(f"warning: {warning}") == 1, err
    assert err.count("warning:") == 1


def test_flags_the_run_reaches_and_default_settings_are_not_warned_about(tmp_path, capsys):
    assert main(["train", "--method", "standard", *ANY_LENGTH, "--epochs", "2", "--lr-drop", "2", "--lr-gamma", "0.5",
                 "--save-freq", "2", "--out", str(tmp_path / "run")]) == 0
    assert main(["train", "--method", "standard", *FAST, "--out", str(tmp_path / "default")]) == 0  # save-freq 25
    assert "warning" not in capsys.readouterr().err
