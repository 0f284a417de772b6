"""The report: worst case over per-example masks, the sanity checks, the table, the files."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adt_fast.attacks import Report, sanity_warnings, worst_case
from adt_fast.attacks.report import attack_order, tolerance


def _mask(correct: int, n: int = 100) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:correct] = True
    return mask


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=1, max_size=6))
def test_worst_case_is_at_most_the_minimum_over_attacks(rows):
    natural = torch.tensor(rows[0])
    masks = {f"attack{i}": torch.tensor(row) for i, row in enumerate(rows[1:])}
    worst = worst_case(natural, masks)
    assert worst.sum() <= min([natural.sum()] + [m.sum() for m in masks.values()])
    for i in range(12):  # robust exactly when it survives everything
        assert bool(worst[i]) == all([rows[0][i]] + [row[i] for row in rows[1:]])


def test_no_warnings_for_a_consistent_result():
    masks = {"fgsm": _mask(60), "pgd20": _mask(50), "pgd100": _mask(49), "mim": _mask(51),
             "cw": _mask(50), "transfer": _mask(70)}
    assert sanity_warnings(_mask(85), masks) == []


def test_pgd100_weaker_than_pgd20_is_flagged():
    warnings = sanity_warnings(_mask(85), {"pgd20": _mask(40), "pgd100": _mask(48)})
    assert len(warnings) == 1 and "PGD-100" in warnings[0] and "weaker than PGD-20" in warnings[0]


def test_fgsm_stronger_than_pgd_is_flagged():
    warnings = sanity_warnings(_mask(85), {"fgsm": _mask(30), "pgd20": _mask(45)})
    assert len(warnings) == 1 and warnings[0].startswith("FGSM") and "stronger than PGD-20" in warnings[0]


def test_white_box_weaker_than_transfer_is_flagged():
    warnings = sanity_warnings(_mask(85), {"pgd20": _mask(70), "cw": _mask(40), "transfer": _mask(55)})
    assert len(warnings) == 1 and "white-box PGD-20" in warnings[0] and "transfer" in warnings[0]


def test_gradient_and_logit_problems_are_flagged():
    warnings = sanity_warnings(_mask(85), {"pgd20": _mask(40)}, zero_gradients=30,
                               nonfinite_gradients=20, nonfinite_logits=2)
    text = "\n".join(warnings)
    assert "exactly zero on 30 of 100" in text
    assert "NaN or infinite on 20 of 100" in text
    assert "logits on 2 of 100" in text
    assert sanity_warnings(_mask(85), {"pgd20": _mask(40)}, zero_gradients=10) == []


def test_an_attack_above_natural_accuracy_is_flagged():
    warnings = sanity_warnings(_mask(50), {"mim": _mask(60)})
    assert len(warnings) == 1 and "more than the natural accuracy" in warnings[0]


def test_small_gaps_are_within_tolerance():
    assert tolerance(100) == 1 and tolerance(10_000) == 50
    assert sanity_warnings(_mask(85), {"pgd20": _mask(40), "pgd100": _mask(41)}) == []
    assert sanity_warnings(_mask(85), {"pgd20": _mask(40), "pgd100": _mask(42)}) != []


def test_table_order():
    assert attack_order(["transfer", "dist", "cw", "pgd100", "pgd7", "feature", "mim", "fgsm", "pgd20"]) == [
        "fgsm", "pgd7", "pgd20", "pgd100", "mim", "cw", "feature", "dist", "transfer"]


def _report() -> Report:
    return Report(
        natural_accuracy=0.8459, robust_accuracy={"pgd100": 0.5449, "fgsm": 0.6008, "pgd20": 0.5606,
                                                  "dist": 0.57, "transfer": 0.7},
        worst_case_accuracy=0.5264, n_examples=10_000, epsilon=8 / 255, warnings=["something"],
        attacks={"fgsm": {"steps": 1, "epsilon": 8 / 255}, "pgd20": {"steps": 20},
                 "pgd100": {"steps": 100}, "dist": {"steps": 3}, "transfer": {"steps": 20},
                 "feature": {"skipped": "no features"}},
        skipped={"feature": "no features"},
        curves={"pgd_steps": {"epsilon": 8 / 255, "step_size": 2 / 255,
                              "points": [{"steps": t, "accuracy": 0.8 - 0.01 * t} for t in range(6)]},
                "pgd_epsilon": {"steps": 20, "points": [
                    {"epsilon": m * 8 / 255, "multiple": m, "step_size": m * 2 / 255, "accuracy": 0.8 - m / 4}
                    for m in (0, 0.5, 1, 2)]},
                "dist": {"samples": 10, "points": [
                    {"steps": t, "loss": 0.5 + t / 10, "sample_accuracy": 0.7 - t / 50, "accuracy": 0.6 - t / 50}
                    for t in range(4)]}},
        seed=3)


def test_table_is_laid_out_like_table_9():
    lines = _report().table("ADT_EXP").splitlines()
    assert "10000 examples" in lines[0] and "8/255" in lines[0]
    assert lines[1].split() == ["Model", "Anat", "FGSM", "PGD-20", "PGD-100", "FeaAttack", "Dist",
                                "Transfer", "Arob"]
    assert lines[2].split() == ["ADT_EXP", "84.59%", "60.08%", "56.06%", "54.49%", "n/a", "57.00%",
                                "70.00%", "52.64%"]
    assert "FeaAttack skipped: no features" in lines[3]


def test_files_are_written(tmp_path):
    report = _report()
    paths = report.save(tmp_path / "sub" / "report.json")
    assert [p.name for p in paths] == ["report.json", "report.csv", "report.png"]
    data = json.loads(paths[0].read_text())
    for key in ("natural_accuracy", "robust_accuracy", "worst_case_accuracy", "n_examples",
                "epsilon", "warnings", "attacks", "curves"):
        assert key in data
    assert list(data["robust_accuracy"]) == ["fgsm", "pgd20", "pgd100", "dist", "transfer"]
    assert data["curves"]["dist"]["points"][2]["loss"] == 0.7
    rows = list(csv.DictReader(paths[1].open()))
    sections = {row["section"] for row in rows}
    assert sections == {"summary", "pgd_steps", "pgd_epsilon", "dist"}
    summary = {row["name"]: float(row["accuracy"]) for row in rows if row["section"] == "summary"}
    assert summary["natural"] == 0.8459 and summary["worst_case"] == 0.5264
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same report gives the same bytes
    again = report.save(tmp_path / "again.json", plot=False)
    assert again[0].read_text() == paths[0].read_text()
    assert again[1].read_text() == paths[1].read_text()


def test_plot_without_curves(tmp_path):
    report = Report(natural_accuracy=0.5, robust_accuracy={"fgsm": 0.2}, worst_case_accuracy=0.2,
                    n_examples=10, epsilon=0.1, warnings=[], attacks={"fgsm": {}})
    assert report.png_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_skips_only_the_png(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    report = Report(natural_accuracy=0.5, robust_accuracy={"fgsm": 0.2}, worst_case_accuracy=0.2,
                    n_examples=10, epsilon=0.1, warnings=[], attacks={"fgsm": {}})
    with pytest.warns(UserWarning, match="matplotlib"):
        written = report.save(tmp_path / "r.json")
    assert [p.suffix for p in written] == [".json", ".csv"]
    assert (tmp_path / "r.json").is_file() and not (tmp_path / "r.png").exists()


def test_a_report_saved_without_a_plot_removes_the_earlier_reports_plot(tmp_path):
    """A stale PNG beside a new report would show results that are not this report's."""
    _report().save(tmp_path / "r.json")
    assert (tmp_path / "r.png").is_file()
    written = _report().save(tmp_path / "r.json", plot=False)
    assert [p.suffix for p in written] == [".json", ".csv"]
    assert not (tmp_path / "r.png").exists()
