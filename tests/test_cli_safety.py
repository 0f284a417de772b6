"""Nothing lost, nothing half-written (issue 14): each case is the user's command line, checked
for its exit code, its one-line message, and that every file that existed before is byte-identical
afterwards (and, for a refused command, that nothing new was written)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adt_fast
from adt_fast.attacks import evaluation
from adt_fast.cli import main
from adt_fast.devices import DeviceError
from adt_fast.files import lock_folder
from adt_fast.train import loop
from adt_fast.train.checkpoint import save_atomic

from conftest import adt_fast_env

TINY = ["--dataset", "synthetic", "--max-batches", "1", "--batch-size", "16", "--no-tensorboard"]
ADT_TINY = ["--method", "adt-exp", "--steps", "1", "--samples", "1", *TINY]
EVAL_FAST = ["--dataset", "synthetic", "--n-examples", "4", "--attacks", "fgsm",
             "--epsilon-curve", ""]


def snapshot(root: Path) -> dict:
    """Every file under root (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(argv, capsys, code=2) -> str:
    """Run the command; it must stop with `code` and one line on stderr, which is returned."""
    try:
        result = main(argv)
    except SystemExit as stop:  # argparse
        result = stop.code
    assert result == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-epoch ADT_EXP run (it calls the sampling op, so --backend applies)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *ADT_TINY, "--epochs", "3", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def _checkpoint(path, image_size=8):
    torch.manual_seed(0)
    model = adt_fast.models.build_model("small-cnn", 10, 3, image_size)
    return save_atomic({"model_config": model.config, "model": model.state_dict()}, path)


@pytest.fixture
def no_attacks(monkeypatch):
    """Any attack step fails the test: refusals must come before the work."""
    def attacked(*args, **kwargs):
        raise AssertionError("the attacks ran before the input was checked")
    monkeypatch.setattr(evaluation, "evaluate", attacked)


def _subprocess(argv, env_drop=()):
    return subprocess.run([sys.executable, "-m", "adt_fast", *argv], capture_output=True, text=True,
                          env=adt_fast_env(drop=env_drop), timeout=120)


# 1. eval never replaces what it did not write ---------------------------------------------------
@pytest.mark.parametrize("target", ["model.pt", "config.json", "metrics.jsonl", "rep.csv", "rep.png"])
def test_eval_out_never_replaces_a_file_it_did_not_write(run_copy, tmp_path, capsys, no_attacks, target):
    before = snapshot(tmp_path)
    err = refused(["eval", "--checkpoint", str(run_copy), *EVAL_FAST,
                   "--out", str(run_copy / target)], capsys)
    assert err.startswith("adt-fast eval: error: --out")
    if target.endswith(".json"):
        assert "not an earlier adt_fast report" in err
    else:
        assert "must name the JSON report, ending in .json" in err
    assert snapshot(tmp_path) == before


def test_eval_out_is_never_the_checkpoint(tmp_path, capsys, no_attacks):
    checkpoint = _checkpoint(tmp_path / "model.json")
    before = snapshot(tmp_path)
    err = refused(["eval", "--checkpoint", str(checkpoint), *EVAL_FAST, "--out", str(checkpoint)], capsys)
    assert "is the checkpoint being evaluated" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("sibling", ["rep.csv", "rep.png"])
def test_eval_refuses_a_foreign_sibling_before_attacking(run_copy, tmp_path, capsys, no_attacks, sibling):
    (tmp_path / sibling).write_text("my own notes\n")
    before = snapshot(tmp_path)
    err = refused(["eval", "--checkpoint", str(run_copy), *EVAL_FAST,
                   "--out", str(tmp_path / "rep.json")], capsys)
    assert f"{tmp_path / sibling} exists and is not an earlier adt_fast report" in err
    assert snapshot(tmp_path) == before


def test_eval_replaces_its_own_earlier_report(run_copy, tmp_path, capsys):
    out = tmp_path / "reports" / "rep.json"
    argv = ["eval", "--checkpoint", str(run_copy), *EVAL_FAST, "--out", str(out)]
    assert main(argv) == 0
    first = snapshot(out.parent)
    assert sorted(first) == ["rep.csv", "rep.json", "rep.png"]
    assert main(argv) == 0
    assert snapshot(out.parent) == first  # same seed, same bytes; nothing else left behind
    printed = capsys.readouterr().out
    assert f"wrote {out}, {out.with_suffix('.csv')}, {out.with_suffix('.png')}" in printed


# 2. eval checks where the report goes before it attacks -----------------------------------------
def test_eval_out_under_a_file_is_refused_before_attacking(run_copy, tmp_path, capsys, no_attacks):
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    err = refused(["eval", "--checkpoint", str(run_copy), *EVAL_FAST,
                   "--out", str(tmp_path / "afile" / "r.json")], capsys)
    assert "cannot write the report" in err and "is a file, not a folder" in err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_eval_out_in_a_read_only_folder_is_refused_before_attacking(run_copy, tmp_path, capsys, no_attacks):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        err = refused(["eval", "--checkpoint", str(run_copy), *EVAL_FAST,
                       "--out", str(locked / "r.json")], capsys)
    finally:
        locked.chmod(0o755)
    assert "cannot write the report" in err and "not writable" in err


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_eval_out_where_even_root_cannot_write_is_refused_before_attacking(run_copy, capsys, no_attacks):
    # sysfs refuses new files to everyone, root included, although access(2) says yes: only
    # trying to create a file finds out, and eval does that before it attacks.
    err = refused(["eval", "--checkpoint", str(run_copy), *EVAL_FAST,
                   "--out", "/sys/adt_fast_test/r.json"], capsys)
    assert "cannot write the report in /sys/adt_fast_test" in err


def test_eval_creates_its_output_folder_before_attacking_and_says_so_on_interrupt(
        run_copy, tmp_path, capsys, monkeypatch):
    out = tmp_path / "new" / "sub" / "r.json"
    seen = {}

    def interrupted(*args, **kwargs):
        seen["folder"] = out.parent.is_dir()
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluation, "evaluate", interrupted)
    err = refused(["eval", "--checkpoint", str(run_copy), *EVAL_FAST, "--out", str(out)], capsys, code=130)
    assert seen["folder"]
    assert err == ("adt-fast eval: interrupted before the report was written; no file was changed "
                   "(rerun the command to evaluate)")
    assert not any(out.parent.iterdir())


