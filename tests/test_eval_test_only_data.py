"""`adt-fast eval --dataset PATH` reads only the test split of your own data: an .npz's x_test,
y_test and an image folder's test/, with the model's number of classes; and `--image-size`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adt_fast.cli import main
from adt_fast.data import open_dataset, open_test_split
from adt_fast.models import build_model
from adt_fast.train.checkpoint import save_atomic

PIL = pytest.importorskip("PIL.Image")

MODEL = "own_data_models:gray3"     # 1 x 8 x 8 inputs, 3 classes
FAST = ["--n-examples", "4", "--attacks", "fgsm", "--epsilon-curve", "", "--device", "cpu"]


@pytest.fixture(autouse=True)
def models_and_cache(tmp_path, monkeypatch):
    """MODEL importable, and decoded folders cached under tmp_path."""
    (tmp_path / "own_data_models.py").write_text(
        "from torch import nn\n\n"
        "def gray3():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(8 * 8, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))


def _gray(n, height=8, width=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width), dtype=np.uint8)


def _folder(root, split, classes, height=8, width=8):
    """Two grayscale PNGs per class folder."""
    for index, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True)
        for number, image in enumerate(_gray(2, height, width, seed=index)):
            PIL.fromarray(image).save(folder / f"{number}.png")
    return root


def _checkpoint(path, num_classes=3, image_size=8):
    model = build_model("small-cnn", num_classes, 1, image_size)
    save_atomic({"model_config": model.config, "model": model.state_dict()}, path)
    return path


def _eval(tmp_path, capsys, *args):
    """(exit code, stderr, the report or None)."""
    out = tmp_path / "e.json"
    code = main(["eval", *args, *FAST, "--out", str(out)])
    return code, capsys.readouterr().err, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.parametrize("train", ["absent", "broken"])
def test_an_npz_needs_only_its_test_arrays_and_labels_may_miss_a_class(train, tmp_path, capsys):
    arrays = {"x_test": _gray(6), "y_test": np.array([0, 1, 0, 1, 0, 1])}   # no example of class 2
    if train == "broken":   # neither validated nor read
        arrays.update(x_train=np.full((3, 5, 7), 2.0), y_train=np.array([-1, 9, 70000]))
    np.savez(tmp_path / "test.npz", **arrays)
    code, err, report = _eval(tmp_path, capsys, "--model", MODEL, "--dataset", str(tmp_path / "test.npz"))
    assert code == 0, err
    assert report["n_examples"] == 4 and report["meta"]["dataset"] == str(tmp_path / "test.npz")


@pytest.mark.parametrize("model", [["--model", MODEL], ["--checkpoint", "CHECKPOINT"]])
def test_an_npz_label_beyond_the_models_classes_is_refused(model, tmp_path, capsys):
    np.savez(tmp_path / "test.npz", x_test=_gray(4), y_test=np.array([0, 1, 3, 2]))
    model = [str(_checkpoint(tmp_path / "model.pt")) if a == "CHECKPOINT" else a for a in model]
    code, err, report = _eval(tmp_path, capsys, *model, "--dataset", str(tmp_path / "test.npz"))
    assert code == 2 and report is None
    assert "error: --dataset:" in err and "y_test has label 3, but the model predicts 3 classes" in err, err


def test_an_npz_without_test_arrays_names_them(tmp_path, capsys):
    np.savez(tmp_path / "train.npz", x_train=_gray(4), y_train=np.arange(4) % 3)
    code, err, _ = _eval(tmp_path, capsys, "--model", MODEL, "--dataset", str(tmp_path / "train.npz"))
    assert code == 2 and "missing x_test, y_test (found: x_train, y_train); it must hold x_test, y_test," in err, err


@pytest.mark.parametrize("train", ["absent", "corrupt image"])
@pytest.mark.parametrize("model", [["--model", MODEL], ["--checkpoint", "CHECKPOINT"]])
def test_a_folder_needs_only_test_and_train_is_not_decoded(train, model, tmp_path, capsys):
    root = _folder(tmp_path / "images", "test", ["a", "b", "c"])
    if train == "corrupt image":
        _folder(root, "train", ["a", "b", "c"])
        (root / "train" / "b" / "broken.png").write_bytes(b"not a png")
    model = [str(_checkpoint(tmp_path / "model.pt")) if a == "CHECKPOINT" else a for a in model]
    code, err, report = _eval(tmp_path, capsys, *model, "--dataset", str(root))
    assert code == 0, err
    assert report["meta"]["dataset"] == str(root)


@pytest.mark.parametrize("model", [["--model", MODEL], ["--checkpoint", "CHECKPOINT"]])
def test_a_folder_with_another_number_of_classes_than_the_model_is_refused(model, tmp_path, capsys):
    """Class i is the i-th test/ folder: without b/, c's images would be scored as class 1."""
    root = _folder(tmp_path / "images", "test", ["a", "c"])
    model = [str(_checkpoint(tmp_path / "model.pt")) if a == "CHECKPOINT" else a for a in model]
    code, err, report = _eval(tmp_path, capsys, *model, "--dataset", str(root))
    assert code == 2 and report is None
    assert "error: --dataset:" in err and "test/ has 2 class folders (a, c) but the model predicts 3 classes" in err
    assert "shift every later label" in err and "Traceback" not in err


