"""adt_fast/files.py: atomic writes, error text and the run folder lock, against their docstrings."""
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adt_fast import files


def test_os_error_text_names_the_file():
    """Docstring: 'Read-only file system: /x/y'."""
    err = OSError(errno.EROFS, "Read-only file system", "/x/y")
    assert files.os_error_text(err) == "Read-only file system: /x/y"
    assert files.os_error_text(OSError(errno.EROFS, "Read-only file system")) == "Read-only file system"


def test_write_atomic_writes_its_temporary_file_beside_the_target(tmp_path):
    """The temporary file is in the target's folder (same file system, so the rename is atomic,
    and remove_atomic_leftovers finds it there)."""
    seen = []

    def write(handle):  # an os.fdopen handle is named by its fd: look at the folder instead
        seen.extend(p.name for p in tmp_path.iterdir())
        handle.write(b"x")

    files.write_atomic(tmp_path / "out.bin", write)
    leftovers = seen
    assert len(leftovers) == 1 and files.ATOMIC_LEFTOVER.fullmatch(leftovers[0])
    assert (tmp_path / "out.bin").read_bytes() == b"x"


def test_write_atomic_refuses_a_folder_at_its_target_before_writing(tmp_path):
    """It wrote the whole file (a download, say), then the rename failed naming the temporary file."""
    (tmp_path / "target").mkdir()
    written = []
    with pytest.raises(IsADirectoryError) as refused:
        files.write_atomic(tmp_path / "target", written.append)
    assert refused.value.filename == str(tmp_path / "target") and not written
    assert files.os_error_text(refused.value) == f"Is a directory: {tmp_path / 'target'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_lock_folder_is_exclusive_across_processes(tmp_path):
    """lock_folder: FolderBusy at once when another process holds it - also while that process
    holds it (a shared lock would let both in)."""
    code = ("import sys, time; from adt_fast.files import lock_folder\n"
            "with lock_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(files.FolderBusy):
            with files.lock_folder(tmp_path):
                pass
    finally:
        child.kill()
        child.wait()
    with files.lock_folder(tmp_path):   # free again once its holder died
        pass


def test_lock_folder_with_wait_waits_for_the_holder_of_its_lock_file(tmp_path):
    """lock_folder(wait=True, lock_file=...): the second process waits until the first lets go
    (as processes downloading into one folder must) instead of FolderBusy; the lock file stays."""
    code = ("import sys, time; from adt_fast.files import lock_folder\n"
            "with lock_folder(sys.argv[1], lock_file='.lock'):\n    print('held', flush=True); time.sleep(1)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(files.FolderBusy):
            with files.lock_folder(tmp_path, lock_file=".lock"):
                pass
        started = time.monotonic()
        with files.lock_folder(tmp_path, wait=True, lock_file=".lock"):
            waited = time.monotonic() - started
    finally:
        child.kill()
        child.wait()
    assert waited > 0.3 and (tmp_path / ".lock").is_file()


def test_lock_folder_locks_a_lock_file_it_may_only_read(tmp_path, monkeypatch):
    """In a shared folder the lock file may be another user's, readable but not writable: a local
    lock needs no more, so the lock is taken, not refused with a PermissionError."""
    (tmp_path / ".lock").write_bytes(b"")
    real_open = os.open

    def open_as_another_user(path, flags, *args):   # root may write any file
        if flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_as_another_user)
    with files.lock_folder(tmp_path, wait=True, lock_file=".lock"):
        pass


def test_another_users_lock_file_on_nfs_says_it_must_be_writable(tmp_path, monkeypatch):
    """A shared data folder whose lock file another user made (mode 0644): it is opened for
    reading, and NFS refuses an exclusive lock on such a file with a bare 'Bad file descriptor'
    (flock(2): NFS emulates it with byte-range locks, which need a file open for writing)."""
    import fcntl

    real_open = os.open

    def others_file(path, flags, *args):
        if str(path).endswith(".lock") and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args)

    def nfs_flock(fd, operation):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    (tmp_path / ".lock").touch()
    monkeypatch.setattr(os, "open", others_file)
    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    with pytest.raises(OSError) as raised, files.lock_folder(tmp_path, wait=True, lock_file=".lock"):
        pass
    assert files.os_error_text(raised.value) == (
        f"cannot lock {tmp_path / '.lock'}: this user may only read it, and on this file system (NFS) a lock needs "
        f"a file it may write; make it writable by every user of {tmp_path} (chmod a+w), or use a folder of your own")