def test_eval_ends_a_sigterm_as_a_ctrl_c_with_exit_code_143(run_copy, tmp_path, capsys, monkeypatch):
    """scancel, docker stop and torchrun stopping the other workers send SIGTERM: the same line as
    a Ctrl-C, with what stopped it, before the report and while it is written."""
    from adt_fast.attacks.report import Report, SaveInterrupted
    from adt_fast.interrupts import Terminated

    out = tmp_path / "r.json"
    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: (_ for _ in ()).throw(Terminated()))
    err = refused(["eval", "--checkpoint", str(run_copy), *EVAL_FAST, "--out", str(out)], capsys, code=143)
    assert err == ("adt-fast eval: stopped by SIGTERM before the report was written; no file was changed "
                   "(rerun the command to evaluate)")
    monkeypatch.undo()

    def save(self, path, **kwargs):
        raise SaveInterrupted([], [out], Terminated())
    monkeypatch.setattr(Report, "save", save)
    assert main(["eval", "--checkpoint", str(run_copy), *EVAL_FAST, "--out", str(out)]) == 143
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"adt-fast eval: stopped by SIGTERM while writing the report: {out} being written"), err


def test_a_real_sigterm_during_the_attacks_is_reported(tmp_path):
    """The handler is the command's: a SIGTERM that arrives inside the model's forward, in a child."""
    (tmp_path / "slow_model.py").write_text(
        "import time\nfrom torch import nn\n\n\nclass Slow(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 10))\n\n"
        "    def forward(self, x):\n        if x.shape[0] > 2:  # the attacks, not eval's probe\n"
        "            print('attacking', flush=True)\n            time.sleep(0.2)\n"
        "        return self.net(x)\n\n\ndef build():\n    return Slow()\n")
    env = adt_fast_env()
    child = subprocess.Popen([sys.executable, "-m", "adt_fast", "eval", "--model", "slow_model:build",
                              *EVAL_FAST[:-4], "--attacks", "pgd:100", "--epsilon-curve", "",
                              "--out", str(tmp_path / "r.json")],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "attacking\n"
        child.send_signal(signal.SIGTERM)
        child.stdout.read()
        code, err = child.wait(timeout=120), child.stderr.read()
    finally:
        child.kill()
    assert code == 143, err
    assert err.strip().splitlines()[-1] == ("adt-fast eval: stopped by SIGTERM before the report was written; "
                                            "no file was changed (rerun the command to evaluate)")
    assert not (tmp_path / "r.json").exists()


# 3. a backend that cannot serve stops train before anything is written --------------------------
def test_train_with_a_backend_that_cannot_serve_writes_nothing(tmp_path):
    out = tmp_path / "run"
    done = _subprocess(["train", *ADT_TINY, "--epochs", "1", "--backend", "triton", "--device", "cpu",
                        "--out", str(out)], env_drop=("TRITON_INTERPRET",))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("adt-fast train: error: --backend triton cannot run this training on cpu")
    assert not out.exists()


def test_resume_with_a_backend_that_cannot_serve_changes_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    err = refused(["train", "--resume", "--out", str(run_copy), "--backend", "cuda"], capsys)
    assert err.startswith("adt-fast train: error: --backend cuda cannot run this training on cpu")
    assert snapshot(run_copy) == before
    assert json.loads((run_copy / "config.json").read_text())["backend"] == "auto"


# 4. a damaged checkpoint leaves config.json alone -----------------------------------------------
def test_resume_from_a_damaged_checkpoint_changes_nothing(run_copy, capsys):
    """The error names --resume and says what the run can still do: go on from its newest
    snapshot (the command to copy it), or start a new run where it has none."""
    latest = run_copy / "checkpoint.pt"
    for stale in run_copy.glob("checkpoint_epoch*.pt"):
        stale.unlink()
    latest.write_bytes(latest.read_bytes()[:1000])
    before = snapshot(run_copy)
    err = refused(["train", "--resume", "--out", str(run_copy), "--epochs", "5"], capsys)
    assert err.startswith(f"adt-fast train: error: --resume: checkpoint {latest} is corrupt or truncated")
    assert err.rstrip().endswith("; start a new run in another --out")
    assert snapshot(run_copy) == before
    for epoch in (10, 2, 9):  # the newest by the epoch it holds, not by the folder's order
        save_atomic({"epoch": epoch}, run_copy / f"checkpoint_epoch{epoch}.pt")
    err = refused(["train", "--resume", "--out", str(run_copy), "--epochs", "5"], capsys)
    assert err.rstrip().endswith(f"; to go on from the newest snapshot, copy it: cp {run_copy / 'checkpoint_epoch10.pt'} "
                                 f"{latest}")


@pytest.mark.parametrize("damage,why", [
    ("out is a file", "cannot be read (Not a directory: {config})"),
    ("config.json is a folder", "cannot be read (Is a directory: {config})"),
    ("config.json is not UTF-8", "is not a valid training config ('utf-8' codec can't decode byte 0xff"),
])
def test_resume_from_an_unreadable_config_json_is_one_line_naming_it(run_copy, tmp_path, capsys, damage, why):
    out, config = run_copy, run_copy / "config.json"
    if damage == "out is a file":
        out = tmp_path / "afile"
        out.write_text("x")
        config = out / "config.json"
    elif damage == "config.json is a folder":
        config.unlink()
        config.mkdir()
    else:
        config.write_bytes(b"\xff\xfe" + config.read_bytes())
    before = snapshot(tmp_path)
    err = refused(["train", "--resume", "--out", str(out)], capsys)
    assert err.startswith(f"adt-fast train: error: {config} {why.format(config=config)}"), err
    assert snapshot(tmp_path) == before


def test_resume_from_another_runs_checkpoint_of_the_same_method_is_refused(run_copy, tmp_path, capsys):
    """A checkpoint.pt copied in from another run (another lr and seed) would go on as this run."""
    other = tmp_path / "other"
    assert main(["train", *ADT_TINY, "--epochs", "1", "--lr-drop", "3", "--lr", "0.05", "--seed", "1",
                 "--out", str(other)]) == 0
    shutil.copyfile(other / "checkpoint.pt", run_copy / "checkpoint.pt")
    capsys.readouterr()
    before = snapshot(run_copy)
    err = refused(["train", "--resume", "--out", str(run_copy), "--epochs", "5"], capsys)
    assert err == (f"adt-fast train: error: cannot resume from {run_copy / 'checkpoint.pt'}: the run settings it "
                   f"records and {run_copy / 'config.json'} disagree: --lr 0.05 (config.json has 0.1); --seed 1 "
                   f"(config.json has 0). If you edited config.json, restore it (the checkpoint holds what the run "
                   f"trained with); if checkpoint.pt came from another run, put this run's own back (or copy its "
                   f"newest snapshot, checkpoint_epoch{{N}}.pt, over it)")
    assert snapshot(run_copy) == before


# 5. never record fewer epochs than were trained -------------------------------------------------
def test_resume_with_fewer_epochs_than_done_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    err = refused(["train", "--resume", "--out", str(run_copy), "--epochs", "1"], capsys)
    assert err == (f"adt-fast train: error: --epochs 1: {run_copy} has already trained 3 epochs; "
                   f"to train longer pass --epochs N with N > 3 (omit --epochs to keep the run's own "
                   f"length)")
    assert snapshot(run_copy) == before


# 6. a place train cannot write to is a clean error ----------------------------------------------
def test_train_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    err = refused(["train", *ADT_TINY, "--out", str(tmp_path / "afile" / "run")], capsys)
    assert "cannot write the run there" in err and "is a file, not a folder" in err
    assert snapshot(tmp_path) == before


def test_a_missing_optional_package_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    digits = ["--method", "standard", "--dataset", "digits", *TINY[2:]]
    assert main(["train", *digits, "--epochs", "1", "--out", str(tmp_path / "trained")]) == 0
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # the import fails as if not installed
    wanted = "the digits dataset needs scikit-learn: pip install scikit-learn (or pip install 'adt-fast[data]')"
    err = refused(["train", *digits, "--out", str(tmp_path / "run")], capsys)
    assert err.endswith(wanted)
    err = refused(["eval", "--checkpoint", str(tmp_path / "trained"), "--dataset", "digits", "--attacks", "fgsm",
                   "--out", str(tmp_path / "report.json")], capsys)
    assert err.endswith(wanted), err  # and no "--download" hint: downloading would not help


def test_a_report_that_cannot_be_written_still_prints_the_results(finished_run, tmp_path, capsys, monkeypatch):
    from adt_fast.attacks import report as report_module

    real = report_module.write_atomic

    def full_after_json(path, write, **kwargs):
        if str(path).endswith(".csv"):
            raise OSError(28, "No space left on device")
        return real(path, write, **kwargs)

    monkeypatch.setattr(report_module, "write_atomic", full_after_json)
    out = tmp_path / "rep.json"
    assert main(["eval", "--checkpoint", str(finished_run), *EVAL_FAST, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "worst case" in captured.out.lower()  # the table
    assert captured.err.strip() == (f"adt-fast eval: error: --out: the report could not be written: "
                                    f"{tmp_path / 'rep.csv'}: No space left on device; {out} written before "
                                    f"it (the results are printed above)")


@pytest.mark.parametrize("failing_epoch", [1, 2])
def test_a_full_disk_during_training_says_what_was_kept(tmp_path, capsys, monkeypatch, failing_epoch):
    """A write that fails mid-run (here: checkpoint.pt of an epoch) is one line naming --out, with
    what the run kept and the command that goes on from it; the last checkpoint is whole."""
    calls = []

    def full_disk(payload, path):
        calls.append(path)
        if len(calls) == failing_epoch:
            raise OSError(28, "No space left on device")
        return save_atomic(payload, path)

    monkeypatch.setattr(loop.ckpt, "save_atomic", full_disk)
    out = tmp_path / "run"
    err = refused(["train", *ADT_TINY, "--epochs", "3", "--out", str(out)], capsys)
    assert err.startswith(f"adt-fast train: error: --out {out}: cannot write the run there (No space left on device)")
    if failing_epoch == 1:
        assert err.endswith(f"there is no checkpoint yet; adt-fast train --resume --out {out} starts it again "
                            f"from epoch 1")
    else:
        assert err.endswith(f"{out / 'checkpoint.pt'} (the last completed epoch) is intact; continue with: "
                            f"adt-fast train --resume --out {out}")
        assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs")
def test_train_where_even_root_cannot_write_is_a_clean_error(capsys):
    err = refused(["train", *ADT_TINY, "--out", "/sys/adt_fast_run"], capsys)
    assert err.startswith("adt-fast train: error: --out /sys/adt_fast_run: cannot write the run there")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_train_in_a_read_only_folder_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        err = refused(["train", *ADT_TINY, "--out", str(locked / "run")], capsys)
    finally:
        locked.chmod(0o755)
    assert "not writable" in err and not (locked / "run").exists()


# 7. errors say what is wrong --------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "eval"])
def test_an_unsupported_device_is_a_device_error(run_copy, tmp_path, capsys, command):
    before = snapshot(tmp_path)
    if command == "train":
        argv = ["train", *ADT_TINY, "--device", "mps", "--out", str(tmp_path / "new")]
    else:
        argv = ["eval", "--checkpoint", str(run_copy), *EVAL_FAST, "--device", "mps",
                "--out", str(tmp_path / "r.json")]
    err = refused(argv, capsys)
    assert "--device" in err and "only cpu and cuda devices are supported" in err
    assert "corrupt" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_load_model_on_a_missing_cuda_is_a_device_error(finished_run):
    with pytest.raises(DeviceError, match="CUDA is not available on this machine"):
        adt_fast.load_model(finished_run, device="cuda")


def test_a_text_file_is_not_an_adt_fast_checkpoint(tmp_path, capsys, no_attacks):
    notes = tmp_path / "notes.pt"
    notes.write_text("hello, these are notes\n")
    before = snapshot(tmp_path)
    err = refused(["eval", "--checkpoint", str(notes), *EVAL_FAST, "--out", str(tmp_path / "r.json")], capsys)
    assert f"{notes} is not an adt_fast checkpoint" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("after_epochs", [0, 1])
def test_train_interrupt_says_what_it_kept(tmp_path, capsys, stop_after_epoch, after_epochs):
    stop_after_epoch(after_epochs)
    out = tmp_path / "run"
    err = refused(["train", *ADT_TINY, "--epochs", "3", "--out", str(out)], capsys, code=130)
    if after_epochs:
        assert err == (f"adt-fast train: interrupted: {out / 'checkpoint.pt'} (the last completed "
                       f"epoch) is intact; continue with: adt-fast train --resume --out {out}")
    else:
        assert "intact" not in err and "no checkpoint yet" in err
        assert not (out / "checkpoint.pt").exists()


def test_train_into_a_run_directory_another_process_trains_is_refused(run_copy, capsys):
    before = snapshot(run_copy)
    with lock_folder(run_copy):  # what the other process's run holds
        err = refused(["train", "--resume", "--out", str(run_copy), "--epochs", "5"], capsys)
    assert err == (f"adt-fast train: error: --out {run_copy}: another process is training this run "
                   f"directory (it holds its lock); wait for it to end, or choose another --out")
    assert snapshot(run_copy) == before


def test_eval_after_a_longer_resume_was_interrupted_reads_the_newest_epoch(run_copy, capsys, monkeypatch,
                                                                           stop_after_epoch):
    stop_after_epoch(4)
    refused(["train", "--resume", "--out", str(run_copy), "--epochs", "5"], capsys, code=130)
    seen = {}

    def record(model, *args, **kwargs):
        seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluation, "evaluate", record)
    refused(["eval", "--checkpoint", str(run_copy), *EVAL_FAST, "--out", str(run_copy / "r.json")], capsys,
            code=130)
    newest = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    assert newest["epoch"] == 4
    assert all(torch.equal(seen["weights"][k], v) for k, v in newest["model"].items())


def test_train_interrupt_before_the_run_starts(tmp_path, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "build_trainer", interrupted)
    err = refused(["train", *ADT_TINY, "--out", str(tmp_path / "run")], capsys, code=130)
    assert err == "adt-fast train: interrupted before the run started; nothing was written"
    assert not (tmp_path / "run").exists()


# 8. absurd budgets ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--epsilon", "1e300"], "argument --epsilon: must be a number in (0, 1] for inputs in [0, 1]"),
    (["--epsilon", "1.5"], "argument --epsilon: must be a number in (0, 1]"),
    (["--epsilon-curve", "0,1e300"], "--epsilon-curve: epsilon_curve's multiple 1e+300 of epsilon"),
    (["--epsilon", "0.5", "--epsilon-curve", "0,1,3"], "is a budget of 1.5, above 1"),
])
def test_eval_refuses_budgets_beyond_the_input_range(run_copy, tmp_path, capsys, no_attacks, argv, message):
    before = snapshot(tmp_path)
    err = refused(["eval", "--checkpoint", str(run_copy), "--dataset", "synthetic",
                   "--out", str(tmp_path / "r.json"), *argv], capsys)
    assert message in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["1e300", "1.5"])
