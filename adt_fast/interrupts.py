"""SIGTERM as an interrupt, for both commands: `scancel`, `docker stop` and torchrun (stopping
the other workers when one fails) send it, and each command then says what it kept, as for a
Ctrl-C, instead of dying without a word."""

from __future__ import annotations

import contextlib
import signal
import threading

INTERRUPTED_EXIT = 128 + signal.SIGINT  # 130, as a shell reports a process Ctrl-C ended
TERMINATED_EXIT = 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM, which a command ends as it ends a Ctrl-C: every write is atomic, so what it kept
    (train's last checkpoint, eval's report files) is whole."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises Terminated in the block; the commands' own, not fit's or evaluate's, since a
    program that calls them keeps its handlers. The first SIGTERM puts the previous handler back, so a second
    one acts as it did before (by default: the process ends at once); so does the block's end."""
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    previous = signal.SIG_DFL if previous is None else previous  # None: set outside Python

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        raise Terminated

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
