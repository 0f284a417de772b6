"""The training loop: run directories, metrics, resume, config validation, method extension."""

import dataclasses
import importlib.util
import json
import re
import shlex
from typing import Optional

import pytest
import torch
from torch import nn

from adt_fast import data as datasets
from adt_fast.attacks.losses import cross_entropy
from adt_fast.distributed import World
from adt_fast.files import lock_folder
from adt_fast.train import (METHODS, ComposedMethod, ConfigError, Method, MethodSpec, StepOutput,
                            TrainConfig, fit, read_metrics, register_method)
from adt_fast.train import checkpoint as ckpt
from adt_fast.train import loop
from adt_fast.train.config import MAX_SEED, RESUMABLE_CHANGES, flag, resume_config


def _cfg(method, out, **kw):
    """On CPU on any machine: the bit-for-bit guarantees tested here are CPU's (docs/training.md)."""
    settings = dict(epochs=3, max_batches=3, batch_size=32, tensorboard=False, device="cpu")
    settings.update(kw)
    return TrainConfig(method, "synthetic", str(out), **settings)


def _kill_after(monkeypatch, cls, steps):
    """Make the n-th training step raise KeyboardInterrupt, as a Ctrl-C there would."""
    original = cls.train_step
    count = {"n": 0}

    def interrupted(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > steps:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, "train_step", interrupted)


def _same_state(a, b):
    pa, pb = ckpt.load(a), ckpt.load(b)
    assert set(pa["model"]) == set(pb["model"])
    for name in pa["model"]:
        assert torch.equal(pa["model"][name], pb["model"][name]), name
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(pa["history"]) == strip(pb["history"])
    return pa, pb


@pytest.mark.parametrize("method", ["adt-exp", "at-pgd"])
def test_interrupted_then_resumed_run_is_bit_identical(tmp_path, monkeypatch, method):
    fit(_cfg(method, tmp_path / "straight"))
    with monkeypatch.context() as patch:
        _kill_after(patch, ComposedMethod, 5)  # 3 batches per epoch: killed inside epoch 2
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg(method, tmp_path / "killed"))
    assert ckpt.load(tmp_path / "killed" / ckpt.LATEST)["epoch"] == 1
    assert not (tmp_path / "killed" / ckpt.FINAL_MODEL).exists()
    assert len(read_metrics(tmp_path / "killed")) == 1
    fit(_cfg(method, tmp_path / "killed", resume=True))
    a, b = _same_state(tmp_path / "straight" / ckpt.FINAL_MODEL, tmp_path / "killed" / ckpt.FINAL_MODEL)
    assert b["epoch"] == 3
    metrics = read_metrics(tmp_path / "killed")
    assert [r["epoch"] for r in metrics] == [1, 2, 3]


def test_run_directory_layout_and_metrics(tmp_path):
    out = tmp_path / "run"
    assert fit(_cfg("standard", out, epochs=2, save_freq=1, tensorboard=True)) == out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "checkpoint_epoch1.pt",
            "checkpoint_epoch2.pt"} <= names
    # tensorboard is an extra of its own ([tensorboard]), which `pip install .[test]` leaves out
    board = importlib.util.find_spec("tensorboard") is not None
    assert ("tensorboard" in names) == board
    assert not [n for n in names if n.endswith(".tmp")]
    metrics = read_metrics(out)
    assert [r["epoch"] for r in metrics] == [1, 2]
    for record in metrics:
        assert set(record) == {"epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds"}
        assert 0 <= record["train_acc"] <= 1 and 0 <= record["test_acc"] <= 1
    # Default schedule for 2 epochs: C.3's drop at 75 of 76, scaled: epoch 2 runs at lr/10.
    assert metrics[0]["lr"] == pytest.approx(0.1) and metrics[1]["lr"] == pytest.approx(0.01)
    saved = TrainConfig.load(out)
    assert saved.resume is False and saved.epsilon is None and saved.arch == "small-cnn"  # standard: no budget
    assert ckpt.load(out / "checkpoint_epoch1.pt")["epoch"] == 1
    assert not board or any((out / "tensorboard").iterdir())


def test_training_learns_the_synthetic_task(tmp_path):
    out = fit(_cfg("standard", tmp_path / "run", epochs=3, max_batches=None, lr_drop=[]))
    assert read_metrics(out)[-1]["test_acc"] > 0.6


