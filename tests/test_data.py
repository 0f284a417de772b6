import hashlib
import io
import os
import pickle
import sys
import tarfile
import time

import numpy as np
import pytest
import torch

from adt_fast.data import (
    AUGMENTATIONS,
    DATASETS,
    ChecksumError,
    DatasetFileError,
    augment_batch,
    dataset_info,
    download,
    iterate_batches,
    load,
)
from adt_fast.data import fetch
from adt_fast.data.small_datasets import make_synthetic
from conftest import publish

CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


# ---------------------------------------------------------------- files in the official formats


def _write_cifar_batch(path, images, labels, label_key):
    """A batch like the official ones: a protocol-2 pickle of a dict with bytes keys."""
    batch = {b"batch_label": b"test batch", b"data": images.reshape(len(images), -1), label_key: list(labels)}
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def _random_images(rng, count):
    return rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)


def _write_cifar10(root, rows_per_file=2, seed=0):
    """Writes root/cifar-10-batches-py; returns {split: (images, labels)} as written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for split, filenames in (("train", CIFAR10_TRAIN_FILES), ("test", ["test_batch"])):
        images = _random_images(rng, rows_per_file * len(filenames))
        labels = rng.integers(0, 10, size=len(images))
        for index, filename in enumerate(filenames):
            rows = slice(index * rows_per_file, (index + 1) * rows_per_file)
            _write_cifar_batch(folder / filename, images[rows], labels[rows], b"labels")
        written[split] = (images, labels)
    return written


def _assert_loaded(x, y, images, labels):
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.is_contiguous()
    torch.testing.assert_close(x, torch.from_numpy(images).float() / 255)
    assert y.tolist() == list(labels)


def test_cifar10_reads_the_official_layout(tmp_path):
    written = _write_cifar10(tmp_path)
    for split in ("train", "test"):
        x, y = load("cifar10", split, data_dir=tmp_path)
        _assert_loaded(x, y, *written[split])
    assert load("cifar10", "train", data_dir=tmp_path)[0].shape == (10, 3, 32, 32)


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images, labels = _random_images(rng, 3), np.array([0, 57, 99])
    for filename in ("train", "test"):
        _write_cifar_batch(folder / filename, images, labels, b"fine_labels")
    _assert_loaded(*load("cifar100", "test", data_dir=tmp_path), images, labels)


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": stored, "y": np.array([[10], [1], [9], [10]], dtype=np.uint8)})
    x, y = load("svhn", "test", data_dir=tmp_path)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 9, 0]
    # x[n, c, h, w] is stored X[h, w, c, n].
    assert x[2, 1, 5, 7] == pytest.approx(stored[5, 7, 1, 2] / 255)
    torch.testing.assert_close(x, torch.from_numpy(stored.transpose(3, 2, 0, 1)).float() / 255)


def test_data_dir_defaults_to_the_environment_variable(tmp_path, monkeypatch):
    written = _write_cifar10(tmp_path)
    monkeypatch.setenv("ADT_FAST_DATA_DIR", str(tmp_path))
    _assert_loaded(*load("cifar10", "test"), *written["test"])


@pytest.mark.parametrize("name,missing", [("cifar10", "data_batch_1"), ("cifar100", "train"), ("svhn", "train_32x32.mat")])
def test_missing_file_names_the_file_the_directory_and_the_fix(tmp_path, name, missing):
    with pytest.raises(FileNotFoundError) as error:
        load(name, "train", data_dir=tmp_path)
    message = str(error.value)
    assert missing in message and str(tmp_path) in message
    assert "download=True" in message and "http" in message


def test_truncated_cifar_batch_is_reported_with_its_path(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetFileError, match="test_batch"):
        load("cifar10", "test", data_dir=tmp_path)


def test_cifar_batch_with_wrong_row_size_is_rejected(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    _write_cifar_batch(path, np.zeros((2, 100), dtype=np.uint8), [0, 1], b"labels")
    with pytest.raises(DatasetFileError, match="3072"):
        load("cifar10", "test", data_dir=tmp_path)


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_reader_refuses_pickles_that_would_call_functions(tmp_path):
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _RunsCodeWhenUnpickled(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetFileError, match="getcwd"):
        load("cifar10", "test", data_dir=tmp_path)


def test_corrupt_svhn_file_is_reported_with_its_path(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(DatasetFileError, match="train_32x32.mat"):
        load("svhn", "train", data_dir=tmp_path)


# ---------------------------------------------------------------------------------- downloading


def _serve_cifar10_archive(tmp_path, served):
    written = _write_cifar10(tmp_path / "source")
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return written, archive.read_bytes()


def test_download_fetches_verifies_and_unpacks(tmp_path, file_server, monkeypatch):
    served, base_url = file_server
    written, body = _serve_cifar10_archive(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    data_dir = tmp_path / "data"
    assert download("cifar10", data_dir, base_url=base_url) == data_dir
    _assert_loaded(*load("cifar10", "train", data_dir=data_dir), *written["train"])
    assert sorted(os.listdir(data_dir)) == [fetch.LOCK_FILE, "cifar-10-batches-py", "cifar-10-python.tar.gz"]
    # A verified archive is reused: this host refuses connections, so a fetch would fail.
    download("cifar10", data_dir, base_url="http://127.0.0.1:9")


def test_load_downloads_from_the_environment_url(tmp_path, file_server, monkeypatch):
    served, base_url = file_server
    written, body = _serve_cifar10_archive(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    monkeypatch.setenv("ADT_FAST_DATA_URL", base_url)
    _assert_loaded(*load("cifar10", "test", data_dir=tmp_path / "data", download=True), *written["test"])


def test_download_true_unpacks_a_damaged_batch_again(tmp_path, file_server, monkeypatch):
    served, base_url = file_server
    written, body = _serve_cifar10_archive(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    data_dir = tmp_path / "data"
    download("cifar10", data_dir, base_url=base_url)
    damaged = data_dir / "cifar-10-batches-py" / "test_batch"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(DatasetFileError) as error:
        load("cifar10", "test", data_dir=data_dir)
    message = str(error.value)
    assert str(damaged) in message and "; delete it, or rerun with download=True (CLI: --download)" in message
    monkeypatch.setenv("ADT_FAST_DATA_URL", base_url)
    _assert_loaded(*load("cifar10", "test", data_dir=data_dir, download=True), *written["test"])


def test_download_true_unpacks_a_batch_with_labels_of_no_class_again(tmp_path, file_server, monkeypatch):
    """Labels that are not class indices are a DatasetFileError, which download=True repairs (a raw
    TypeError skipped the repair)."""
    served, base_url = file_server
    written, body = _serve_cifar10_archive(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    data_dir = tmp_path / "data"
    download("cifar10", data_dir, base_url=base_url)
    _write_cifar_batch(data_dir / "cifar-10-batches-py" / "test_batch", written["test"][0], [None, None], b"labels")
    monkeypatch.setenv("ADT_FAST_DATA_URL", base_url)
    _assert_loaded(*load("cifar10", "test", data_dir=data_dir, download=True), *written["test"])


def test_download_true_fetches_a_truncated_file_again(tmp_path, file_server, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    served, base_url = file_server
    stored = np.random.default_rng(3).integers(0, 256, size=(32, 32, 3, 2), dtype=np.uint8)
    for filename in ("train_32x32.mat", "test_32x32.mat"):
        scipy_io.savemat(served / filename, {"X": stored, "y": np.array([[1], [2]], dtype=np.uint8)})
        publish(monkeypatch, filename, (served / filename).read_bytes())
    published = (served / "test_32x32.mat").read_bytes()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "test_32x32.mat").write_bytes(published[:len(published) // 2])   # an interrupted copy
    monkeypatch.setenv("ADT_FAST_DATA_URL", base_url)
    x, y = load("svhn", "test", data_dir=data_dir, download=True)
    assert y.tolist() == [1, 2] and x[1, 2, 3, 4] == pytest.approx(stored[3, 4, 2, 1] / 255)
    assert (data_dir / "test_32x32.mat").read_bytes() == published


def test_download_with_wrong_checksum_leaves_nothing_behind(tmp_path, file_server, monkeypatch):
    served, base_url = file_server
    _, body = _serve_cifar10_archive(tmp_path, served)
    checksum = hashlib.md5(body).hexdigest()
    # The served file's size and another sum: the download fails on its checksum alone.
    monkeypatch.setitem(fetch.PUBLISHED, "cifar-10-python.tar.gz", fetch.Published("0" * 32, len(body)))
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumError) as error:
        download("cifar10", data_dir, base_url=base_url)
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and "0" * 32 in message and checksum in message
    assert os.listdir(data_dir) == [fetch.LOCK_FILE]


def test_download_of_a_missing_url_fails_cleanly(tmp_path, file_server):
    _, base_url = file_server
    with pytest.raises(OSError, match="cifar-100-python.tar.gz"):
        download("cifar100", tmp_path / "data", base_url=base_url)
    assert os.listdir(tmp_path / "data") == [fetch.LOCK_FILE]


def _tar_member(tar, name, kind=tarfile.REGTYPE, linkname=""):
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, linkname
    payload = b"x" if kind == tarfile.REGTYPE else b""
    member.size = len(payload)
    tar.addfile(member, io.BytesIO(payload))


@pytest.mark.parametrize(
    "member",
    [
        {"name": "../escaped"},
        {"name": "/tmp/absolute-escape"},
        {"name": "cifar-10-batches-py/link", "kind": tarfile.SYMTYPE, "linkname": "/etc/passwd"},
    ],
)
def test_unsafe_archive_members_are_refused(tmp_path, file_server, monkeypatch, member):
    served, base_url = file_server
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _tar_member(tar, **member)
    publish(monkeypatch, "cifar-10-python.tar.gz", archive.read_bytes())
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetFileError, match="refusing"):
        download("cifar10", data_dir, base_url=base_url)
    assert not (tmp_path / "escaped").exists()
    assert sorted(os.listdir(data_dir)) == [fetch.LOCK_FILE, "cifar-10-python.tar.gz"]


def _load_when_started(start, results):
    start.wait()
    try:
        results.put(load("cifar10", "test", data_dir=os.environ["DATA_DIR"], download=True)[1].tolist())
    except BaseException as error:  # reported to the test, not as a child's traceback
        results.put(repr(error))


def test_processes_downloading_into_one_folder_take_turns(tmp_path, monkeypatch):
    """The ranks of a data-parallel run all load(download=True) into one folder at once: the first
    fetches and unpacks, the others wait for it and then find the files. Unlocked, each fetched
    the archive and unpacked it over the others' (OSError: Directory not empty)."""
    import http.server
    import multiprocessing
    from test_fetch import serving

    served = tmp_path / "served"
    served.mkdir()
    written, body = _serve_cifar10_archive(tmp_path, served)
    publish(monkeypatch, "cifar-10-python.tar.gz", body)
    requests = []

    class SlowHandler(http.server.SimpleHTTPRequestHandler):   # slow enough for every process to ask
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            time.sleep(0.5)
            super().do_GET()

        def log_message(self, *args):
            pass

    context = multiprocessing.get_context("fork")   # the children inherit the test's PUBLISHED entry
    start, results = context.Event(), context.Queue()
    with serving(SlowHandler) as base_url:
        monkeypatch.setenv("ADT_FAST_DATA_URL", base_url)
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
        processes = [context.Process(target=_load_when_started, args=(start, results)) for _ in range(4)]
        for process in processes:
            process.start()
        start.set()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=30)
    assert outcomes == [written["test"][1].tolist()] * 4
    assert requests == ["/cifar-10-python.tar.gz"]


