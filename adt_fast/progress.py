"""When to draw a progress bar: one rule for training, evaluation and downloads."""

from __future__ import annotations

import os
import sys

NO_PROGRESS_ENV = "ADT_FAST_NO_PROGRESS"


def progress_enabled(stream=None) -> bool:
    """Only on a terminal (stderr by default), so that log files and the redirected output of
    torchrun's ranks get no carriage-return lines, and never with ADT_FAST_NO_PROGRESS=1."""
    if os.environ.get(NO_PROGRESS_ENV, "") not in ("", "0"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty at all, or a closed stream
        return False
