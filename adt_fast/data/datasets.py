"""The dataset registry (settings from appendix C.1/C.3), ``load`` for a named dataset's split,
``open_dataset`` / ``from_arrays`` for a whole dataset, named or your own (``custom``), and
``open_test_split`` for your own data's test split alone (evaluation)."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checks import unreadable_tensor_problem
from ..distributed import launch_rank
from ..files import check_path
from . import fetch
from .fetch import DATA_DIR_NAMES
from .custom import (MIN_IMAGE_SIZE, TEST_ONLY, Splits, class_list, holds_npz_test, read_image_folder,
                     read_image_folder_test, read_npz, read_npz_test, scan_image_folder, splits_from_arrays)
from .errors import DataChangedError, DatasetFileError
from .files import CIFAR_LAYOUTS, IDX_FOLDERS, file_present, read_cifar, read_idx_dataset, read_svhn, required_files
from .small_datasets import make_synthetic, read_digits

SPLITS = ("train", "test")
DATA_DIR_ENV = "ADT_FAST_DATA_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/adt_fast/data")


@dataclass(frozen=True)
class DatasetInfo:
    """What a run needs to know about a dataset before loading it.

    ``epsilon`` is the default l_inf budget for inputs in [0, 1]; ``augment`` names the
    training augmentation (see ``augment_batch``); ``default_arch`` names a ``build_model`` arch.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    epsilon: float
    augment: str
    default_arch: str


_DATASETS = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", 10, 3, 32, 8 / 255, "crop_flip", "wrn-28-10"),
        DatasetInfo("cifar100", 100, 3, 32, 8 / 255, "crop_flip", "wrn-28-10"),
        DatasetInfo("svhn", 10, 3, 32, 4 / 255, "none", "wrn-28-10"),
        # Digits pixels take 17 levels (steps of 1/16); 0.1 is about 1.6 levels, a visible but
        # digit-preserving budget, where 8/255 would be under a seventh of one level.
        DatasetInfo("digits", 10, 1, 8, 0.1, "none", "small-cnn"),
        DatasetInfo("synthetic", 10, 3, 8, 8 / 255, "none", "small-cnn"),
        # The robustness literature's MNIST budgets (Madry et al.; TRADES) and Madry et al.'s CNN.
        DatasetInfo("mnist", 10, 1, 28, 0.3, "none", "madry-cnn"),
        DatasetInfo("fashion-mnist", 10, 1, 28, 0.1, "none", "madry-cnn"),
    )
}
DATASETS = tuple(_DATASETS)

# Your own data (an .npz, an image folder, arrays): CIFAR's budget, no augmentation, and an arch
# by image size: the small CNN below 32 px, CIFAR's ResNet-18 from 32 px up.
CUSTOM_EPSILON = 8 / 255
CUSTOM_SMALL_IMAGE = 32
SOURCE_FILE = "dataset.json"     # where a run directory records its data's origin


class DatasetSpecError(ValueError):
    """The dataset argument itself is wrong: an unknown name, a missing path, an option that
    does not apply to this kind of dataset."""


def dataset_info(name: str) -> DatasetInfo:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; choose one of {', '.join(DATASETS)}, or give "
                         f"the path of an .npz file or an image folder")
    return _DATASETS[name]


def default_data_dir() -> Path:
    """$ADT_FAST_DATA_DIR if set, else ~/.cache/adt_fast/data."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def load(name: str, split: str, data_dir: str | os.PathLike | None = None,
         download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split as ``(x, y)``: x float32 NCHW in [0, 1] (contiguous, CPU), y int64.

    For cifar10, cifar100, svhn, mnist and fashion-mnist, files are read from ``data_dir``
    (default: see ``default_data_dir``). With ``download=True`` missing files are fetched first,
    and a file that cannot be read is repaired: ``fetch.download`` checks the published files
    against their MD5, fetches a damaged one again and unpacks archives again, and the split is
    read once more. Only then, not on every run: data-parallel ranks share the folder, and
    unpacking replaces it. Ranks that download at once take turns (a lock in the folder): the
    first fetches, the others then find its files. digits and synthetic need no files.
    """
    dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    _warn_if_shadowing(name)
    return _read_split(name, split, data_dir, download)