def test_download_rejects_names_without_files(tmp_path):
    with pytest.raises(ValueError, match="digits"):
        download("digits", tmp_path)


# ------------------------------------------------------------------------------------ registry


def test_dataset_info_matches_the_paper_settings():
    assert dataset_info("cifar10").epsilon == pytest.approx(8 / 255)
    assert dataset_info("cifar100").num_classes == 100
    svhn = dataset_info("svhn")
    assert svhn.epsilon == pytest.approx(4 / 255) and svhn.augment == "none"
    assert {dataset_info(name).augment for name in DATASETS} <= set(AUGMENTATIONS)
    assert dataset_info("digits").default_arch == "small-cnn"


def test_unknown_dataset_and_split_are_named():
    with pytest.raises(ValueError, match="imagenet") as error:
        dataset_info("imagenet")
    assert all(name in str(error.value) for name in DATASETS)
    with pytest.raises(ValueError, match="split.*'valid'"):
        load("synthetic", "valid")


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_in_memory_datasets_match_their_info(name):
    if name == "digits":
        pytest.importorskip("sklearn")
    info = dataset_info(name)
    x, y = load(name, "test")
    assert x.shape[1:] == (info.channels, info.image_size, info.image_size)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.is_contiguous()
    assert 0 <= x.min() and x.max() <= 1
    assert set(y.tolist()) == set(range(info.num_classes))