def test_new_run_refuses_a_non_empty_directory(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("notes.txt", "a", "b", "c"):
        (out / name).write_text("mine")
    with pytest.raises(ConfigError) as refused:
        fit(_cfg("standard", out, epochs=1))
    assert str(refused.value) == (f"--out {out} is not empty; it holds other files (a, b, c and 1 more) and no "
                                  f"run to resume (no config.json): choose a new or empty directory (nothing is "
                                  f"ever overwritten)")  # no --resume: there is nothing to resume
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 4
    (out / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=re.escape(f"--out {out} is not empty; it holds a run (config.json): "
                                                    f"pass --resume to continue it")):
        fit(_cfg("standard", out, epochs=1))


def test_a_new_run_starts_where_a_killed_first_write_left_only_its_temporary_file(tmp_path):
    """SIGKILL during the first config.json write leaves .config.json.XXXXXXXX.tmp and nothing else:
    there is no run to resume, so a new run takes the directory and removes the leftover."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.abcd1234.tmp").write_text('{"method": "sta')
    fit(_cfg("standard", out, epochs=1, max_batches=1))
    assert not (out / ".config.json.abcd1234.tmp").exists()
    assert TrainConfig.load(out).method == "standard" and ckpt.load(out / ckpt.FINAL_MODEL)["epoch"] == 1


def test_resume_refuses_conflicting_settings(tmp_path):
    out = tmp_path / "run"
    fit(_cfg("at-pgd", out, epochs=1, max_batches=1))
    with pytest.raises(ConfigError, match=r"--lr 0\.05"):
        fit(_cfg("at-pgd", out, epochs=1, max_batches=1, lr=0.05, resume=True))
    with pytest.raises(ConfigError, match="--method"):
        fit(_cfg("standard", out, epochs=1, max_batches=1, resume=True))
    with pytest.raises(ConfigError, match="no config.json"):
        fit(_cfg("at-pgd", tmp_path / "missing", epochs=1, resume=True))


def test_resume_can_extend_a_finished_run(tmp_path):
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=1, max_batches=1, lr_drop=[]))
    fit(_cfg("standard", out, epochs=1, max_batches=1, lr_drop=[], resume=True))  # finished: no-op
    assert ckpt.load(out / ckpt.FINAL_MODEL)["epoch"] == 1
    fit(_cfg("standard", out, epochs=2, max_batches=1, lr_drop=[], resume=True))
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert ckpt.load(out / ckpt.FINAL_MODEL)["epoch"] == 2


def test_a_longer_resume_cut_short_leaves_its_newest_weights_to_eval(tmp_path, stop_after_epoch, capsys):
    """A finished run's model.pt must not outlive a resume that trains further: eval --checkpoint
    RUN_DIR (resolve, load_model) would score it instead of the newer checkpoint."""
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=1, max_batches=1, lr_drop=[]))
    stop_after_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg("standard", out, epochs=3, max_batches=1, lr_drop=[], resume=True))
    assert f"removed {out / ckpt.FINAL_MODEL}" in capsys.readouterr().out
    assert not (out / ckpt.FINAL_MODEL).exists()
    assert ckpt.resolve(out) == out / ckpt.LATEST
    newest = ckpt.load(out)
    assert newest["epoch"] == 2
    model, trained = ckpt.read_model(out)  # what adt-fast eval --checkpoint RUN_DIR loads
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, newest["model"][name]), name
    assert trained == {"method": "standard", "epoch": 2, "epochs": 3}  # eval's report says so


def test_a_resume_from_python_takes_the_settings_left_at_their_defaults_from_the_run(tmp_path):
    """As the command's unset flags: a fresh TrainConfig names what it changes and nothing else
    (here the run's own lr_drop, lr, batch size, batch cap and TensorBoard setting)."""
    out = tmp_path / "run"
    fit(_cfg("at-pgd", out, epochs=2, lr=0.05, batch_size=16, max_batches=2, steps=1))
    before = json.loads((out / "config.json").read_text())
    fit(TrainConfig("at-pgd", "synthetic", str(out), resume=True, device="cpu", steps=1, epochs=3))
    assert json.loads((out / "config.json").read_text()) == {**before, "epochs": 3}
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert not (out / "tensorboard").exists()
    with pytest.raises(ConfigError, match=r"--steps 2 \(the run has 1\)"):  # a given setting still conflicts
        fit(TrainConfig("at-pgd", "synthetic", str(out), resume=True, device="cpu", steps=2, epochs=3))
    # A default value is given by naming it, as the command's --max-batches all lifts the cap.
    fit(TrainConfig("at-pgd", "synthetic", str(out), resume=True, max_batches=None), given={"max_batches"})
    assert json.loads((out / "config.json").read_text()) == {**before, "epochs": 3, "max_batches": None}


def test_resume_accepts_the_runs_lr_drop_in_any_order(tmp_path):
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=1, max_batches=1, lr_drop=[5, 3]))
    assert TrainConfig.load(out).lr_drop == [3, 5]
    fit(_cfg("standard", out, epochs=2, max_batches=1, lr_drop=[5, 3], resume=True))
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    with pytest.raises(ConfigError, match=r"--lr-drop \[3, 4\] \(the run has \[3, 5\]\)"):
        fit(_cfg("standard", out, epochs=2, max_batches=1, lr_drop=[4, 3], resume=True))


def test_an_lr_drop_epoch_given_twice_is_refused_and_an_older_run_with_one_resumes(tmp_path):
    """MultiStepLR drops once per listed epoch: [2, 2] multiplies the lr by gamma twice at epoch 2.
    A run made before the refusal ran so; it resumes as it ran."""
    with pytest.raises(ConfigError, match=r"^--lr-drop names epoch 2 more than once, which would multiply "
                                          r"the lr by --lr-gamma 0.1 twice there; give each epoch once$"):
        fit(_cfg("standard", tmp_path / "new", lr_drop=[3, 2, 2]))
    assert not (tmp_path / "new").exists()
    out = tmp_path / "old"
    fit(_cfg("standard", out, epochs=1, max_batches=1, lr_drop=[3]))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "lr_drop": [3, 3]}))
    payload = ckpt.load(out / ckpt.LATEST)
    payload["config"]["lr_drop"] = [3, 3]
    payload["schedulers"]["model"]["milestones"][2] += 1  # MultiStepLR's Counter of 0-based epochs
    ckpt.save_atomic(payload, out / ckpt.LATEST)
    fit(_cfg("standard", out, epochs=3, max_batches=1, resume=True))
    assert [r["lr"] for r in read_metrics(out)] == pytest.approx([0.1, 0.1, 0.1 * 0.1 * 0.1])


def test_an_epoch_whose_loss_is_not_finite_is_named_on_stderr_and_the_run_goes_on(tmp_path, capsys):
    out = fit(_cfg("standard", tmp_path / "run", epochs=2, max_batches=2, lr=1e30))
    err = capsys.readouterr().err
    assert [int(n) for n in re.findall(r"warning: epoch (\d)/2: the training loss is nan, not a finite number: "
                                       r"the run has diverged \(a smaller --lr may keep it stable\)", err)] == [1, 2]
    assert (out / ckpt.FINAL_MODEL).is_file()
    fit(_cfg("standard", tmp_path / "fine", epochs=1, max_batches=2))
    assert "warning" not in capsys.readouterr().err


def test_the_largest_seed_trains(tmp_path):
    out = fit(_cfg("standard", tmp_path / "run", epochs=1, max_batches=1, seed=MAX_SEED))
    assert TrainConfig.load(out).seed == 2**64 - 1


def test_resume_removes_only_the_temporary_files_of_killed_atomic_writes(tmp_path, capsys):
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=1, max_batches=1, lr_drop=[]))
    leftovers = [".checkpoint.pt.k2x_9qaz.tmp", ".metrics.jsonl.abcdefgh.tmp"]
    kept = [".notes.tmp", "checkpoint.pt.k2x_9qaz.tmp", ".checkpoint.pt.k2x_9qaz.tmp.keep",
            ".checkpoint.pt.ABCDEFGH.tmp", ".checkpoint.pt.abc.tmp"]
    for name in leftovers + kept:
        (out / name).write_text("mine")
    (out / ".model.pt.dir00000.tmp").mkdir()  # not a file: not the writer's
    fit(_cfg("standard", out, epochs=1, max_batches=1, lr_drop=[], resume=True))
    assert "removed 2 temporary file(s)" in capsys.readouterr().out
    assert not any((out / name).exists() for name in leftovers)
    assert all((out / name).read_text() == "mine" for name in kept)
    assert (out / ".model.pt.dir00000.tmp").is_dir()


