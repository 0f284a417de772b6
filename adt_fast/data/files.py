"""Readers for the official on-disk formats of CIFAR-10, CIFAR-100, SVHN, MNIST and Fashion-MNIST.

The layouts are the ones the official archives unpack to (and torchvision reads):

- CIFAR-10: ``<data_dir>/cifar-10-batches-py/data_batch_1..5`` and ``test_batch``;
  CIFAR-100: ``<data_dir>/cifar-100-python/train`` and ``test``. Each file is a Python pickle
  of a dict with ``b"data"`` (uint8, N x 3072, channel-major 3x32x32 rows) and ``b"labels"``
  (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). Pickles can run code when loaded, so the
  unpickler here accepts only the few globals these files contain (numpy arrays).
- SVHN: ``<data_dir>/train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5): ``X`` uint8
  (32, 32, 3, N) and ``y`` (N, 1), where label 10 stands for the digit 0.
- MNIST / Fashion-MNIST: torchvision's layout, ``<data_dir>/MNIST/raw/`` and
  ``<data_dir>/FashionMNIST/raw/`` holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``, as published)
  or not (as torchvision unpacks them; the unpacked file wins when both exist). IDX format: two
  zero bytes, a type byte (0x08 = uint8), the number of dimensions, each dimension as a big-endian
  uint32, then the data.

Readers return ``(images uint8 (N, C, H, W), labels int64 (N,))`` as numpy arrays, N >= 1 and
(C, H, W) the dataset's. A missing file raises FileNotFoundError; an unreadable one raises
DatasetFileError (both say how to get or repair the file).
"""

from __future__ import annotations

import gzip
import importlib
import math
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetFileError, MissingDependencyError
from .fetch import IDX_FILES, IDX_FOLDERS, official_urls


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels", 10
    ),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}
SVHN_NUM_CLASSES = 10
IDX_NUM_CLASSES = 10
IDX_UBYTE = 0x08
IDX_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
SVHN_IMAGE_SHAPE = (32, 32, 3)
CIFAR_ROW_SHAPE = (3, 32, 32)
IDX_IMAGE_SHAPE = (28, 28)


def required_files(name: str, split: str, data_dir: Path) -> list[Path]:
    """The files ``load(name, split)`` reads, for the on-disk datasets."""
    if name in CIFAR_LAYOUTS:
        layout = CIFAR_LAYOUTS[name]
        files = layout.train_files if split == "train" else layout.test_files
        return [data_dir / layout.folder / filename for filename in files]
    if name == "svhn":
        return [data_dir / f"{split}_32x32.mat"]
    if name in IDX_FOLDERS:
        prefix = IDX_SPLIT_PREFIX[split]
        return [_idx_file(data_dir / IDX_FOLDERS[name] / f"{prefix}-{kind}") for kind in ("images-idx3-ubyte",
                                                                                       "labels-idx1-ubyte")]
    raise ValueError(f"name {name!r} is not stored on disk; on-disk datasets: cifar10, cifar100, svhn, "
                     f"{', '.join(IDX_FOLDERS)}")


