"""Writing results: never half a file, never where the user cannot write, found out before work.

`write_atomic` writes a temporary file in the target's folder, flushes and fsyncs it, and renames
it over the target, so a reader (or a kill at any moment) sees the old file or the new one, never
half of one; only a kill during the write leaves its temporary file, which
`remove_atomic_leftovers` clears. That rename replaces a link: `link_target` names the file to
write instead, to write through it, and `broken_link_reason` says when there is none.
`unwritable_reason` and `make_writable_dir` let a command check where its results will go before
it spends hours computing them. `lock_folder` keeps two processes from writing the same folder
at once, or makes the second wait for the first.
`zip_damage` checks what was written when it is read back (torch.load checks no CRC-32s).
`shell_path` writes a path into a printed command that reads it back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shlex
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

# write_atomic's temporary files: ".TARGET." + mkstemp's 8 random characters + ".tmp".
ATOMIC_SUFFIX = ".tmp"
ATOMIC_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(ATOMIC_SUFFIX))


def write_atomic(path: PathLike, write: Callable[[IO], None], mode: str = "wb", suffix: str = ATOMIC_SUFFIX) -> Path:
    """Call write(handle) on a temporary file beside `path`, then rename it over `path`.

    An exception from `write` deletes the temporary file and leaves `path` as it was. `suffix`
    names the temporary file: another one keeps it from the files remove_atomic_leftovers clears.
    A folder at `path` is refused before anything is written (the rename could not replace it,
    and its error would name the temporary file, after a write that may be a whole download).
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():  # a link is replaced, whatever it points to
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
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


def remove_atomic_leftovers(folder: PathLike) -> list:
    """Delete the temporary files that killed write_atomic calls left in `folder`; their names.

    Only files named exactly as write_atomic names them go; call it only while no other process
    writes to `folder` (see lock_folder), since a running write's temporary file looks the same.
    """
    removed = []
    for entry in sorted(Path(folder).iterdir()):
        if ATOMIC_LEFTOVER.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink()
            removed.append(entry.name)
    return removed


class FolderBusy(OSError):
    """Another process holds the folder's lock (lock_folder)."""


# flock's errors on a file system that does not support it (some NFS and Lustre mounts).
_FLOCK_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


@contextlib.contextmanager
def lock_folder(folder: PathLike, wait: bool = False, lock_file: Optional[str] = None) -> Iterator[None]:
    """Hold an exclusive flock(2) on `folder` itself for the block; FolderBusy at once when another
    process holds it, or with `wait`, wait until it is free. Locking the folder writes no lock file,
    and the kernel drops the lock when its holder dies, so a killed run never blocks the next one.

    `lock_file` locks the file of that name in `folder` instead (created if missing, and left there,
    since deleting a lock file lets two processes lock two different files): NFS passes a file's
    lock on to the other machines, not a folder's, and only for a file opened for writing. Another
    user's lock file that this one may not write is opened for reading, which a local lock needs.

    A file system without flock (some NFS and Lustre mounts) fails with a bare 'No locks available'
    or 'Function not implemented', said of no file: the OSError raised instead (same errno) names
    what could not be locked and what the lock is for, in one line.
    """
    import fcntl  # POSIX only, as flock is

    path = folder if lock_file is None else os.path.join(folder, lock_file)
    read_only = False
    if lock_file is None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    else:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            fd, read_only = os.open(path, os.O_RDONLY), True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"{folder} is locked by another process") from None
        except OSError as error:
            if read_only and error.errno == errno.EBADF:  # NFS: an exclusive lock needs a file open for writing
                raise OSError(error.errno, f"cannot lock {path}: this user may only read it, and on this file "
                                           f"system (NFS) a lock needs a file it may write; make it writable by "
                                           f"every user of {folder} (chmod a+w), or use a folder of your "
                                           f"own") from error
            if error.errno not in _FLOCK_UNSUPPORTED:
                raise
            raise OSError(error.errno, f"cannot lock {path} ({error.strerror or error}), by which processes "
                                       f"writing into one folder take turns: use a folder on a file system that "
                                       f"supports flock") from error
        yield
    finally:
        os.close(fd)