def test_a_run_directory_trains_in_one_process_at_a_time(tmp_path):
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=1, max_batches=1, lr_drop=[]))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with lock_folder(out):  # as another process training there holds it
        with pytest.raises(ConfigError, match=f"--out {out}: another process is training this run directory"):
            fit(_cfg("standard", out, epochs=2, max_batches=1, lr_drop=[], resume=True))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    fit(_cfg("standard", out, epochs=2, max_batches=1, lr_drop=[], resume=True))  # released
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]


def test_a_run_that_goes_on_while_a_resume_starts_is_not_overwritten(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=2, max_batches=1, lr_drop=[]))
    checked = loop.check_resumable

    def meanwhile(cfg, done):  # another process finishes an epoch after this one read the checkpoint
        checked(cfg, done)
        state = ckpt.load(out / ckpt.LATEST)
        ckpt.save_atomic({**state, "epoch": 3}, out / ckpt.LATEST)
    monkeypatch.setattr(loop, "check_resumable", meanwhile)
    with pytest.raises(ConfigError, match="another process wrote checkpoint.pt while this resume was starting"):
        fit(_cfg("standard", out, epochs=4, max_batches=1, lr_drop=[], resume=True))
    assert ckpt.load(out / ckpt.LATEST)["epoch"] == 3 and len(read_metrics(out)) == 2


def test_a_new_run_started_meanwhile_in_the_same_out_is_not_overwritten(tmp_path, monkeypatch):
    out = tmp_path / "run"
    built = loop.build_trainer

    def meanwhile(cfg, dataset, world=None):  # another process starts a run there first
        trainer = built(cfg, dataset, world)
        out.mkdir()
        (out / "config.json").write_text("theirs")
        return trainer
    monkeypatch.setattr(loop, "build_trainer", meanwhile)
    with pytest.raises(ConfigError, match="another process started a run there"):
        fit(_cfg("standard", out, epochs=1, max_batches=1))
    assert [p.name for p in out.iterdir()] == ["config.json"] and (out / "config.json").read_text() == "theirs"


def _digits(**settings):
    cfg = TrainConfig(settings.pop("method", "standard"), "digits", "unused", epochs=1, **settings).resolve()
    return cfg, datasets.open_dataset("digits")


@pytest.mark.parametrize("settings,message", [
    ({"arch": "resnet18", "batch_size": 479},  # digits: 1438 = 3 * 479 + 1
     "--batch-size 479: the last batch of each epoch would hold 1 of the 1438 training examples, and the "
     "BatchNorm layers of the classifier (resnet18) need at least 2 examples in training"),
    ({"arch": "resnet18", "batch_size": 1}, "--batch-size 1: every training batch would hold one example"),
    ({"method": "adt-imp-am", "generator_width": 4, "batch_size": 479}, "BatchNorm layers of the q-network"),
    ({"method": "adt-imp-am", "generator_width": 4, "batch_size": 1}, "every training batch would hold one"),
])
def test_a_training_batch_of_one_is_refused_where_batchnorm_needs_two(settings, message):
    """resnet18 and the q-network end at 1x1 features on 8 px images: training-mode BatchNorm
    refuses a single value per channel, which would crash the run at an epoch's end."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        loop.build_trainer(*_digits(**settings))


@pytest.mark.parametrize("settings,sizes", [
    ({"batch_size": 479}, [479, 479, 479, 1]),                                  # small-cnn trains on one example
    ({"arch": "resnet18", "batch_size": 479, "max_batches": 3}, [479, 479, 479]),  # stops before the last batch
    ({"arch": "resnet18", "batch_size": 478}, [478, 478, 478, 4]),              # a last batch of 4
])
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning")  # the stubs never step
def test_batches_that_batchnorm_can_train_on_are_accepted(settings, sizes, monkeypatch):
    """An epoch hands the method the batches the check counted, and the short last batch, where
    there is one, takes a real training step (training-mode BatchNorm raises on one example).
    The full batches are stubbed out: seconds rather than a minute of resnet18 on the CPU."""
    trainer = loop.build_trainer(*_digits(**settings))
    real_step, seen = trainer.method.train_step, []

    def step(model, x, y, optimisers, **kwargs):
        seen.append(len(y))
        if len(y) < trainer.config.batch_size:
            return real_step(model, x, y, optimisers, **kwargs)
        return StepOutput(torch.zeros(()), None)

    monkeypatch.setattr(trainer.method, "train_step", step)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_epoch()
    assert seen == sizes
    changed = any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    assert changed == (sizes[-1] < sizes[0])  # only the real step updates the classifier


def test_a_batch_of_one_per_process_is_refused_unless_batchnorm_is_synchronised():
    cfg, _ = _digits(arch="resnet18", batch_size=2, sync_bn=False)
    with pytest.raises(ConfigError, match="every training batch would hold one example per process"):
        loop._check_two_examples(cfg, 1438, World(size=2), ["the classifier (resnet18)"])
    loop._check_two_examples(dataclasses.replace(cfg, sync_bn=True), 1438, World(size=2),
                             ["the classifier (resnet18)"])
    with pytest.raises(ConfigError, match=r"would hold 2 of the 1438 training examples \(1 per process\)"):
        loop._check_two_examples(dataclasses.replace(cfg, batch_size=4), 1438, World(size=2), ["q"])


def _trained_then_lost_its_checkpoint(out, keep):
    """A finished 3-epoch run with snapshots, whose checkpoint.pt and all but `keep` are gone."""
    fit(_cfg("standard", out, epochs=3, max_batches=1, save_freq=1))
    (out / ckpt.LATEST).unlink()
    for name in (ckpt.FINAL_MODEL, "checkpoint_epoch1.pt", "checkpoint_epoch2.pt", "checkpoint_epoch3.pt"):
        if name not in keep:
            (out / name).unlink()
    if "metrics.jsonl" not in keep:
        (out / "metrics.jsonl").write_text("")


@pytest.mark.parametrize("keep,found,how", [
    ({"model.pt"}, "model.pt", "start a new run in another --out"),
    ({"metrics.jsonl"}, "metrics.jsonl with 3 epoch(s)", "start a new run in another --out"),
    ({"checkpoint_epoch2.pt"}, "checkpoint_epoch2.pt", "COPY"),
    ({"checkpoint_epoch1.pt", "checkpoint_epoch2.pt", "checkpoint_epoch3.pt"}, "2 snapshots up to checkpoint_epoch3.pt",
     "COPY"),
    ({"model.pt", "checkpoint_epoch1.pt", "metrics.jsonl"}, "model.pt, metrics.jsonl with 3 epoch(s)", "COPY"),
])
def test_resume_without_a_checkpoint_refuses_a_run_that_trained(tmp_path, keep, found, how):
    """Without checkpoint.pt a resume would start from epoch 1: right for a run killed before its
    first checkpoint, wrong where model.pt, a metrics line or a later snapshot shows it trained
    (it would overwrite them and leave model.pt stale)."""
    out = tmp_path / "run"
    _trained_then_lost_its_checkpoint(out, keep)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    if how == "COPY":
        newest = out / max(name for name in keep if name.startswith("checkpoint_epoch"))
        how = f"to go on from the newest snapshot, copy it: cp {newest} {out / ckpt.LATEST}"
    with pytest.raises(ConfigError) as refused:
        fit(_cfg("standard", out, epochs=3, max_batches=1, save_freq=1, resume=True))
    assert str(refused.value) == (f"--resume: {out} holds no checkpoint.pt but {found}: the run trained, and "
                                  f"starting it again from epoch 1 would overwrite them; {how}")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_the_copied_snapshot_the_refusal_suggests_resumes_the_run(tmp_path):
    out = tmp_path / "run"
    _trained_then_lost_its_checkpoint(out, {"checkpoint_epoch1.pt", "metrics.jsonl"})
    (out / ckpt.LATEST).write_bytes((out / "checkpoint_epoch1.pt").read_bytes())
    fit(_cfg("standard", out, epochs=3, max_batches=1, save_freq=1, resume=True))
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3] and ckpt.load(out / ckpt.FINAL_MODEL)["epoch"] == 3


def _interrupt_at_a_write(monkeypatch, epoch, after):
    """A Ctrl-C right after epoch `epoch`'s write of `after` (the snapshot or checkpoint.pt)."""
    saved = loop.ckpt.save_atomic

    def save_then_stop(payload, path):
        written = saved(payload, path)
        if payload["epoch"] == epoch and path.name == after:
            raise KeyboardInterrupt
        return written
    monkeypatch.setattr(loop.ckpt, "save_atomic", save_then_stop)


