"""Findings of a user-level review of `adt-fast eval` and its report: --out through links, a report
whose every attack was skipped, a randomised model, and examples that cover few classes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from adt_fast import files
from adt_fast.attacks import Report, evaluate, sanity_warnings
from adt_fast.attacks.report import report_paths
from adt_fast.attacks.suite import DistributionAttack
from adt_fast.cli import main
from adt_fast.models import build_model
from adt_fast.train.checkpoint import save_atomic


def _report(n_examples: int = 8) -> Report:
    return Report(natural_accuracy=0.75, robust_accuracy={"fgsm": 0.625}, worst_case_accuracy=0.5,
                  n_examples=n_examples, epsilon=8 / 255, warnings=[], attacks={"fgsm": {"steps": 1}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("small-cnn", 10, 3, 8)
    return save_atomic({"model_config": model.config, "model": model.state_dict()},
                       tmp_path_factory.mktemp("eval") / "model.pt")


def _eval(checkpoint, out, *flags) -> int:
    return main(["eval", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--n-examples", "4",
                 "--attacks", "fgsm", "--epsilon-curve", "", *flags, "--out", str(out)])


# ------------------------------------------------------------------ F1: --out through links
def test_a_report_through_a_link_replaces_the_file_linked_to_and_keeps_the_link(tmp_path):
    """The earlier-report check read through the link while the rename replaced the link itself:
    the shared report it pointed to kept the old results."""
    shared = tmp_path / "shared"
    _report(n_examples=8).save(shared / "latest.json")
    for suffix in (".json", ".csv"):  # the PNG beside it is no link: it is written as a file
        (tmp_path / f"lk{suffix}").symlink_to(shared / f"latest{suffix}")
    written = _report(n_examples=30).save(tmp_path / "lk.json")
    assert [path.name for path in written] == ["lk.json", "lk.csv", "lk.png"]
    assert (tmp_path / "lk.json").is_symlink() and (tmp_path / "lk.csv").is_symlink()
    assert json.loads((shared / "latest.json").read_text())["n_examples"] == 30
    assert (shared / "latest.csv").read_text() == _report(n_examples=30).csv_text()
    assert not (tmp_path / "lk.png").is_symlink() and (tmp_path / "lk.png").is_file()
    assert sorted(p.name for p in shared.iterdir()) == ["latest.csv", "latest.json", "latest.png"]


@pytest.mark.parametrize("suffix", [".json", ".csv", ".png"])
def test_a_link_to_nothing_among_the_reports_files_is_refused_before_writing(tmp_path, suffix):
    """The rename turned a link to nothing into a file, silently; train's --out refuses such a link."""
    link = tmp_path / f"r{suffix}"
    link.symlink_to(tmp_path / "gone" / f"latest{suffix}")
    with pytest.raises(FileNotFoundError, match=f"{link} is a link to .*gone.*, which does not exist"):
        report_paths(tmp_path / "r.json")
    with pytest.raises(FileNotFoundError):
        _report().save(tmp_path / "r.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == [link.name] and link.is_symlink()


def test_a_link_to_an_earlier_plot_goes_with_it_when_no_plot_is_written(tmp_path):
    _report().save(tmp_path / "shared" / "latest.json")
    (tmp_path / "lk.png").symlink_to(tmp_path / "shared" / "latest.png")
    _report().save(tmp_path / "lk.json", plot=False)
    assert not os.path.lexists(tmp_path / "lk.png") and not (tmp_path / "shared" / "latest.png").exists()


def test_a_link_to_another_file_is_refused_as_the_file_is(tmp_path):
    (tmp_path / "mine.json").write_text("{}")
    (tmp_path / "lk.json").symlink_to(tmp_path / "mine.json")
    with pytest.raises(FileExistsError, match="not an earlier adt_fast report"):
        report_paths(tmp_path / "lk.json")


def test_broken_link_reason_and_link_target(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "one").symlink_to(tmp_path / "file")
    (tmp_path / "two").symlink_to(tmp_path / "one")
    (tmp_path / "dangling").symlink_to("nowhere")
    assert files.link_target(tmp_path / "two") == tmp_path / "file"
    assert files.link_target(tmp_path / "file") == tmp_path / "file"
    assert files.broken_link_reason(tmp_path / "two") is None
    assert files.broken_link_reason(tmp_path / "absent") is None
    assert files.broken_link_reason(tmp_path / "dangling") == (
        f"{tmp_path / 'dangling'} is a link to nowhere, which does not exist")


def test_eval_writes_through_an_out_link_and_refuses_one_to_nothing(checkpoint, tmp_path, capsys):
    shared = tmp_path / "shared"
    assert _eval(checkpoint, shared / "latest.json", "--n-examples", "2") == 0
    (tmp_path / "lk.json").symlink_to(shared / "latest.json")
    assert _eval(checkpoint, tmp_path / "lk.json") == 0
    assert (tmp_path / "lk.json").is_symlink()
    assert json.loads((shared / "latest.json").read_text())["n_examples"] == 4
    (tmp_path / "dl.json").symlink_to(tmp_path / "nothere.json")
    capsys.readouterr()
    assert _eval(checkpoint, tmp_path / "dl.json") == 2
    err = capsys.readouterr().err
    assert "--out" in err and f"{tmp_path / 'dl.json'} is a link to" in err and "which does not exist" in err
    assert (tmp_path / "dl.json").is_symlink() and not (tmp_path / "dl.csv").exists()


def _linear(classes: int = 10) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # built at collection too: leave the global seed alone
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, classes)).eval()


def _data(n: int = 10, classes: int = 10):
    x = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return x, torch.arange(n) % classes


