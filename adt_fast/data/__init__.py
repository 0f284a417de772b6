"""Datasets (CIFAR-10/100, SVHN, MNIST, Fashion-MNIST, sklearn digits, synthetic, your own
.npz files, image folders and arrays) and on-device batching.

See docs/data.md for the on-disk formats, downloading and the per-dataset defaults.
"""

from .batches import AUGMENTATIONS, BatchIterator, augment_batch, iterate_batches
from .custom import default_cache_dir, detect_layout
from .datasets import (CUSTOM_SMALL_IMAGE, DATASETS, SOURCE_FILE, SPLITS, DatasetInfo, DatasetSpecError, LoadedDataset,
                       TestSplit, check_source, dataset_info, default_data_dir, from_arrays, load, open_dataset,
                       open_test_split, read_source, reopen, resize_problem)
from .errors import ChecksumError, DataChangedError, DatasetFileError, DownloadError, MissingDependencyError
from .fetch import download

__all__ = [
    "AUGMENTATIONS",
    "BatchIterator",
    "CUSTOM_SMALL_IMAGE",
    "ChecksumError",
    "DATASETS",
    "DataChangedError",
    "DatasetFileError",
    "DatasetInfo",
    "DatasetSpecError",
    "DownloadError",
    "LoadedDataset",
    "MissingDependencyError",
    "SOURCE_FILE",
    "SPLITS",
    "TestSplit",
    "augment_batch",
    "check_source",
    "dataset_info",
    "default_cache_dir",
    "default_data_dir",
    "detect_layout",
    "download",
    "from_arrays",
    "iterate_batches",
    "load",
    "open_dataset",
    "open_test_split",
    "read_source",
    "reopen",
    "resize_problem",
]