def _tensorboard_steps(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars("test_acc")]


@pytest.mark.parametrize("epoch", [1, 2])
@pytest.mark.parametrize("after", ["snapshot", "checkpoint.pt"])
def test_a_kill_around_an_epochs_checkpoint_loses_no_snapshot_metrics_line_or_tensorboard_point(
        tmp_path, monkeypatch, epoch, after):
    """The snapshot is written before checkpoint.pt: a kill between them redoes the epoch and
    writes it again; a kill after checkpoint.pt finds it there. metrics.jsonl and TensorBoard end
    with exactly one entry per epoch, also for the epoch whose entries the kill cut off."""
    pytest.importorskip("tensorboard")
    settings = dict(epochs=3, max_batches=2, save_freq=1, steps=1, tensorboard=True)
    fit(_cfg("at-pgd", tmp_path / "straight", **settings))
    out = tmp_path / "killed"
    with monkeypatch.context() as patch:
        _interrupt_at_a_write(patch, epoch, f"checkpoint_epoch{epoch}.pt" if after == "snapshot" else after)
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg("at-pgd", out, **settings))
    assert (out / f"checkpoint_epoch{epoch}.pt").is_file()
    fit(_cfg("at-pgd", out, resume=True, **settings))
    for name in ("checkpoint_epoch1.pt", "checkpoint_epoch2.pt", "checkpoint_epoch3.pt", ckpt.FINAL_MODEL):
        _same_state(tmp_path / "straight" / name, out / name)
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3]
    assert _tensorboard_steps(out) == [1, 2, 3]


def test_resume_before_the_first_checkpoint_starts_over(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=1, max_batches=2))
    with monkeypatch.context() as patch:
        _kill_after(patch, ComposedMethod, 1)
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg("standard", tmp_path / "killed", epochs=1, max_batches=2))
    assert not (tmp_path / "killed" / ckpt.LATEST).exists()
    fit(_cfg("standard", tmp_path / "killed", epochs=1, max_batches=2, resume=True))
    _same_state(out / ckpt.FINAL_MODEL, tmp_path / "killed" / ckpt.FINAL_MODEL)


@pytest.mark.parametrize("changes,flag", [
    ({"method": "nope"}, "--method"), ({"dataset": "imagenet"}, "--dataset"), ({"arch": "vgg"}, "--arch"),
    ({"epsilon": 0.0}, "--epsilon"), ({"epsilon": -1.0}, "--epsilon"), ({"steps": -1}, "--steps"),
    ({"samples": 0}, "--samples"), ({"batch_size": 0}, "--batch-size"), ({"epochs": 0}, "--epochs"),
    ({"lr": 0.0}, "--lr"), ({"precision": "fp8"}, "--precision"), ({"loss": "hinge"}, "--loss"),
    ({"lbd": -0.1}, "--lbd"), ({"dist_betas": (0.0, 1.0)}, "--dist-betas"), ({"device": "tpu"}, "--device"),
    ({"backend": "magic"}, "--backend"), ({"lr_drop": [0]}, "--lr-drop"), ({"max_batches": 0}, "--max-batches"),
    ({"epsilon": float("nan")}, "--epsilon"), ({"seed": 2**64}, "--seed"), ({"momentum": 1.0}, "--momentum"),
    ({"momentum": 5.0}, "--momentum"), ({"lr_drop": [3, 3]}, "--lr-drop"),
])
def test_bad_settings_name_their_flag(tmp_path, changes, flag):
    settings = {"method": "adt-exp", **changes}
    cfg = TrainConfig(settings.pop("method"), settings.pop("dataset", "synthetic"), str(tmp_path / "r"), **settings)
    with pytest.raises(ConfigError, match=flag):
        fit(cfg)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("method,changes,flag", [
    ("at-pgd", {"samples": 3}, "--samples"), ("standard", {"steps": 3}, "--steps"),
    ("at-pgd", {"loss": "trades"}, "--loss"), ("adt-exp", {"beta": 1.0}, "--beta"),
    ("trades", {"loss": "ce"}, "--loss"), ("adt-exp", {"step_size": 0.01}, "--step-size"),
])
def test_settings_a_method_does_not_use_are_refused(method, changes, flag):
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(method, "synthetic", "unused", **changes).resolve()


