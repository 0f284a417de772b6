"""Download the official CIFAR-10, CIFAR-100, SVHN, MNIST and Fashion-MNIST files and check their MD5 sums.

Each file is streamed to a temporary file next to its destination, verified, then renamed into
place, so an interrupted or tampered download never leaves a file that looks complete. Archives
are unpacked into a staging folder after every member has been checked to stay inside it.
Processes downloading into one folder (the ranks of a data-parallel run) take turns: the first
fetches and unpacks, the others then find the files in place.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..files import check_path, file_digest, lock_folder, os_error_text, unwritable_reason, write_atomic
from ..progress import progress_enabled
from .errors import ChecksumError, DatasetFileError, DownloadError

DATA_DIR_NAMES = "the folder of the dataset files"  # what a data_dir names, in messages

BASE_URL_ENV = "ADT_FAST_DATA_URL"
URL_SCHEMES = ("http", "https", "ftp", "file")  # those urllib fetches from (a mirror on disk: file:///...)
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60
# A server that trickles bytes never stalls for TIMEOUT_SECONDS, yet may never finish: from its
# first byte, a download must bring in MIN_BYTES_PER_SECOND on average over every RATE_WINDOW_SECONDS
# (a floor meant to stop a trickle, far below a slow but working link), or it fails;
# $ADT_FAST_DOWNLOAD_MIN_RATE sets the floor (0 turns the check off).
MIN_BYTES_PER_SECOND = 1024
RATE_WINDOW_SECONDS = 60
MIN_RATE_ENV = "ADT_FAST_DOWNLOAD_MIN_RATE"
LOCK_FILE = ".adt_fast-download.lock"
# The temporary names of a download (".FILENAME." + mkstemp's 8 random characters + PART_SUFFIX)
# and of an unpacking (UNPACK_PREFIX + mkdtemp's 8): what a killed download leaves behind.
PART_SUFFIX = ".part"
UNPACK_PREFIX = ".unpack-"
_RANDOM_PART = r"[a-z0-9_]{8}"


@dataclass(frozen=True)
class Resource:
    """One file published for a dataset; ``extract`` marks a tar.gz to unpack.

    ``folder`` is where it goes under the data directory (torchvision's ``MNIST/raw`` layout, say);
    ``path`` (folder/filename) is its key in PUBLISHED and where a mirror serves it.
    """

    filename: str
    official_base_url: str
    extract: bool
    folder: str = ""

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.filename}" if self.folder else self.filename


_CIFAR_HOST = "https://www.cs.toronto.edu/~kriz"
_SVHN_HOST = "http://ufldl.stanford.edu/housenumbers"
# PyTorch's mirror of LeCun's files (the one torchvision falls back to) and Zalando's own bucket.
_MNIST_HOST = "https://ossci-datasets.s3.amazonaws.com/mnist"
_FASHION_MNIST_HOST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
# torchvision's folder layout: <data_dir>/<folder>/raw/<file>[.gz]
IDX_FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}

RESOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (Resource("cifar-10-python.tar.gz", _CIFAR_HOST, extract=True),),
    "cifar100": (Resource("cifar-100-python.tar.gz", _CIFAR_HOST, extract=True),),
    "svhn": (
        Resource("train_32x32.mat", _SVHN_HOST, extract=False),
        Resource("test_32x32.mat", _SVHN_HOST, extract=False),
    ),
    **{name: tuple(Resource(f"{stem}.gz", host, extract=False, folder=IDX_FOLDERS[name]) for stem in IDX_FILES)
       for name, host in (("mnist", _MNIST_HOST), ("fashion-mnist", _FASHION_MNIST_HOST))},
}


@dataclass(frozen=True)
class Published:
    """What a published file must be: its MD5 sum and its size in bytes."""

    md5: str
    size: int


# Keyed by Resource.path; tests replace entries to serve their own files. The MNIST and
# Fashion-MNIST sums are the ones torchvision's datasets/mnist.py publishes. The size is enforced
# while downloading: a server that sends more (an endless body, a wrong file) is cut off there
# instead of filling the disk before the MD5 check.
PUBLISHED: dict[str, Published] = {
    "cifar-10-python.tar.gz": Published("c58f30108f718f92721af3b95e74349a", 170498071),
    "cifar-100-python.tar.gz": Published("eb9058c3a382ffc7106e4002c42a8d85", 169001437),
    "train_32x32.mat": Published("e26dedcc434d2e4c54c9b2d4a06d8373", 182040794),
    "test_32x32.mat": Published("eb5a983be6a315427106f1b164d9cef3", 64275384),
    "MNIST/raw/train-images-idx3-ubyte.gz": Published("f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422),
    "MNIST/raw/train-labels-idx1-ubyte.gz": Published("d53e105ee54ea40749a09fcbcd1e9432", 28881),
    "MNIST/raw/t10k-images-idx3-ubyte.gz": Published("9fb629c4189551a2d022fa330f9573f3", 1648877),
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": Published("ec29112dd5afa0611ce80d1b7f02629c", 4542),
    "FashionMNIST/raw/train-images-idx3-ubyte.gz": Published("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880),
    "FashionMNIST/raw/train-labels-idx1-ubyte.gz": Published("25c81989df183df01b3e8a0aad5dffbe", 29515),
    "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": Published("bef4ecab320f06d8554ea6380940ec79", 4422102),
    "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": Published("bb300cfdad3c16e7a12a480ee83cd310", 5148),
}


def official_urls(name: str) -> list[str]:
    """The URLs the dataset ``name`` is published at (used in error messages too)."""
    return [f"{resource.official_base_url}/{resource.filename}" for resource in _resources(name)]


def download(name: str, data_dir: str | os.PathLike, base_url: str | None = None) -> Path:
    """Fetch (if needed), verify and unpack dataset ``name`` into ``data_dir``; returns the dir.

    ``base_url`` (or the ADT_FAST_DATA_URL environment variable) replaces the official host,
    e.g. for a mirror, which serves each file at its path under the data directory
    (``MNIST/raw/train-images-idx3-ubyte.gz``, ``cifar-10-python.tar.gz``). A file already
    present with the right checksum is not fetched again, nor an archive unpacked again whose
    files are all in place. Processes downloading into one ``data_dir`` wait for each other
    (a lock file there), so the first fetches and the others find its files. DownloadError for
    a network failure (a server that sends nothing for TIMEOUT_SECONDS, 60 s, included), a
    download bringing in under MIN_BYTES_PER_SECOND (1 KiB/s, or $ADT_FAST_DOWNLOAD_MIN_RATE) over
    a RATE_WINDOW_SECONDS (60 s) window, a server that sends more than the file's size
    (PUBLISHED), or a folder that cannot be written.
    """
    resources = _resources(name)
    min_rate = _min_rate()
    data_dir = Path(check_path(data_dir, "data_dir", DATA_DIR_NAMES)).expanduser()
    host_override = _host_override(base_url)
    reason = unwritable_reason(data_dir)
    if reason is not None:
        raise DownloadError(f"cannot download {name} into {data_dir}: {reason}")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with lock_folder(data_dir, wait=True, lock_file=LOCK_FILE):  # its errors name the lock
            _remove_leftovers(data_dir, resources)
            for resource in resources:
                destination = data_dir / resource.path
                destination.parent.mkdir(parents=True, exist_ok=True)
                published = PUBLISHED[resource.path]
                if not (destination.is_file() and file_digest(destination, "md5") == published.md5):
                    if host_override:
                        url = f"{host_override.rstrip('/')}/{resource.path}"
                    else:
                        url = f"{resource.official_base_url}/{resource.filename}"
                    _fetch_verified(url, destination, published, min_rate)
                if resource.extract and not _unpacked(destination, data_dir):
                    _extract_tar_safely(destination, data_dir)
    except DownloadError:
        raise
    except OSError as error:  # the local disk: full, read-only, a file where a folder goes
        raise DownloadError(f"downloading {name} into {data_dir} failed: {os_error_text(error)}") from error
    return data_dir


def _host_override(base_url) -> str | None:
    """``base_url``, else $ADT_FAST_DATA_URL, else None, checked before anything is fetched: a
    Path failed on .rstrip, and 'localhost:8000' (no scheme) as '<urlopen error unknown url type:
    localhost>', naming neither where the URL came from nor what was wrong with it."""
    if base_url is not None and not isinstance(base_url, str):
        raise ValueError(f"base_url must be a URL (a str such as 'https://host/data' or 'file:///srv/data'), "
                         f"got {base_url!r}")
    host, source = (base_url, "base_url") if base_url else (os.environ.get(BASE_URL_ENV), BASE_URL_ENV)
    if host and urllib.parse.urlsplit(host).scheme.lower() not in URL_SCHEMES:
        schemes = [f"{scheme}://" for scheme in URL_SCHEMES]
        raise DownloadError(f"{source} must be a URL starting with {', '.join(schemes[:-1])} or {schemes[-1]}, "
                            f"got {host!r}")
    return host or None


def _remove_leftovers(data_dir: Path, resources: tuple[Resource, ...]) -> None:
    """Delete what killed downloads left, by its exact names only: unpacking folders, and the
    temporary files of these resources. Called under the download lock, which every process
    writing them holds, so none is in use."""
    unpacking = re.compile(re.escape(UNPACK_PREFIX) + _RANDOM_PART)
    for entry in os.scandir(data_dir):
        if unpacking.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
    for resource in resources:
        folder = data_dir / resource.folder
        part = re.compile(re.escape(f".{resource.filename}.") + _RANDOM_PART + re.escape(PART_SUFFIX))
        for entry in os.scandir(folder) if folder.is_dir() else ():
            if part.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)


