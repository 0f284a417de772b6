"""MNIST-family IDX files, your own .npz files and image folders: round trips and refusals."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from adt_fast.data import (DatasetFileError, DatasetSpecError, dataset_info, detect_layout, download, from_arrays,
                           load, open_dataset)
from adt_fast.data import custom, fetch
from adt_fast.models import build_model
from adt_fast.models.classifiers import MIN_IMAGE_SIZE
from conftest import publish

PIL = pytest.importorskip("PIL.Image")


# ---------------------------------------------------------------------------------- IDX (MNIST)
def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_mnist(folder, compressed: bool, seed: int = 0) -> dict:
    """Small MNIST-format files in torchvision's layout; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, prefix, count in (("train", "train", 12), ("test", "t10k", 5)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            payload = _idx_bytes(array)
            path = raw / f"{prefix}-{kind}"
            if compressed:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
            else:
                path.write_bytes(payload)
        written[split] = (images, labels)
    return written


@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "raw"])
def test_idx_files_round_trip(tmp_path, compressed):
    written = _write_mnist(tmp_path, compressed)
    for split, (images, labels) in written.items():
        x, y = load("mnist", split, data_dir=tmp_path)
        assert x.shape == (len(labels), 1, 28, 28) and x.dtype == torch.float32
        torch.testing.assert_close(x, torch.from_numpy(images).float()[:, None] / 255)
        assert y.tolist() == labels.tolist()


def test_mnist_defaults():
    mnist, fashion = dataset_info("mnist"), dataset_info("fashion-mnist")
    assert (mnist.epsilon, fashion.epsilon) == (0.3, 0.1)
    assert mnist.augment == fashion.augment == "none"
    assert mnist.default_arch == fashion.default_arch == "madry-cnn"
    assert (mnist.num_classes, mnist.channels, mnist.image_size) == (10, 1, 28)
    model = build_model("madry-cnn", 10, 1, 28)
    assert sum(p.numel() for p in model.parameters()) == 3_274_634   # Madry et al.'s 3.27 M
    assert model.features(torch.rand(2, 1, 28, 28)).shape == (2, 64, 7, 7)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert MIN_IMAGE_SIZE == custom.MIN_IMAGE_SIZE


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[:-7], "truncated"),
    (lambda b: b + b"\0\0", "longer than its header"),
    (lambda b: b[:3] + b"\x02" + b[4:], "magic number"),
    (lambda b: b[:10], "truncated"),
], ids=["truncated", "trailing", "magic", "short-header"])
def test_damaged_idx_files_are_refused_naming_the_file(tmp_path, damage, message):
    _write_mnist(tmp_path, compressed=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DatasetFileError, match=message) as error:
        load("mnist", "test", data_dir=tmp_path)
    assert str(path) in str(error.value)
    # download=True would verify the .gz files, not this unpacked one: the hint says so.
    assert "; delete it: the published t10k-images-idx3-ubyte.gz beside it is then read" in str(error.value)


def test_idx_count_mismatch_and_corrupt_gzip_are_refused(tmp_path):
    _write_mnist(tmp_path, compressed=True)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DatasetFileError, match="5 images but .* 4 labels"):
        load("mnist", "test", data_dir=tmp_path)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetFileError, match="train-images-idx3-ubyte.gz"):
        load("mnist", "train", data_dir=tmp_path)


def test_missing_mnist_names_the_layout_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load("fashion-mnist", "train", data_dir=tmp_path)
    message = str(error.value)
    assert "FashionMNIST/raw" in message and "download=True" in message and "fashion-mnist.s3" in message