# ------------------------------------------------------------------ F2: no attack ran
def test_a_report_whose_every_attack_was_skipped_claims_no_robust_accuracy(tmp_path):
    """FeaAttack alone on a model without .features: Arob printed the natural accuracy (100 % on a
    correct example) as "worst case over ... every attack run ()"."""
    x, y = _data()
    report = evaluate(_linear(), x, y, attacks="feature", epsilon_curve=())
    assert report.skipped and not report.robust_accuracy
    assert report.worst_case_accuracy is None and "worst_case" not in report.correct
    assert any(w.startswith("no attack ran, so there is no robust accuracy") for w in report.warnings)
    lines = report.table().splitlines()
    assert lines[2].split()[-1] == "n/a"
    assert "Arob: n/a, since no attack ran (each one asked for was skipped)" in report.table()
    paths = report.save(tmp_path / "r.json")
    data = json.loads(paths[0].read_text())
    assert data["worst_case_accuracy"] is None and data["worst_case_over"] == []
    assert "summary,worst_case,,0.0313725,,,\n" in paths[1].read_text()
    report.save(tmp_path / "r.json")  # it is an earlier report, to be replaced


def test_a_report_where_an_attack_ran_keeps_its_worst_case():
    x, y = _data()
    report = evaluate(_linear(), x, y, attacks="fgsm,feature", epsilon_curve=())
    assert "feature" in report.skipped and report.worst_case_accuracy is not None
    assert not any(w.startswith("no attack ran") for w in report.warnings)
    assert "Arob: worst case over the natural input and every attack run (FGSM)" in report.table()


# ------------------------------------------------------------------ F3: a randomised model
class _Noisy(nn.Module):
    """A randomised defence at its crudest: fresh noise on the logits in every forward."""

    def __init__(self, scale: float = 3.0):
        super().__init__()
        self.linear, self.scale = _linear(), scale

    def forward(self, x):
        logits = self.linear(x)
        return logits + self.scale * torch.randn_like(logits)


class _NaN(nn.Module):
    def forward(self, x):
        return torch.full((len(x), 10), float("nan")) + 0 * x.flatten(1).sum(1, keepdim=True)


def _randomised_warnings(report: Report):
    return [w for w in report.warnings if "a randomised model" in w]


def test_a_randomised_model_is_named_in_the_sanity_checks():
    """Noise in forward gave FGSM, PGD and Arob from other draws, and "no sign of gradient masking"."""
    x, y = _data()
    report = evaluate(_Noisy(), x, y, attacks="fgsm,pgd:2", epsilon_curve=())
    (warning,) = _randomised_warnings(report)
    assert "the worst case is no single model's" in warning and "EOT" in warning and "version='rand'" in warning


def test_the_randomised_model_check_leaves_the_seeded_draws_alone(monkeypatch):
    """The check's two forwards drew the model's noise (torch's global generator, which the caller
    seeds) before the attacks: a seeded run gave other numbers than before the check existed."""
    from adt_fast.attacks import evaluation

    x, y = _data()

    def scores():
        model = _Noisy()
        torch.manual_seed(3)
        report = evaluate(model, x, y, attacks="fgsm,pgd:2", epsilon_curve=(), seed=3)
        return report.natural_accuracy, report.robust_accuracy

    checked = scores()
    monkeypatch.setattr(evaluation, "gives_other_logits", lambda ctx, probe: True)  # draws nothing
    assert scores() == checked


@pytest.mark.parametrize("model", [_linear(), _NaN(), _Noisy(scale=1e-6)], ids=["linear", "nan", "float-noise"])
def test_a_model_that_repeats_itself_is_not_called_randomised(model):
    x, y = _data()
    assert _randomised_warnings(evaluate(model, x, y, attacks="fgsm", epsilon_curve=())) == []


def test_sanity_warnings_name_a_randomised_model_only_when_told():
    natural = torch.ones(10, dtype=torch.bool)
    assert sanity_warnings(natural, {"fgsm": natural}) == []
    (warning,) = sanity_warnings(natural, {"fgsm": natural}, randomised=True)
    assert warning.startswith("the model gives other logits for the same inputs on each forward")


# ------------------------------------------------------------------ F4: examples of few classes
def _coverage_warnings(report: Report):
    return [w for w in report.warnings if "of the model's" in w and "classes" in w]


def test_examples_that_cover_few_of_the_models_classes_are_named():
    """--n-examples 100 of digits as an image folder (sorted by class) scored classes 0-2 only, silently."""
    x, y = _data(n=12)
    y = torch.arange(12) // 4  # the first 12 examples of a class-sorted split: classes 0, 1, 2
    (warning,) = _coverage_warnings(evaluate(_linear(), x, y, attacks="fgsm", epsilon_curve=()))
    assert warning.startswith("the 12 evaluated examples cover 3 of the model's 10 classes")
    assert "without --n-examples" in warning


def test_examples_of_every_class_give_no_coverage_warning():
    x, y = _data(n=20)
    assert _coverage_warnings(evaluate(_linear(), x, y, attacks="fgsm", epsilon_curve=())) == []
    assert sanity_warnings(torch.ones(4, dtype=torch.bool), {}, classes_covered=2, num_classes=2) == []


@pytest.mark.parametrize("build", [
    lambda: evaluate(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), torch.rand(2, 1, 2, 2), torch.tensor([0, 1]),
                     epsilon=8 / 255, attacks=["dist"], dist_steps=0),
    lambda: DistributionAttack(8 / 255, steps=0),
], ids=["evaluate", "DistributionAttack"])
def test_the_distribution_attack_takes_one_step_at_least(build):
    """As pgd:N and eval's --dist-steps: 0 steps would report unfitted noise as the Dist column."""
    with pytest.raises(ValueError, match="steps must be an integer from 1 to "):
        build()