def test_digits_split_is_fixed_and_covers_all_1797_images():
    pytest.importorskip("sklearn")
    x_train, y_train = load("digits", "train")
    x_test, _ = load("digits", "test")
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 359
    assert x_train.max() == 1.0
    torch.testing.assert_close(load("digits", "train")[0], x_train)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load("digits", "train")


def test_synthetic_is_deterministic_and_seed_dependent():
    first, second = load("synthetic", "train"), load("synthetic", "train")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].shape == (500, 3, 8, 8)
    assert not np.array_equal(make_synthetic("train", seed=1)[0], first[0].numpy())


def test_synthetic_is_learnable_by_nearest_class_mean():
    x_train, y_train = load("synthetic", "train")
    x_test, y_test = load("synthetic", "test")
    means = torch.stack([x_train[y_train == label].mean(0) for label in range(10)])
    distances = torch.cdist(x_test.flatten(1), means.flatten(1))
    assert (distances.argmin(1) == y_test).float().mean() > 0.8


# --------------------------------------------------------------------------------- augmentation


def _distinct_images(count, channels=2, size=6):
    """Every pixel positive and unique, so a crop's position can be recovered (padding is 0)."""
    return torch.arange(1, count * channels * size * size + 1, dtype=torch.float32).reshape(count, channels, size, size)


