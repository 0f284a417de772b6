"""The on-disk readers (adt_fast/data/files.py) and the registry/load (datasets.py).

Stated against the file formats documented in files.py's docstring, the appendix (C.1) and
load()/open_dataset() docstrings."""
import gzip
import hashlib
import pickle
import tarfile

import numpy as np
import pytest
import torch

from adt_fast.data import DatasetFileError, dataset_info, load, open_dataset
from adt_fast.data import fetch
from test_custom_data import _idx_bytes, _write_mnist  # torchvision's MNIST layout


def test_idx_image_rows_are_image_rows_not_columns(tmp_path):
    """IDX images are (N, rows, cols); x[n, 0, r, c] is pixel (r, c) of image n."""
    written = _write_mnist(tmp_path, compressed=False)
    images, _ = written["test"]
    x, _ = load("mnist", "test", data_dir=tmp_path)
    assert x[1, 0, 3, 17].item() == pytest.approx(images[1, 3, 17] / 255)
    assert x[1, 0, 17, 3].item() == pytest.approx(images[1, 17, 3] / 255)


def test_idx_unpacked_file_wins_over_gz(tmp_path):
    """files.py: 'the unpacked file wins when both exist'."""
    written = _write_mnist(tmp_path, compressed=False)
    raw = tmp_path / "MNIST" / "raw"
    other = np.full((3, 28, 28), 7, np.uint8)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(other)))
    x, _ = load("mnist", "test", data_dir=tmp_path)
    torch.testing.assert_close(x, torch.from_numpy(written["test"][0]).float()[:, None] / 255)


def test_idx_type_byte_other_than_uint8_is_refused(tmp_path):
    """IDX header: type byte 0x08 = uint8 is the only one the reader accepts."""
    _write_mnist(tmp_path, compressed=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float32 type code, same payload length
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetFileError, match="magic number"):
        load("mnist", "test", data_dir=tmp_path)


def test_svhn_X_of_wrong_image_shape_is_refused(tmp_path):
    """SVHN's X is uint8 (32, 32, 3, N)."""
    scipy_io = pytest.importorskip("scipy.io")
    X = np.zeros((28, 28, 3, 2), np.uint8)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": X, "y": np.array([[1], [2]], np.uint8)})
    with pytest.raises(DatasetFileError, match="32, 32, 3"):
        load("svhn", "test", data_dir=tmp_path)


def _write_batch(path, images, labels, key=b"labels"):
    with open(path, "wb") as handle:
        pickle.dump({b"data": images.reshape(len(images), -1), key: list(labels)}, handle, protocol=2)


