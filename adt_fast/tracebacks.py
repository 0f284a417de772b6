"""Where an exception came from: whose code raised it decides whose failure a command reports
(adt_fast's own check, your model's, a peer process's)."""

from __future__ import annotations

from pathlib import Path


def raised_in(err: BaseException, package: Path) -> bool:
    """Whether the innermost frame of err's traceback is code of ``package`` (a folder)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(package.resolve())