def test_config_json_round_trip():
    cfg = TrainConfig("adt-exp", "synthetic", "runs/x", loss="trades", beta=1.0, lr_drop=[5, 8]).resolve()
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and again.resolve() == cfg
    assert json.loads(cfg.to_json())["dist_betas"] == [0.0, 0.0]
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# ------------------------------------------------------------------------------------------------
# A method that owns an extra network and optimiser (the shape of issue 5's amortised methods) is
# checkpointed and resumed by the same loop.
class _WithExtra(Method):
    name = "test-extra"

    def __init__(self, config, model, runtime):
        super().__init__(config, model, runtime)
        self.extra = nn.Linear(3 * 8 * 8, 3 * 8 * 8).to(runtime.device)
        nn.init.zeros_(self.extra.weight)
        self.adam = torch.optim.Adam(self.extra.parameters(), lr=1e-3)
        self.schedule = torch.optim.lr_scheduler.StepLR(self.adam, step_size=1, gamma=0.5)
        self.calls = 0

    def modules(self):
        return {"extra": self.extra}

    def optimisers(self):
        return {"extra": self.adam}

    def schedulers(self):
        return {"extra": self.schedule}

    def extra_state(self):
        return {"calls": self.calls}

    def load_extra_state(self, state):
        self.calls = state["calls"]

    def step(self, model, x, y):
        self.calls += 1
        delta = 0.01 * torch.tanh(self.extra(x.flatten(1))).view_as(x)
        logits = self.runtime.forward(model, (x + delta).clamp(0, 1))
        return StepOutput(cross_entropy(logits, y).mean(), logits.detach())


@pytest.fixture
def extra_method():
    register_method(MethodSpec("test-extra", _WithExtra, {}, description="test only"))
    yield
    METHODS.pop("test-extra")


def test_extra_modules_and_optimisers_are_checkpointed_and_resumed(tmp_path, monkeypatch, extra_method):
    fit(_cfg("test-extra", tmp_path / "straight"))
    with monkeypatch.context() as patch:
        _kill_after(patch, _WithExtra, 4)
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg("test-extra", tmp_path / "killed"))
    fit(_cfg("test-extra", tmp_path / "killed", resume=True))
    a = ckpt.load(tmp_path / "straight" / ckpt.LATEST)
    b = ckpt.load(tmp_path / "killed" / ckpt.LATEST)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name])
    for name in a["modules"]["extra"]:
        assert torch.equal(a["modules"]["extra"][name], b["modules"]["extra"][name])
    assert a["modules"]["extra"]["weight"].abs().sum() > 0, "the extra network did not train"
    assert a["optimisers"]["extra"]["state"][0]["step"] == b["optimisers"]["extra"]["state"][0]["step"] == 9
    assert a["schedulers"]["extra"]["last_epoch"] == b["schedulers"]["extra"]["last_epoch"] == 3
    assert a["method_state"] == b["method_state"] == {"calls": 9}


def test_clean_accuracy_restores_the_train_flag():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).train()
    x, y = torch.eye(4)[:2].view(2, 1, 2, 2), torch.tensor([0, 1])
    acc = loop.clean_accuracy(model, x, y)
    assert 0 <= acc <= 1 and model.training


def test_eval_command_points_at_the_run(tmp_path):
    command = loop.eval_command(tmp_path / "run dir", {"kind": "named", "name": "digits"})
    assert command.startswith("adt-fast eval --checkpoint ") and "--dataset digits" in command
    assert "report.json" in command and "'" in command  # the space is quoted
    assert dataclasses.is_dataclass(TrainConfig)


@pytest.mark.parametrize("epsilon,shown", [(0.1, None), (4 / 255, "4/255"), (0.05, "0.05"),
                                           (0.123456789, "0.123456789"), (None, None)])
def test_eval_command_names_the_runs_budget_when_it_is_not_the_datasets(tmp_path, epsilon, shown):
    """eval's --epsilon defaults to the dataset's (digits: 0.1): a run trained at another budget is
    scored at its own, written so that eval reads back exactly the run's float."""
    from adt_fast.cli import build_parser

    command = loop.eval_command(tmp_path, {"kind": "named", "name": "digits"}, epsilon, dataset_epsilon=0.1)
    args = build_parser().parse_args(shlex.split(command)[1:])
    if shown is None:
        assert "--epsilon" not in command and args.epsilon is None
    else:
        assert f"--dataset digits --epsilon {shown} --out" in command and args.epsilon == epsilon


def test_epsilon_is_refused_for_standard_training_and_old_standard_runs_resume(tmp_path):
    """Standard training has no perturbation: --epsilon changes nothing it computes (its metrics
    are clean accuracies), so it is refused and resolves to None, like an unused method setting.
    Runs written before recorded the dataset's epsilon; they resume, and record None from then on."""
    with pytest.raises(ConfigError, match=re.escape("--epsilon does not apply to --method standard")):
        _resolved("standard", epsilon=0.1)
    assert _resolved("standard").epsilon is None and _resolved("at-pgd").epsilon == pytest.approx(8 / 255)
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=1, max_batches=1))
    stored = json.loads((out / "config.json").read_text())
    assert stored["epsilon"] is None
    (out / "config.json").write_text(json.dumps({**stored, "epsilon": 0.1}))  # as an older run recorded it
    with pytest.raises(ConfigError, match=re.escape("--epsilon 0.1 does not apply to --method standard")):
        fit(_cfg("standard", out, epochs=2, max_batches=1, resume=True, epsilon=0.1))  # not "the run has null"
    fit(_cfg("standard", out, epochs=2, max_batches=1, resume=True))
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert json.loads((out / "config.json").read_text())["epsilon"] is None


def test_an_older_run_with_more_samples_per_pass_than_samples_resumes(tmp_path):
    """Such a run was accepted before the refusal, and a pass never held more than --samples."""
    out = tmp_path / "run"
    fit(_cfg("adt-exp", out, epochs=1, max_batches=1, samples=3, samples_per_pass=3))
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**stored, "samples_per_pass": 5}))
    fit(_cfg("adt-exp", out, epochs=2, max_batches=1, resume=True))
    assert json.loads((out / "config.json").read_text())["samples_per_pass"] == 3