@pytest.mark.parametrize("refusal", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_that_cannot_lock_is_named_by_every_user_of_the_lock(tmp_path, monkeypatch, refusal):
    """flock fails on some NFS and Lustre mounts with an error of no file ('No locks available'):
    only the download said what could not be locked; training's lock on its --out (claim_run_dir)
    ended in the bare error."""
    import fcntl

    from adt_fast.train import ConfigError, TrainConfig
    from adt_fast.train.loop import claim_run_dir

    def unsupported(fd, operation):
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(fcntl, "flock", unsupported)
    remedy = (f" ({os.strerror(refusal)}), by which processes writing into one folder take turns: use a folder "
              f"on a file system that supports flock")
    for locked, held in ((tmp_path, files.lock_folder(tmp_path)),
                         (tmp_path / ".lock", files.lock_folder(tmp_path, wait=True, lock_file=".lock"))):
        with pytest.raises(OSError) as raised, held:
            pass
        assert raised.value.errno == refusal and files.os_error_text(raised.value) == f"cannot lock {locked}{remedy}"
    run = TrainConfig("standard", "synthetic", out=str(tmp_path / "run"))
    with pytest.raises(ConfigError) as raised, claim_run_dir(run, None):  # the command's one line
        pass
    assert str(raised.value) == f"--out {run.out}: cannot lock {run.out}{remedy}"


@pytest.mark.parametrize("mode,data", [("wb", b"abc" * 10), ("w", "abc" * 10)])
def test_write_atomic_fsyncs_all_the_written_bytes(tmp_path, monkeypatch, mode, data):
    """files.py: the temporary file is flushed and fsynced before the rename, so the fsync must
    see every byte written (Python's buffer flushed first), not whatever reached the OS so far."""
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    files.write_atomic(tmp_path / "f", lambda handle: handle.write(data), mode=mode)
    assert synced == [30]

def test_write_atomic_leaves_a_reader_of_the_old_file_reading_the_old_file_whole(tmp_path):
    """The docstring's promise: a reader sees the old file or the new one, never half of one. So the
    new file must arrive by rename (a new inode), not by rewriting the target in place - a reader
    that opened the target before the write keeps reading the old bytes, all of them."""
    target = tmp_path / "report.json"
    target.write_bytes(b"old" * 1000)
    with open(target, "rb", buffering=0) as reader:   # unbuffered: every read goes to the file
        first = reader.read(3)
        files.write_atomic(target, lambda handle: handle.write(b"new"))
        rest = reader.read()
    assert first + rest == b"old" * 1000
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("below", ["", "run/one"])
def test_unwritable_reason_names_a_broken_link_and_its_target(tmp_path, below):
    """A data folder or --out that is a link to an unmounted disk: mkdir failed with 'File exists'."""
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "gone")
    folder = link / below if below else link
    reason = files.unwritable_reason(folder)
    assert reason == f"{link} is a link to {tmp_path / 'gone'}, which does not exist"
    with pytest.raises(PermissionError, match="which does not exist"):
        files.make_writable_dir(folder)


def test_atomic_name_limit_under_a_broken_link_states_no_limit(tmp_path):
    """It shared unwritable_reason's walk up, and returned that function's message, a str, where
    report_paths compares an int: eval's --out under such a link raised a bare TypeError."""
    (tmp_path / "data").symlink_to(tmp_path / "gone")
    assert files.atomic_name_limit(tmp_path / "data" / "run") is None
