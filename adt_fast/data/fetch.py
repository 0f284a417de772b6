"""Download the official CIFAR-10, CIFAR-100 and SVHN files and check their MD5 sums.

Each file is streamed to a temporary file next to its destination, verified, then renamed into
place, so an interrupted or tampered download never leaves a file that looks complete. Archives
are unpacked into a staging folder after every member has been checked to stay inside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import ChecksumError, DatasetFileError, DownloadError

BASE_URL_ENV = "ADT_FAST_DATA_URL"
NO_PROGRESS_ENV = "ADT_FAST_NO_PROGRESS"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Resource:
    """One file published for a dataset; ``extract`` marks a tar.gz to unpack."""

    filename: str
    official_base_url: str
    extract: bool


_CIFAR_HOST = "https://www.cs.toronto.edu/~kriz"
_SVHN_HOST = "http://ufldl.stanford.edu/housenumbers"

RESOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (Resource("cifar-10-python.tar.gz", _CIFAR_HOST, extract=True),),
    "cifar100": (Resource("cifar-100-python.tar.gz", _CIFAR_HOST, extract=True),),
    "svhn": (
        Resource("train_32x32.mat", _SVHN_HOST, extract=False),
        Resource("test_32x32.mat", _SVHN_HOST, extract=False),
    ),
}

# Keyed by file name; tests replace entries to serve their own archives.
MD5_CHECKSUMS: dict[str, str] = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}


def official_urls(name: str) -> list[str]:
    """The URLs the dataset ``name`` is published at (used in error messages too)."""
    return [f"{resource.official_base_url}/{resource.filename}" for resource in _resources(name)]


def download(name: str, data_dir: str | os.PathLike, base_url: str | None = None) -> Path:
    """Fetch (if needed), verify and unpack dataset ``name`` into ``data_dir``; returns the dir.

    ``base_url`` (or the ADT_FAST_DATA_URL environment variable) replaces the official host,
    e.g. for a mirror; the file names stay the same. A file already present with the right
    checksum is not fetched again.
    """
    resources = _resources(name)
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    host_override = base_url or os.environ.get(BASE_URL_ENV)
    for resource in resources:
        destination = data_dir / resource.filename
        expected_md5 = MD5_CHECKSUMS[resource.filename]
        if not (destination.is_file() and file_md5(destination) == expected_md5):
            host = (host_override or resource.official_base_url).rstrip("/")
            _fetch_verified(f"{host}/{resource.filename}", destination, expected_md5)
        if resource.extract:
            _extract_tar_safely(destination, data_dir)
    return data_dir


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # integrity check only
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _resources(name: str) -> tuple[Resource, ...]:
    if name not in RESOURCES:
        raise ValueError(f"name {name!r} cannot be downloaded; downloadable datasets: {', '.join(RESOURCES)}")
    return RESOURCES[name]


def _progress_bar(total_bytes: int | None, description: str):
    """A tqdm bar when tqdm is installed and ADT_FAST_NO_PROGRESS is unset, else a context yielding None."""
    if os.environ.get(NO_PROGRESS_ENV, "") not in ("", "0"):
        return contextlib.nullcontext(None)
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(None)
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=description)


def _fetch_verified(url: str, destination: Path, expected_md5: str) -> None:
    handle = tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part", delete=False)
    temporary = Path(handle.name)
    try:
        digest = hashlib.md5(usedforsecurity=False)  # integrity check only
        with handle:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                    length = response.headers.get("Content-Length")
                    with _progress_bar(int(length) if length else None, destination.name) as bar:
                        while chunk := response.read(CHUNK_BYTES):
                            handle.write(chunk)
                            digest.update(chunk)
                            if bar is not None:
                                bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
                raise DownloadError(f"could not download {destination.name} from {url}: {error}") from error
        actual_md5 = digest.hexdigest()
        if actual_md5 != expected_md5:
            raise ChecksumError(
                f"checksum mismatch for {destination.name} downloaded from {url}: expected md5 "
                f"{expected_md5}, got {actual_md5}; the download was discarded"
            )
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _check_member(member: tarfile.TarInfo, root: str, archive: Path) -> None:
    """Reject links, devices and paths that would land outside ``root``."""
    if not (member.isfile() or member.isdir()):
        raise DatasetFileError(f"refusing to unpack {archive}: member {member.name!r} is not a regular file or folder")
    target = os.path.realpath(os.path.join(root, member.name))
    if os.path.commonpath([root, target]) != root:
        raise DatasetFileError(f"refusing to unpack {archive}: member {member.name!r} would be written outside the data directory")


def _extract_tar_safely(archive: Path, data_dir: Path) -> None:
    staging = os.path.realpath(tempfile.mkdtemp(dir=data_dir, prefix=".unpack-"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar.getmembers():
                    _check_member(member, staging, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, filter="data")
                else:
                    tar.extractall(staging)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise DatasetFileError(f"cannot unpack {archive}: {error}; delete it and download again") from error
        for entry in os.listdir(staging):
            target = data_dir / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.is_symlink() or target.exists():
                target.unlink()
            os.replace(os.path.join(staging, entry), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
