"""Datasets (CIFAR-10/100, SVHN, sklearn digits, synthetic) and on-device batching.

See docs/data.md for the on-disk formats, downloading and the per-dataset defaults.
"""

from .batches import AUGMENTATIONS, BatchIterator, augment_batch, iterate_batches
from .datasets import DATASETS, SPLITS, DatasetInfo, dataset_info, default_data_dir, load
from .errors import ChecksumError, DatasetFileError, DownloadError
from .fetch import download

__all__ = [
    "AUGMENTATIONS",
    "BatchIterator",
    "ChecksumError",
    "DATASETS",
    "DatasetFileError",
    "DatasetInfo",
    "DownloadError",
    "SPLITS",
    "augment_batch",
    "dataset_info",
    "default_data_dir",
    "download",
    "iterate_batches",
    "load",
]