def test_mnist_download_fetches_verifies_and_reads(tmp_path, file_server, monkeypatch):
    served, base_url = file_server
    written = _write_mnist(served, compressed=True)
    for resource in fetch.RESOURCES["mnist"]:
        publish(monkeypatch, resource.path, (served / resource.path).read_bytes())
    data_dir = tmp_path / "data"
    monkeypatch.setenv("ADT_FAST_DATA_URL", base_url)
    x, y = load("mnist", "test", data_dir=data_dir, download=True)
    assert y.tolist() == written["test"][1].tolist()
    assert sorted(os.listdir(data_dir / "MNIST" / "raw")) == sorted(r.filename for r in fetch.RESOURCES["mnist"])
    # A wrong published checksum (and the served file's size): the download is discarded.
    served_size = (served / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").stat().st_size
    monkeypatch.setitem(fetch.PUBLISHED, "FashionMNIST/raw/train-images-idx3-ubyte.gz",
                        fetch.Published("0" * 32, served_size))
    (served / "FashionMNIST").symlink_to(served / "MNIST")
    with pytest.raises(ValueError, match="checksum mismatch"):
        download("fashion-mnist", data_dir, base_url=base_url)
    assert not (data_dir / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()


def test_published_checksums_are_torchvisions():
    assert fetch.PUBLISHED["MNIST/raw/train-images-idx3-ubyte.gz"].md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert fetch.PUBLISHED["FashionMNIST/raw/t10k-labels-idx1-ubyte.gz"].md5 == "bb300cfdad3c16e7a12a480ee83cd310"
    assert all(r.path in fetch.PUBLISHED for name in ("mnist", "fashion-mnist") for r in fetch.RESOURCES[name])


# ---------------------------------------------------------------------------------- npz
def _arrays(rng, layout: str, dtype, n_train=10, n_test=4, size=8, channels=3, classes=3):
    images = rng.random((n_train + n_test, channels, size, size)).astype(np.float32)
    if dtype == np.uint8:
        images = (images * 255).astype(np.uint8)
    expected = torch.from_numpy(images).float() / (255 if dtype == np.uint8 else 1)
    stored = {"NCHW": images, "NHWC": images.transpose(0, 2, 3, 1), "NHW": images[:, 0]}[layout]
    if layout == "NHW":
        expected = expected[:, :1]
    labels = np.arange(n_train + n_test) % classes
    arrays = {"x_train": stored[:n_train], "y_train": labels[:n_train],
              "x_test": stored[n_train:], "y_test": labels[n_train:]}
    return arrays, expected[:n_train], expected[n_train:]


@pytest.mark.parametrize("layout,dtype,channels", [("NHW", np.uint8, 1), ("NHWC", np.uint8, 3), ("NHWC", np.float32, 1),
                                                   ("NCHW", np.float32, 3), ("NCHW", np.uint8, 1),
                                                   ("NHWC", np.float64, 4)])
def test_npz_layouts_round_trip(tmp_path, layout, dtype, channels):
    arrays, x_train, x_test = _arrays(np.random.default_rng(0), layout, dtype, channels=channels)
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    loaded = open_dataset(str(path))
    torch.testing.assert_close(loaded.train[0], x_train)
    torch.testing.assert_close(loaded.test[0], x_test)
    assert loaded.train[1].dtype == torch.int64 and loaded.test[1].tolist() == arrays["y_test"].tolist()
    info = loaded.info
    assert (info.num_classes, info.channels, info.image_size, info.epsilon) == (3, x_train.shape[1], 8, 8 / 255)
    assert info.default_arch == "small-cnn" and info.name == str(path.resolve())
    assert any(f"read as {custom.LAYOUT_NAMES[layout]}" in note for note in loaded.notes)
    assert loaded.source["kind"] == "npz" and len(loaded.source["sha256"]) == 64


def test_layout_detection_rules():
    assert detect_layout((5, 28, 28)) == ("NHW", False)
    with pytest.raises(ValueError, match="square"):
        detect_layout((5, 8, 10))
    assert detect_layout((5, 32, 32, 3)) == ("NHWC", False)
    assert detect_layout((5, 3, 32, 32)) == ("NCHW", False)
    assert detect_layout((5, 1, 28, 28)) == ("NCHW", False)
    assert detect_layout((5, 16, 16, 16)) == ("NHWC", True)     # either reading is square
    with pytest.raises(ValueError, match="square"):
        detect_layout((5, 28, 32, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_float_tensors_of_any_width_are_read(dtype):
    images = torch.rand(4, 8, 8).to(dtype)
    loaded = from_arrays(images, torch.arange(4) % 2, images[:2], torch.arange(2))
    torch.testing.assert_close(loaded.train[0][:, 0], images.float())


def test_missing_dependency_error_survives_pickling():
    import pickle

    from adt_fast.data import MissingDependencyError

    error = pickle.loads(pickle.dumps(MissingDependencyError("reading SVHN", "scipy")))
    assert isinstance(error, ImportError)
    assert str(error) == "reading SVHN needs scipy: pip install scipy (or pip install 'adt-fast[data]')"


def test_arch_default_follows_the_image_size():
    rng = np.random.default_rng(0)
    for size, arch in ((8, "small-cnn"), (31, "small-cnn"), (32, "resnet18")):
        loaded = from_arrays(rng.random((4, size, size)), np.arange(4) % 2, rng.random((2, size, size)), np.arange(2))
        assert loaded.info.default_arch == arch


def _bad(arrays, **changes):
    return {**arrays, **changes}


BAD_NPZ = {
    "missing key": (lambda a: {k: v for k, v in a.items() if k != "y_test"}, "missing y_test"),
    "label too large": (lambda a: _bad(a, y_test=a["y_test"] + 5), "y_test has label"),
    "negative label": (lambda a: _bad(a, y_train=a["y_train"] - 1), "labels must be integers 0..C-1"),
    "float labels": (lambda a: _bad(a, y_train=a["y_train"].astype(np.float32)), "labels must be integers"),
    "one-hot labels": (lambda a: _bad(a, y_train=np.eye(3)[a["y_train"]].astype(int)), "one-hot"),
    "1-based labels": (lambda a: _bad(a, y_train=a["y_train"] + 1, y_test=a["y_test"] + 1), "no example of class"),
    "one class": (lambda a: _bad(a, y_train=a["y_train"] * 0, y_test=a["y_test"] * 0),
                  "y_train has one class .* at least 2 classes"),
    "lengths": (lambda a: _bad(a, y_train=a["y_train"][:-1]), "9 labels for 10 images"),
    "nan": (lambda a: _bad(a, x_train=np.where(np.arange(8) == 3, np.nan, a["x_train"]).astype(np.float32)),
            "NaN or infinite"),
    "range": (lambda a: _bad(a, x_test=a["x_test"] * 255), r"must lie in \[0, 1\]"),
    "int pixels": (lambda a: _bad(a, x_train=(a["x_train"] * 255).astype(np.int64)), "uint8 .* or float"),
    "not square": (lambda a: _bad(a, x_train=a["x_train"][:, :, :6]), "square"),
    "not square, N x H x W": (lambda a: _bad(a, x_train=a["x_train"][:, :, :6, 0]), "H != W"),
    "unlabelled sentinel": (lambda a: _bad(a, y_train=np.where(np.arange(10) == 4, 0xFFFFFFFF, a["y_train"]).astype(np.uint32)),
                            "at most the 10 training images .* found 4294967295"),
    "label beyond int64": (lambda a: _bad(a, y_test=np.full(a["y_test"].shape, 2**63, np.uint64)),
                           "found 9223372036854775808"),
    "shapes differ": (lambda a: _bad(a, x_test=np.repeat(a["x_test"], 3, axis=3)), "x_test images are 3x8x8"),
    "too small": (lambda a: {k: (v[:, :4, :4] if k.startswith("x") else v) for k, v in a.items()}, "at least 8x8"),
    "empty": (lambda a: _bad(a, x_test=a["x_test"][:0], y_test=a["y_test"][:0]), "holds no images"),
}


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_bad_npz_is_refused_naming_the_file(tmp_path, case):
    damage, message = BAD_NPZ[case]
    arrays, _, _ = _arrays(np.random.default_rng(0), "NHWC", np.float32, channels=1)
    path = tmp_path / "bad.npz"
    np.savez(path, **damage(arrays))
    with pytest.raises(DatasetFileError, match=message) as error:
        open_dataset(str(path))
    assert str(path.resolve()) in str(error.value)


def test_unreadable_npz_and_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(DatasetFileError, match="junk.npz"):
        open_dataset(str(path))
    arrays, _, _ = _arrays(np.random.default_rng(0), "NHWC", np.float32)
    np.savez(path, **_bad(arrays, y_train=np.array([object()] * 10)))
    with pytest.raises(DatasetFileError, match="junk.npz"):
        open_dataset(str(path))


def _not_an_npz(folder, case: str):
    """A file given as --dataset that is no .npz: a lone .npy array, text, an .npz cut short."""
    if case == "npy":
        path = folder / "x.npy"
        np.save(path, np.zeros((4, 8, 8), np.uint8))
    elif case == "text":
        path = folder / "data.csv"
        path.write_text("label,pixel\n0,255\n")
    else:
        path = folder / "cut.npz"
        np.savez(path, **_arrays(np.random.default_rng(0), "NHWC", np.uint8)[0])
        path.write_bytes(path.read_bytes()[:-100])
    return path


@pytest.mark.parametrize("case", ["npy", "text", "truncated npz"])
def test_files_that_are_not_npz_archives_are_named(tmp_path, case):
    path = _not_an_npz(tmp_path, case)
    with pytest.raises(DatasetFileError) as error:
        open_dataset(str(path))
    message = str(error.value)
    assert message.startswith(f"{path.resolve()}: not an .npz archive")
    assert "x_train, y_train, x_test, y_test" in message
    assert "allow_pickle" not in message      # numpy's hint: loading it unsafely


def test_dataset_arguments_that_do_not_apply_are_refused(tmp_path):
    with pytest.raises(DatasetSpecError, match="neither a dataset name"):
        open_dataset(str(tmp_path / "nowhere.npz"))
    arrays, _, _ = _arrays(np.random.default_rng(0), "NHWC", np.float32)
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DatasetSpecError, match="image folder"):
        open_dataset(str(tmp_path / "d.npz"), image_size=16)
    with pytest.raises(DatasetSpecError, match="--download"):
        open_dataset(str(tmp_path / "d.npz"), download=True)


# ---------------------------------------------------------------------------------- image folders
def _write_folder(root, size=8, colour=True, per_class=(3, 2), classes=("cat", "ant", "bee"), fmt="png"):
    """An ImageFolder tree; returns {split: (uint8 NCHW images, labels)} in the reader's order."""
    rng = np.random.default_rng(1)
    expected = {}
    for split, count in zip(("train", "test"), per_class):
        images, labels = [], []
        for index, name in enumerate(sorted(classes)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape = (size, size, 3) if colour else (size, size)
                pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
                PIL.fromarray(pixels).save(folder / f"{i:03d}.{fmt}")
                images.append(pixels.transpose(2, 0, 1) if colour else pixels[None])
                labels.append(index)
        expected[split] = (np.stack(images), np.array(labels))
    return expected


@pytest.mark.parametrize("colour", [True, False], ids=["rgb", "gray"])
def test_image_folder_round_trips_and_is_cached(tmp_path, monkeypatch, colour):
    expected = _write_folder(tmp_path / "images", colour=colour)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(cache))
    loaded = open_dataset(str(tmp_path / "images"))
    for split, (images, labels) in expected.items():
        x, y = getattr(loaded, split)
        torch.testing.assert_close(x, torch.from_numpy(images).float() / 255)
        assert y.tolist() == labels.tolist()
    assert loaded.source["classes"] == ["ant", "bee", "cat"] and loaded.info.channels == (3 if colour else 1)
    assert "cached in" in loaded.notes[0] and len(list(cache.iterdir())) == 1

    # The second run reads the cache and decodes nothing.
    monkeypatch.setattr(custom, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    again = open_dataset(str(tmp_path / "images"))
    assert "read from the cache" in again.notes[0]
    assert again.source["sha256"] == loaded.source["sha256"]
    torch.testing.assert_close(again.train[0], loaded.train[0])


def test_a_changed_image_invalidates_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    _write_folder(tmp_path / "images")
    first = open_dataset(str(tmp_path / "images"))
    target = tmp_path / "images" / "test" / "bee" / "000.png"
    PIL.fromarray(np.zeros((8, 8, 3), np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    second = open_dataset(str(tmp_path / "images"))
    assert second.source["sha256"] != first.source["sha256"] and "cached in" in second.notes[0]
    assert second.test[0][2].abs().sum() == 0      # bee is class 1: test images 2 and 3


def test_image_size_resizes_mixed_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    _write_folder(tmp_path / "images", size=12)
    PIL.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / "images" / "train" / "ant" / "big.png")
    with pytest.raises(DatasetFileError, match="big.png: image is 16x20, not square"):
        open_dataset(str(tmp_path / "images"))
    loaded = open_dataset(str(tmp_path / "images"), image_size=10)
    assert loaded.train[0].shape == (10, 3, 10, 10) and loaded.source["resize"] == 10



def test_an_image_size_whose_images_cannot_fit_in_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    # Pillow resizes without a limit: --image-size 100000 allocated 30 GB per image until the
    # system killed the process
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    _write_folder(tmp_path / "images")
    with monkeypatch.context() as patched:
        patched.setattr(custom, "_decode", lambda *args: pytest.fail("decoded an image it cannot hold"))
        with pytest.raises(DatasetFileError, match=r"images: --image-size 100000 needs about .* GiB for its 15 "
                                                   r"images at 100000 x 100000, more than the .* GiB of memory"):
            open_dataset(str(tmp_path / "images"), image_size=100000)
    monkeypatch.setattr(custom, "available_memory", lambda: 15 * 3 * 10 ** 2 * 5)  # exactly what size 10 needs
    assert open_dataset(str(tmp_path / "images"), image_size=10).train[0].shape[-1] == 10
    with pytest.raises(DatasetFileError, match="choose a smaller --image-size"):
        open_dataset(str(tmp_path / "images"), image_size=11)

BAD_FOLDERS = {
    "mixed sizes": (lambda r: PIL.fromarray(np.zeros((9, 9, 3), np.uint8)).save(r / "train" / "cat" / "z.png"),
                    "z.png: image is 9x9 but"),
    "empty class": (lambda r: (r / "test" / "dog").mkdir() or (r / "train" / "dog").mkdir(), "dog: empty class"),
    "non-image file": (lambda r: (r / "train" / "bee" / "notes.txt").write_text("hi"), "notes.txt: not an image"),
    "corrupt image": (lambda r: (r / "test" / "ant" / "x.png").write_bytes(b"\x89PNG broken"),
                      "x.png: cannot be read as an image"),
    "class mismatch": (lambda r: __import__("shutil").rmtree(r / "test" / "cat"), "only in train/: \\['cat'\\]"),
    "no test folder": (lambda r: __import__("shutil").rmtree(r / "test"), "no test/ folder"),
    "one class": (lambda r: [__import__("shutil").rmtree(r / split / name) for split in ("train", "test")
                             for name in ("ant", "bee")], r"train/ has one class folder \(cat\)"),
    "stray file": (lambda r: (r / "train" / "readme.png").write_bytes(b""), "a file directly in train/"),
    "broken link": (lambda r: (r / "train" / "ant" / "9.png").symlink_to(r / "gone.png"),
                    r"9.png: cannot be read: a broken link \(to .*gone.png\)"),
    "float beyond 1": (lambda r: PIL.fromarray(np.full((8, 8), 255, np.float32)).save(r / "test" / "ant" / "f.tif"),
                       r"f.tif: a mode F image's pixels must lie in \[0, 1\] \(1 is white\), found \[255, 255\]"),
    "int beyond 16 bits": (lambda r: PIL.fromarray(np.full((8, 8), 70000, np.int32)).save(r / "train" / "bee" / "i.tif"),
                           r"i.tif: a mode I image's pixels must lie in \[0, 65535\]"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
def test_bad_image_folders_are_refused_naming_the_file(tmp_path, monkeypatch, case):
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "images"
    _write_folder(root)
    damage, message = BAD_FOLDERS[case]
    damage(root)
    with pytest.raises(DatasetFileError, match=message):
        open_dataset(str(root))


def test_hidden_files_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    _write_folder(tmp_path / "images")
    (tmp_path / "images" / "train" / "ant" / ".DS_Store").write_bytes(b"\0")
    assert open_dataset(str(tmp_path / "images")).train[0].shape[0] == 9


def test_linked_folders_in_a_class_folder_are_read_once(tmp_path, monkeypatch):
    """As ImageFolder, images in a linked sub-folder belong to the class; a link back up (a cycle)
    or a second link to the same folder reads nothing twice (and does not loop)."""
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    _write_folder(tmp_path / "images")
    _write_folder(tmp_path / "more", classes=("extra",), per_class=(4, 1))
    ant = tmp_path / "images" / "train" / "ant"
    (ant / "linked").symlink_to(tmp_path / "more" / "train" / "extra", target_is_directory=True)
    (ant / "linked again").symlink_to(tmp_path / "more" / "train" / "extra", target_is_directory=True)
    (ant / "cycle").symlink_to(ant, target_is_directory=True)
    loaded = open_dataset(str(tmp_path / "images"))
    assert loaded.train[1].bincount().tolist() == [3 + 4, 3, 3]    # ant, bee, cat


def _deep_gray(mode: str):
    """(pixels as fractions of white, the image, the format to save it in) for a grayscale mode
    deeper than 8 bits; Pillow reads the file back in that mode."""
    fractions = np.linspace(0, 1, 64).reshape(8, 8)
    if mode == "F":
        return fractions, PIL.fromarray(fractions.astype(np.float32)), "tif"
    stored = np.rint(fractions * 65535).astype(np.uint16)
    if mode == "I;16":
        image, fmt = PIL.fromarray(stored), "png"
    elif mode == "I;16B":
        image, fmt = PIL.frombytes("I;16B", (8, 8), stored.astype(">u2").tobytes()), "tif"
    else:  # 32-bit integer
        image, fmt = PIL.fromarray(stored.astype(np.int32)), "tif"
    return stored / 65535, image, fmt


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_deep_grayscale_images_are_scaled_not_clipped(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    fractions, image, fmt = _deep_gray(mode)
    for split in ("train", "test"):
        for name, pixels in (("gradient", image), ("mirrored", image.transpose(PIL.Transpose.FLIP_LEFT_RIGHT))):
            (tmp_path / "images" / split / name).mkdir(parents=True, exist_ok=True)
            pixels.save(tmp_path / "images" / split / name / f"0.{fmt}")
    assert PIL.open(tmp_path / "images" / "test" / "gradient" / f"0.{fmt}").mode == mode
    loaded = open_dataset(str(tmp_path / "images"))
    assert loaded.info.channels == 1
    expected = torch.from_numpy(np.stack([fractions, fractions[:, ::-1]])[:, None]).float()
    # Rounded to 8 bits like every decoded image: within half a step of 1/255.
    torch.testing.assert_close(loaded.test[0], expected, rtol=0, atol=0.5 / 255 + 1e-6)
    assert loaded.test[0].max() == 1.0


def test_deep_grayscale_beside_colour_images_is_scaled_and_replicated(tmp_path, monkeypatch):
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    fractions, image, fmt = _deep_gray("I;16")
    for split in ("train", "test"):
        for name in ("gray", "colour"):
            (tmp_path / "images" / split / name).mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "images" / split / "gray" / f"0.{fmt}")
        PIL.fromarray(np.full((*fractions.shape, 3), 200, np.uint8), "RGB").save(
            tmp_path / "images" / split / "colour" / "0.png")
    loaded = open_dataset(str(tmp_path / "images"))
    assert loaded.info.channels == 3
    expected = torch.from_numpy(fractions).float().expand(3, *fractions.shape)
    gray = loaded.test[0][loaded.test[1] == 1][0]  # classes sorted by name: colour 0, gray 1
    torch.testing.assert_close(gray, expected, rtol=0, atol=0.5 / 255 + 1e-6)


# Validation bounds, the fingerprint and the image cache key (mutation review).
def _valid_arrays(**kw):
    a = {"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.array([0, 1, 0, 1]),
         "x_test": np.zeros((2, 8, 8), np.uint8), "y_test": np.array([0, 1])}
    a.update(kw)
    return a


def test_float_pixels_above_one_are_refused():
    with pytest.raises(DatasetFileError, match=r"\[0, 1\]"):
        custom.splits_from_arrays(_valid_arrays(x_train=np.full((4, 8, 8), 1.2, np.float32)), "f")


def test_label_bounds_are_exact():
    with pytest.raises(DatasetFileError):
        custom.splits_from_arrays(_valid_arrays(y_test=np.array([0, 2])), "f")       # 2 classes: 2 is out
    with pytest.raises(DatasetFileError):
        custom.splits_from_arrays(_valid_arrays(y_train=np.array([0, 1, 2, 4])), "f")  # 4 == #train images


def test_column_labels_are_accepted():
    s = custom.splits_from_arrays(_valid_arrays(y_train=np.array([[0], [1], [0], [1]])), "f")
    assert s.y_train.shape == (4,)


def test_images_below_8_pixels_are_refused():
    with pytest.raises(DatasetFileError, match="at least"):
        custom.splits_from_arrays(_valid_arrays(x_train=np.zeros((4, 7, 7), np.uint8),
                                                 x_test=np.zeros((2, 7, 7), np.uint8)), "f")


def test_fingerprint_depends_on_class_names():
    a = custom.splits_from_arrays(_valid_arrays(), "f", ("cat", "dog"))
    b = custom.splits_from_arrays(_valid_arrays(), "f", ("dog", "cat"))
    assert a.fingerprint() != b.fingerprint()


def test_image_cache_notices_a_rewritten_file_of_the_same_size(tmp_path):
    from PIL import Image
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 10, np.uint8)).save(root / split / c / "0.png")
    first = custom.read_image_folder(root, cache_dir=tmp_path / "cache")
    path = root / "train" / "a" / "0.png"
    size = path.stat().st_size
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(path)
    assert path.stat().st_size == size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = custom.read_image_folder(root, cache_dir=tmp_path / "cache")
    assert first.x_train[0].max() == 10 and second.x_train[0].max() == 200


def test_a_test_split_of_one_class_is_evaluated(tmp_path, monkeypatch):
    """The 2-class minimum is training's: a test split read alone may hold one class (scored
    against a model of many), as an .npz or as a folder whose train/ has one class folder."""
    from adt_fast.data import open_test_split

    path = tmp_path / "one.npz"
    np.savez(path, **_valid_arrays(y_train=np.zeros(4, int), y_test=np.zeros(2, int)))
    assert open_test_split(str(path)).info(10).num_classes == 10
    root = tmp_path / "images"
    _write_folder(root, classes=("cat",))
    assert open_test_split(str(root), cache_dir=tmp_path / "cache").info(1).num_classes == 1
