"""Damaged or odd data files found by fuzzing the data layer: each is refused with a
DatasetFileError naming the file (or read, when it is a valid file), never a traceback or a hang."""

from __future__ import annotations

import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from conftest import returns_in_time

from adt_fast.data import DatasetFileError, from_arrays, load, open_dataset, open_test_split


def _npz_arrays(rng):
    return {"x_train": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), "y_train": np.array([0, 1] * 3),
            "x_test": rng.integers(0, 256, (3, 8, 8), dtype=np.uint8), "y_test": np.array([0, 1, 1])}


def _cifar10(root, protocol):
    """cifar-10-batches-py with 2 images per batch, pickled with ``protocol``; returns the train images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": images, b"labels": [3, 7]}, handle, protocol=protocol)
        train.append(images)
    return np.concatenate(train[:5]).reshape(-1, 3, 32, 32)


def test_an_idx_header_whose_shape_overflows_int64_is_refused_naming_the_file(tmp_path):
    """2^31 x 2^31 x 2^31 bytes wrap to 0 in int64, which matched an empty data part: the reshape then
    raised a bare ValueError (a traceback from the CLI)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31))
    (raw / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 1) + b"\x01")
    with pytest.raises(DatasetFileError, match="is truncated") as error:
        load("mnist", "train", tmp_path)
    assert str(images) in str(error.value)


def _corrupt_member(path, member):
    """Overwrite a compressed member's deflate data with 0xff bytes: block type 3, which zlib refuses."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    data[start:start + info.compress_size] = b"\xff" * info.compress_size
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("member, opener", [("x_train.npy", open_dataset), ("x_test.npy", open_test_split)],
                         ids=["open_dataset", "open_test_split"])
def test_a_corrupt_compressed_npz_is_refused_naming_the_file(tmp_path, member, opener):
    """numpy.savez_compressed's members are deflated; bad deflate data raised zlib.error."""
    path = tmp_path / "data.npz"
    np.savez_compressed(path, **_npz_arrays(np.random.default_rng(0)))
    _corrupt_member(path, member)
    with pytest.raises(DatasetFileError, match="cannot read .* as an .npz file") as error:
        opener(str(path))
    assert str(path) in str(error.value)


def test_a_matlab_v73_svhn_file_is_named_as_such_not_as_damaged(tmp_path):
    """MATLAB's -v7.3 files are HDF5, which scipy.io.loadmat does not read; its own message ('use
    h5py') and 'delete it' sent users the wrong way: installing h5py changes nothing here."""
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM" + b"\x89HDF\r\n\x1a\n" + b"\0" * 200)
    with pytest.raises(DatasetFileError, match="MATLAB v7.3") as error:
        load("svhn", "train", tmp_path)
    message = str(error.value)
    assert str(path) in message and "-v7" in message and "h5py" not in message


def test_a_cifar_batch_pickled_with_protocol_5_is_read(tmp_path):
    """Protocol 5 (Python 3.14's default) pickles arrays through numpy's _frombuffer, which the
    restricted unpickler refused, calling a valid batch damaged."""
    train = _cifar10(tmp_path, protocol=5)
    x, y = load("cifar10", "train", tmp_path)
    torch.testing.assert_close(x, torch.from_numpy(train).float() / 255)
    assert y.tolist() == [3, 7] * 5


def test_a_named_pipe_given_as_npz_is_refused_not_waited_on(tmp_path):
    """open() of a FIFO waits for a writer: the command hung before anything was written."""
    path = tmp_path / "data.npz"
    os.mkfifo(path)
    error = returns_in_time(path, lambda: open_dataset(str(path)))
    assert isinstance(error, DatasetFileError), "open_dataset blocked on a named pipe"
    assert str(path) in str(error) and "not a regular file" in str(error)


def test_a_named_pipe_in_an_image_folder_is_refused_not_waited_on(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            PIL.new("L", (8, 8), 9).save(tmp_path / split / name / "1.png")
    pipe = tmp_path / "train" / "a" / "2.png"
    os.mkfifo(pipe)
    error = returns_in_time(pipe, lambda: open_dataset(str(tmp_path), cache_dir=tmp_path / "cache"))
    assert isinstance(error, DatasetFileError), "open_dataset blocked on a named pipe"
    assert str(pipe) in str(error) and "not a regular file" in str(error)


def test_ragged_nested_lists_are_refused_naming_the_array():
    """np.asarray of a ragged list raised numpy's bare ValueError, naming no array."""
    ragged = [np.zeros((8, 8))] * 5 + [np.zeros((7, 8))]
    with pytest.raises(DatasetFileError, match=r"data \(arrays\): x_train: .*not an array"):
        from_arrays([list(image) for image in ragged], [0, 1] * 3, np.zeros((3, 8, 8)), [0, 1, 1])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_tensors_are_read_as_float32(dtype):
    """numpy has no float8 (as no bfloat16): .numpy() raised a TypeError."""
    x = torch.full((6, 8, 8), 0.5).to(dtype)
    loaded = from_arrays(x, [0, 1] * 3, x[:3], [0, 1, 1])
    assert loaded.train[0].dtype == torch.float32 and torch.all(loaded.train[0] == 0.5)


@pytest.mark.parametrize("name, folder, file", [
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("svhn", ".", "train_32x32.mat"),
])
def test_a_folder_where_a_dataset_file_belongs_is_named_not_reported_missing(name, folder, file, tmp_path):
    """'file not found; pass download=True' sent the user to a download that could not replace it."""
    (tmp_path / folder / file).mkdir(parents=True)
    with pytest.raises(DatasetFileError, match=rf"^{name} file {tmp_path / folder / file} is a folder; move it "
                                               rf"away, then pass download=True"):
        load(name, "train", data_dir=tmp_path)