@pytest.mark.parametrize("given, message", [
    (["save-freq"], "given names no TrainConfig field: save-freq (did you mean save_freq?)"),
    ("max_batches", "not the string 'max_batches'"),
])
def test_fit_names_what_is_wrong_with_given(tmp_path, given, message):
    out = tmp_path / "run"
    fit(_cfg("standard", out, epochs=1, max_batches=1))
    with pytest.raises(ConfigError, match=re.escape(message)):
        fit(_cfg("standard", out, epochs=2, max_batches=1, resume=True), given=given)


@pytest.mark.parametrize("dataset,epochs", [("digits", 15), ("synthetic", 5), ("cifar10", 76)])
def test_default_epochs_per_dataset(dataset, epochs):
    assert TrainConfig(method="standard", dataset=dataset, out="run").resolve().epochs == epochs


# Settings added after the first runs were written (issue 12's variants, issue 13's speed flags):
# an older config.json has no entry for them.
LATER_SETTINGS = ("generator_grad", "beta_scales_entropy", "trades_inner", "image_size", "samples_per_pass",
                  "exact_train_acc")


@pytest.mark.parametrize("method,settings,default", [
    ("trades", {"steps": 1}, {"trades_inner": "at-pgd"}),
    ("adt-exp", {"steps": 1, "samples": 1, "loss": "trades"}, {"beta_scales_entropy": False}),
    ("adt-exp-am", {"generator_width": 4}, {"generator_grad": "per-example"}),
    # a run from before --beta-scales-entropy ran without it (today's default for adt-imp-am is on)
    ("adt-imp-am", {"generator_width": 4, "loss": "trades", "beta_scales_entropy": False},
     {"generator_grad": "per-example", "beta_scales_entropy": False}),
    ("l2l", {"generator_width": 4}, {"generator_grad": "per-example"}),
])
def test_runs_older_than_a_setting_resume_with_its_default(tmp_path, method, settings, default):
    out = tmp_path / "run"
    fit(_cfg(method, out, epochs=1, max_batches=1, batch_size=16, lr_drop=[], **settings))
    stored = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in stored.items() if k not in LATER_SETTINGS}))
    saved = TrainConfig.load(out)
    assert {name: getattr(saved, name) for name in default} == default
    name, value = next(iter(default.items()))
    other = {"trades_inner": "trades-code", "beta_scales_entropy": True, "generator_grad": "batch-mean"}[name]
    with pytest.raises(ConfigError, match=rf'{flag(name)} {json.dumps(other)} \(the run has {json.dumps(value)}\)'):
        fit(dataclasses.replace(saved, resume=True, epochs=2, **{name: other}))
    fit(dataclasses.replace(saved, resume=True, epochs=2))
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]
    assert {k: json.loads((out / "config.json").read_text())[k] for k in default} == default


# The logged loss, the optimiser's C.3 settings and the test accuracy's eval mode (mutation review).
def _standard_cfg(out, **kw):
    settings = dict(epochs=1, max_batches=2, batch_size=32, tensorboard=False, device="cpu")
    settings.update(kw)
    return TrainConfig("standard", "synthetic", str(out), **settings)


def test_train_loss_is_the_per_example_mean_and_sgd_gets_c3_settings(tmp_path):
    out = fit(_standard_cfg(tmp_path / "r"))
    assert 1.5 < read_metrics(out)[0]["train_loss"] < 3.5      # ~ln 10 in the first two batches
    group = ckpt.load(out / "checkpoint.pt")["optimisers"]["model"]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == pytest.approx(2e-4)


def test_clean_accuracy_is_eval_mode_and_counts_every_batch():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2)).train()
    x = torch.rand(5, 1, 2, 2)
    before = model[1].running_mean.clone()
    with torch.no_grad():
        model.eval()
        pred = model(x).argmax(1)
        model.train()
    y = 1 - pred
    y[-1] = pred[-1]                     # only the last example (alone in the last batch) is right
    assert loop.clean_accuracy(model, x, y, batch_size=2) == pytest.approx(1 / 5)
    assert torch.equal(model[1].running_mean, before)


# C.3's batch size and lr drop, the resume conflicts of seed, precision and device, save_freq, and
# booleans as integer settings (mutation review 2026-12-05).
def test_c3_defaults_batch_size_and_the_lr_drop_at_epoch_75_of_76():
    """Appendix C.3: batch size 64, lr 0.1 reduced to 0.01 in the 75th of 76 epochs (mutants: batch
    size 128; the drop at round(74 N / 76), i.e. epoch 74)."""
    cfg = TrainConfig("at-pgd", "cifar10", "run", device="cpu").resolve()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_gamma, cfg.lr_drop) == (76, 64, 0.1, 0.1, [75])
    # Other lengths drop at round(75 N / 76), never before epoch 2.
    assert TrainConfig("standard", "cifar10", "run", epochs=20, device="cpu").resolve().lr_drop == [20]
    assert TrainConfig("standard", "cifar10", "run", epochs=2, device="cpu").resolve().lr_drop == [2]
    assert TrainConfig("standard", "cifar10", "run", epochs=1, device="cpu").resolve().lr_drop == []


def test_madry_cnn_defaults_to_lr_0_01_and_an_explicit_lr_is_kept(tmp_path):
    """Madry et al.'s CNN has no BatchNorm and stalled at chance with C.3's lr 0.1 (docs/training.md):
    MNIST's default arch, or madry-cnn asked for any data, starts from 0.01; --lr still decides,
    and a run that recorded 0.1 resumes with it."""
    resolve = lambda **kw: TrainConfig("at-pgd", "mnist", str(tmp_path / "r"), device="cpu", **kw).resolve()
    assert (resolve().arch, resolve().lr) == ("madry-cnn", 0.01)
    assert resolve(arch="small-cnn").lr == 0.1 and resolve(lr=0.1).lr == 0.1
    assert TrainConfig("at-pgd", "synthetic", "r", arch="madry-cnn", device="cpu").resolve().lr == 0.01
    recorded = resolve(lr=0.1)
    asked = TrainConfig("at-pgd", "mnist", str(tmp_path / "r"), device="cpu", resume=True)
    assert "lr" not in asked.given() and resume_config(recorded, asked.given()).resolve().lr == 0.1


def test_resume_refuses_another_seed(tmp_path):
    """The seed decides the run's random numbers: a --resume that asks for another is a conflict
    (mutant: seed among RESUMABLE_CHANGES, silently accepted)."""
    saved = TrainConfig("standard", "synthetic", str(tmp_path / "r"), device="cpu").resolve()
    asked = TrainConfig("standard", "synthetic", str(tmp_path / "r"), device="cpu", seed=1, resume=True)
    assert "seed" not in RESUMABLE_CHANGES
    assert any(c.startswith("--seed 1 (the run has 0)") for c in asked.conflicts(saved))