def _resources(name: str) -> tuple[Resource, ...]:
    if name not in RESOURCES:
        raise ValueError(f"name {name!r} cannot be downloaded; downloadable datasets: {', '.join(RESOURCES)}")
    return RESOURCES[name]


def _progress_bar(total_bytes: int | None, description: str):
    """A tqdm bar on stderr when tqdm is installed and progress_enabled(), else a context yielding None."""
    if not progress_enabled():
        return contextlib.nullcontext(None)
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=description)


def _min_rate() -> float:
    """The download's floor in bytes per second: $ADT_FAST_DOWNLOAD_MIN_RATE, else MIN_BYTES_PER_SECOND."""
    text = os.environ.get(MIN_RATE_ENV)
    if text is None:
        return MIN_BYTES_PER_SECOND
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 <= rate < float("inf"):
        raise DownloadError(f"${MIN_RATE_ENV} must be a number of bytes per second >= 0 (0 turns the check "
                            f"off), got {text!r}")
    return rate


def _fetch_verified(url: str, destination: Path, published: Published, min_rate: float) -> None:
    """Stream ``url`` into a temporary file beside ``destination`` and rename it into place only
    once its MD5 is ``published.md5`` (write_atomic: fsynced, and the mode any new file gets);
    more than ``published.size`` bytes stops the download, as does a rate under ``min_rate`` (_body)."""
    def stream(handle) -> None:
        digest = hashlib.md5(usedforsecurity=False)  # integrity check only
        with _network_errors(url, destination.name):
            response = urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS)
        with response:
            length = _content_length(response)
            if length is not None and length > published.size:
                raise DownloadError(f"could not download {destination.name} from {url}: the server announces "
                                    f"{length} bytes, more than the {published.size} bytes the file has; nothing "
                                    f"was kept")
            with _progress_bar(published.size if length is None else length, destination.name) as bar:
                for chunk in _body(response, length, published.size, min_rate, url, destination):
                    handle.write(chunk)  # a full disk is an OSError: download() names the folder
                    digest.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        actual_md5 = digest.hexdigest()
        if actual_md5 != published.md5:
            raise ChecksumError(
                f"checksum mismatch for {destination.name} downloaded from {url}: expected md5 "
                f"{published.md5}, got {actual_md5}; the download was discarded"
            )

    write_atomic(destination, stream, suffix=PART_SUFFIX)


