"""A dataset name that is also your own data (an image folder, an .npz file) in the working
directory: the name is the named dataset (so a command reads the same data wherever it runs), and
it says so, with the path that reads the folder instead (./NAME). A run folder named after its
dataset is no data, and says nothing."""

import warnings

import numpy as np
import pytest

from adt_fast.cli import main
from adt_fast.data import DatasetSpecError, load, open_dataset, open_test_split

PIL = pytest.importorskip("PIL.Image")

SHADOWED = "the folder synthetic in the working directory; to read that folder, pass --dataset ./synthetic"
TRAIN = ["train", "--method", "standard", "--dataset", "synthetic", "--epochs", "1", "--max-batches", "1",
         "--batch-size", "16", "--device", "cpu", "--no-tensorboard", "--no-channels-last"]


@pytest.fixture
def shadowing_folder(tmp_path, monkeypatch):
    """An image folder named synthetic, as --dataset ./synthetic reads it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / "synthetic" / split / label).mkdir(parents=True)
            PIL.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "synthetic" / split / label / "0.png")
    return tmp_path / "synthetic"


def _no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_opening_a_name_that_is_also_a_folder_takes_the_named_dataset_and_warns_once(shadowing_folder):
    with pytest.warns(UserWarning) as caught:
        dataset = open_dataset("synthetic")
    assert [str(w.message) for w in caught] == [
        f"--dataset synthetic is the built-in dataset synthetic, not {SHADOWED}"]
    assert dataset.source == {"kind": "named", "name": "synthetic"}
    with pytest.warns(UserWarning, match="pass --dataset ./synthetic"):
        load("synthetic", "test")


def test_a_name_that_is_no_path_here_does_not_warn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic.npz").touch()  # another name
    _no_warning(lambda: open_dataset("synthetic"))


def test_an_npz_file_of_that_name_is_named_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "synthetic", "wb") as handle:  # np.savez would add .npz to a name
        np.savez(handle, x_train=np.zeros((2, 8, 8), np.uint8), y_train=np.array([0, 1]),
                 x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 1]))
    with pytest.warns(UserWarning, match="not the file synthetic in the working directory; to read that file"):
        open_dataset("synthetic")


def _run_folder(root):
    (root / "synthetic").mkdir()
    for name in ("config.json", "checkpoint.pt", "model.pt"):
        (root / "synthetic" / name).touch()


def _train_only_folder(root):
    (root / "synthetic" / "train" / "cat").mkdir(parents=True)


def _empty_file(root):
    (root / "synthetic").touch()


@pytest.mark.parametrize("make", [_run_folder, _train_only_folder, _empty_file])
def test_a_path_of_that_name_that_is_no_data_does_not_warn(tmp_path, monkeypatch, make):
    """A run folder named after its dataset (--out synthetic) was said to be data to pass as
    --dataset ./synthetic; so were a folder and a file that --dataset ./synthetic refuses."""
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    _no_warning(lambda: open_dataset("synthetic"))
    _no_warning(lambda: load("synthetic", "test"))
    with pytest.raises(DatasetSpecError) as refused:
        open_test_split("synthetic")
    assert "working directory" not in str(refused.value)


def test_a_run_folder_named_after_its_dataset_is_evaluated_and_resumed_without_a_warning(tmp_path, monkeypatch,
                                                                                          capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*TRAIN, "--out", "synthetic"]) == 0
    assert main(["eval", "--checkpoint", "synthetic", "--attacks", "fgsm", "--n-examples", "4", "--epsilon-curve", "",
                 "--device", "cpu", "--out", "report.json"]) == 0
    assert main(["train", "--resume", "--out", "synthetic", "--epochs", "2"]) == 0
    assert "built-in dataset" not in capsys.readouterr().err


def test_only_the_first_rank_of_a_torchrun_warns(shadowing_folder, monkeypatch):
    """Every rank reads the data before the ranks form a group: each printed the warning."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    _no_warning(lambda: open_dataset("synthetic"))
    _no_warning(lambda: load("synthetic", "test"))


def test_a_launcher_rank_that_is_no_number_does_not_stop_reading_a_named_dataset(shadowing_folder, monkeypatch):
    """The command refuses such a $RANK itself, naming it; the data layer's warning only asks."""
    monkeypatch.setenv("RANK", "first")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.warns(UserWarning, match="pass --dataset ./synthetic"):
        load("synthetic", "test")


def test_image_size_for_a_name_that_is_also_a_folder_is_refused_not_ignored(shadowing_folder):
    """It passed the folder check and the named dataset was read at its own size."""
    with pytest.raises(DatasetSpecError, match=f"--dataset synthetic is not one but the built-in dataset synthetic, "
                                               f"not {SHADOWED}"):
        open_dataset("synthetic", image_size=16)


def test_a_test_split_of_a_name_that_is_also_a_folder_says_how_to_read_the_folder(shadowing_folder):
    with pytest.raises(DatasetSpecError, match=f"reads its test split \\(and {SHADOWED}\\)"):
        open_test_split("synthetic")


def test_train_says_so_in_one_warning_line(shadowing_folder, capsys):
    assert main([*TRAIN, "--out", "run"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == [f"adt-fast train: warning: --dataset synthetic is the built-in dataset synthetic, not {SHADOWED}"]


def test_the_check_reads_no_array_of_a_file_named_like_a_dataset(tmp_path, monkeypatch):
    """The check read the file's whole test arrays (gigabytes, perhaps) for a warning, and running
    out of memory there stopped the load of the named dataset."""
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "synthetic", "wb") as handle:
        np.savez(handle, x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.zeros(2, np.int64))

    def too_large(self, key):
        raise MemoryError

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", too_large)
    with pytest.warns(UserWarning, match="the file synthetic in the working directory"):
        assert len(load("synthetic", "test")[0]) > 0