def test_resume_on_another_device_type_is_a_conflict(tmp_path):
    """--device may change on resume, but not its type: the saved random states belong to the
    device type the run trained on (mutant: that check dropped). Simulated with a saved config
    that says cuda; this machine's cpu resumes it."""
    saved = TrainConfig("standard", "synthetic", str(tmp_path / "r"), device="cpu").resolve()
    saved.device = "cuda"
    asked = TrainConfig("standard", "synthetic", str(tmp_path / "r"), device="cpu", resume=True)
    conflicts = asked.conflicts(saved)
    assert len(conflicts) == 1 and conflicts[0].startswith("--device cpu (the run has cuda")


def test_save_freq_defaults_to_25_and_0_means_no_snapshots(tmp_path):
    """docs/training.md: --save-freq 25 (0 = none) (mutants: 0 refused; another default)."""
    from adt_fast.train import fit

    assert TrainConfig("standard", "synthetic", "run", device="cpu").resolve().save_freq == 25
    out = fit(TrainConfig("standard", "synthetic", str(tmp_path / "r"), epochs=1, max_batches=1, save_freq=0,
                          tensorboard=False, device="cpu"))
    assert not list(out.glob("checkpoint_epoch*.pt")) and (out / "checkpoint.pt").is_file()


@pytest.mark.parametrize("name", ["epochs", "batch_size", "seed", "save_freq", "max_batches"])
def test_a_boolean_is_not_an_integer_setting(name):
    """A hand-written config.json's `true` is not 1 (mutant: _int's bool check dropped)."""
    from adt_fast.train import ConfigError

    with pytest.raises(ConfigError, match=name.replace("_", "-")):
        TrainConfig("standard", "synthetic", "run", device="cpu", **{name: True}).resolve()


def test_resume_refuses_another_precision(tmp_path):
    """bf16 changes the maths of every step, not only the last bits: it is not among the settings a
    resume may change (mutant: precision added to RESUMABLE_CHANGES)."""
    saved = TrainConfig("standard", "synthetic", str(tmp_path / "r"), device="cpu").resolve()
    asked = TrainConfig("standard", "synthetic", str(tmp_path / "r"), device="cpu", precision="bf16", resume=True)
    assert any(c.startswith('--precision "bf16" (the run has "fp32")') for c in asked.conflicts(saved))


# Killers from a mutation review of the training config: C.3's defaults, the per-method
# defaults (C.3, C.4, TRADES' and Kannan et al.'s code) and the validation bounds.
def _resolved(method, dataset="synthetic", **kw):
    return TrainConfig(method, dataset, "unused", tensorboard=False, **kw).resolve()


def test_defaults_are_appendix_c3():
    """SGD momentum 0.9, weight decay 2e-4, batch 64, lr 0.1 dropped tenfold at epoch 75 of 76."""
    cfg = _resolved("standard", "cifar10")
    assert (cfg.epochs, cfg.lr_drop, cfg.lr, cfg.lr_gamma, cfg.momentum, cfg.weight_decay, cfg.batch_size) == \
        (76, [75], 0.1, 0.1, 0.9, 2e-4, 64)
    assert _resolved("standard", epochs=40).lr_drop == [39]      # round(40 * 75 / 76)
    assert _resolved("standard", epochs=1).lr_drop == []
    assert _resolved("standard", "digits").epochs == 15


@pytest.mark.parametrize("method,expected", [
    ("at-pgd", dict(steps=7, step_size=2 / 255)),
    ("alp", dict(steps=7, step_size=2 / 255, alp_weight=0.5)),
    ("trades", dict(steps=7, step_size=2 / 255, beta=6.0, trades_inner="at-pgd")),
    ("adt-exp", dict(steps=7, samples=5, lbd=0.01, dist_lr=0.3, dist_betas=(0.0, 0.0),
                     dist_grad="per-step", loss="ce")),
])
def test_method_defaults_follow_the_paper_and_the_baselines_code(method, expected):
    """C.3 / C.4: PGD-style loops T=7, step eps/4 (8/255 on synthetic); TRADES beta 6; ALP 0.5;
    ADT_EXP k=5, lambda 0.01, Adam lr 0.3 betas (0, 0), stepping on each step's own gradient."""
    cfg = _resolved(method)
    assert cfg.step_size == pytest.approx(expected.pop("step_size", cfg.step_size))
    assert {name: getattr(cfg, name) for name in expected} == expected


def test_trades_code_inner_is_ten_steps_of_0_007_at_8_255():
    """--trades-inner trades-code takes train_trades_cifar10.py's 10 steps of 0.007 at eps 0.031,
    and refuses a contradicting --steps."""
    cfg = _resolved("trades", trades_inner="trades-code")
    assert (cfg.steps, cfg.step_size) == (10, pytest.approx(0.007))
    assert _resolved("trades", trades_inner="trades-code", epsilon=16 / 255).step_size == pytest.approx(0.014)
    with pytest.raises(ConfigError, match="--steps"):
        _resolved("trades", trades_inner="trades-code", steps=7)


@pytest.mark.parametrize("settings", [
    dict(method="adt-exp", dist_betas=(0.5, 1.0)), dict(method="adt-exp", samples=0),
    dict(method="adt-exp", dist_lr=0.0), dict(method="at-pgd", step_size=0.0),
    dict(method="trades", beta=-1.0), dict(method="at-pgd", epsilon=1.5), dict(method="at-pgd", step_size=5.0),
])
def test_out_of_range_method_settings_are_refused(settings):
    """Adam's betas lie in [0, 1), k >= 1, learning rates > 0, beta >= 0, eps and the step size in
    (0, 1] (a step of 5 was once trained with, while eval's attacks refused it)."""
    with pytest.raises(ConfigError):
        _resolved(**settings)


@pytest.mark.parametrize("method,name,value", [("adt-exp", "lbd", 0.0), ("at-pgd", "steps", 0),
                                               ("alp", "alp_weight", 0.0)])
def test_zero_entropy_weight_steps_and_pairing_weight_are_allowed(method, name, value):
    """lambda 0 (no entropy term), T=0 (train on the start) and ALP weight 0 are valid settings,
    kept as given: a 0 is not an unset value that the method's default replaces."""
    assert getattr(_resolved(method, **{name: value}), name) == value