def _nearest_existing(folder: PathLike) -> Path:
    """`folder` or the nearest of its parents that exists, or a link to nothing on the way there."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    return existing


def atomic_name_limit(folder: PathLike, suffix: str = ATOMIC_SUFFIX) -> Optional[int]:
    """The longest name (in bytes) write_atomic can write in `folder` (or in the folders that would
    be made for it): its temporary name adds ".", "." and 8 random characters and `suffix`, so a
    name the file system takes may still fail, after the work that made the file. None when the
    file system states no limit."""
    existing = _nearest_existing(folder)
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no limit to ask for (not POSIX)
        return None
    return None if name_max < 0 else name_max - len(f"..xxxxxxxx{suffix}")


def check_path(value, name: str, naming: str, error: type = ValueError) -> str:
    """``value`` as a str if it is a path (a str, or an os.PathLike giving one); else ``error``
    naming ``name`` and what the path names: not pathlib's TypeError from deep inside, nor str(5)
    taken for the folder "5". bytes are refused: the paths a run records (config.json) are text."""
    if not isinstance(value, (str, os.PathLike)) or not isinstance(os.fspath(value), str):
        raise error(f"{name} must be a path (a str or pathlib.Path) naming {naming}, got {value!r}")
    return os.fspath(value)


def shell_path(path: PathLike) -> str:
    """A path as one word of a printed command that reads it back: quoted for the shell (spaces,
    quotes), and a relative one that starts with '-' as ./-name, which argparse and cp would
    otherwise take for an option (pathlib drops a leading ./, so it is added to the text)."""
    text = os.fspath(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def unwritable_reason(folder: PathLike) -> Optional[str]:
    """Why files could not be created in `folder` (or in the folders that would be made for it).

    Writes nothing. It asks access(2), which knows permissions and read-only mounts but not every
    refusal (root passes permission bits; some pseudo file systems refuse anyway), so a writer
    still turns the OSError of a later write into a clean error.
    """
    existing = _nearest_existing(folder)
    broken = broken_link_reason(existing)  # mkdir would meet it: "File exists", naming no target
    if broken is not None:
        return broken
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def broken_link_reason(path: PathLike) -> Optional[str]:
    """Why nothing can be written through `path`: it is a link to nothing (an unmounted disk, a
    moved or deleted target), named with where it points; None for anything else. A folder would
    meet it in mkdir ("File exists"), a file's rename would replace the link with a file."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"{path} is a link to {os.readlink(path)}, which does not exist"
    return None


def link_target(path: PathLike) -> Path:
    """The file that writing `path` should replace: `path` itself, or the file its link (through
    any chain of links) points to, so that a file written through a link keeps the link. Pass it
    to write_atomic, whose rename would otherwise replace the link itself."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


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


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """The file's hash, hex, read in 1 MiB blocks: a download's MD5 check, the SHA-256 a report
    records to name the weights it scored."""
    digest = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")  # MD5: integrity checks only
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def os_error_text(err: OSError) -> str:
    """An OSError as one short line: 'Read-only file system: /x/y'."""
    if err.strerror is None:
        return str(err)
    return f"{err.strerror}: {err.filename}" if err.filename else err.strerror


def zip_damage(path: PathLike) -> Optional[str]:
    """What is damaged in the zip archive at `path` (a torch.save file), or None when every member
    reads back intact. torch.load checks no CRC-32s, so bytes flipped in a checkpoint's weights
    would load silently; this reads the file once more and checks them."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, zlib.error) as err:
        return f"not a readable zip archive: {type(err).__name__}: {err}"
    return None if bad is None else f"its member {bad} does not match its CRC-32: its bytes changed"
