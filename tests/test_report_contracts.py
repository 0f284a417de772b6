"""The report's sanity checks, table and files against docs/evaluation.md (tests that fail on
mutations of adt_fast/attacks/report.py that the existing tests let pass)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from adt_fast.attacks import Report, sanity_warnings
from adt_fast.attacks.report import tolerance


def _mask(correct: int, n: int = 100) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:correct] = True
    return mask


def test_a_gap_of_exactly_the_tolerance_never_warns():
    # "off by MORE than max(1 example, 0.5 % of the examples)": n = 100, tolerance 1
    assert tolerance(100) == 1
    natural = _mask(85)
    assert sanity_warnings(natural, {"pgd20": _mask(56), "transfer": _mask(55)}) == []
    assert sanity_warnings(natural, {"cw": _mask(56), "transfer": _mask(55)}) == []
    assert sanity_warnings(natural, {"fgsm": _mask(55), "pgd20": _mask(56)}) == []
    assert sanity_warnings(natural, {"pgd20": _mask(55), "pgd100": _mask(56)}) == []
    assert sanity_warnings(natural, {"mim": _mask(86)}) == []


def test_tolerance_is_half_a_percent_rounded_up_to_a_whole_example():
    # docs/evaluation.md: out of line if off by more than max(1 example, 0.5 % of the examples
    # rounded up): 2 of 300, so PGD-100 leaving 2 more correct than PGD-20 is fine and 3 is not
    assert [tolerance(n) for n in (1, 100, 300, 10_000)] == [1, 1, 2, 50]
    n = 300
    assert sanity_warnings(_mask(250, n), {"pgd20": _mask(40, n), "pgd100": _mask(42, n)}) == []
    warnings = sanity_warnings(_mask(250, n), {"pgd20": _mask(40, n), "pgd100": _mask(43, n)})
    assert len(warnings) == 1 and "weaker than PGD-20" in warnings[0]


def test_mim_and_cw_weaker_than_transfer_are_flagged():
    # docs: "Some white-box PGD-N, MIM or C&W leaves more examples correct than the transfer attack"
    for name, label in (("mim", "MIM"), ("cw", "C&W")):
        warnings = sanity_warnings(_mask(85), {name: _mask(70), "transfer": _mask(55)})
        assert len(warnings) == 1 and f"white-box {label}" in warnings[0], warnings


def test_each_gradient_and_logit_check_reads_its_own_count():
    natural, masks = _mask(85), {"pgd20": _mask(40)}
    only_nonfinite = "\n".join(sanity_warnings(natural, masks, nonfinite_gradients=20))
    assert "NaN or infinite on 20 of 100" in only_nonfinite and "exactly zero" not in only_nonfinite
    only_zero = "\n".join(sanity_warnings(natural, masks, zero_gradients=20))
    assert "exactly zero on 20 of 100" in only_zero and "NaN or infinite" not in only_zero
    # "Non-finite logits on any natural input"
    assert sanity_warnings(natural, masks, nonfinite_logits=1) == [
        "the model returns NaN or infinite logits on 1 of 100 natural inputs"]


def test_square_and_apgd_t_gains_have_their_own_thresholds():
    # docs: Square beats the gradient attacks on more than 1 % of points, APGD-T beats APGD-CE on more than 5 %
    natural, masks = _mask(85), {"pgd20": _mask(40)}
    assert sanity_warnings(natural, masks, gradient_free_gain=1) == []
    assert len(sanity_warnings(natural, masks, gradient_free_gain=2)) == 1
    assert sanity_warnings(natural, masks, targeted_gain=5) == []
    assert len(sanity_warnings(natural, masks, targeted_gain=6)) == 1


def _small(**kwargs) -> Report:
    base = dict(natural_accuracy=0.75, robust_accuracy={"pgd20": 0.5, "fgsm": 0.625},
                worst_case_accuracy=0.5, n_examples=8, epsilon=8 / 255, warnings=[],
                attacks={"fgsm": {"steps": 1}, "pgd20": {"steps": 20}})
    base.update(kwargs)
    return Report(**base)


def test_json_says_the_worst_case_includes_the_natural_input():
    # Eq. 12 / docs: `worst_case_over` lists the masks A_rob combines: the natural input and every attack
    data = _small().to_dict()
    assert data["worst_case_over"] == ["natural", "fgsm", "pgd20"]


def test_json_has_no_paper_worst_case_unless_all_six_ran():
    data = _small().to_dict()
    assert "paper_worst_case_accuracy" not in data and "paper_worst_case_over" not in data
    data = _small(paper_worst_case_accuracy=0.5).to_dict()
    assert data["paper_worst_case_accuracy"] == 0.5
    assert data["paper_worst_case_over"] == ["natural", "fgsm", "pgd20", "pgd100", "mim", "cw", "feature"]


def test_table_columns_line_up_under_their_headers():
    report = _small(robust_accuracy={"fgsm": 0.625, "pgd20": 0.5, "pgd100": 0.375},
                    worst_case_accuracy=0.375, paper_worst_case_accuracy=None)
    _, header, row = report.table("a-rather-long-model-name").splitlines()[:3]
    starts = lambda line: [i for i, c in enumerate(line) if c != " " and (i == 0 or line[i - 1] == " ")]  # noqa: E731
    assert starts(header) == starts(row), (header, row)


def test_table_prints_autoattack_robust_over_attacked():
    # docs: the printed table shows, per AutoAttack component, "robust/attacked"
    curve = {"points": [
        {"attack": "apgd-ce", "attacked": 4, "robust": 3, "accuracy_on_attacked": 0.75, "accuracy": 0.375},
        {"attack": "apgd-t", "attacked": 3, "robust": 1, "accuracy_on_attacked": 1 / 3, "accuracy": 0.125}]}
    report = _small(robust_accuracy={"autoattack-fast": 0.125}, attacks={"autoattack-fast": {}},
                    curves={"autoattack-fast": curve}, worst_case_accuracy=0.125)
    line = report.table().splitlines()[-1]
    assert "3/4" in line and "1/3" in line and "4/3" not in line, line


def _csv_rows(report: Report):
    return list(csv.DictReader(report.csv_text().splitlines()))


def test_csv_summary_rows():
    report = _small(robust_accuracy={"fgsm": 0.625, "square": 0.5}, attacks={"fgsm": {"steps": 1}, "square": {}})
    rows = {r["name"]: r for r in _csv_rows(report) if r["section"] == "summary"}
    assert float(rows["natural"]["epsilon"]) == 0.0           # the natural input is attacked with budget 0
    assert rows["square"]["steps"] == ""                       # no steps setting: blank, not 0 steps


def test_csv_curve_rows():
    curves = {"pgd_epsilon": {"steps": 20, "points": [
                  {"epsilon": 0.0, "multiple": 0, "step_size": 0.0, "accuracy": 0.75},
                  {"epsilon": 0.25, "multiple": 1, "step_size": 0.0625, "accuracy": 0.5}]},
              "dist": {"samples": 4, "points": [
                  {"steps": 0, "loss": 0.5, "sample_accuracy": 0.7, "accuracy": 0.6}]}}
    rows = _csv_rows(_small(curves=curves))
    eps = [r for r in rows if r["section"] == "pgd_epsilon"]
    assert [r["steps"] for r in eps] == ["0", "20"]           # no PGD steps at budget 0
    (dist,) = [r for r in rows if r["section"] == "dist"]
    assert (dist["accuracy"], dist["sample_accuracy"]) == ("0.6", "0.7")


def test_report_name_suffix_is_case_insensitive(tmp_path):
    from adt_fast.attacks.report import report_paths

    paths = report_paths(tmp_path / "R.JSON")
    assert [p.name for p in paths] == ["R.JSON", "R.csv", "R.png"]


def test_only_exact_earlier_reports_are_replaced(tmp_path):
    from adt_fast.attacks.report import CSV_FIELDS, report_paths

    # a CSV whose header merely starts with the report's columns is someone else's table
    (tmp_path / "a.csv").write_text(",".join(CSV_FIELDS) + ",notes\n1,2,3,4,5,6,7,8\n")
    with pytest.raises(FileExistsError, match="not an earlier adt_fast report"):
        report_paths(tmp_path / "a.json")
    # a JSON with one of the report's keys is not a report: all the mark keys are needed
    (tmp_path / "b.json").write_text(json.dumps({"natural_accuracy": 0.9, "notes": "mine"}))
    with pytest.raises(FileExistsError, match="not an earlier adt_fast report"):
        report_paths(tmp_path / "b.json")
    _small().save(tmp_path / "c.json", plot=False)
    report_paths(tmp_path / "c.json")  # its own earlier report is fine


def test_arob_paper_line_names_the_settings_that_are_not_the_papers():
    """Under the default protocol Arob-paper is taken with 5 FeaAttack targets and 30 C&W steps,
    not the paper's 200 and 20: its line says so, and says "as in Tables 9-11" only when they match."""
    def line(feature_targets, cw_steps):
        report = _small(paper_worst_case_accuracy=0.5,
                        attacks={"feature": {"targets": feature_targets}, "cw": {"steps": cw_steps}})
        return next(text for text in report.table().splitlines() if text.startswith("Arob-paper:"))
    default = line(5, 30)
    assert "as in Tables 9-11" not in default
    assert "FeaAttack 5 targets per input and C&W 30 steps (the paper's: 200 and 20" in default
    assert line(200, 20).endswith("as in Tables 9-11")
    only_cw = line(200, 30)
    assert "C&W 30 steps" in only_cw and "FeaAttack" not in only_cw.split("),", 1)[1]
