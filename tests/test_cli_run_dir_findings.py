"""A user-level review of `adt-fast train` / `adt-fast eval`: where a run's data lives, the commands
the run prints, hand-edited run records and flags that do nothing."""

from __future__ import annotations

import shlex

import pytest

from adt_fast.cli import build_parser, main

FAST = ["--dataset", "synthetic", "--epochs", "1", "--max-batches", "1", "--batch-size", "32", "--no-tensorboard",
        "--device", "cpu"]
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
    note = loop.interrupted_message(loop.Path("-dash"))
    command = note.split("adt-fast ", 1)[1].split(" starts it again")[0]
    assert build_parser().parse_args(shlex.split(command)).out == "./-dash"
