"""`adt-fast train` end to end through the command, on synthetic data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adt_fast
from adt_fast import distributed
from adt_fast.cli import main
from adt_fast.train import loop, read_metrics

FAST = ["--dataset", "synthetic", "--epochs", "1", "--max-batches", "2", "--batch-size", "32",
        "--no-tensorboard"]


@pytest.mark.parametrize("method", [["standard"], ["at-pgd"], ["trades", "--beta", "1.0"],
                                    ["adt-exp"], ["adt-exp", "--loss", "trades", "--beta", "6"]],
                         ids=lambda m: "-".join(m))
def test_every_method_runs_end_to_end(tmp_path, capsys, method):
    out = tmp_path / "run"
    assert main(["train", "--method", *method, *FAST, "--out", str(out)]) == 0
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "model.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method[0] and config["epochs"] == 1
    assert len(read_metrics(out)) == 1
    model = adt_fast.load_model(out)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.rand(4, 3, 8, 8))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    printed = capsys.readouterr().out
    assert str(out / "model.pt") in printed
    assert f"adt-fast eval --checkpoint {out} --dataset synthetic --out {out / 'report.json'}" in printed


def test_flags_reach_the_config(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--method", "adt-exp", *FAST, "--out", str(out), "--epsilon", "4/255",
                 "--steps", "2", "--samples", "3", "--lbd", "0.1", "--dist-lr", "0.2",
                 "--dist-betas", "0.1", "0.2", "--lr", "0.05", "--lr-drop", "--momentum", "0.5",
                 "--weight-decay", "0", "--seed", "3", "--save-freq", "1", "--precision", "bf16",
                 "--channels-last", "--device", "cpu", "--backend", "reference"]) == 0
    config = json.loads((out / "config.json").read_text())
    expected = {"epsilon": 4 / 255, "steps": 2, "samples": 3, "lbd": 0.1, "dist_lr": 0.2,
                "dist_betas": [0.1, 0.2], "lr": 0.05, "lr_drop": [], "momentum": 0.5,
                "weight_decay": 0.0, "seed": 3, "save_freq": 1, "precision": "bf16",
                "channels_last": True, "device": "cpu", "backend": "reference", "resume": False}
    assert {k: config[k] for k in expected} == expected
    assert (out / "checkpoint_epoch1.pt").is_file()


def test_the_eval_command_printed_names_the_runs_own_epsilon(tmp_path, capsys):
    """eval defaults to the dataset's budget (synthetic: 8/255); a run trained at 4/255 is to be
    scored at 4/255."""
    out = tmp_path / "run"
    assert main(["train", "--method", "at-pgd", "--steps", "1", *FAST, "--epsilon", "4/255", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = out / "report.json"
    assert f"adt-fast eval --checkpoint {out} --dataset synthetic --epsilon 4/255 --out {report}" in printed


def test_resume_takes_the_runs_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "at-pgd", *FAST, "--lr", "0.05", "--out", str(out)]) == 0
    # Only --out and a longer run: everything else comes from config.json.
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert json.loads((out / "config.json").read_text())["lr"] == 0.05
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and "config.json" in err


def test_resume_lifts_a_smoke_runs_batch_cap_with_max_batches_all(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "standard", *FAST, "--out", str(out)]) == 0  # FAST: 2 batches
    steps = []
    original = loop.Method.train_step
    monkeypatch.setattr(loop.Method, "train_step", lambda self, *a, **kw: steps.append(1) or original(self, *a, **kw))
    assert main(["train", "--resume", "--out", str(out), "--epochs", "2", "--max-batches", "all"]) == 0
    assert len(steps) > 2 and [r["epoch"] for r in read_metrics(out)] == [1, 2]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--resume", "--out", str(out), "--max-batches", "most"])
    assert "argument --max-batches: 'most' is neither an integer nor all" in capsys.readouterr().err


def test_resume_takes_the_runs_lr_drop_in_any_order(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "standard", *FAST, "--lr-drop", "5", "3", "--out", str(out)]) == 0
    assert main(["train", "--resume", "--out", str(out), "--lr-drop", "5", "3", "--epochs", "2"]) == 0, \
        capsys.readouterr().err
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]


@pytest.mark.parametrize("argv,flag", [
    (["--method", "adt-exp", "--epsilon", "-1"], "--epsilon"),
    (["--method", "adt-exp", "--steps", "-2"], "--steps"),
    (["--method", "adt-exp", "--samples", "0"], "--samples"),
    (["--method", "adt-exp", "--batch-size", "0"], "--batch-size"),
    (["--method", "at-pgd", "--samples", "3"], "--samples"),
    (["--method", "adt-exp", "--beta", "3"], "--beta"),
    (["--dataset", "synthetic"], "--method"),
    (["--method", "standard", "--seed", str(2**64)], "--seed"),
    (["--method", "standard", "--epsilon", "0.1"], "--epsilon does not apply to --method standard"),
    (["--method", "adt-exp", "--samples", "2", "--samples-per-pass", "7"], "--samples-per-pass 7"),
])
def test_bad_flags_are_clear_errors(tmp_path, capsys, argv, flag):
    base = [] if "--dataset" in argv else ["--dataset", "synthetic"]
    assert main(["train", *base, *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adt-fast train: error:") and flag in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["--method", "nope"], ["--epsilon", "abc"], ["--loss", "hinge"]])
def test_unknown_choices_are_refused_by_the_parser(tmp_path, capsys, argv):
    args = ["train", "--method", "adt-exp", "--dataset", "synthetic", *argv, "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_missing_dataset_files_leave_no_run_behind(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--method", "standard", "--dataset", "cifar10", "--data-dir",
            str(tmp_path / "no-data"), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("adt-fast train: error:") and "no-data" in err
    assert not out.exists()


def test_non_empty_run_dir_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "standard", *FAST, "--out", str(out)]) == 0
    before = (out / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--method", "standard", *FAST, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "model.pt").read_bytes() == before


def test_python_dash_m_runs_the_command(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "ADT_FAST_NO_PROGRESS": "1",
           "PYTHONPATH": str(Path(adt_fast.__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "adt_fast", "train", "--method", "standard", *FAST,
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "model.pt").is_file() and "adt-fast eval" in done.stdout


def test_a_process_group_that_cannot_form_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """distributed.setup's DistributedError (here $RANK and friends without torchrun's MASTER_ADDR
    and MASTER_PORT, then any other) ends train in one line, exit 2, with nothing written."""

    out = tmp_path / "run"
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["train", "--method", "standard", *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adt-fast train: error: RANK, WORLD_SIZE, LOCAL_RANK are set") and "\n" not in err

    def cannot_form(device):
        raise distributed.DistributedError("the group cannot form")

    monkeypatch.setattr(distributed, "check_timeout", lambda: None)  # an environment that passes the check
    monkeypatch.setattr(distributed, "setup", cannot_form)
    assert main(["train", "--method", "standard", *FAST, "--out", str(out)]) == 2
    assert capsys.readouterr().err == "adt-fast train: error: the group cannot form\n"
    assert not out.exists()


def test_out_of_device_memory_says_what_was_kept_and_what_needs_less(tmp_path, monkeypatch, capsys):
    """One line, no traceback: torch's allocation, the intact checkpoint, the resume command."""
    trained = loop.Trainer.train_epoch

    def train_epoch(self):
        if self.epoch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)\n"
                                         "See the documentation for Memory Management")
        return trained(self)
    monkeypatch.setattr(loop.Trainer, "train_epoch", train_epoch)
    out = tmp_path / "run"
    args = ["train", "--method", "standard", "--dataset", "synthetic", "--epochs", "2", *FAST[4:], "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == (f"adt-fast train: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB "
                   f"(stand-in)): {out / 'checkpoint.pt'} (the last completed epoch) is intact; continue with: "
                   f"adt-fast train --resume --out {out}. Training needs less with a smaller --batch-size (a new "
                   f"run) or, for adt-exp, a smaller --samples-per-pass (a resume may lower it)\n")
    monkeypatch.setattr(loop.Trainer, "train_epoch", trained)
    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]


def test_out_of_memory_inside_a_collective_is_told_as_out_of_memory(tmp_path, monkeypatch, capsys):
    """Under torchrun, an out-of-memory error raised in torch.distributed's code (SyncBatchNorm's
    all_gather allocating its output) counts as a collective's failure too, and was reported as
    'another process failed'; it is this process's own, as eval already said."""
    def fit(config, given):
        oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)")
        torch_distributed = Path(torch.distributed.__file__).parent / "distributed_c10d.py"
        scope = {"oom": oom}
        exec(compile("def all_gather():\n    raise oom\n", str(torch_distributed), "exec"), scope)
        scope["all_gather"]()  # its innermost frame is torch.distributed's, as collective_failed looks for
    monkeypatch.setattr(loop, "fit", fit)
    monkeypatch.setattr(distributed, "launched", lambda: True)
    assert main(["train", "--method", "standard", *FAST, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("adt-fast train: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB "
                          "(stand-in))") and "another process failed" not in err, err
