"""Time loading each data format (docs/data.md, "Load times"). Run under the bench lock:

    flock /tmp/adt_fast_bench.lock .venv/bin/python scripts/measure_data_load.py [WORK_DIR]

Writes MNIST-sized IDX files (60,000 + 10,000 random 28x28 images, gzipped and not), the same
arrays as a keras-style .npz, and 10,000 random 32x32 RGB PNGs in an image folder (8,000 train /
2,000 test, 10 classes), then times the first load and a second one (for the folder: decoding
and writing the cache, then reading the cache). Random pixels are the worst case for PNG.
"""

from __future__ import annotations

import gzip
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from adt_fast.data import load, open_dataset

REPEATS = 3


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _timed(load_once) -> float:
    start = time.perf_counter()
    load_once()
    return time.perf_counter() - start


def main(work: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 60_000, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 10_000, dtype=np.uint8)}
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
    for split, count in (("train", 8_000), ("test", 2_000)):
        for index in range(count):
            target = folder / split / f"class{index % 10}"
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(target / f"{index:05d}.png")

    rows = []
    for name, data_dir in (("IDX .gz, train split (60,000)", work / "gz"), ("IDX raw, train split (60,000)", work / "raw")):
        times = [_timed(lambda: load("mnist", "train", data_dir=data_dir)) for _ in range(REPEATS)]
        rows.append((name, times[0], statistics.median(times[1:])))
    times = [_timed(lambda: open_dataset(str(work / "mnist.npz"))) for _ in range(REPEATS)]
    rows.append(("npz, 60,000 + 10,000 (validated, hashed)", times[0], statistics.median(times[1:])))
    cache = work / "cache"
    first = _timed(lambda: open_dataset(str(folder), cache_dir=cache))
    cached = [_timed(lambda: open_dataset(str(folder), cache_dir=cache)) for _ in range(REPEATS - 1)]
    rows.append(("image folder, 10,000 PNGs 32x32 RGB", first, statistics.median(cached)))
    print("| format | first load (s) | again (s) |")
    print("|---|---|---|")
    for name, first, again in rows:
        print(f"| {name} | {first:.2f} | {again:.2f} |")


if __name__ == "__main__":
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="adt-load-"))
    try:
        main(work)
    finally:
        if len(sys.argv) <= 1:
            shutil.rmtree(work, ignore_errors=True)