@contextlib.contextmanager
def _network_errors(url: str, name: str, received: int = 0):
    """A failure to receive ``name`` as a DownloadError naming the file and the URL; ``received``:
    the bytes of it that came before."""
    try:
        yield
    except http.client.IncompleteRead as error:  # a chunked body cut short; read1 handed over all of it
        raise DownloadError(f"could not download {name} from {url}: the connection closed after "
                            f"{received} bytes, before the last chunk; the download was discarded") from error
    except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
        stalled = isinstance(getattr(error, "reason", error), TimeoutError)  # URLError wraps a connect's
        reason = f"timed out: nothing received for {TIMEOUT_SECONDS} s" if stalled else error
        raise DownloadError(f"could not download {name} from {url}: {reason}") from error


def _body(response, length: int | None, expected_bytes: int, min_rate: float, url: str, destination: Path):
    """The response's body in chunks, and no byte past the first one beyond ``expected_bytes``,
    which fails the download, as does a window of RATE_WINDOW_SECONDS from the first byte on that
    brings in under ``min_rate`` bytes per second on average (a pause before the first byte is the
    read timeout's to judge; a body that is complete is kept, however slow its last window). read1
    returns what has arrived, where read waits for a whole chunk, so a trickle is measured as it
    comes. Only receiving is wrapped in _network_errors, not the caller's writing: a full disk is
    no network failure, and is reported as the local one it is."""
    name = destination.name
    complete = expected_bytes if length is None else length
    received = window_received = 0
    window_start = None
    while True:
        with _network_errors(url, name, received):
            chunk = response.read1(min(CHUNK_BYTES, expected_bytes + 1 - received))
        if not chunk:
            break
        received += len(chunk)
        if received > expected_bytes:
            raise DownloadError(f"could not download {name} from {url}: received more than the "
                                f"{expected_bytes} bytes the file has; the download was discarded")
        now = time.monotonic()
        if window_start is None:
            window_start = now
        elif now - window_start >= RATE_WINDOW_SECONDS:
            brought = received - window_received
            if min_rate and brought < min_rate * (now - window_start) and received < complete:
                raise DownloadError(
                    f"could not download {name} from {url}: too slow, {brought} bytes in the last "
                    f"{now - window_start:.1f} s ({received} in all), under the {min_rate:g} bytes/s a download "
                    f"must bring in over every {RATE_WINDOW_SECONDS:g} s (${MIN_RATE_ENV} sets that floor, 0 "
                    f"turns it off); the download was discarded. Fetch the file another way (a browser, wget -c, "
                    f"a mirror as {BASE_URL_ENV}) and save it as {destination}: the next download checks its MD5 "
                    f"and keeps it")
            window_start, window_received = now, received
        yield chunk
    if length is not None and received < length:  # http.client ends a cut-off body quietly
        raise DownloadError(f"could not download {name} from {url}: the connection closed "
                            f"after {received} of {length} bytes; the download was discarded")


