"""The on-disk readers (adt_fast/data/files.py) and the registry/load (datasets.py).

Stated against the file formats documented in files.py's docstring, the appendix (C.1) and
load()/open_dataset() docstrings."""
import errno
import gzip
import pickle
import tarfile

import numpy as np
import pytest
import torch

from adt_fast.data import DatasetFileError, dataset_info, load, open_dataset
from conftest import publish
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
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
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


def _empty_split(root, name):
    if name == "mnist":
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((0, 28, 28), np.uint8)))
        (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(0, np.uint8)))
        return raw / "t10k-images-idx3-ubyte"
    if name == "svhn":
        scipy_io = pytest.importorskip("scipy.io")
        scipy_io.savemat(root / "test_32x32.mat",
                         {"X": np.zeros((32, 32, 3, 0), np.uint8), "y": np.zeros((0, 1), np.uint8)})
        return root / "test_32x32.mat"
    _cifar10(root)
    path = root / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as handle:   # protocol 2 pickles the empty data as __builtin__.bytes()
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, handle, protocol=2)
    return path


@pytest.mark.parametrize("name", ["mnist", "svhn", "cifar10"])
def test_a_file_with_no_images_is_refused_naming_it(tmp_path, name):
    """An empty split would train on nothing, or report a test accuracy of 0, without a word."""
    path = _empty_split(tmp_path, name)
    with pytest.raises(DatasetFileError, match="holds no images") as error:
        load(name, "test", data_dir=tmp_path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("shape", [(2, 12, 12), (2, 28, 30)])
def test_idx_images_of_another_size_than_the_datasets_are_refused(tmp_path, shape):
    """MNIST's models take 1x28x28: other images would fail deep inside one (a matmul's shapes)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros(shape, np.uint8)))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([3, 4], np.uint8)))
    message = f"holds images of {shape[1]}x{shape[2]} pixels, mnist's are 28x28"
    with pytest.raises(DatasetFileError, match=message) as error:
        load("mnist", "test", data_dir=tmp_path)
    assert str(raw / "t10k-images-idx3-ubyte") in str(error.value)


@pytest.mark.parametrize("labels,message", [
    ([0.9, 1.5], "must hold whole-number labels, found 0.9"),
    (np.array([2.0, np.nan]), "must hold whole-number labels, found nan"),
    ([b"cat", b"dog"], "must hold integer labels, got \\|S3"),
    (None, "must hold one label per image"),
    ({1: 2}, "must hold one label per image"),
    ([True, False], "must hold integer labels, got bool"),
    ([[1], [2, 3]], "is not an array of labels"),
    ([2 ** 70, 0], "must hold integer labels, got object"),
    (np.array([2 ** 64 - 1, 0], np.uint64), r"labels must lie in \[0, 10\), found \[0, 18446744073709551615\]"),
])
def test_cifar_labels_that_are_not_class_indices_are_refused_naming_file_and_key(tmp_path, labels, message):
    """A cast would truncate 0.9 to class 0, and bytes, None or a huge number raised a raw
    ValueError, TypeError or OverflowError that named no file (nor reached download=True's repair)."""
    _cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, handle, protocol=2)
    with pytest.raises(DatasetFileError, match=message) as error:
        load("cifar10", "test", data_dir=tmp_path)
    assert str(path) in str(error.value)
    if "lie in" not in message:
        assert "b'labels'" in str(error.value)


def test_svhn_labels_must_be_whole_numbers_one_per_image(tmp_path):
    """SVHN's y is uint8 or double (N, 1): whole doubles are labels (10.0 is the digit 0), 2.5 is
    not class 2, and an (N, 2) y is not N labels, even when 2N is the number of images."""
    scipy_io = pytest.importorskip("scipy.io")
    path = tmp_path / "test_32x32.mat"
    scipy_io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[10.0], [3.0]])})
    assert load("svhn", "test", data_dir=tmp_path)[1].tolist() == [0, 3]
    scipy_io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[2.5], [3.0]])})
    with pytest.raises(DatasetFileError, match=f"{path}: y must hold whole-number labels, found 2.5"):
        load("svhn", "test", data_dir=tmp_path)
    scipy_io.savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((2, 2), np.uint8)})
    with pytest.raises(DatasetFileError, match=r"y must hold one label per image, of shape \(N,\) or \(N, 1\), "
                                               r"got shape \(2, 2\)"):
        load("svhn", "test", data_dir=tmp_path)


def test_a_file_this_user_may_not_read_is_called_a_permission_problem(tmp_path, monkeypatch):
    """Deleting it or downloading it again is no answer to EACCES; its permissions are."""
    from adt_fast.data import files as data_files
    _cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"

    def refuse(name, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(name))

    monkeypatch.setattr(data_files, "open", refuse, raising=False)   # root reads any file
    with pytest.raises(DatasetFileError, match=f"cannot read cifar10 file {path}: permission denied") as error:
        load("cifar10", "test", data_dir=tmp_path)
    assert "delete it" not in str(error.value) and "chmod" in str(error.value)


@pytest.mark.parametrize("name,download", [("cifar10", False), ("mnist", False), ("cifar10", True)])
def test_a_folder_this_user_may_not_search_is_called_a_permission_problem(tmp_path, monkeypatch, name, download):
    """Path.is_file raises EACCES (not False) in a folder without search permission: a bare
    PermissionError traceback from load(), and from the CLI, before this was said in words."""
    import pathlib
    real_is_file = pathlib.Path.is_file

    def refuse(path):
        if tmp_path in path.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(pathlib.Path, "is_file", refuse)   # root searches any folder
    with pytest.raises(DatasetFileError, match="permission denied; its owner can make the folder searchable"):
        load(name, "test", data_dir=tmp_path, download=download)


def test_data_dir_default_without_the_environment_variable_is_the_documented_cache(tmp_path, monkeypatch):
    """docs/data.md: 'If data_dir is not given it is $ADT_FAST_DATA_DIR, else ~/.cache/adt_fast/data'."""
    monkeypatch.delenv("ADT_FAST_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    written = _write_mnist(tmp_path / ".cache" / "adt_fast" / "data", compressed=False)
    x, y = load("mnist", "test")
    assert y.tolist() == written["test"][1].tolist()


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_one_channel_images_have_standard_strides(tmp_path, name):
    """images[:, None] of (N, H, W) has strides (HW, 1, W, 1): 'contiguous', yet conv ran the whole
    network channels_last on it (--no-channels-last too) and DDP warned of mismatched grad strides."""
    if name == "mnist":
        _write_mnist(tmp_path, compressed=False)
    x, _ = load(name, "train", data_dir=tmp_path)
    assert x.shape[1] == 1 and x.stride() == torch.empty(x.shape).stride()