def _read_split(name: str, split: str, data_dir: str | os.PathLike | None, download: bool):
    """load's split, its name and split already checked."""
    if name == "digits":
        images, labels = read_digits(split)
    elif name == "synthetic":
        images, labels = make_synthetic(split)
    else:
        directory = (Path(check_path(data_dir, "data_dir", DATA_DIR_NAMES)).expanduser() if data_dir is not None
                     else default_data_dir())
        if download and not all(file_present(path) for path in required_files(name, split, directory)):
            fetch.download(name, directory)
        try:
            images, labels = _read_files(name, split, directory)
        except DatasetFileError:
            if not download:
                raise
            fetch.download(name, directory)
            images, labels = _read_files(name, split, directory)
    return _to_tensors(images, labels)


def _warn_if_shadowing(name: str) -> None:
    """A warning (one line under adt-fast) when the named dataset taken is also data here; from rank
    0 alone under torchrun, whose ranks all read the data before they form a group."""
    if launch_rank() != 0:
        return
    shadowed = _shadowed_path(name)
    if shadowed is not None:
        warnings.warn(f"--dataset {name} is the built-in dataset {name}, not {shadowed}", stacklevel=3)


def _shadowed_path(name: str) -> str | None:
    """For a dataset name that is also your own data in the working directory: what that is and
    how to read it instead, or None. A name is always the named dataset, so a command reads the same
    data wherever it runs; a path that reads the same as a name is given as one (./digits)."""
    path = Path(name)
    if name not in _DATASETS or not _reads_as_own_data(path):
        return None
    kind = "folder" if path.is_dir() else "file"
    return f"the {kind} {name} in the working directory; to read that {kind}, pass --dataset ./{name}"


def _reads_as_own_data(path: Path) -> bool:
    """Whether --dataset ./NAME would read ``path``, as the readers check it: an image folder's
    layout (test/ alone will do, as for eval) or an .npz file that holds test arrays. Anything else named
    after a dataset, as a run folder is (--out synthetic), is not data the name hides."""
    if not path.is_dir():
        return holds_npz_test(path)  # the archive's names: no array is read for a warning
    try:
        scan_image_folder(path, TEST_ONLY)
    except (DatasetFileError, OSError):  # OSError: a folder that may not be read
        return False
    return True