def test_train_class_folders_must_still_match_test_though_their_files_are_not_read(tmp_path, capsys):
    root = _folder(tmp_path / "images", "test", ["a", "b", "c"])
    _folder(root, "train", ["a", "b", "d"])
    (root / "train" / "a" / "notes.txt").write_text("not listed, so not refused as a non-image")
    code, err, _ = _eval(tmp_path, capsys, "--model", MODEL, "--dataset", str(root))
    assert code == 2
    assert "train/ and test/ must have the same class folders; only in train/: ['d'], only in test/: ['c']" in err


def test_a_folder_without_test_says_what_eval_reads(tmp_path, capsys):
    root = _folder(tmp_path / "images", "train", ["a", "b", "c"])
    code, err, _ = _eval(tmp_path, capsys, "--model", MODEL, "--dataset", str(root))
    assert code == 2 and "no test/ folder" in err and "train/ is not read" in err, err


def test_non_square_images_are_resized_by_image_size(tmp_path, capsys):
    root = _folder(tmp_path / "images", "test", ["a", "b", "c"], height=10, width=12)
    code, err, _ = _eval(tmp_path, capsys, "--model", MODEL, "--dataset", str(root))
    assert code == 2 and "not square; pass --image-size N" in err, err
    code, err, _ = _eval(tmp_path, capsys, "--model", MODEL, "--dataset", str(root), "--image-size", "8")
    assert code == 0, err
    # A checkpoint fixes the size: another one is refused, saying which to pass.
    checkpoint = str(_checkpoint(tmp_path / "model.pt"))
    code, err, _ = _eval(tmp_path, capsys, "--checkpoint", checkpoint, "--dataset", str(root), "--image-size", "9")
    assert code == 2
    assert "takes 8x8 images but --dataset" in err and "has 9x9 images: pass --image-size 8" in err, err


@pytest.mark.parametrize("dataset, size, message", [
    ("NPZ", "8", "error: --image-size: resizes the images of an image folder; --dataset"),
    ("synthetic", "8", "error: --image-size: resizes the images of an image folder; --dataset synthetic is not one"),
    ("FOLDER", "4", "error: --image-size: must be an integer >= 8, got 4"),
])
def test_image_size_is_refused_where_it_cannot_apply(dataset, size, message, tmp_path, capsys):
    np.savez(tmp_path / "test.npz", x_test=_gray(4), y_test=np.arange(4) % 3)
    dataset = {"NPZ": str(tmp_path / "test.npz"),
               "FOLDER": str(_folder(tmp_path / "images", "test", ["a", "b", "c"]))}.get(dataset, dataset)
    code, err, _ = _eval(tmp_path, capsys, "--model", MODEL, "--dataset", dataset, "--image-size", size)
    assert code == 2 and message in err, err


def test_image_size_without_dataset_must_be_the_recorded_one(tmp_path, capsys):
    """The run's recorded data is re-read as recorded (its hash checked); --image-size can only
    restate the size its model takes."""
    root = _folder(tmp_path / "images", "test", ["a", "b", "c"], height=10, width=10)
    _folder(root, "train", ["a", "b", "c"], height=10, width=10)
    run = tmp_path / "run"
    run.mkdir()
    _checkpoint(run / "model.pt")
    (run / "dataset.json").write_text(json.dumps({"kind": "image-folder", "path": str(root), "resize": 8,
                                                  "image_size": 8}))
    code, err, _ = _eval(tmp_path, capsys, "--checkpoint", str(run), "--image-size", "12")
    assert code == 2 and "error: --image-size: the run's model takes the 8x8 images it recorded from" in err, err
    code, err, _ = _eval(tmp_path, capsys, "--checkpoint", str(run), "--image-size", "8")
    assert code == 0, err


def test_a_test_only_decode_and_a_whole_decode_keep_their_own_caches(tmp_path):
    root = _folder(tmp_path / "images", "test", ["a", "b", "c"])
    _folder(root, "train", ["a", "b", "c"])
    cache = tmp_path / "own-cache"

    def from_cache(notes):
        return "read from the cache" in notes[0]
    assert not from_cache(open_dataset(root, cache_dir=cache).notes)
    test_only = open_test_split(root, cache_dir=cache)
    assert not from_cache(test_only.notes) and "train/ not read" in test_only.notes[0]
    assert from_cache(open_dataset(root, cache_dir=cache).notes)
    again = open_test_split(root, cache_dir=cache)
    assert from_cache(again.notes) and again.test[0].shape == (6, 1, 8, 8)
    assert len(list(cache.glob("*.npz"))) == 2