def _cifar10(root, rows=2, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images = rng.integers(0, 256, size=(rows * len(files), 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=len(images))
        for i, f in enumerate(files):
            _write_batch(folder / f, images[i * rows:(i + 1) * rows], labels[i * rows:(i + 1) * rows])
        written[split] = (images, labels)
    return written


def test_cifar_label_equal_to_num_classes_is_refused(tmp_path):
    """Labels must lie in [0, num_classes): 10 is not a CIFAR-10 class."""
    _cifar10(tmp_path)
    _write_batch(tmp_path / "cifar-10-batches-py" / "test_batch", np.zeros((2, 3, 32, 32), np.uint8), [3, 10])
    with pytest.raises(DatasetFileError, match=r"\[0, 10\)"):
        load("cifar10", "test", data_dir=tmp_path)


def test_cifar_batch_with_more_labels_than_images_is_refused(tmp_path):
    _cifar10(tmp_path)
    _write_batch(tmp_path / "cifar-10-batches-py" / "test_batch", np.zeros((2, 3, 32, 32), np.uint8), [1, 2, 3])
    with pytest.raises(DatasetFileError, match="2 images but 3 labels"):
        load("cifar10", "test", data_dir=tmp_path)


def test_cifar100_is_augmented_like_cifar10():
    """Appendix C.1: crops and flips on CIFAR-10 and CIFAR-100, none on SVHN."""
    assert dataset_info("cifar100").augment == dataset_info("cifar10").augment == "crop_flip"
    assert dataset_info("cifar100").epsilon == pytest.approx(8 / 255)


def test_open_dataset_test_split_is_the_test_files(tmp_path):
    written = _cifar10(tmp_path)
    loaded = open_dataset("cifar10", data_dir=tmp_path)
    torch.testing.assert_close(loaded.test[0], torch.from_numpy(written["test"][0]).float() / 255)
    torch.testing.assert_close(loaded.train[0], torch.from_numpy(written["train"][0]).float() / 255)


def test_download_true_fetches_when_only_some_files_are_present(tmp_path, file_server, monkeypatch):
    """load(download=True): 'missing files are fetched first' - also when only one is missing."""
    served, base_url = file_server
    written = _cifar10(tmp_path / "source")
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(fetch.MD5_CHECKSUMS, "cifar-10-python.tar.gz", hashlib.md5(archive.read_bytes()).hexdigest())
    data = tmp_path / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    (data / "data_batch_1").write_bytes((tmp_path / "source" / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    monkeypatch.setenv("ADT_FAST_DATA_URL", base_url)
    x, y = load("cifar10", "train", data_dir=tmp_path / "data", download=True)
    torch.testing.assert_close(x, torch.from_numpy(written["train"][0]).float() / 255)


def test_image_size_equal_to_the_minimum_is_accepted(tmp_path, monkeypatch):
    """--image-size must be an integer >= MIN_IMAGE_SIZE (8): 8 itself is allowed."""
    PIL = pytest.importorskip("PIL.Image")
    from adt_fast.data.custom import MIN_IMAGE_SIZE
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            PIL.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / "0.png")
    loaded = open_dataset(str(tmp_path / "imgs"), image_size=MIN_IMAGE_SIZE)
    assert loaded.train[0].shape[-2:] == (MIN_IMAGE_SIZE, MIN_IMAGE_SIZE)

def test_idx_magic_number_must_start_with_two_zero_bytes(tmp_path):
    """The IDX magic number is 00 00 TYPE NDIM: a file whose first two bytes are not zero is not an
    IDX file (a different format, or a damaged one) even if its type and dimension bytes fit."""
    _write_mnist(tmp_path, compressed=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    for index in (0, 1):
        data = bytearray(_idx_bytes(np.zeros(5, np.uint8)))
        data[index] = 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(DatasetFileError, match="magic number"):
            load("mnist", "test", data_dir=tmp_path)


def test_idx_split_with_no_examples_loads_as_empty_tensors(tmp_path):
    """The label-range check looks at the labels only when there are some: a split that holds
    zero examples reads as empty tensors, not as numpy's 'zero-size array' error."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(0, np.uint8)))
    x, y = load("mnist", "test", data_dir=tmp_path)
    assert tuple(x.shape) == (0, 1, 28, 28) and tuple(y.shape) == (0,)


def test_idx_images_that_are_not_square_keep_rows_and_columns(tmp_path):
    """IDX images are (N, rows, cols) and load() returns NCHW: x[n, 0] is image n as stored, also
    when rows != cols (a square test cannot tell rows from columns)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(2 * 28 * 30, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 30)
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([3, 4], np.uint8)))
    x, _ = load("mnist", "test", data_dir=tmp_path)
    assert tuple(x.shape) == (2, 1, 28, 30)
    assert x[1, 0, 5, 29].item() == pytest.approx(images[1, 5, 29] / 255)


def test_data_dir_default_without_the_environment_variable_is_the_documented_cache(tmp_path, monkeypatch):
    """docs/data.md: 'If data_dir is not given it is $ADT_FAST_DATA_DIR, else ~/.cache/adt_fast/data'."""
    monkeypatch.delenv("ADT_FAST_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    written = _write_mnist(tmp_path / ".cache" / "adt_fast" / "data", compressed=False)
    x, y = load("mnist", "test")
    assert y.tolist() == written["test"][1].tolist()
