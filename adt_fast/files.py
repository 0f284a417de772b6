"""Writing results: never half a file, never where the user cannot write, found out before work.

`write_atomic` writes a temporary file in the target's folder, flushes and fsyncs it, and renames
it over the target, so a reader (or a kill at any moment) sees the old file or the new one, never
half of one. `unwritable_reason` and `make_writable_dir` let a command check where its results
will go before it spends hours computing them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Optional, Union

PathLike = Union[str, os.PathLike]


def write_atomic(path: PathLike, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Call write(handle) on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        mask = os.umask(0o022)  # mkstemp makes the file 0600; give it the usual permissions
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def unwritable_reason(folder: PathLike) -> Optional[str]:
    """Why files could not be created in `folder` (or in the folders that would be made for it).

    Writes nothing. It asks access(2), which knows permissions and read-only mounts but not every
    refusal (root passes permission bits; some pseudo file systems refuse anyway), so a writer
    still turns the OSError of a later write into a clean error.
    """
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def make_writable_dir(folder: PathLike) -> Path:
    """Create `folder` and its parents, and prove a file can be created there (OSError if not)."""
    folder = Path(folder)
    reason = unwritable_reason(folder)
    if reason is not None:
        raise PermissionError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".adt_fast-write-check.", dir=folder)
    os.close(fd)
    os.unlink(probe)
    return folder


def os_error_text(err: OSError) -> str:
    """An OSError as one short line: 'Read-only file system: /x/y'."""
    if err.strerror is None:
        return str(err)
    return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