def _crop_placement(padded, crop):
    """The (top, left, flipped) of the one window of ``padded`` that equals ``crop``."""
    size = crop.shape[-1]
    matches = [
        (top, left, flipped)
        for top in range(padded.shape[-2] - size + 1)
        for left in range(padded.shape[-1] - size + 1)
        for flipped in (False, True)
        if torch.equal(padded[:, top:top + size, left:left + size].flip(-1) if flipped
                       else padded[:, top:top + size, left:left + size], crop)
    ]
    assert len(matches) == 1
    return matches[0]


def test_crop_flip_is_a_shifted_and_flipped_window_of_the_padded_image():
    x = _distinct_images(64)
    out = augment_batch(x, "crop_flip", generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    placements = [_crop_placement(padded[n], out[n]) for n in range(len(x))]
    tops, lefts, flips = zip(*placements)
    assert set(tops) == set(range(9)) and set(lefts) == set(range(9))
    assert set(flips) == {False, True}


def test_augmentation_is_reproducible_with_a_generator():
    x = torch.rand(16, 3, 32, 32)
    runs = [augment_batch(x, "crop_flip", generator=torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_augmentation_keeps_channels_last():
    x = torch.rand(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    out = augment_batch(x, "crop_flip")
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_no_augmentation_is_the_identity():
    x = torch.rand(2, 3, 8, 8)
    assert augment_batch(x, "none") is x


def test_bad_augmentation_arguments_are_named():
    with pytest.raises(ValueError, match="kind.*'rotate'"):
        augment_batch(torch.rand(2, 3, 8, 8), "rotate")
    with pytest.raises(ValueError, match="x must"):
        augment_batch(torch.rand(3, 8, 8), "crop_flip")


# ------------------------------------------------------------------------------------- batching


def test_unshuffled_batches_cover_the_data_in_order():
    x, y = torch.rand(10, 1, 8, 8), torch.arange(10)
    batches = iterate_batches(x, y, 4, shuffle=False)
    assert len(batches) == 3
    assert torch.equal(torch.cat([xb for xb, _ in batches]), x)
    assert [yb.tolist() for _, yb in iterate_batches(x, y, 4, shuffle=False, drop_last=True)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_shuffled_batches_are_a_reproducible_permutation_per_pass():
    x, y = torch.rand(50, 1, 8, 8), torch.arange(50)

    def one_pass(batches):
        return torch.cat([yb for _, yb in batches])

    batches = iterate_batches(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(3), augment="crop_flip")
    first, second = one_pass(batches), one_pass(batches)
    assert sorted(first.tolist()) == list(range(50))
    assert not torch.equal(first, second)
    again = iterate_batches(x, y, 8, shuffle=True, generator=torch.Generator().manual_seed(3), augment="crop_flip")
    assert torch.equal(one_pass(again), first)


@pytest.mark.parametrize(
    "kwargs,argument",
    [({"batch_size": 0}, "batch_size"), ({"y": torch.arange(3)}, "same number"), ({"augment": "blur"}, "augment")],
)
def test_bad_batching_arguments_are_named(kwargs, argument):
    arguments = {"x": torch.rand(4, 1, 8, 8), "y": torch.arange(4), "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=argument):
        iterate_batches(arguments.pop("x"), arguments.pop("y"), arguments.pop("batch_size"), shuffle=False, **arguments)
