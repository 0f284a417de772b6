"""Resume findings: runs recorded before a later check, and checkpoints or snapshots that are not
what their names say, met on `adt-fast train --resume` (docs/training.md, section 4)."""

from __future__ import annotations

import json

import pytest
import torch

from adt_fast.cli import main
from adt_fast.train import METHODS, ComposedMethod, MethodSpec, fit, register_method
from adt_fast.train import checkpoint as ckpt
from adt_fast.train.config import ConfigError, TrainConfig, resume_config
from adt_fast.train.methods import CEOuter, Clean

TINY = ["--dataset", "synthetic", "--epochs", "1", "--max-batches", "2", "--batch-size", "16",
        "--no-tensorboard", "--device", "cpu", "--save-freq", "0", "--no-channels-last", "--lr-drop"]


def _rewrite(path, **changes):
    """Edit a checkpoint's payload as a hand (or an older version) would, keeping it loadable."""
    payload = ckpt.load(path)
    payload.update(changes)
    ckpt.save_atomic(payload, path)


def _record_step(run, step):
    """Make the run's records (config.json, and the config checkpoint.pt holds) say it took `step`."""
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "step_size": step}))
    _rewrite(run / ckpt.LATEST, config={**ckpt.load(run / ckpt.LATEST)["config"], "step_size": step})


def test_a_run_that_took_a_step_above_1_resumes_as_it_ran(tmp_path, capsys):
    """Training took any --step-size > 0 before 409fae2, which refused it above 1 for new runs and
    for the run's resume alike. A step of 1 moves PGD's iterates as any longer one does (they lie
    in [0, 1]), so the resume goes on with 1, bit for bit as the run would have."""
    straight, old = tmp_path / "straight", tmp_path / "old"
    first = ["train", "--method", "at-pgd", "--step-size", "1", *TINY]
    assert main([*first, "--epochs", "2", "--out", str(straight)]) == 0
    assert main([*first, "--out", str(old)]) == 0
    _record_step(old, 5.0)  # what a run made with --step-size 5 before the check recorded
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(old), "--epochs", "2"]) == 0, capsys.readouterr().err
    # the command line that started it, with --resume (as a script that always passes its flags)
    again = ["train", "--method", "at-pgd", "--step-size", "5", *TINY, "--epochs", "2", "--resume", "--out", str(old)]
    assert main(again) == 0, capsys.readouterr().err
    a, b = ckpt.load(straight / ckpt.LATEST), ckpt.load(old / ckpt.LATEST)
    assert b["epoch"] == 2 and all(torch.equal(a["model"][name], b["model"][name]) for name in a["model"])
    assert TrainConfig.load(old).step_size == 1.0


@pytest.mark.parametrize("recorded", [float("inf"), "5"])
def test_a_step_no_version_took_is_still_refused_on_resume(recorded, tmp_path):
    """Only a step that ran becomes 1: one that no version took stays, for the check to refuse."""
    stored = {"method": "at-pgd", "dataset": "synthetic", "out": str(tmp_path), "resume": True, "step_size": recorded}
    with pytest.raises(ConfigError, match="--step-size must be a finite number"):
        TrainConfig.from_record(stored).resolve()


@pytest.mark.parametrize("saved, given, taken", [(1.0, 5.0, 1.0), (1.0, 1.0, 1.0), (0.5, 5.0, 5.0), (0.5, 0.25, 0.25)])
def test_a_given_step_is_the_runs_only_where_pgd_takes_it_as_the_runs(saved, given, taken, tmp_path):
    """A step of 5 on a run that steps by 0.5 stays 5, for the resume to name as a change."""
    run = TrainConfig("at-pgd", "synthetic", str(tmp_path), step_size=saved)
    assert resume_config(run, {"step_size": given}).step_size == taken


class _Averaging(ComposedMethod):
    """Clean training that keeps a running mean of its loss, from its first step on: the state it
    saves ({"ema_loss": float}) is not the form of a freshly built one's ({})."""

    def __init__(self, config, model, runtime):
        super().__init__(config, model, runtime, Clean(), CEOuter(), "test-averaging")
        self.state = {}

    def extra_state(self):
        return dict(self.state)

    def load_extra_state(self, state):
        self.state = {"ema_loss": float(state["ema_loss"])}

    def step(self, model, x, y):
        out = super().step(model, x, y)
        loss = out.loss.item()
        self.state["ema_loss"] = 0.9 * self.state.get("ema_loss", loss) + 0.1 * loss
        return out


@pytest.fixture
def averaging():
    register_method(MethodSpec("test-averaging", _Averaging, {}, description="test only"))
    yield
    METHODS.pop("test-averaging")


def _files(run):
    return {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}


def _fit(method, run, epochs=1):
    """Without lr drops, so that 1 epoch and a resume to 2 train as 2 epochs straight do."""
    fit(TrainConfig(method, "synthetic", str(run), epochs=epochs, max_batches=2, batch_size=16, lr_drop=[],
                    device="cpu", tensorboard=False))


