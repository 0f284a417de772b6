"""adt_fast/train/runlog.py (metrics.jsonl, progress, TensorBoard scalars)."""
import json
import os

import pytest

from adt_fast.progress import NO_PROGRESS_ENV
from adt_fast.train import runlog


class _Tty:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_only_on_a_terminal_and_never_with_no_progress(monkeypatch):
    monkeypatch.delenv(NO_PROGRESS_ENV, raising=False)
    assert runlog.progress_enabled(_Tty(True)) is True
    assert runlog.progress_enabled(_Tty(False)) is False
    assert runlog.progress_enabled(object()) is False          # no isatty at all: a pipe-like object
    monkeypatch.setenv(NO_PROGRESS_ENV, "0")
    assert runlog.progress_enabled(_Tty(True)) is True
    monkeypatch.setenv(NO_PROGRESS_ENV, "1")
    assert runlog.progress_enabled(_Tty(True)) is False


def test_progress_bar_is_disabled_when_not_shown(monkeypatch):
    """progress_bar(show=False) is a no-op even on a terminal (the non-main ranks)."""
    pytest.importorskip("tqdm")
    monkeypatch.delenv(NO_PROGRESS_ENV, raising=False)
    monkeypatch.setattr(runlog, "progress_enabled", lambda stream=None: False)
    bar = runlog.progress_bar(3, "x", show=True)
    assert bar.disable
    bar.close()
    monkeypatch.setattr(runlog, "progress_enabled", lambda stream=None: True)
    bar = runlog.progress_bar(3, "x", show=False)
    assert bar.disable
    bar.close()


def test_metrics_round_trip_and_append(tmp_path):
    history = [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.6}]
    runlog.write_metrics(tmp_path, history)
    assert runlog.read_metrics(tmp_path) == history
    runlog.append_metrics(tmp_path, {"epoch": 3, "test_acc": 0.7})
    assert [r["epoch"] for r in runlog.read_metrics(tmp_path)] == [1, 2, 3]


def test_read_metrics_skips_blank_lines(tmp_path):
    (tmp_path / runlog.METRICS_FILE).write_text(json.dumps({"epoch": 1}) + "\n\n" + json.dumps({"epoch": 2}) + "\n  \n")
    assert runlog.read_metrics(tmp_path) == [{"epoch": 1}, {"epoch": 2}]


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _record(epoch, acc):
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.1, "test_acc": acc, "lr": 0.1, "seconds": 1.0}


def test_tensorboard_steps_are_epochs_and_a_resume_logs_its_checkpoints_epoch_once(tmp_path):
    """Scalars are logged at step = epoch. A run killed after epoch 2's checkpoint, before or after
    it logged epoch 2, resumes with its checkpointed history, which is logged anew: each epoch has
    one point."""
    pytest.importorskip("tensorboard")
    for logged_before_the_kill in ([1], [1, 2]):
        folder = tmp_path / str(len(logged_before_the_kill))
        board = runlog.TensorBoard(folder, True, history=[])
        for epoch in logged_before_the_kill:
            board.log(_record(epoch, 0.25))
        board.close()
        board = runlog.TensorBoard(folder, True, history=[_record(1, 0.25), _record(2, 0.5)])
        board.log(_record(3, 0.75))
        board.close()
        assert _scalars(folder / runlog.TENSORBOARD_DIR)["test_acc"] == [(1, 0.25), (2, 0.5), (3, 0.75)]
        assert len(list((folder / runlog.TENSORBOARD_DIR).glob(runlog.EVENT_FILES))) == 1


def test_tensorboard_keeps_one_point_per_epoch_when_event_files_sort_against_their_writing(tmp_path, monkeypatch):
    """Event files are named ...<seconds>.<host>.<pid>.<counter>: in one second, a writer with counter
    10 sorts before one with 9, and readers take files in name order, so a purge marker in the
    later file came first and the earlier file's points were lost."""
    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer.time, "time", lambda: 1_700_000_000.0)
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    board = runlog.TensorBoard(tmp_path, True, history=[])
    for epoch in (1, 2):
        board.log(_record(epoch, epoch / 4))
    board.close()
    board = runlog.TensorBoard(tmp_path, True, history=[_record(1, 0.25), _record(2, 0.5)])
    board.log(_record(3, 0.75))
    board.close()
    assert _scalars(tmp_path / runlog.TENSORBOARD_DIR)["test_acc"] == [(1, 0.25), (2, 0.5), (3, 0.75)]


def test_tensorboard_rewrites_only_its_own_event_files_not_links_placed_there(tmp_path):
    """The rewrite at each start removes the event files the run wrote (plain files), as the run
    directory's other cleanups do; a link someone put in the folder, and what it points to, stay."""
    pytest.importorskip("tensorboard")
    elsewhere = tmp_path / "elsewhere.tfevents"
    elsewhere.write_bytes(b"not the run's")
    folder = tmp_path / "run" / runlog.TENSORBOARD_DIR
    folder.mkdir(parents=True)
    link = folder / "events.out.tfevents.1.linked"
    link.symlink_to(elsewhere)
    board = runlog.TensorBoard(tmp_path / "run", True, history=[_record(1, 0.25)])
    board.close()
    assert link.is_symlink() and elsewhere.read_bytes() == b"not the run's"


def _metrics(tmp_path, text: bytes):
    (tmp_path / runlog.METRICS_FILE).write_bytes(text)
    return tmp_path


def test_read_metrics_skips_a_last_line_cut_short(tmp_path):
    """A kill or a full disk during an append leaves half a line, with no newline after it."""
    whole = json.dumps({"epoch": 1, "train_loss": 0.5}) + "\n"
    assert runlog.read_metrics(_metrics(tmp_path, (whole + '{"epoch": 2, "train_lo').encode())) == [json.loads(whole)]
    assert runlog.read_metrics(_metrics(tmp_path, (whole + whole.strip()).encode())) == [json.loads(whole)] * 2


@pytest.mark.parametrize("text,line,why", [
    ('{"epoch": 1, "train_lo\n{"epoch": 2}\n', 1, "Unterminated string starting at"),
    ('{"epoch": 1}\n{"epoch": 2, \n', 2, "Expecting property name enclosed in double quotes"),
    ('{"epoch": 1}\n[1, 2]\n{"epoch": 3}', 2, "a JSON list, not an object"),
])
def test_read_metrics_names_the_file_and_line_of_any_other_bad_line(tmp_path, text, line, why):
    run = _metrics(tmp_path, text.encode())
    with pytest.raises(runlog.MetricsError) as bad:
        runlog.read_metrics(run)
    assert str(bad.value) == f"{run / runlog.METRICS_FILE}, line {line}: not a metrics record ({why})"


def test_a_reader_that_goes_away_does_not_stop_the_training(tmp_path):
    """`adt-fast train ... | head -1`: the next epoch line once raised BrokenPipeError and ended the
    run after epoch 1 with exit code 1, no model.pt. The log now goes to /dev/null and the run ends."""
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, NO_PROGRESS_ENV: "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "adt_fast", "train", "--method", "standard", "--dataset",
                             "synthetic", "--epochs", "3", "--max-batches", "2", "--out", str(out),
                             "--no-tensorboard", "--device", "cpu", "--no-channels-last"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline().startswith(b"mode: ")
    proc.stdout.close()  # as head does after its line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert [record["epoch"] for record in runlog.read_metrics(out)] == [1, 2, 3]
    assert (out / "model.pt").is_file()
