"""adt_fast/data/fetch.py against its contract: host precedence, progress bar, official URLs, published sums.
No network: the repo's file_server fixture (127.0.0.1) and a refusing port."""
import contextlib
import dataclasses
import errno
import http.server
import io
import os
import pathlib
import re
import stat
import sys
import tarfile
import threading
import time

import pytest

from adt_fast.data import DatasetFileError, DownloadError, download
from adt_fast.data import fetch
from adt_fast.progress import NO_PROGRESS_ENV
from conftest import publish


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _serve_tiny_cifar(tmp_path, served):
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    (src / "x").write_bytes(b"payload" * 1000)
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return archive


def test_base_url_argument_wins_over_the_environment(tmp_path, file_server, monkeypatch):
    """download(): 'base_url (or the ADT_FAST_DATA_URL environment variable)' - an explicit
    argument is the stronger request; the environment is only the fallback."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    monkeypatch.setenv(fetch.BASE_URL_ENV, "http://127.0.0.1:9")   # refuses connections
    download("cifar10", tmp_path / "data", base_url=base_url)
    assert (tmp_path / "data" / "cifar-10-batches-py" / "x").is_file()


def test_progress_bar_only_on_a_terminal_and_honours_no_progress(monkeypatch):
    """Not into a log file (every torchrun rank's download wrote carriage-return lines there)."""
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delenv(NO_PROGRESS_ENV, raising=False)
    assert isinstance(fetch._progress_bar(10, "f"), contextlib.nullcontext)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setenv(NO_PROGRESS_ENV, "1")
    assert isinstance(fetch._progress_bar(10, "f"), contextlib.nullcontext)
    monkeypatch.setenv(NO_PROGRESS_ENV, "0")
    bar = fetch._progress_bar(10, "f")
    try:
        assert not isinstance(bar, contextlib.nullcontext) and bar.total == 10
    finally:
        bar.close()


def test_progress_bar_counts_bytes_of_the_content_length(tmp_path, file_server, monkeypatch):
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    size = archive.stat().st_size
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    monkeypatch.setattr(fetch, "CHUNK_BYTES", 1000)   # several chunks
    seen = {}

    class Bar:
        def __init__(self, total):
            seen["total"], seen["done"] = total, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            seen["done"] += n

    monkeypatch.setattr(fetch, "_progress_bar", lambda total, desc: Bar(total))
    download("cifar10", tmp_path / "data", base_url=base_url)
    assert seen == {"total": size, "done": size}


def test_official_urls_are_the_publishers_paths():
    """The error messages name the published URLs: host/filename, not the local folder layout."""
    assert fetch.official_urls("mnist")[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    assert fetch.official_urls("fashion-mnist")[3] == \
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz"
    assert fetch.official_urls("cifar10") == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert fetch.official_urls("svhn") == ["http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                                            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"]


def test_every_file_has_its_published_sum_and_size():
    """Each MD5 sum as torchvision (datasets/cifar.py, svhn.py, mnist.py) publishes it, and each
    size as published (a wrong one would break that dataset's real download): the CIFAR and SVHN
    hosts' Content-Length, and torchvision's MNIST and Fashion-MNIST downloads. Every resource has
    its entry, and no other file does."""
    assert fetch.PUBLISHED == {
        "cifar-10-python.tar.gz": fetch.Published("c58f30108f718f92721af3b95e74349a", 170498071),
        "cifar-100-python.tar.gz": fetch.Published("eb9058c3a382ffc7106e4002c42a8d85", 169001437),
        "train_32x32.mat": fetch.Published("e26dedcc434d2e4c54c9b2d4a06d8373", 182040794),
        "test_32x32.mat": fetch.Published("eb5a983be6a315427106f1b164d9cef3", 64275384),
        "MNIST/raw/train-images-idx3-ubyte.gz": fetch.Published("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
        "MNIST/raw/train-labels-idx1-ubyte.gz": fetch.Published("d53e105ee54ea40749a09fcbcd1e9432", 28881),
        "MNIST/raw/t10k-images-idx3-ubyte.gz": fetch.Published("9fb629c4189551a2d022fa330f9573f3", 1648877),
        "MNIST/raw/t10k-labels-idx1-ubyte.gz": fetch.Published("ec29112dd5afa0611ce80d1b7f02629c", 4542),
        "FashionMNIST/raw/train-images-idx3-ubyte.gz": fetch.Published("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
        "FashionMNIST/raw/train-labels-idx1-ubyte.gz": fetch.Published("25c81989df183df01b3e8a0aad5dffbe", 29515),
        "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": fetch.Published("bef4ecab320f06d8554ea6380940ec79", 4422102),
        "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": fetch.Published("bb300cfdad3c16e7a12a480ee83cd310", 5148),
    }
    assert {r.path for resources in fetch.RESOURCES.values() for r in resources} == fetch.PUBLISHED.keys()


def test_archive_unpacks_into_a_data_dir_reached_through_a_symlink(tmp_path, file_server, monkeypatch):
    """The unsafe-member check compares resolved paths: the staging folder must be resolved too,
    or every member of an archive unpacked under a symlinked data_dir (a data disk linked into
    the home folder, say) looks as if it escaped the folder and the download is refused."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    real = tmp_path / "disk" / "data"
    real.mkdir(parents=True)
    (tmp_path / "data").symlink_to(real, target_is_directory=True)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    download("cifar10", tmp_path / "data", base_url=base_url)
    assert (real / "cifar-10-batches-py" / "x").read_bytes() == b"payload" * 1000


@contextlib.contextmanager
def serving(handler):
    """A local HTTP server answering with ``handler`` (a BaseHTTPRequestHandler class); yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _answer(body: bytes, content_length: str, sent: int):
    """A handler that announces ``content_length``, sends ``sent`` bytes of ``body`` and closes."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", content_length)
            self.end_headers()
            self.wfile.write(body[:sent])

        def log_message(self, *args):
            pass
    return Handler


def test_a_connection_closed_midway_is_a_download_error_not_a_checksum_one(tmp_path, monkeypatch):
    """http.client ends a body cut short quietly; the bytes are counted against Content-Length, so
    the mirror is not blamed for a bad file it never sent. Nothing is left behind."""
    body = b"payload" * 1000
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    with serving(_answer(body, str(len(body)), len(body) // 2)) as base_url:
        with pytest.raises(DownloadError, match=f"connection closed after {len(body) // 2} of {len(body)} bytes"):
            download("cifar10", tmp_path / "data", base_url=base_url)
    assert os.listdir(tmp_path / "data") == [fetch.LOCK_FILE]


@pytest.mark.parametrize("read_size", [1000, 100_000])
def test_a_chunked_body_cut_short_says_how_much_came(tmp_path, monkeypatch, read_size):
    """Without a Content-Length (chunked), http.client raises IncompleteRead, which the message
    showed as 'IncompleteRead(N bytes read)', N counting the last read alone, not the download.
    The bytes of the chunk cut short count too: they came, and were read as they came."""
    body = b"payload" * 1000
    publish(monkeypatch, "cifar-10-python.tar.gz", body + body)   # sent as two chunks, the second cut
    monkeypatch.setattr(fetch, "CHUNK_BYTES", read_size)

    class CutChunked(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))   # no last (empty) chunk
            self.wfile.write(b"%x\r\n%s" % (len(body), body[:500]))   # and the next chunk cut
            self.close_connection = True

        def log_message(self, *args):
            pass

    with serving(CutChunked) as base_url:
        with pytest.raises(DownloadError, match=f"connection closed after {len(body) + 500} bytes, before the last"):
            download("cifar10", tmp_path / "data", base_url=base_url)
    assert os.listdir(tmp_path / "data") == [fetch.LOCK_FILE]


def test_a_content_length_that_is_no_number_counts_as_unknown(tmp_path, monkeypatch):
    """As http.client takes it: the download goes on, checked by its MD5 alone."""
    archive = _serve_tiny_cifar(tmp_path, tmp_path)
    body = archive.read_bytes()
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    with serving(_answer(body, "lots", len(body))) as base_url:
        download("cifar10", tmp_path / "data", base_url=base_url)
    assert (tmp_path / "data" / "cifar-10-batches-py" / "x").read_bytes() == b"payload" * 1000


def test_downloaded_files_are_fsynced_and_get_the_mode_of_a_new_file(tmp_path, file_server, monkeypatch):
    """Stored as write_atomic stores files: synced before the rename, and 0666 less the umask, not
    the temporary file's 0600, so others can read a shared --data-dir."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), real_fsync(fd)))
    old = os.umask(0o022)
    try:
        download("cifar10", tmp_path / "data", base_url=base_url)
    finally:
        os.umask(old)
    stored = tmp_path / "data" / "cifar-10-python.tar.gz"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o644
    assert archive.stat().st_size in synced


def test_a_complete_download_is_not_unpacked_again(tmp_path, file_server, monkeypatch):
    """Unpacking replaces the folder, which other processes may be reading: a verified archive whose
    files are all in place, byte for byte, is left as it is; a changed file is unpacked again."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    data_dir = tmp_path / "data"
    download("cifar10", data_dir, base_url=base_url)
    unpacked = data_dir / "cifar-10-batches-py" / "x"
    inode = unpacked.stat().st_ino
    download("cifar10", data_dir, base_url=base_url)
    assert unpacked.stat().st_ino == inode
    unpacked.write_bytes(b"payload" * 999 + b"damaged")   # same size, other bytes
    download("cifar10", data_dir, base_url=base_url)
    assert unpacked.read_bytes() == b"payload" * 1000


def test_a_dataset_folder_linked_to_a_shared_copy_is_read_through_the_link(tmp_path, file_server, monkeypatch):
    """cifar-10-batches-py as a link to a shared copy: --download refused it ('member would be
    written outside the data directory', as for a malicious archive). A complete copy is now left
    as it is; a damaged one is replaced by a folder of this data directory's own, the shared copy
    untouched."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    shared, data_dir = tmp_path / "shared", tmp_path / "data"
    download("cifar10", shared, base_url=base_url)
    data_dir.mkdir()
    (data_dir / "cifar-10-batches-py").symlink_to(shared / "cifar-10-batches-py")
    download("cifar10", data_dir, base_url=base_url)
    assert (data_dir / "cifar-10-batches-py").is_symlink()
    (shared / "cifar-10-batches-py" / "x").write_bytes(b"damaged")
    download("cifar10", data_dir, base_url=base_url)
    assert not (data_dir / "cifar-10-batches-py").is_symlink()
    assert (data_dir / "cifar-10-batches-py" / "x").read_bytes() == b"payload" * 1000
    assert (shared / "cifar-10-batches-py" / "x").read_bytes() == b"damaged"


def test_leftovers_of_killed_downloads_are_removed_and_nothing_else(tmp_path, file_server, monkeypatch):
    """A killed download leaves its temporary file (.NAME.XXXXXXXX.part) or unpacking folder
    (.unpack-XXXXXXXX); the next download clears them, and only entries named exactly so."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    data_dir = tmp_path / "data"
    (data_dir / ".unpack-k1ll_3d0" / "unpacked").mkdir(parents=True)
    (data_dir / ".cifar-10-python.tar.gz.k1ll_3d0.part").write_bytes(b"half")
    kept = [".unpack-short", "unpack-k1ll_3d0", ".cifar-10-python.tar.gz.k1ll_3d0.tmp", ".other.tar.gz.k1ll_3d0.part",
            ".cifar-10-python.tar.gz.k1ll_3d0.part.mine", "notes.txt"]
    for name in kept:
        (data_dir / name).write_bytes(b"keep")
    (tmp_path / "elsewhere").mkdir()
    (data_dir / ".unpack-l1nked00").symlink_to(tmp_path / "elsewhere")   # a link is not our folder
    download("cifar10", data_dir, base_url=base_url)
    assert sorted(os.listdir(data_dir)) == sorted(kept + [".unpack-l1nked00", fetch.LOCK_FILE, "cifar-10-batches-py",
                                                          "cifar-10-python.tar.gz"])
    assert (tmp_path / "elsewhere").is_dir()


def test_a_folder_that_cannot_be_written_is_a_download_error(tmp_path):
    """The train and eval commands report DownloadError: a file where the folder (or a folder in
    it) goes must be one, naming the path, not a raw FileExistsError."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DownloadError, match=f"{tmp_path / 'file'} is a file, not a folder"):
        download("cifar10", tmp_path / "file")
    with pytest.raises(DownloadError, match=f"{tmp_path / 'file'} is a file, not a folder"):
        download("cifar10", tmp_path / "file" / "data")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "MNIST").write_bytes(b"")
    with pytest.raises(DownloadError, match=f"downloading mnist into {tmp_path / 'data'} failed: .*MNIST"):
        download("mnist", tmp_path / "data")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_a_download_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(DownloadError, match=f"{locked} is not writable"):
            download("cifar10", locked / "data")
    finally:
        locked.chmod(0o755)


def test_unpacking_refused_by_the_disk_says_why_not_to_download_again(tmp_path, file_server, monkeypatch):
    """The archive was just verified: a full disk is no reason to delete it and download again."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())

    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(path, "cifar-10-batches-py", "x"))

    monkeypatch.setattr(tarfile.TarFile, "extractall", full_disk)
    with pytest.raises(DownloadError) as error:
        download("cifar10", tmp_path / "data", base_url=base_url)
    assert "No space left on device" in str(error.value) and "download again" not in str(error.value)
    assert sorted(os.listdir(tmp_path / "data")) == [fetch.LOCK_FILE, "cifar-10-python.tar.gz"]


class _FullDisk:
    """A file on a full disk: every write fails."""

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_downloading_is_reported_as_local_not_as_the_network(tmp_path, file_server, monkeypatch):
    """The write failed, not the transfer: 'could not download X from URL: [Errno 28] ...' sent the
    user to the network or the mirror. It names the folder, and the partial file is deleted."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    real = fetch.write_atomic
    monkeypatch.setattr(fetch, "write_atomic",
                        lambda path, write, **kwargs: real(path, lambda handle: write(_FullDisk()), **kwargs))
    data_dir = tmp_path / "data"
    with pytest.raises(DownloadError) as error:
        download("cifar10", data_dir, base_url=base_url)
    assert str(error.value) == f"downloading cifar10 into {data_dir} failed: No space left on device"
    assert os.listdir(data_dir) == [fetch.LOCK_FILE]


@pytest.mark.parametrize("sent", [None, 100])
def test_a_stalled_server_times_out_saying_how_long_it_waited(tmp_path, monkeypatch, sent):
    """A server that stops sending, before its headers or midway, fails the download after
    TIMEOUT_SECONDS rather than hanging, and the message says so ('timed out' alone did not say
    after how long nor of what)."""
    body = b"payload" * 1000
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    monkeypatch.setattr(fetch, "TIMEOUT_SECONDS", 0.2)
    resume = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if sent is not None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:sent])
                self.wfile.flush()
            resume.wait(5)

        def log_message(self, *args):
            pass

    with serving(Stalling) as base_url:
        try:
            with pytest.raises(DownloadError, match=r"tar.gz from .*: timed out: nothing received for 0.2 s$"):
                download("cifar10", tmp_path / "data", base_url=base_url)
        finally:
            resume.set()
    assert os.listdir(tmp_path / "data") == [fetch.LOCK_FILE]


def test_a_connection_that_times_out_says_how_long_it_waited(tmp_path, monkeypatch):
    """urllib wraps a connect's timeout in URLError, where the read's comes bare: both say so."""
    import urllib.error

    def unanswered(url, timeout):
        raise urllib.error.URLError(TimeoutError("timed out"))

    monkeypatch.setattr(fetch.urllib.request, "urlopen", unanswered)
    with pytest.raises(DownloadError, match=f"timed out: nothing received for {fetch.TIMEOUT_SECONDS} s$"):
        download("cifar10", tmp_path / "data", base_url="http://192.0.2.1")


@pytest.mark.parametrize("refusal", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_that_cannot_lock_is_named_as_the_reason(tmp_path, monkeypatch, refusal):
    """flock fails on some NFS and Lustre mounts with an error of no file: 'downloading cifar10 into
    DIR failed: Function not implemented' did not say what was not implemented. The lock's own error
    says it (files.lock_folder), in the download's one line."""
    import fcntl

    def unsupported(fd, operation):
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(fcntl, "flock", unsupported)
    data_dir = tmp_path / "data"
    with pytest.raises(DownloadError) as raised:
        download("cifar10", data_dir, base_url="http://127.0.0.1:9")
    assert str(raised.value) == (f"downloading cifar10 into {data_dir} failed: cannot lock "
                                 f"{data_dir / fetch.LOCK_FILE} ({os.strerror(refusal)}), by which processes writing "
                                 f"into one folder take turns: use a folder on a file system that supports flock")


def test_a_mirror_url_that_is_no_url_is_refused_naming_where_it_came_from(tmp_path, monkeypatch):
    """A Path failed with AttributeError ('PosixPath' object has no attribute 'rstrip'), and a URL
    without its scheme as '<urlopen error unknown url type: localhost>'."""
    with pytest.raises(ValueError, match=r"base_url must be a URL \(a str .*\), got PosixPath\('/srv/mirror'\)"):
        download("cifar10", tmp_path / "data", base_url=pathlib.Path("/srv/mirror"))
    with pytest.raises(DownloadError, match="^base_url must be a URL starting with http://, https://, ftp:// or "
                                            "file://, got 'localhost:8000'$"):
        download("cifar10", tmp_path / "data", base_url="localhost:8000")
    monkeypatch.setenv(fetch.BASE_URL_ENV, "mirror.example.org/data")
    with pytest.raises(DownloadError, match=f"^{fetch.BASE_URL_ENV} must be a URL .*, got 'mirror.example.org/data'$"):
        download("cifar10", tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_a_mirror_on_disk_is_a_file_url(tmp_path, monkeypatch):
    served = tmp_path / "mirror"
    served.mkdir()
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    monkeypatch.setenv(fetch.BASE_URL_ENV, served.as_uri())
    download("cifar10", tmp_path / "data")
    assert (tmp_path / "data" / "cifar-10-batches-py" / "x").read_bytes() == b"payload" * 1000


def test_a_download_interrupted_midway_leaves_nothing_the_next_one_takes(tmp_path, file_server, monkeypatch):
    """Ctrl-C (or the commands' SIGTERM, raised as an exception) mid-transfer deletes the partial
    file; the next download fetches the whole file again. (A SIGKILL leaves the .part file, which
    the next download deletes: test_leftovers_of_killed_downloads_are_removed_and_nothing_else.)"""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    monkeypatch.setattr(fetch, "CHUNK_BYTES", 10)

    class CtrlC:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    data_dir = tmp_path / "data"
    with monkeypatch.context() as interrupted:
        interrupted.setattr(fetch, "_progress_bar", lambda total, desc: CtrlC())
        with pytest.raises(KeyboardInterrupt):
            download("cifar10", data_dir, base_url=base_url)
    assert os.listdir(data_dir) == [fetch.LOCK_FILE]
    download("cifar10", data_dir, base_url=base_url)
    assert (data_dir / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()


@pytest.mark.parametrize("kind", [tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_hard_links_and_devices_in_an_archive_are_refused(tmp_path, file_server, monkeypatch, kind):
    served, base_url = file_server
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("cifar-10-batches-py/x")
        member.type, member.linkname = kind, "../../escaped" if kind == tarfile.LNKTYPE else ""
        tar.addfile(member)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    with pytest.raises(DatasetFileError, match="member 'cifar-10-batches-py/x' is not a regular file or folder"):
        download("cifar10", tmp_path / "data", base_url=base_url)
    assert sorted(os.listdir(tmp_path / "data")) == [fetch.LOCK_FILE, "cifar-10-python.tar.gz"]


def test_the_progress_bar_shows_the_published_size_when_none_is_announced(tmp_path, monkeypatch):
    pytest.importorskip("tqdm")
    archive = _serve_tiny_cifar(tmp_path, tmp_path)
    body = archive.read_bytes()
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    monkeypatch.setenv(NO_PROGRESS_ENV, "0")
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with serving(_answer(body, "", len(body))) as base_url:
        download("cifar10", tmp_path / "data", base_url=base_url)
    assert f"| {len(body)}/{len(body)} [" in sys.stderr.getvalue()


def _publish_size(monkeypatch, path: str, size: int) -> None:
    """Publish the file at ``path`` as ``size`` bytes, its MD5 sum unchanged."""
    monkeypatch.setitem(fetch.PUBLISHED, path, dataclasses.replace(fetch.PUBLISHED[path], size=size))


class _Counting:
    """A progress bar that counts the bytes written to the download's file."""

    def __init__(self):
        self.done = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.done += n


@pytest.mark.parametrize("content_length", [None, str(1 << 40)])
def test_a_server_that_sends_more_than_the_file_is_cut_off_at_its_size(tmp_path, monkeypatch, content_length):
    """An endless body (or a wrong, larger file) filled the disk before the MD5 check could fail:
    reading stops at the published size, and the partial file is deleted; a server that announces
    more than that is refused before any byte is read."""
    size = 10_000
    _publish_size(monkeypatch, "cifar-10-python.tar.gz", size)
    monkeypatch.setattr(fetch, "CHUNK_BYTES", 4096)
    bar = _Counting()
    monkeypatch.setattr(fetch, "_progress_bar", lambda total, desc: bar)

    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            if content_length is not None:
                self.send_header("Content-Length", content_length)
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(1000):   # 4 MB: an end for the code before the cut-off, which read on
                    self.wfile.write(b"x" * 4096)

        def log_message(self, *args):
            pass

    with serving(Endless) as base_url:
        why = ("received more than the 10000 bytes the file has; the download was discarded" if content_length is None
               else f"the server announces {content_length} bytes, more than the 10000 bytes the file has; nothing "
                    f"was kept")
        with pytest.raises(DownloadError, match=f"^could not download cifar-10-python.tar.gz from {base_url}/"
                                                f"cifar-10-python.tar.gz: {why}$"):
            download("cifar10", tmp_path / "data", base_url=base_url)
    assert bar.done <= (size if content_length is None else 0)
    assert os.listdir(tmp_path / "data") == [fetch.LOCK_FILE]


def test_a_mirror_on_disk_with_a_larger_file_is_cut_off_at_its_size(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "train_32x32.mat").write_bytes(b"x" * 5000)
    _publish_size(monkeypatch, "train_32x32.mat", 3000)
    monkeypatch.setenv(fetch.BASE_URL_ENV, mirror.as_uri())
    with pytest.raises(DownloadError, match="train_32x32.mat from file:.*: the server announces 5000 bytes, more "
                                            "than the 3000 bytes the file has"):
        download("svhn", tmp_path / "data")
    assert os.listdir(tmp_path / "data") == [fetch.LOCK_FILE]


def _paced(body: bytes, pieces):
    """A handler that announces ``body`` and sends it as ``pieces``: (bytes, then a pause in s)
    pairs, the rest of the body at the end; never stalling long enough for the read timeout."""
    class Paced(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = 0
            with contextlib.suppress(OSError):   # the client hung up
                for size, pause in pieces:
                    self.wfile.write(body[sent:sent + size])
                    self.wfile.flush()
                    sent += size
                    time.sleep(pause)
                self.wfile.write(body[sent:])

        def log_message(self, *args):
            pass
    return Paced


def _trickling(body: bytes, pause: float):
    """A byte at a time, ``pause`` seconds apart."""
    return _paced(body, [(1, pause)] * len(body))


def _slow_floor(monkeypatch, body: bytes):
    """The svhn files served as ``body``, and a floor of 10,000 bytes/s over 0.2 s windows."""
    for served in ("train_32x32.mat", "test_32x32.mat"):
        publish(monkeypatch, served, body)
    monkeypatch.setattr(fetch, "MIN_BYTES_PER_SECOND", 10_000)
    monkeypatch.setattr(fetch, "RATE_WINDOW_SECONDS", 0.2)


def test_a_trickling_server_fails_after_a_window_under_the_floor(tmp_path, monkeypatch):
    """A byte every 5 ms (about 200 bytes/s) never stalls for TIMEOUT_SECONDS, so the download
    went on for as long as the server liked; it fails after its first window under the floor,
    while the bytes still trickle in (not once a whole chunk has come), saying how to get the file
    another way and how to move the floor, and leaves nothing behind."""
    body = b"p" * 1000
    _slow_floor(monkeypatch, body)
    data_dir = tmp_path / "data"
    with serving(_trickling(body, pause=0.005)) as base_url:
        with pytest.raises(DownloadError) as raised:
            download("svhn", data_dir, base_url=base_url)
    message = str(raised.value)
    slow = re.fullmatch(
        rf"could not download train_32x32.mat from {base_url}/train_32x32.mat: too slow, (\d+) bytes in the last "
        rf"\d+\.\d s \((\d+) in all\), under the 10000 bytes/s a download must bring in over every 0.2 s "
        rf"\(\${fetch.MIN_RATE_ENV} sets that floor, 0 turns it off\); the download was discarded. "
        rf"Fetch the file another way \(a browser, wget -c, a mirror as {fetch.BASE_URL_ENV}\) and save it as "
        rf"{re.escape(str(data_dir / 'train_32x32.mat'))}: the next download checks its MD5 and keeps it",
        message)
    assert slow and int(slow[2]) < len(body), message
    assert os.listdir(data_dir) == [fetch.LOCK_FILE]


def test_the_floor_is_set_or_turned_off_by_the_environment(tmp_path, monkeypatch):
    """$ADT_FAST_DOWNLOAD_MIN_RATE=0 lets a trickle finish (a link that slow may be all a user has);
    a value that is no rate is refused before anything is fetched."""
    body = b"p" * 60
    _slow_floor(monkeypatch, body)
    monkeypatch.setenv(fetch.MIN_RATE_ENV, "0")
    with serving(_trickling(body, pause=0.005)) as base_url:
        download("svhn", tmp_path / "data", base_url=base_url)
    assert (tmp_path / "data" / "train_32x32.mat").read_bytes() == body
    for bad in ("-1", "fast", "inf", "nan"):
        monkeypatch.setenv(fetch.MIN_RATE_ENV, bad)
        with pytest.raises(DownloadError, match=rf"\${fetch.MIN_RATE_ENV} must be a number of bytes per second >= 0 "
                                                rf"\(0 turns the check off\), got '{bad}'"):
            download("svhn", tmp_path / "other", base_url="http://127.0.0.1:9")
        assert not (tmp_path / "other").exists()


def test_a_complete_body_is_kept_however_slow_its_last_window(tmp_path, monkeypatch):
    """The last bytes may come in a window under the floor (a pause within the read timeout):
    the file is whole, and was once thrown away as too slow."""
    body = bytes(range(256)) * 40
    _slow_floor(monkeypatch, body)
    with serving(_paced(body, [(len(body) - 1000, 0.3), (500, 0.6)])) as base_url:
        download("svhn", tmp_path / "data", base_url=base_url)
    assert (tmp_path / "data" / "train_32x32.mat").read_bytes() == body


def test_the_windows_start_at_the_first_byte(tmp_path, monkeypatch):
    """A server that thinks before it sends (within the read timeout), then sends at several times
    the floor, is no trickle: the pause before the first byte counted against the average once."""
    body = bytes(range(256)) * 40
    _slow_floor(monkeypatch, body)
    with serving(_paced(body, [(0, 0.5)] + [(500, 0.005)] * 19)) as base_url:
        download("svhn", tmp_path / "data", base_url=base_url)
    assert (tmp_path / "data" / "train_32x32.mat").read_bytes() == body


def test_a_slow_download_that_ends_within_a_window_is_kept(tmp_path, monkeypatch):
    """The floor is judged over whole windows: a small file over a slow link is no failure."""
    body = b"p" * 20
    for served in ("train_32x32.mat", "test_32x32.mat"):
        publish(monkeypatch, served, body)
    with serving(_trickling(body, pause=0.005)) as base_url:
        download("svhn", tmp_path / "data", base_url=base_url)
    assert (tmp_path / "data" / "test_32x32.mat").read_bytes() == body