def _content_length(response) -> int | None:
    """The size the server announces; None when it announces none or no number (as http.client
    takes it), so the download goes on with its size unknown."""
    try:
        length = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return length if length >= 0 else None


def _check_member(member: tarfile.TarInfo, root: str, archive: Path, follow_links: bool = True) -> None:
    """Reject links, devices and paths that would land outside ``root``. ``follow_links=False``
    judges the name alone (an absolute path, ``..``): for the data directory as it is, where a
    folder may be a link to a shared copy that only a reader follows."""
    if not (member.isfile() or member.isdir()):
        raise DatasetFileError(f"refusing to unpack {archive}: member {member.name!r} is not a regular file or folder")
    joined = os.path.join(root, member.name)
    target = os.path.realpath(joined) if follow_links else os.path.normpath(joined)
    if os.path.commonpath([root, target]) != root:
        raise DatasetFileError(f"refusing to unpack {archive}: member {member.name!r} would be written outside the data directory")


def _unpacked(archive: Path, data_dir: Path) -> bool:
    """Whether every file of ``archive`` is in ``data_dir`` already, byte for byte: unpacking again
    would then only replace files that other processes may be reading."""
    root = os.path.abspath(data_dir)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                _check_member(member, root, archive, follow_links=False)  # it only reads: unpacking checks again
                if member.isfile() and not _same_bytes(tar.extractfile(member), data_dir / member.name, member.size):
                    return False
    except (tarfile.TarError, EOFError, OSError, zlib.error):  # unpacking reports what is wrong
        return False
    return True


def _same_bytes(packed, path: Path, size: int) -> bool:
    if not path.is_file() or path.stat().st_size != size:
        return False
    with packed, open(path, "rb") as unpacked:
        while block := packed.read(CHUNK_BYTES):
            if unpacked.read(len(block)) != block:
                return False
    return True


def _extract_tar_safely(archive: Path, data_dir: Path) -> None:
    """Unpack into a staging folder, then move each top-level entry into place, the old one first
    renamed aside into the staging folder (deleted with it), not deleted in place: a reader finds
    the old entry or the new one, missing only between the two renames."""
    staging = os.path.realpath(tempfile.mkdtemp(dir=data_dir, prefix=UNPACK_PREFIX))
    unpacked, replaced = os.path.join(staging, "unpacked"), os.path.join(staging, "replaced")
    try:
        os.mkdir(unpacked)
        os.mkdir(replaced)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar.getmembers():
                    _check_member(member, unpacked, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(unpacked, filter="data")
                else:
                    tar.extractall(unpacked)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
            # A failure to write (a full disk, say) is an OSError, which download() reports.
            raise DatasetFileError(f"cannot unpack {archive}: {error}; delete it and download again") from error
        for entry in os.listdir(unpacked):
            target = data_dir / entry
            if os.path.lexists(target):
                os.replace(target, os.path.join(replaced, entry))
            os.replace(os.path.join(unpacked, entry), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