def _read_files(name: str, split: str, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    if name in CIFAR_LAYOUTS:
        return read_cifar(name, split, directory)
    if name in IDX_FOLDERS:
        return read_idx_dataset(name, split, directory)
    return read_svhn(split, directory)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 images in a fresh tensor of standard strides: a one-channel images[:, None] has
    strides (HW, 1, W, 1), which counts as contiguous yet makes convolutions run channels_last
    (and DDP warn that the first weight's gradient strides do not match its bucket)."""
    source = torch.from_numpy(np.ascontiguousarray(images))
    x = torch.empty(source.shape, dtype=torch.float32).copy_(source)
    if source.dtype == torch.uint8:
        x.div_(255)
    return x, torch.from_numpy(labels).long()


# ------------------------------------------------------------------------------------------------
# Whole datasets, named or your own
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedDataset:
    """Both splits as tensors (x float32 NCHW in [0, 1] on the CPU, y int64), what a run needs to
    know (``info``), where they came from (``source``, recorded in a run directory's
    SOURCE_FILE) and lines for the log (``notes``: the layout detected, the defaults taken)."""

    info: DatasetInfo
    train: tuple
    test: tuple
    source: dict
    notes: tuple = field(default_factory=tuple)


def open_dataset(spec: str, *, data_dir: str | os.PathLike | None = None, download: bool = False,
                 image_size: int | None = None, cache_dir: str | os.PathLike | None = None) -> LoadedDataset:
    """A named dataset, an .npz file or an image folder (``spec`` is the name or the path).

    ``image_size`` resizes an image folder's images to N x N; ``data_dir`` and ``download``
    apply to named datasets. Raises DatasetSpecError for a bad ``spec`` or option, and
    DatasetFileError (naming the file) for data that is unreadable or invalid.
    """
    spec = str(spec)
    _check_resize(spec, image_size)
    if spec in _DATASETS:
        _warn_if_shadowing(spec)
        train, test = (_read_split(spec, split, data_dir, download) for split in SPLITS)
        return LoadedDataset(dataset_info(spec), train, test, {"kind": "named", "name": spec})
    path = _own_data_path(spec, data_dir, download)
    if path.is_dir():
        splits, kind = read_image_folder(path, image_size, cache_dir), "image-folder"
    else:
        splits, kind = read_npz(path), "npz"
    return _custom_dataset(str(path), splits, {"kind": kind, "path": str(path), "resize": image_size})


def resize_problem(spec: str, image_size) -> str | None:
    """Why ``image_size`` (--image-size) cannot resize ``spec``'s images, or None if it can."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        return f"must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}"
    if spec in _DATASETS or not Path(spec).expanduser().is_dir():
        shadowed = _shadowed_path(spec)
        return (f"resizes the images of an image folder; --dataset {spec} is not one"
                + ("" if shadowed is None else f" but the built-in dataset {spec}, not {shadowed}"))
    return None


def _check_resize(spec: str, image_size) -> None:
    problem = resize_problem(spec, image_size)
    if problem is not None:
        raise DatasetSpecError(f"--image-size {problem}")


def _own_data_path(spec: str, data_dir, download: bool) -> Path:
    """The absolute path of your own data; DatasetSpecError if there is none, or for the options
    of named datasets."""
    if not spec:  # Path("") is the working directory, which the user did not name
        raise DatasetSpecError(f"--dataset is empty: give a dataset name ({', '.join(DATASETS)}) or the path of an "
                               f".npz file or image folder")
    path = Path(spec).expanduser()
    if not path.exists():
        raise DatasetSpecError(f"--dataset {spec!r} is neither a dataset name ({', '.join(DATASETS)}) nor an "
                               f"existing .npz file or image folder")
    for flag, value in (("--download", download), ("--data-dir", data_dir)):
        if value:
            raise DatasetSpecError(f"{flag} applies to the named datasets; --dataset {spec} is a path")
    return path.resolve()


@dataclass(frozen=True)
class TestSplit:
    """Your own data's test split read alone (``open_test_split``), for evaluation: ``test`` is
    (x, y) as in LoadedDataset. Test labels need not show every class, so the number of classes is
    the model's: ``info(num_classes)`` checks that the labels can be its classes."""

    __test__ = False               # not a pytest test class, despite its name

    name: str                      # the file's or folder's absolute path
    test: tuple
    classes: tuple = ()            # an image folder's test/ class folders by name: label i is the i-th
    notes: tuple = ()

    @property
    def fewest_classes(self) -> int:
        """The fewest classes a model needs for these labels: one per class folder, else the
        largest label + 1."""
        return len(self.classes) if self.classes else int(self.test[1].max()) + 1

    def info(self, num_classes: int) -> DatasetInfo:
        """This data for a model predicting ``num_classes`` classes; DatasetSpecError when the
        labels cannot be that model's: a folder's classes are counted, so one missing class folder
        (which would shift every later label) is refused rather than mislabelling."""
        if self.classes and len(self.classes) != num_classes:
            raise DatasetSpecError(
                f"{self.name}: test/ has {len(self.classes)} class folders ({class_list(self.classes)}) but the model "
                f"predicts {num_classes} classes; label i is the i-th test/ folder by name, so test/ needs one "
                f"folder per class of the model (a missing one would shift every later label)")
        if self.fewest_classes > num_classes:
            raise DatasetSpecError(f"{self.name}: y_test has label {self.fewest_classes - 1}, but the model predicts "
                                   f"{num_classes} classes (labels 0..{num_classes - 1})")
        _, channels, size, _ = self.test[0].shape
        return _custom_info(self.name, num_classes, channels, size)


def open_test_split(spec: str | os.PathLike, *, image_size: int | None = None,
                    cache_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                    download: bool = False) -> TestSplit:
    """Your own data's test split alone: an .npz's ``x_test``, ``y_test`` (other arrays ignored)
    or an image folder's test/ (train/ not decoded), validated as ``open_dataset`` does.

    ``data_dir`` and ``download`` are refused as ``open_dataset`` refuses them for a path; a named
    dataset's test split is ``load(name, "test")``.
    """
    spec = str(spec)
    if spec in _DATASETS:
        shadowed = _shadowed_path(spec)
        raise DatasetSpecError(f"{spec} is a named dataset; load({spec!r}, 'test') reads its test split"
                               + ("" if shadowed is None else f" (and {shadowed})"))
    _check_resize(spec, image_size)
    path = _own_data_path(spec, data_dir, download)
    arrays = read_image_folder_test(path, image_size, cache_dir) if path.is_dir() else read_npz_test(path)
    return TestSplit(str(path), _to_tensors(arrays.x_test, arrays.y_test), arrays.classes, arrays.notes)


def from_arrays(x_train, y_train, x_test, y_test, name: str = "arrays") -> LoadedDataset:
    """In-memory data (torch tensors or numpy arrays), validated as an .npz's arrays are."""
    origin = f"data ({name})"
    arrays = {key: _as_numpy(value, f"{origin}: {key}") for key, value in
              zip(("x_train", "y_train", "x_test", "y_test"), (x_train, y_train, x_test, y_test))}
    splits = splits_from_arrays(arrays, origin)
    return _custom_dataset(name, splits, {"kind": "arrays", "name": name})


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _as_numpy(value, where: str) -> np.ndarray:
    """A tensor's values as numpy; a sparse, nested, quantized or meta-device one, or one of a dtype
    numpy has no match for, is refused by name (`where`), not with torch's conversion error from
    inside."""
    if isinstance(value, torch.Tensor):
        problem = unreadable_tensor_problem(value)
        if problem:
            raise DatasetFileError(f"{where}: {problem}")
        value = value.detach().cpu().resolve_conj().resolve_neg()  # numpy() refuses the lazy conj/neg views
        try:
            if value.is_floating_point() and value.dtype not in _NUMPY_FLOATS:  # bfloat16, float8: float32 holds them
                value = value.float()
            return value.numpy()
        except (TypeError, NotImplementedError):  # complex32, bits8, uint4, float4_e2m1fn_x2: no numpy dtype
            raise DatasetFileError(f"{where}: has dtype {value.dtype}, which numpy has no match for; pixels must "
                                   f"be uint8 (0-255) or float (0-1), labels integers") from None
    try:
        return np.asarray(value)
    except ValueError as error:  # nested lists of unequal lengths
        raise DatasetFileError(f"{where}: not an array ({error})") from None


def _custom_info(name: str, num_classes: int, channels: int, size: int) -> DatasetInfo:
    arch = "small-cnn" if size < CUSTOM_SMALL_IMAGE else "resnet18"
    return DatasetInfo(name, num_classes, channels, size, CUSTOM_EPSILON, "none", arch)


def _custom_dataset(name: str, splits: Splits, source: dict) -> LoadedDataset:
    channels, size, _ = splits.image_shape
    info = _custom_info(name, splits.num_classes, channels, size)
    source = {**source, "sha256": splits.fingerprint(), "num_classes": splits.num_classes,
              "channels": channels, "image_size": size, **({"classes": list(splits.classes)} if splits.classes else {})}
    return LoadedDataset(info, _to_tensors(splits.x_train, splits.y_train), _to_tensors(splits.x_test, splits.y_test),
                         source, splits.notes)


def read_source(run_dir: str | os.PathLike) -> dict | None:
    """The data record a run directory holds (SOURCE_FILE), or None if it has none."""
    path = Path(run_dir) / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetFileError(f"{path} is not a readable data record ({error})") from None
    if not isinstance(record, dict) or "kind" not in record:
        raise DatasetFileError(f"{path} is not a data record (no 'kind')")
    return record


def reopen(record: dict, *, data_dir: str | os.PathLike | None = None, download: bool = False) -> LoadedDataset:
    """The dataset a run recorded, refused (DatasetFileError) if its content hash changed."""
    kind = record.get("kind")
    if kind == "named":
        return open_dataset(record["name"], data_dir=data_dir, download=download)
    if kind == "arrays":
        raise DatasetSpecError(f"the run was trained on in-memory arrays ({record.get('name')}); they cannot "
                               f"be found again: pass --dataset")
    if kind not in ("npz", "image-folder"):
        raise DatasetFileError(f"unknown data record kind {kind!r}")
    path = record["path"]
    if not Path(path).exists():
        raise DatasetSpecError(f"the run's data {path} no longer exists; pass --dataset to give it")
    loaded = open_dataset(path, image_size=record.get("resize"))
    check_source(loaded, record)
    return loaded


def check_source(loaded: LoadedDataset, record: dict) -> None:
    """Refuse data whose content hash differs from the one a run recorded."""
    expected, actual = record.get("sha256"), loaded.source.get("sha256")
    if expected is not None and actual != expected:
        where = record.get("path") or record.get("name")
        now = loaded.source.get("path")
        if now is not None and where is not None and now != where:  # given at another path than recorded
            raise DataChangedError(f"{now} is not the data the run was trained on ({where}): its content hash "
                                   f"is sha256 {str(actual)[:16]}..., the run recorded {expected[:16]}...; "
                                   f"refusing to mix data (give the run's own data, or train a new run)")
        raise DataChangedError(f"{where} has changed since the run recorded it: its content hash was "
                               f"sha256 {expected[:16]}..., it is now {str(actual)[:16]}...; refusing to "
                               f"mix data (train a new run, or restore the original data)")