def test_more_samples_per_pass_than_samples_are_refused():
    """A pass cannot hold more of the k samples than there are: --samples-per-pass 7 with k = 2
    ran passes of 2 and reported 7 (mode line, tuning.json)."""
    with pytest.raises(ConfigError) as refused:
        _resolved("adt-exp", samples=2, samples_per_pass=7)
    assert str(refused.value) == ("--samples-per-pass 7: a pass cannot hold more than the --samples 2 samples "
                                  "drawn per step; choose 1 to 2 or auto")
    assert _resolved("adt-exp", samples=2, samples_per_pass=2).samples_per_pass == 2
    with pytest.raises(ConfigError, match=re.escape("--samples-per-pass 3: a pass cannot hold more than the "
                                                    "--samples 2 samples")):
        _resolved("adt-exp", samples=2, samples_per_pass=3)  # one past the samples drawn


def test_beta_is_dropped_with_the_ce_loss():
    """beta only applies to --loss trades: a CE run stores none (so --resume compares nothing)."""
    cfg = _resolved("adt-exp")
    assert cfg.beta is None and cfg.beta_scales_entropy is None


def _runs_out_of_memory_above(monkeypatch, examples: int, error: Optional[Exception] = None) -> list:
    """Runtime.forward raising torch's out-of-memory error on an eval-mode batch of more than
    `examples`, as a large test batch beside training's state does on a GPU; returns the sizes tried."""
    tried = []
    forward = loop.Runtime.forward

    def limited(self, model, x, *args, **kwargs):
        if not model.training:
            tried.append(x.shape[0])
            if x.shape[0] > examples:
                raise error or torch.OutOfMemoryError(f"CUDA out of memory (stand-in, {x.shape[0]} examples)")
        return forward(self, model, x, *args, **kwargs)

    monkeypatch.setattr(loop.Runtime, "forward", limited)
    return tried


def test_clean_accuracy_tests_a_batch_that_runs_out_of_memory_in_halves(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(23, 4), torch.randint(0, 3, (23,))
    expected = loop.clean_accuracy(model, x, y, batch_size=10)
    tried = _runs_out_of_memory_above(monkeypatch, 3)
    with pytest.warns(RuntimeWarning) as warned:
        assert loop.clean_accuracy(model, x, y, batch_size=10) == expected
    assert [str(w.message) for w in warned] == [
        f"the test pass ran out of memory on {n} examples a batch; it goes on with {n // 2}" for n in (10, 5)]
    # 10 fails, 5 fails, then 2 at a time within each batch of 10 (the last batch holds 3)
    assert tried == [10, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1]
    _runs_out_of_memory_above(monkeypatch, 0)
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning):
        loop.clean_accuracy(model, x, y, batch_size=10)     # not even one example fits: torch's error
    monkeypatch.undo()
    _runs_out_of_memory_above(monkeypatch, 3, RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. "
                                                           "DefaultCPUAllocator: can't allocate memory: ..."))
    with pytest.warns(RuntimeWarning):   # the CPU allocator's refusal is running out of memory too
        assert loop.clean_accuracy(model, x, y, batch_size=10) == expected
    monkeypatch.undo()
    _runs_out_of_memory_above(monkeypatch, 3, RuntimeError("a bug in the model"))
    with pytest.raises(RuntimeError, match="a bug in the model"):  # any other error is not halved
        loop.clean_accuracy(model, x, y, batch_size=10)


def test_a_test_pass_out_of_memory_costs_no_epoch_and_is_halved_once_a_run(tmp_path, monkeypatch):
    flags = dict(epochs=2, channels_last=False)  # the flag: no eval-mode timing at the start
    plain = read_metrics(fit(_standard_cfg(tmp_path / "plain", **flags), given={"channels_last"}))
    tried = _runs_out_of_memory_above(monkeypatch, 30)
    with pytest.warns(RuntimeWarning, match="test pass ran out of memory") as warned:
        run = fit(_standard_cfg(tmp_path / "oom", **flags), given={"channels_last"})
    tests = tried[0]  # max_batches 2: the test pass is one or two batches of at most 500
    # epoch 1 halves its first batch down to <= 30, the size that epoch 2 starts with: no
    # out-of-memory error there
    halvings = []
    while not halvings or halvings[-1] > 30:
        halvings.append((halvings[-1] if halvings else tests) // 2)
    assert len(warned) == len(halvings) and tried.count(tests) == 1
    assert tried[:len(halvings) + 1] == [tests] + halvings and tests > 30
    assert [r["test_acc"] for r in read_metrics(run)] == [r["test_acc"] for r in plain]
    assert (run / "model.pt").is_file()


def test_the_cpu_allocators_refusal_is_out_of_memory_in_its_posix_and_windows_words():
    from adt_fast.devices import is_out_of_memory, out_of_memory_text

    posix = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 8 bytes. Error code 12 (Cannot allocate memory)")
    windows = RuntimeError("[enforce fail at alloc_cpu.cpp:72] data. DefaultCPUAllocator: not enough memory: you "
                           "tried to allocate 8 bytes.")
    assert is_out_of_memory(posix) and is_out_of_memory(windows) and is_out_of_memory(torch.OutOfMemoryError("x"))
    assert out_of_memory_text(windows) == "DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."
    assert not is_out_of_memory(RuntimeError("DefaultCPUAllocator: alignment must be a power of 2"))
    assert not is_out_of_memory(ValueError("DefaultCPUAllocator: can't allocate memory"))  # not torch's


@pytest.mark.parametrize("batch_size, processes, why", [
    (15, 2, "--batch-size 15 (the run's, which a resume keeps) is the global batch and must be divisible by the "
            "number of processes (2); each would train on 7.5 examples; resume with a number of processes that "
            "divides 15"),
    (33, 11, "--batch-size 33 (the run's, which a resume keeps): the last batch of each epoch holds 5 of the 500 "
             "training examples, fewer than the 11 processes; resume with a number of processes that divides 33 "
             "and is at most 5"),
])
def test_a_resume_names_the_runs_batch_size_as_the_runs_where_the_processes_cannot_split_it(batch_size, processes,
                                                                                             why, tmp_path):
    """A resume keeps the run's --batch-size: where another number of processes cannot split it,
    the refusal named a --batch-size its command line did not pass, and advised changing it."""
    cfg = _cfg("standard", tmp_path, batch_size=batch_size, max_batches=None, resume=True).resolve()
    with pytest.raises(ConfigError) as refused:
        loop._check_world_batches(cfg, 500, World(0, processes))
    assert str(refused.value) == why