def _idx_file(unpacked: Path) -> Path:
    """The unpacked IDX file if present, else the published .gz next to it."""
    return unpacked if file_present(unpacked) else unpacked.with_name(unpacked.name + ".gz")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 IDX array of ``ndim`` dimensions; the header must account for every byte."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise _unreadable("IDX file", path, error) from error
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise DatasetFileError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than its header; "
                               f"{_how_to_repair(path)}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE or raw[3] != ndim:
        raise DatasetFileError(
            f"IDX file {path} has magic number {raw[:4].hex()}; expected 0000{IDX_UBYTE:02x}{ndim:02x} "
            f"(uint8 data of {ndim} dimension{'s' if ndim > 1 else ''}); {_how_to_repair(path)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape)  # Python ints: in int64, 2^31 x 2^31 x 2^31 wraps to 0, an empty file's size
    actual = len(raw) - header_bytes
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise DatasetFileError(f"IDX file {path} is {what}: the header gives shape {shape} "
                               f"({expected} bytes of data), the file holds {actual}; {_how_to_repair(path)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(shape).copy()  # writable for torch


def read_idx_dataset(name: str, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = required_files(name, split, data_dir)
    for path in (images_path, labels_path):
        _require_file(path, name, data_dir)
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    _require_images(images.shape[0], images_path)
    if images.shape[1:] != IDX_IMAGE_SHAPE:  # the models are built for the dataset's size
        raise DatasetFileError(f"IDX file {images_path} holds images of {images.shape[1]}x{images.shape[2]} pixels, "
                               f"{name}'s are {IDX_IMAGE_SHAPE[0]}x{IDX_IMAGE_SHAPE[1]}; {_how_to_repair(images_path)}")
    if labels.shape[0] != images.shape[0]:
        raise DatasetFileError(f"{name}: {images_path} holds {images.shape[0]} images but {labels_path} "
                               f"holds {labels.shape[0]} labels")
    return images[:, None], _class_indices(labels, IDX_NUM_CLASSES, labels_path)


def read_cifar(name: str, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    layout = CIFAR_LAYOUTS[name]
    batches = [_read_cifar_batch(path, name, data_dir, layout) for path in required_files(name, split, data_dir)]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return images, labels


def read_svhn(split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    (path,) = required_files("svhn", split, data_dir)
    _require_file(path, "svhn", data_dir)
    try:
        import scipy.io
    except ImportError as error:
        raise MissingDependencyError("reading SVHN", "scipy") from error
    try:
        contents = scipy.io.loadmat(path, variable_names=("X", "y"))
    except NotImplementedError:  # loadmat's answer to a v7.3 file, whose "use h5py" would not help here
        raise DatasetFileError(f"SVHN file {path} is a MATLAB v7.3 (HDF5) file, which scipy.io.loadmat does not "
                               f"read; save X and y as MATLAB v7 (save(..., '-v7')) or use the published "
                               f"file") from None
    except Exception as error:  # as for pickles, a corrupt file can fail in many ways
        raise _unreadable("SVHN file", path, error) from error
    images, labels = contents.get("X"), contents.get("y")
    if images is None or labels is None:
        raise DatasetFileError(f"SVHN file {path} lacks the variables X and y")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != SVHN_IMAGE_SHAPE:
        raise DatasetFileError(
            f"SVHN file {path}: X must be uint8 of shape (32, 32, 3, N), got {images.dtype} {images.shape}"
        )
    _require_images(images.shape[3], path)
    labels = _label_vector(labels, path, "y", images.shape[3])
    labels = _class_indices(np.where(labels == 10, 0, labels), SVHN_NUM_CLASSES, path)
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch needs, so a tampered file cannot run code."""

    def find_class(self, module: str, name: str):
        allowed = _allowed_cifar_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return allowed[(module, name)]


def _allowed_cifar_globals() -> dict[tuple[str, str], object]:
    # numpy 2 renamed numpy.core to numpy._core; the official files (Python 2 era) use the old name.
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
        numeric = importlib.import_module("numpy._core.numeric")
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
        numeric = importlib.import_module("numpy.core.numeric")
    import _codecs

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
        # Python 3 writes bytes (the batch's keys) under protocols 0-2 as __builtin__.bytes
        ("__builtin__", "bytes"): bytes,
        ("builtins", "bytes"): bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    # pickle protocol 5 (Python 3.14's default) rebuilds an array from its bytes with _frombuffer
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    return allowed


def _read_cifar_batch(path: Path, name: str, data_dir: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    _require_file(path, name, data_dir)
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # fuzzed files raise a dozen types, MemoryError and SystemError among them
        raise _unreadable(f"{name} file", path, error) from error
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        raise DatasetFileError(f"{name} file {path} is not a batch dict with keys b'data' and {layout.label_key!r}")
    images = batch[b"data"]
    row_size = int(np.prod(CIFAR_ROW_SHAPE))
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != row_size:
        raise DatasetFileError(f"{name} file {path}: b'data' must be a uint8 array of shape (N, {row_size})")
    _require_images(images.shape[0], path)
    labels = _label_vector(batch[layout.label_key], path, repr(layout.label_key), images.shape[0])
    return images.reshape(-1, *CIFAR_ROW_SHAPE), _class_indices(labels, layout.num_classes, path)


def _require_images(count: int, path: Path) -> None:
    """An empty file would train on nothing, or score an accuracy of 0, without a word."""
    if count == 0:
        raise DatasetFileError(f"{path} holds no images; {_how_to_repair(path)}")


def _label_vector(values, path: Path, key: str, num_images: int) -> np.ndarray:
    """``values`` as one whole-number label per image, shape (N,) (its dtype kept), or
    DatasetFileError naming the file and the key. Floats pass only when whole (SVHN's .mat files
    hold y as uint8 or as double): a cast would silently make 2.5 class 2."""
    try:
        labels = np.asarray(values)
    except ValueError as error:  # a ragged list
        raise DatasetFileError(f"{path}: {key} is not an array of labels ({error})") from None
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DatasetFileError(f"{path}: {key} must hold one label per image, of shape (N,) or (N, 1), "
                               f"got shape {labels.shape}")
    if labels.shape[0] != num_images:
        raise DatasetFileError(f"{path}: {num_images} images but {labels.shape[0]} labels in {key}")
    if labels.dtype.kind == "f":
        fractional = labels[~(np.isfinite(labels) & (labels == np.trunc(labels)))]
        if fractional.size:
            raise DatasetFileError(f"{path}: {key} must hold whole-number labels, found {fractional[0]}")
    elif labels.dtype.kind not in "iu":
        raise DatasetFileError(f"{path}: {key} must hold integer labels, got {labels.dtype}")
    return labels


def _class_indices(labels: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """int64 labels, checked to lie in [0, num_classes) before the cast (which would wrap a huge one)."""
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DatasetFileError(
            f"{path}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def _how_to_get(name: str, data_dir: Path) -> str:
    urls = " and ".join(official_urls(name))
    unpack = ", unpacking archives there" if name in CIFAR_LAYOUTS else ""
    target = data_dir / IDX_FOLDERS[name] if name in IDX_FOLDERS else data_dir
    return f"pass download=True (CLI: --download) or fetch {urls} into {target}{unpack}"


def _how_to_repair(path: Path) -> str:
    """The fix for a file that exists but cannot be read (an interrupted copy, say). download=True
    then re-verifies and re-fetches the published files and unpacks archives again; an IDX file
    unpacked by hand or by torchvision has no published checksum, so it is left alone and read first."""
    if path.name in IDX_FILES:
        return (f"delete it: the published {path.name}.gz beside it is then read (download=True, CLI: "
                f"--download, fetches that if missing)")
    return ("delete it, or rerun with download=True (CLI: --download) to check the downloaded files against "
            "their published MD5, fetch any missing or damaged one again and unpack archives again")


def _unreadable(what: str, path: Path, error: BaseException) -> DatasetFileError:
    """The error for a file that exists but cannot be read. A file this user may not read is not
    damaged: deleting it or downloading it again is no answer, its permissions are."""
    if isinstance(error, PermissionError):
        return DatasetFileError(f"cannot read {what} {path}: permission denied; its owner can make it readable "
                                f"(chmod a+r), or pass a data_dir (CLI: --data-dir) of your own")
    return DatasetFileError(f"cannot read {what} {path}: {error}; {_how_to_repair(path)}")


def file_present(path: Path) -> bool:
    """Path.is_file, except that a folder this user may not search is said to be one, not raised
    as a bare PermissionError."""
    try:
        return path.is_file()
    except PermissionError:
        raise DatasetFileError(f"cannot look for {path.name} in {path.parent}: permission denied; its owner can "
                               f"make the folder searchable (chmod a+rx), or pass a data_dir (CLI: --data-dir) "
                               f"of your own") from None


def _require_file(path: Path, name: str, data_dir: Path) -> None:
    if not file_present(path):
        if path.exists():  # a folder or a pipe of the file's name: "not found" would mislead
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise DatasetFileError(f"{name} file {path} is {kind}; move it away, then "
                                   f"{_how_to_get(name, data_dir)}")
        shown = path.name.removesuffix(".gz") + "[.gz]" if name in IDX_FOLDERS else path.name
        raise FileNotFoundError(
            f"{name} file {shown!r} not found in {path.parent}; {_how_to_get(name, data_dir)}"
        )
