"""Loading each on-disk data format into tensors (docs/data.md, "Load times").

Files in the real formats, of the sizes users meet: MNIST's IDX files (60,000 + 10,000 28x28,
gzipped as downloaded and unpacked), the same arrays as a keras-style .npz, and an image folder of
10,000 32x32 RGB PNGs (8,000 train / 2,000 test, 10 classes). Random pixels, the worst case for
PNG. A load includes the validation, the content hash (for users' own data) and the conversion to
float32 tensors. The image folder is timed twice: decoding with an empty cache (the cache of decoded
arrays removed before each round, so each round also writes it) and reading that cache.

With --benchmark-disable (CI's smoke run) the files are 100 times smaller, so the suite checks
that every path still runs without spending minutes writing PNGs.
Run: flock /tmp/adt_fast_bench.lock pytest benchmarks/test_data_load.py --benchmark-only
"""

import gzip
import shutil
import struct

import numpy as np
import pytest

from adt_fast.data import load, open_dataset

ROUNDS = 5
MNIST = {"train": 60_000, "test": 10_000}
FOLDER = {"train": 8_000, "test": 2_000}
CLASSES = 10


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture(scope="module")
def files(request, tmp_path_factory):
    Image = pytest.importorskip("PIL.Image")
    scale = 100 if request.config.getoption("benchmark_disable") else 1
    rng = np.random.default_rng(0)
    work = tmp_path_factory.mktemp("data_load")
    arrays = {}
    for split, count in MNIST.items():
        arrays[f"x_{split}"] = rng.integers(0, 256, (count // scale, 28, 28), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, CLASSES, count // scale, dtype=np.uint8)
    for compressed in (True, False):
        raw = work / ("gz" if compressed else "raw") / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for split, prefix in (("train", "train"), ("test", "t10k")):
            for kind, key in (("images-idx3-ubyte", "x"), ("labels-idx1-ubyte", "y")):
                payload = _idx(arrays[f"{key}_{split}"])
                if compressed:
                    (raw / f"{prefix}-{kind}.gz").write_bytes(gzip.compress(payload, compresslevel=6))
                else:
                    (raw / f"{prefix}-{kind}").write_bytes(payload)
    np.savez(work / "mnist.npz", **arrays)
    folder = work / "images"
    for split, count in FOLDER.items():
        for index in range(count // scale):
            target = folder / split / f"class{index % CLASSES}"
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(target / f"{index:05d}.png")
    return work, MNIST["train"] // scale, sum(FOLDER.values()) // scale


@pytest.mark.parametrize("layout", ["gz", "raw"])
def test_idx_train_split(benchmark, files, layout):
    work, train_size, _ = files
    x, y = benchmark.pedantic(load, args=("mnist", "train"), kwargs={"data_dir": work / layout},
                              rounds=ROUNDS, warmup_rounds=1)
    assert x.shape == (train_size, 1, 28, 28) and y.shape == (train_size,)


def test_npz(benchmark, files):
    work, train_size, _ = files
    dataset = benchmark.pedantic(open_dataset, args=(str(work / "mnist.npz"),), rounds=ROUNDS, warmup_rounds=1)
    assert dataset.train[0].shape == (train_size, 1, 28, 28) and dataset.source["kind"] == "npz"


def _open_folder(work):
    return open_dataset(str(work / "images"), cache_dir=work / "cache")


def test_image_folder_decode(benchmark, files):
    work, _, images = files
    def empty_cache():
        shutil.rmtree(work / "cache", ignore_errors=True)

    dataset = benchmark.pedantic(_open_folder, args=(work,), setup=empty_cache, rounds=ROUNDS)
    assert len(dataset.train[0]) + len(dataset.test[0]) == images
    assert any((work / "cache").iterdir()), "the decoded arrays were not cached"


def test_image_folder_cached(benchmark, files, monkeypatch):
    from adt_fast.data import custom

    work, _, images = files
    _open_folder(work)  # writes the cache if the decode test did not run

    def decode(*args, **kwargs):
        raise AssertionError("a cached load decoded the images again")

    monkeypatch.setattr(custom, "_decode_folder", decode)
    dataset = benchmark.pedantic(_open_folder, args=(work,), rounds=ROUNDS, warmup_rounds=1)
    assert len(dataset.train[0]) + len(dataset.test[0]) == images
