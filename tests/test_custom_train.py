"""Training and evaluating on your own data (npz, image folder, arrays) end to end, and the
authors' variants as flags (--generator-grad, --beta-scales-entropy, --trades-inner)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from adt_fast.cli import main
from adt_fast.data import DatasetFileError
from adt_fast.distributed import BatchShard, World
from adt_fast.models import build_model
from adt_fast.train import ConfigError, TrainConfig, build_method, fit, read_metrics
from adt_fast.train.methods import Runtime

PIL = pytest.importorskip("PIL.Image")

FAST = ["--epochs", "1", "--max-batches", "2", "--batch-size", "8", "--no-tensorboard", "--device", "cpu"]
EVAL_FAST = ["--n-examples", "4", "--attacks", "fgsm,pgd:2", "--epsilon-curve", ""]


def _tiny_arrays(seed=0, size=8):
    """Two classes told apart by brightness, N x H x W x 1 uint8 (keras' layout)."""
    rng = np.random.default_rng(seed)
    def split(n):
        labels = np.arange(n) % 2
        images = (rng.random((n, size, size, 1)) * 100 + 120 * labels[:, None, None, None]).astype(np.uint8)
        return images, labels
    (x_train, y_train), (x_test, y_test) = split(16), split(8)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def test_train_then_eval_on_an_npz_finds_the_data_by_itself(tmp_path, capsys):
    data = tmp_path / "tiny.npz"
    np.savez(data, **_tiny_arrays())
    run = tmp_path / "run"
    assert main(["train", "--method", "at-pgd", "--dataset", str(data), *FAST, "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "read as N x H x W x C (channels last)" in printed
    assert "--epsilon not given: 0.0313725 (8/255" in printed and "--arch not given: small-cnn" in printed
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == str(data.resolve()) and config["arch"] == "small-cnn"
    source = json.loads((run / "dataset.json").read_text())
    assert source["kind"] == "npz" and source["path"] == str(data.resolve()) and len(source["sha256"]) == 64
    assert f"adt-fast eval --checkpoint {run} --out" in printed

    report = tmp_path / "report.json"
    assert main(["eval", "--checkpoint", str(run), *EVAL_FAST, "--out", str(report)]) == 0
    meta = json.loads(report.read_text())
    assert meta["meta"]["dataset"] == str(data.resolve()) and meta["epsilon"] == pytest.approx(8 / 255)

    # The data changes: eval (without --dataset) and resume both refuse it. Eval says how to
    # evaluate the model on the data as it is now, which it then does; resume cannot mix data.
    np.savez(data, **_tiny_arrays(seed=1))
    assert main(["eval", "--checkpoint", str(run), *EVAL_FAST, "--out", str(report)]) == 2
    err = capsys.readouterr().err
    assert "has changed since the run recorded it" in err
    assert err.rstrip().endswith(f"; to evaluate on the data as it is now, pass --dataset {data.resolve()}")
    assert main(["eval", "--checkpoint", str(run), *EVAL_FAST, "--dataset", str(data.resolve()),
                 "--out", str(report)]) == 0
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "has changed since the run recorded it" in err and "pass --dataset" not in err


def test_a_run_on_files_that_moved_resumes_from_their_new_path_and_records_it(tmp_path, capsys):
    """Your own files are known by their content hash, not their path: a run whose .npz moved (to
    another disk, behind a re-pointed link) resumes from where it is now, and records that path
    for later resumes and eval; other content at the new path is refused."""
    data, moved = tmp_path / "tiny.npz", tmp_path / "elsewhere" / "tiny.npz"
    np.savez(data, **_tiny_arrays())
    run = tmp_path / "run"
    assert main(["train", "--method", "standard", "--dataset", str(data), *FAST, "--out", str(run)]) == 0
    moved.parent.mkdir()
    data.rename(moved)
    capsys.readouterr()

    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"the data the run was trained on, {data}, is not there any more" in err
    assert "give its new path with --dataset" in err

    other = tmp_path / "other.npz"
    np.savez(other, **_tiny_arrays(seed=1))
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--dataset", str(other)]) == 2
    assert f"{other} is not the data the run was trained on ({data})" in capsys.readouterr().err

    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--dataset", str(moved)]) == 0
    assert f"data: {moved} holds what the run recorded at {data}" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["dataset"] == str(moved)
    assert json.loads((run / "dataset.json").read_text())["path"] == str(moved)
    assert [record["epoch"] for record in read_metrics(run)] == [1, 2]

    # moved back, with a link left where the run now looks: a plain resume follows the link
    moved.rename(data)
    moved.symlink_to(data)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "3"]) == 0
    assert json.loads((run / "config.json").read_text())["dataset"] == str(data)
    assert [record["epoch"] for record in read_metrics(run)] == [1, 2, 3]
    report = tmp_path / "report.json"
    assert main(["eval", "--checkpoint", str(run), *EVAL_FAST, "--out", str(report)]) == 0

def test_under_torchrun_the_notes_of_evals_checks_come_from_rank_0_alone(tmp_path, capsys, monkeypatch):
    """stdout and notes belong to rank 0 (docs/distributed.md); eval's checks, which run before the
    group is joined, printed the data they read and --n-examples' note once per rank."""
    from adt_fast.attacks.command import plan
    from adt_fast.cli import build_parser

    data = tmp_path / "tiny.npz"
    np.savez(data, **_tiny_arrays())
    run = tmp_path / "run"
    assert main(["train", "--method", "standard", "--dataset", str(data), *FAST, "--out", str(run)]) == 0
    capsys.readouterr()
    argv = ["eval", "--checkpoint", str(run), "--n-examples", "100", "--attacks", "fgsm", "--epsilon-curve", "",
            "--device", "cpu", "--out", str(tmp_path / "r.json")]
    for rank in ("1", "0"):
        for name, value in {"RANK": rank, "WORLD_SIZE": "2", "LOCAL_RANK": rank, "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": "29500"}.items():
            monkeypatch.setenv(name, value)
        plan(build_parser().parse_args(argv))  # joins no group: the checks alone
        err = capsys.readouterr().err
        if rank == "1":
            assert err == ""
        else:
            assert f"data: {data.resolve()} (from {run / 'dataset.json'}, content hash checked)" in err
            assert "note: --n-examples 100 exceeds the 8 test examples" in err


def test_train_then_eval_on_an_image_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ADT_FAST_CACHE_DIR", str(tmp_path / "cache"))
    arrays = _tiny_arrays()
    for split in ("train", "test"):
        for index, (image, label) in enumerate(zip(arrays[f"x_{split}"], arrays[f"y_{split}"])):
            folder = tmp_path / "images" / split / ("dark", "light")[label]
            folder.mkdir(parents=True, exist_ok=True)
            PIL.fromarray(np.repeat(image, 3, axis=2)).save(folder / f"{index}.png")
    run = tmp_path / "run"
    assert main(["train", "--method", "standard", "--dataset", str(tmp_path / "images"), "--image-size", "12",
                 *FAST, "--out", str(run)]) == 0
    assert "2 classes sorted by name (dark, light)" in capsys.readouterr().out
    source = json.loads((run / "dataset.json").read_text())
    assert (source["kind"], source["resize"], source["image_size"], source["classes"]) == \
        ("image-folder", 12, 12, ["dark", "light"])
    assert adt_fast_model_config(run) == {"arch": "small-cnn", "num_classes": 2, "in_channels": 3, "image_size": 12}
    report = tmp_path / "report.json"
    assert main(["eval", "--checkpoint", str(run / "model.pt"), *EVAL_FAST, "--out", str(report)]) == 0
    # Given explicitly, the run's folder is read at the run's --image-size.
    assert main(["eval", "--checkpoint", str(run), "--dataset", str(tmp_path / "images"), *EVAL_FAST,
                 "--out", str(report)]) == 0


def adt_fast_model_config(run):
    import adt_fast

    return dict(adt_fast.load_model(run).config)


def test_fit_takes_tensors_and_records_them(tmp_path):
    arrays = _tiny_arrays()
    data = tuple(torch.from_numpy(arrays[key]) for key in ("x_train", "y_train", "x_test", "y_test"))
    cfg = TrainConfig("standard", "my-arrays", str(tmp_path / "run"), epochs=1, max_batches=1, tensorboard=False,
                      device="cpu")
    run = fit(cfg, data=data)
    assert json.loads((run / "config.json").read_text())["dataset"] == "my-arrays"
    source = json.loads((run / "dataset.json").read_text())
    assert source["kind"] == "arrays" and source["num_classes"] == 2 and source["channels"] == 1
    # Resuming with other arrays is refused before anything trains.
    other = (data[0].flip(0),) + data[1:]
    with pytest.raises(DatasetFileError, match="changed since the run recorded it"):
        fit(dataclasses.replace(TrainConfig.load(run), resume=True, epochs=2), data=other)


def test_arrays_in_memory_need_their_own_name_and_are_resumed_from_python(tmp_path, capsys):
    """A built-in name once gave the arrays that dataset's epoch default (and eval --dataset would
    open the built-in data); a CLI resume once said --dataset 'my-arrays' is no file."""
    arrays = _tiny_arrays()
    data = tuple(arrays[key] for key in ("x_train", "y_train", "x_test", "y_test"))
    for name in ("digits", "synthetic"):
        with pytest.raises(ConfigError, match=rf"{name!r} is a built-in dataset"):
            fit(TrainConfig("standard", name, str(tmp_path / name), epochs=1), data=data)
    run = fit(TrainConfig("standard", "my-arrays", str(tmp_path / "run"), epochs=1, max_batches=1,
                          tensorboard=False, device="cpu"), data=data)
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 2
    assert "was trained on arrays in memory, which cannot be found again; resume it from Python" in \
        capsys.readouterr().err
    fit(dataclasses.replace(TrainConfig.load(run), resume=True, epochs=2), data=data)
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_bad_data_leaves_no_run_directory(tmp_path, capsys):
    arrays = _tiny_arrays()
    arrays["y_test"] = arrays["y_test"] + 7
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    run = tmp_path / "run"
    assert main(["train", "--method", "standard", "--dataset", str(bad), *FAST, "--out", str(run)]) == 2
    assert "bad.npz: y_test has label 8" in capsys.readouterr().err
    assert not run.exists()
    with pytest.raises(DatasetFileError, match=r"data \(x\): y_train: 3 labels for 16 images"):
        fit(TrainConfig("standard", "x", str(run)), data=(arrays["x_train"], arrays["y_train"][:3],
                                                          arrays["x_test"], arrays["y_test"]))
    assert not run.exists()
    assert main(["train", "--method", "standard", "--dataset", "cifar10", "--image-size", "16",
                 *FAST, "--out", str(run)]) == 2
    assert "--image-size resizes the images of an image folder" in capsys.readouterr().err
    assert not run.exists()


def test_one_class_data_is_refused_before_training(tmp_path, capsys):
    """All-zero labels trained to loss 0 and accuracy 1 and saved a model that learned nothing."""
    arrays = _tiny_arrays()
    arrays["y_train"], arrays["y_test"] = arrays["y_train"] * 0, arrays["y_test"] * 0
    one = tmp_path / "one.npz"
    np.savez(one, **arrays)
    run = tmp_path / "run"
    assert main(["train", "--method", "standard", "--dataset", str(one), *FAST, "--out", str(run)]) == 2
    assert "one.npz: y_train has one class" in capsys.readouterr().err
    assert not run.exists()


def test_eval_without_dataset_on_a_bare_checkpoint_asks_for_one(tmp_path, capsys):
    from adt_fast.train.checkpoint import save_atomic

    model = build_model("small-cnn", 10, 3, 8)
    save_atomic({"model_config": model.config, "model": model.state_dict()}, tmp_path / "model.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "model.pt"), *EVAL_FAST,
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "holds no dataset.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- the authors' variants
def _method(method, **kw):
    if method in ("adt-exp-am", "adt-imp-am", "l2l"):
        kw.setdefault("generator_width", 4)
    cfg = TrainConfig(method, "synthetic", "unused", **kw).resolve()
    return cfg, build_method(cfg, build_model("small-cnn", 10, 3, 8), Runtime())


@pytest.mark.parametrize("method", ["adt-exp-am", "adt-imp-am", "l2l"])
def test_generator_grad_batch_mean_feeds_batch_mean_gradients(method):
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    inputs = {}
    for choice in ("per-example", "batch-mean"):
        cfg, built = _method(method, generator_grad=choice)
        torch.manual_seed(0)
        model = build_model("small-cnn", 10, 3, 8)
        inputs[choice] = built.perturbation.inputs(model, x, y, Runtime())
    assert cfg.generator_grad == "batch-mean"
    # [x, g1, g2]: x unchanged, g1 of the batch-mean CE is the per-example g1 over B.
    torch.testing.assert_close(inputs["batch-mean"][:, :3], inputs["per-example"][:, :3])
    torch.testing.assert_close(inputs["batch-mean"][:, 3:6], inputs["per-example"][:, 3:6] / 6)
    with pytest.raises(ConfigError, match="--generator-grad must be one of per-example, batch-mean"):
        _method(method, generator_grad="mean")


def test_generator_grad_batch_mean_is_over_the_global_batch_under_data_parallelism():
    """A rank's rows get the inputs one process gives them: the mean is over the global batch."""
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    _, built = _method("adt-exp-am", generator_grad="batch-mean")
    model = build_model("small-cnn", 10, 3, 8)
    whole = built.perturbation.inputs(model, x, y, Runtime())
    shard = BatchShard.of(6, World(1, 2))
    rows = built.perturbation.inputs(model, shard.rows(x), shard.rows(y), Runtime(shard=shard))
    torch.testing.assert_close(rows, shard.rows(whole))


@pytest.mark.parametrize("method", ["adt-exp", "adt-exp-am", "adt-imp-am"])
def test_beta_scales_entropy_multiplies_lambda_by_beta(method):
    def weight(**kw):
        cfg, built = _method(method, loss="trades", beta=4.0, lbd=0.5, **kw)
        return built.perturbation.lbd if method == "adt-exp" else built.lbd

    assert weight() == (0.5 if method == "adt-exp" else 2.0)  # the amortised ones: the authors' balance
    assert weight(beta_scales_entropy=False) == 0.5
    assert weight(beta_scales_entropy=True) == 2.0
    with pytest.raises(ConfigError, match="--beta-scales-entropy applies only with --loss trades"):
        _method(method, beta_scales_entropy=True)


def test_beta_scales_entropy_changes_the_explicit_fit():
    """The flag reaches the objective: the entropy term of the fitted distribution grows with beta."""
    cfg, default = _method("adt-exp", loss="trades", beta=4.0, steps=1, samples=2)
    _, scaled = _method("adt-exp", loss="trades", beta=4.0, steps=1, samples=2, beta_scales_entropy=True)
    assert scaled.perturbation.lbd == pytest.approx(4.0 * default.perturbation.lbd)
    model = build_model("small-cnn", 10, 3, 8).eval()
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    samples = []
    for built in (default, scaled):
        torch.manual_seed(0)
        samples.append(built.perturbation(model, x, y, Runtime()))
    assert not torch.equal(samples[0], samples[1])


def test_dist_grad_accumulated_reaches_the_fit():
    cfg, built = _method("adt-exp")
    assert cfg.dist_grad == "per-step" and not built.perturbation.accumulate_grads
    cfg, built = _method("adt-exp", dist_grad="accumulated")
    assert built.perturbation.accumulate_grads
    with pytest.raises(ConfigError, match="--dist-grad must be one of per-step, accumulated"):
        _method("adt-exp", dist_grad="sum")
    with pytest.raises(ConfigError, match="--dist-grad does not apply to --method at-pgd"):
        _method("at-pgd", dist_grad="accumulated")


def test_trades_inner_trades_code_runs_tradess_own_loop():
    cfg, built = _method("trades")
    assert (cfg.trades_inner, built.perturbation.steps, built.perturbation.step_size) == \
        ("at-pgd", 7, pytest.approx(2 / 255))
    cfg, built = _method("trades", trades_inner="trades-code")
    assert (built.perturbation.steps, built.perturbation.step_size) == (10, pytest.approx(0.007))
    _, built = _method("trades", trades_inner="trades-code", epsilon=16 / 255)
    assert built.perturbation.step_size == pytest.approx(0.014)
    with pytest.raises(ConfigError, match="contradicts --steps 3"):
        _method("trades", trades_inner="trades-code", steps=3)
    with pytest.raises(ConfigError, match="--trades-inner does not apply to --method at-pgd"):
        _method("at-pgd", trades_inner="trades-code")


def test_variant_flags_reach_the_config_from_the_command_line(tmp_path):
    runs = {
        "trades": ["--method", "trades", "--trades-inner", "trades-code"],
        "exp": ["--method", "adt-exp", "--loss", "trades", "--beta-scales-entropy", "--dist-grad", "accumulated",
                "--steps", "1", "--samples", "1"],
        "l2l": ["--method", "l2l", "--generator-grad", "batch-mean", "--generator-width", "4"],
    }
    for name, flags in runs.items():
        out = tmp_path / name
        assert main(["train", *flags, "--dataset", "synthetic", "--epochs", "1", "--max-batches", "1",
                     "--no-tensorboard", "--out", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())
        assert {"trades": config["trades_inner"] == "trades-code" and config["steps"] == 10,
                "exp": config["beta_scales_entropy"] is True and config["dist_grad"] == "accumulated",
                "l2l": config["generator_grad"] == "batch-mean"}[name]
