"""The dataset registry (settings from appendix C.1/C.3) and the one entry point, ``load``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import fetch
from .files import CIFAR_LAYOUTS, read_cifar, read_svhn, required_files
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
    )
}
DATASETS = tuple(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; choose one of {', '.join(DATASETS)}")
    return _DATASETS[name]


def default_data_dir() -> Path:
    """$ADT_FAST_DATA_DIR if set, else ~/.cache/adt_fast/data."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def load(name: str, split: str, data_dir: str | os.PathLike | None = None,
         download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split as ``(x, y)``: x float32 NCHW in [0, 1] (contiguous, CPU), y int64.

    For cifar10, cifar100 and svhn, files are read from ``data_dir`` (default: see
    ``default_data_dir``); with ``download=True`` missing files are fetched first.
    digits and synthetic need no files.
    """
    dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if name == "digits":
        images, labels = read_digits(split)
    elif name == "synthetic":
        images, labels = make_synthetic(split)
    else:
        directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
        if download and not all(path.is_file() for path in required_files(name, split, directory)):
            fetch.download(name, directory)
        images, labels = read_cifar(name, split, directory) if name in CIFAR_LAYOUTS else read_svhn(split, directory)
    return _to_tensors(images, labels)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    return x.contiguous(), torch.from_numpy(labels).long()