def test_train_refuses_epsilon_above_one(tmp_path, capsys, value):
    err = refused(["train", *ADT_TINY, "--epsilon", value, "--out", str(tmp_path / "run")], capsys)
    assert err == f"adt-fast train: error: --epsilon must be <= 1, got {float(value)!r}"
    assert not (tmp_path / "run").exists()


# 9. smaller things ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["train", "--method", "nope", "--out", "x"],
                                     ["eval", "--checkpoint", "c", "--dataset", "synthetic"]])
def test_usage_errors_are_one_line_and_help_is_complete(command, capsys):
    err = refused(command, capsys)
    assert err.startswith(f"adt-fast {command[0]}: error: ") and "usage" not in err
    with pytest.raises(SystemExit) as stop:
        main([command[0], "--help"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: adt-fast")
    assert ("--alp-weight" if command[0] == "train" else "--epsilon-curve") in printed


def test_resume_conflicts_name_only_the_settings_given(run_copy, capsys):
    before = snapshot(run_copy)
    code = main(["train", "--resume", "--out", str(run_copy), "--method", "at-pgd", "--lr", "0.5"])
    err = capsys.readouterr().err
    assert code == 2
    listed = re.findall(r"^  (--[a-z-]+) ", err, flags=re.M)
    assert listed == ["--lr", "--method"]
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("method", ["standard", "at-pgd", "adt-imp-am"])
def test_backend_is_refused_by_methods_that_never_sample(tmp_path, capsys, method):
    err = refused(["train", "--method", method, *TINY, "--backend", "reference",
                   "--out", str(tmp_path / "run")], capsys)
    assert f"--backend does not apply to --method {method}" in err
    assert "adt-exp, adt-exp-am" in err


def test_image_size_mismatch_is_worded_as_sizes(tmp_path, capsys, no_attacks):
    checkpoint = _checkpoint(tmp_path / "big.pt", image_size=16)
    err = refused(["eval", "--checkpoint", str(checkpoint), *EVAL_FAST, "--out", str(tmp_path / "r.json")],
                  capsys)
    assert "takes 16x16 images but --dataset synthetic has 8x8 images" in err


def test_reports_do_not_depend_on_batch_size_and_csv_is_rounded(run_copy, tmp_path):
    """On CPU on any machine: a GPU's convolutions may pick other kernels for other batch sizes
    (docs/evaluation.md, "Determinism")."""
    reports = []
    for batch in (1, 3, 8):
        out = tmp_path / f"b{batch}.json"
        assert main(["eval", "--checkpoint", str(run_copy), "--dataset", "synthetic", "--n-examples", "8",
                     "--device", "cpu",
                     "--attacks", "fgsm,pgd:2,dist", "--dist-steps", "3", "--epsilon-curve", "0,1.5",
                     "--batch-size", str(batch), "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report.pop("batch_size") == batch
        reports.append((report, out.with_suffix(".csv").read_bytes()))
    assert all(r == reports[0] for r in reports[1:])
    csv_text = reports[0][1].decode()
    cells = [cell for line in csv_text.splitlines()[1:] for cell in line.split(",")]
    significant = [len(c.replace(".", "").lstrip("0")) for c in cells if re.fullmatch(r"[0-9.]+", c)]
    assert max(significant) <= 6                             # no float32 noise, no 0.15000000000000002
    assert "0.0313725" in csv_text                           # epsilon, 6 significant digits
    assert reports[0][0]["epsilon"] == 8 / 255                # the JSON keeps full precision