@pytest.mark.parametrize("method, state, why", [
    ("standard", [], "its method_state must be {}, as method standard keeps no state, got a list"),
    ("standard", "calls", "its method_state must be {}, as method standard keeps no state, got a str"),
    ("standard", {"calls": 2}, "its method_state must be {}, as method standard keeps no state, got keys 'calls'"),
    ("test-averaging", [2], "its method_state does not fit method test-averaging: TypeError: list indices must be "
                            "integers or slices, not str"),
    ("test-averaging", {}, "its method_state does not fit method test-averaging: KeyError: 'ema_loss'"),
    ("test-averaging", {"ema_loss": "high"}, "its method_state does not fit method test-averaging: ValueError: "
                                             "could not convert string to float: 'high'"),
])
def test_a_method_state_the_method_cannot_take_is_refused_before_the_run_changes(method, state, why, tmp_path,
                                                                                 averaging):
    """A hand-edited or foreign method_state went to load_extra_state unchecked: ignored by the
    methods without state, a traceback of the method's own in one with state."""
    run = tmp_path / "run"
    _fit(method, run)
    _rewrite(run / ckpt.LATEST, method_state=state)
    before = _files(run)
    with pytest.raises(ckpt.CheckpointError) as refused:
        fit(TrainConfig(method, "synthetic", str(run), epochs=2, device="cpu", resume=True))
    assert str(refused.value) == f"cannot resume from {run / ckpt.LATEST}: {why}"
    assert _files(run) == before


def test_a_method_state_that_appears_as_the_method_trains_resumes(tmp_path, averaging):
    """The state was compared with a freshly built method's ({}, no keys) and refused at every
    resume of a method that fills it as it trains, after the start-of-run check had passed."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _fit("test-averaging", straight, epochs=2)
    _fit("test-averaging", resumed)
    assert set(ckpt.load(resumed / ckpt.LATEST)["method_state"]) == {"ema_loss"}
    fit(TrainConfig("test-averaging", "synthetic", str(resumed), epochs=2, device="cpu", resume=True))
    assert ckpt.load(resumed / ckpt.LATEST)["method_state"] == ckpt.load(straight / ckpt.LATEST)["method_state"]


def _snapshots_only(run):
    """A finished 3-epoch run with a snapshot per epoch, whose checkpoint.pt, model.pt and metrics are gone."""
    fit(TrainConfig("standard", "synthetic", str(run), epochs=3, max_batches=1, batch_size=16, save_freq=1,
                    device="cpu", tensorboard=False))
    for name in (ckpt.LATEST, ckpt.FINAL_MODEL):
        (run / name).unlink()
    (run / "metrics.jsonl").write_text("")


def _resume_refused(run):
    before = _files(run)
    with pytest.raises(ConfigError) as refused:
        fit(TrainConfig("standard", "synthetic", str(run), device="cpu", resume=True))
    assert _files(run) == before
    return str(refused.value)


def test_the_snapshot_suggested_is_the_one_holding_the_newest_epoch_whatever_its_name(tmp_path):
    """checkpoint_epoch9.pt, a copy of epoch 2's snapshot, was suggested over epoch 3's by its name;
    a file that cannot be read as a checkpoint (here by the largest number) is suggested never."""
    run = tmp_path / "run"
    _snapshots_only(run)
    (run / "checkpoint_epoch2.pt").rename(run / "checkpoint_epoch9.pt")
    (run / "checkpoint_epoch12.pt").write_bytes(b"not a checkpoint")
    copy = f"cp {run / 'checkpoint_epoch3.pt'} {run / ckpt.LATEST}"
    assert _resume_refused(run) == (f"--resume: {run} holds no checkpoint.pt but 3 snapshots up to "
                                    f"checkpoint_epoch12.pt: the run trained, and starting it again from epoch 1 "
                                    f"would overwrite them; to go "
                                    f"on from the newest snapshot, copy it: {copy}")


def test_a_later_snapshot_named_as_the_first_keeps_the_run_from_starting_over(tmp_path):
    """Epoch 3's snapshot renamed checkpoint_epoch1.pt passed for a kill before the first
    checkpoint, and the resume started the run over, writing epoch 1's snapshot over it."""
    run = tmp_path / "run"
    _snapshots_only(run)
    (run / "checkpoint_epoch1.pt").unlink()
    (run / "checkpoint_epoch2.pt").unlink()
    (run / "checkpoint_epoch3.pt").rename(run / "checkpoint_epoch1.pt")
    assert _resume_refused(run).endswith(f"holds no checkpoint.pt but checkpoint_epoch1.pt: the run trained, and "
                                         f"starting it again from epoch 1 would overwrite them; to go on from the "
                                         f"newest snapshot, copy it: cp {run / 'checkpoint_epoch1.pt'} "
                                         f"{run / ckpt.LATEST}")


def test_held_epoch_reads_the_count_without_reading_the_file_in_full(tmp_path, monkeypatch):
    """Only the pickle is read: the tensors are mapped (torch.load's mmap), and no CRC-32 pass goes
    over them, so a snapshot whose weights are damaged still tells its epoch (load refuses it)."""
    weights = torch.full((4096,), 7.0)
    path = ckpt.save_atomic({"epoch": 4, "model": {"w": weights}}, tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    data[data.index(weights.numpy().tobytes()) + 100] ^= 0xFF
    path.write_bytes(data)
    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or real_load(*args, **kwargs))
    assert ckpt.held_epoch(path) == 4
    assert [kwargs.get("mmap") for kwargs in loads] == [True]
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated"):
        ckpt.load(path)


def test_held_epoch_is_none_for_a_file_that_holds_no_count_of_ours(tmp_path):
    for payload in ({"epoch": -1}, {"epoch": True}, {"epoch": "4"}, {}):
        assert ckpt.held_epoch(ckpt.save_atomic(payload, tmp_path / "c.pt")) is None
    torch.save({"epoch": 4}, tmp_path / "foreign.pt")  # not ours: no format
    (tmp_path / "short.pt").write_bytes(ckpt.save_atomic({"epoch": 4}, tmp_path / "c.pt").read_bytes()[:100])
    assert ckpt.held_epoch(tmp_path / "foreign.pt") is None and ckpt.held_epoch(tmp_path / "short.pt") is None
