"""What a run reports: metrics.jsonl, TensorBoard scalars, a progress bar and one line per epoch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from ..files import write_atomic
from ..progress import progress_enabled

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SCALARS = ("train_loss", "train_acc", "test_acc", "lr", "seconds")


def progress_bar(total: int, desc: str, show: bool = True):
    """A tqdm bar over the epoch's batches (a no-op object when disabled or not `show`)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not (show and progress_enabled()),
                dynamic_ncols=True, unit="batch")


def write_metrics(run_dir: Path, history: list) -> None:
    """Rewrite metrics.jsonl from a history (atomically): used when a run resumes."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    write_atomic(run_dir / METRICS_FILE, lambda handle: handle.write(text), mode="w")


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


class MetricsError(ValueError):
    """A line of metrics.jsonl that is not a record (other than the last one, cut short)."""


def read_metrics(run_dir) -> list:
    """The per-epoch records of a run directory's metrics.jsonl.

    A last line that does not parse and has no newline after it is an append that a kill or a
    full disk cut short; it is skipped (the epoch's record is in checkpoint.pt's history, and
    --resume writes the line again). Any other line that is not a JSON object is a MetricsError
    naming the file and the line."""
    path = Path(run_dir) / METRICS_FILE
    lines = path.read_bytes().split(b"\n")  # the last item: b"" after a newline, else a line cut short
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as err:  # bad JSON, bad UTF-8, not an object
            if number == len(lines):
                break
            raise MetricsError(f"{path}, line {number}: not a metrics record ({getattr(err, 'msg', err)})") from None
        records.append(record)
    return records


EVENT_FILES = "events.out.tfevents.*"  # what SummaryWriter writes in its folder


class TensorBoard:
    """Scalars under run_dir/tensorboard when torch.utils.tensorboard imports; else nothing."""

    def __init__(self, run_dir: Path, enabled: bool, history: list):
        """`history`: the records of the epochs the run has checkpointed. The run's event files are
        written anew from them at each start, as metrics.jsonl is: a killed run may have logged
        epochs after its last checkpoint, or been killed before logging that one, and each
        finished epoch must have one point. (Not TensorBoard's purge_step: readers order a
        folder's event files by name, and two writers of one process within a second can sort
        against the order they were written in, e.g. counter 10 before 9.)"""
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        folder = run_dir / TENSORBOARD_DIR
        for old in folder.glob(EVENT_FILES):
            if old.is_file() and not old.is_symlink():
                old.unlink()
        self.writer = SummaryWriter(str(folder))
        for record in history:
            self.log(record)

    def log(self, record: dict) -> None:
        if self.writer is None:
            return
        for name in SCALARS:
            if record.get(name) is not None:
                self.writer.add_scalar(name, record[name], record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_line(record: dict, epochs: int) -> str:
    return (f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  "
            f"train_acc {record['train_acc']:.4f}  test_acc {record['test_acc']:.4f}  "
            f"lr {record['lr']:.4g}  {record['seconds']:.1f}s")


def say(message: str, stream: Optional[object] = None) -> None:
    """One line of the run's log. A reader that went away (`adt-fast train ... | head`) must not
    stop the training: the stream then goes to /dev/null, and the run's files keep everything."""
    stream = stream or sys.stdout
    try:
        print(message, file=stream, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
