"""A dataset name that is also a file or folder in the working directory: the name is the named
dataset (so a command reads the same data wherever it runs), and it says so, with the path that
reads the folder instead (./NAME)."""

import warnings

import pytest

from adt_fast.cli import main
from adt_fast.data import DatasetSpecError, load, open_dataset, open_test_split

SHADOWED = "the folder synthetic in the working directory; to read that folder, pass --dataset ./synthetic"


@pytest.fixture
def shadowing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic" / "train").mkdir(parents=True)
    return tmp_path / "synthetic"


def test_opening_a_name_that_is_also_a_folder_takes_the_named_dataset_and_warns_once(shadowing_folder):
    with pytest.warns(UserWarning) as caught:
        dataset = open_dataset("synthetic")
    assert [str(w.message) for w in caught] == [f"--dataset synthetic is the built-in dataset synthetic, not {SHADOWED}"]
    assert dataset.source == {"kind": "named", "name": "synthetic"}
    with pytest.warns(UserWarning, match="pass --dataset ./synthetic"):
        load("synthetic", "test")


def test_a_name_that_is_no_path_here_does_not_warn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic.npz").touch()  # another name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_dataset("synthetic")


def test_a_file_of_that_name_is_named_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic").touch()
    with pytest.warns(UserWarning, match="not the file synthetic in the working directory; to read that file"):
        open_dataset("synthetic")


def test_image_size_for_a_name_that_is_also_a_folder_is_refused_not_ignored(shadowing_folder):
    """It passed the folder check and the named dataset was read at its own size."""
    with pytest.raises(DatasetSpecError, match=f"--dataset synthetic is not one but the built-in dataset synthetic, "
                                               f"not {SHADOWED}"):
        open_dataset("synthetic", image_size=16)


def test_a_test_split_of_a_name_that_is_also_a_folder_says_how_to_read_the_folder(shadowing_folder):
    with pytest.raises(DatasetSpecError, match=f"reads its test split \\(and {SHADOWED}\\)"):
        open_test_split("synthetic")


def test_train_says_so_in_one_warning_line(shadowing_folder, capsys):
    assert main(["train", "--method", "standard", "--dataset", "synthetic", "--epochs", "1", "--max-batches", "1",
                 "--batch-size", "16", "--device", "cpu", "--no-tensorboard", "--no-channels-last",
                 "--out", "run"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == [f"adt-fast train: warning: --dataset synthetic is the built-in dataset synthetic, not {SHADOWED}"]
