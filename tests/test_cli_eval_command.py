"""`adt-fast eval`: what the command says of the run it scored, the name of a --model row, and
--protocol paper's extra attacks checked before any attack runs."""

from __future__ import annotations

import pytest
import torch

from adt_fast.cli import main
from adt_fast.models import build_model
from adt_fast.train.checkpoint import save_atomic

FAST = ["--dataset", "synthetic", "--n-examples", "2", "--attacks", "fgsm", "--epsilon-curve", ""]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 3, 8)
    path = save_atomic({"model_config": model.config, "model": model.state_dict(), "method": "adt-exp",
                        "epoch": 4, "config": {"epochs": 4}}, tmp_path_factory.mktemp("c") / "run" / "model.pt")
    return path.parent


def test_a_finished_run_is_not_called_unfinished(finished_run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(finished_run), *FAST, "--out", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "after 4 of 4 epochs" in printed and "had not finished" not in printed


def test_the_table_names_a_factory_model_by_its_factory(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["eval", "--model", "external_models:build", *FAST,
                 "--out", str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("build ")]
    assert len(rows) == 1, "the result row is named after the factory, 'build'"


def test_paper_protocol_extras_are_checked_against_the_classes_before_attacking(tmp_path, monkeypatch, capsys):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(10) % 5
    np.savez(tmp_path / "five.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    (tmp_path / "five_models.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["eval", "--model", "five_models:build", "--dataset", str(tmp_path / "five.npz"),
                 "--protocol", "paper", "--attacks", "apgd-t", "--epsilon-curve", "",
                 "--out", str(tmp_path / "e.json")])
    assert code == 2
    assert "error: --attacks: 'apgd-t'" in capsys.readouterr().err


def test_square_on_more_channels_than_it_can_sign_is_refused_before_attacking(tmp_path, monkeypatch, capsys):
    """Your own .npz may have any number of channels; Square draws one sign per channel from 64
    random bits. AutoAttack once ran APGD-CE, APGD-T and FAB-T on them (hours, on real data) and
    only then failed at Square."""
    np = pytest.importorskip("numpy")
    images = np.random.default_rng(0).random((10, 65, 8, 8), dtype=np.float32)
    labels = np.arange(10)
    np.savez(tmp_path / "wide.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    (tmp_path / "wide_models.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(65 * 8 * 8, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["eval", "--model", "wide_models:build", "--dataset", str(tmp_path / "wide.npz"),
                 "--attacks", "autoattack", "--epsilon-curve", "", "--out", str(tmp_path / "e.json")])
    assert code == 2
    assert ("error: --attacks: its 'square' (Square) draws one sign per channel from 64 random bits; "
            "the inputs have 65 channels") in capsys.readouterr().err


def test_std_without_mean_is_refused_also_with_a_checkpoint(finished_run, tmp_path, capsys):
    """--mean and --std: 'give both or neither'. With --checkpoint, only --mean is caught by the
    goes-with---model check; a lone --std must be refused too, not silently ignored while the
    report is written as if it had been applied."""
    out = tmp_path / "r.json"
    code = main(["eval", "--checkpoint", str(finished_run), "--std", "0.2,0.2,0.2", *FAST, "--out", str(out)])
    assert code == 2
    assert "error: --mean/--std" in capsys.readouterr().err
    assert not out.exists()


def test_a_ctrl_c_while_the_report_is_written_says_which_files_are_new(finished_run, tmp_path, monkeypatch, capsys):
    """The message once claimed no file was changed although REPORT.json had been replaced: it
    must name what was written and what is still the previous run's, and keep the results."""
    from adt_fast.attacks import report as report_module

    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(finished_run), *FAST, "--out", str(out)]) == 0
    inode = {suffix: out.with_suffix(suffix).stat().st_ino for suffix in (".json", ".csv", ".png")}
    capsys.readouterr()
    real, calls = report_module.write_atomic, []

    def interrupted_at_the_csv(path, write, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, write, *args, **kwargs)

    monkeypatch.setattr(report_module, "write_atomic", interrupted_at_the_csv)
    assert main(["eval", "--checkpoint", str(finished_run), *FAST, "--out", str(out)]) == 130
    printed = capsys.readouterr()
    assert "FGSM" in printed.out  # the results table
    assert "no file was changed" not in printed.err
    assert f"{out} written" in printed.err and f"{out.with_suffix('.csv')} being written" in printed.err
    assert f"{out.with_suffix('.png')} not written" in printed.err
    # write_atomic replaces a file by renaming a new one over it: a new inode is a new file
    assert out.stat().st_ino != inode[".json"]
    assert [out.with_suffix(suffix).stat().st_ino for suffix in (".csv", ".png")] == [inode[".csv"], inode[".png"]]


def test_the_report_records_the_checkpoint_absolute_and_torch_and_the_device(finished_run, tmp_path, monkeypatch):
    """A relative --checkpoint is recorded as the absolute path it named (as --weights is), with
    torch's version and the device's model: a report must say what produced its numbers."""
    import json

    monkeypatch.chdir(finished_run.parent)
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", finished_run.name, *FAST, "--out", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert meta["checkpoint"] == str((finished_run / "model.pt").resolve())
    assert meta["torch_version"] == torch.__version__
    assert isinstance(meta["device_name"], str) and meta["device_name"]
