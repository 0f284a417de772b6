"""adt_fast/data/fetch.py against its contract: host precedence, progress bar, official URLs, published sums.
No network: the repo's file_server fixture (127.0.0.1) and a refusing port."""
import contextlib
import hashlib
import tarfile

import numpy as np
import pytest

from adt_fast.data import download
from adt_fast.data import fetch


def _serve_tiny_cifar(tmp_path, served):
    src = tmp_path / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    (src / "x").write_bytes(b"payload" * 1000)
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return archive


def test_base_url_argument_wins_over_the_environment(tmp_path, file_server, monkeypatch):
    """download(): 'base_url (or the ADT_FAST_DATA_URL environment variable)' - an explicit
    argument is the stronger request; the environment is only the fallback."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    monkeypatch.setitem(fetch.MD5_CHECKSUMS, "cifar-10-python.tar.gz", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setenv(fetch.BASE_URL_ENV, "http://127.0.0.1:9")   # refuses connections
    download("cifar10", tmp_path / "data", base_url=base_url)
    assert (tmp_path / "data" / "cifar-10-batches-py" / "x").is_file()


def test_progress_bar_honours_no_progress(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setenv(fetch.NO_PROGRESS_ENV, "1")
    assert isinstance(fetch._progress_bar(10, "f"), contextlib.nullcontext)
    monkeypatch.setenv(fetch.NO_PROGRESS_ENV, "0")
    bar = fetch._progress_bar(10, "f")
    try:
        assert not isinstance(bar, contextlib.nullcontext) and bar.total == 10
    finally:
        bar.close()


def test_progress_bar_counts_bytes_of_the_content_length(tmp_path, file_server, monkeypatch):
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    size = archive.stat().st_size
    monkeypatch.setitem(fetch.MD5_CHECKSUMS, "cifar-10-python.tar.gz", hashlib.md5(archive.read_bytes()).hexdigest())
    monkeypatch.setattr(fetch, "CHUNK_BYTES", 1000)   # several chunks
    seen = {}

    class Bar:
        def __init__(self, total):
            seen["total"], seen["done"] = total, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            seen["done"] += n

    monkeypatch.setattr(fetch, "_progress_bar", lambda total, desc: Bar(total))
    download("cifar10", tmp_path / "data", base_url=base_url)
    assert seen == {"total": size, "done": size}


def test_official_urls_are_the_publishers_paths():
    """The error messages name the published URLs: host/filename, not the local folder layout."""
    assert fetch.official_urls("mnist")[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    assert fetch.official_urls("fashion-mnist")[3] == \
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz"
    assert fetch.official_urls("cifar10") == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert fetch.official_urls("svhn") == ["http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                                            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"]


# torchvision (datasets/cifar.py, svhn.py, mnist.py) publishes these MD5 sums.
PUBLISHED = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "MNIST/raw/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "MNIST/raw/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "MNIST/raw/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "FashionMNIST/raw/train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "FashionMNIST/raw/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def test_every_published_checksum_is_torchvisions():
    assert fetch.MD5_CHECKSUMS == PUBLISHED

def test_archive_unpacks_into_a_data_dir_reached_through_a_symlink(tmp_path, file_server, monkeypatch):
    """The unsafe-member check compares resolved paths: the staging folder must be resolved too,
    or every member of an archive unpacked under a symlinked data_dir (a data disk linked into
    the home folder, say) looks as if it escaped the folder and the download is refused."""
    served, base_url = file_server
    archive = _serve_tiny_cifar(tmp_path, served)
    real = tmp_path / "disk" / "data"
    real.mkdir(parents=True)
    (tmp_path / "data").symlink_to(real, target_is_directory=True)
    monkeypatch.setitem(fetch.MD5_CHECKSUMS, "cifar-10-python.tar.gz", hashlib.md5(archive.read_bytes()).hexdigest())
    download("cifar10", tmp_path / "data", base_url=base_url)
    assert (real / "cifar-10-batches-py" / "x").read_bytes() == b"payload" * 1000
