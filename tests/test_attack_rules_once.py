"""Each rule of the attacks' arguments is stated in one place, and every caller says it in the
same words: the budget (suite.check_epsilon, evaluate's curve, eval's --epsilon)."""

import pytest

from adt_fast.attacks import suite


def test_the_budget_hint_is_check_epsilons_and_a_step_gets_none():
    with pytest.raises(ValueError, match=r"^epsilon must be a finite number in \(0, 1\] \(an l_inf budget for "
                                         r"inputs in \[0, 1\], e\.g\. 8/255\), got 1\.5$"):
        suite.check_epsilon(1.5)
    with pytest.raises(ValueError, match=r"^step_size must be a finite number in \(0, 1\], got 1\.5$"):
        suite.check_step_size(1.5)


@pytest.mark.parametrize("budget", [5e-324, 1.0000001])
def test_a_budget_of_the_curve_is_refused_for_check_epsilons_reason(budget):
    """evaluate's curve restated check_epsilon's [MIN_BUDGET, MAX_EPSILON] in words of its own
    ("where PGD's step may round to 0" against "where the attacks' steps (epsilon/4, epsilon/8) may
    round to 0"); both now read suite.budget_problem."""
    from adt_fast.attacks.evaluation import check_epsilon_curve

    reason = suite.budget_problem(budget)
    assert reason is not None
    with pytest.raises(ValueError) as refused:
        check_epsilon_curve([budget], 1.0)
    assert str(refused.value).endswith(f"is a budget of {budget:.12g}, {reason}")
    if budget < suite.MIN_BUDGET:
        with pytest.raises(ValueError, match=r"^epsilon 4\.94065645841e-324 is below 2\.23e-308, where the attacks' "
                                             r"steps \(epsilon/4, epsilon/8\) may round to 0$"):
            suite.check_epsilon(budget)


def test_a_budget_of_zero_or_in_range_has_no_problem():
    assert [suite.budget_problem(b) for b in (0.0, suite.MIN_BUDGET, 8 / 255, suite.MAX_EPSILON)] == [None] * 4


def test_the_default_curve_passed_is_a_curve_given_and_checked_whole():
    """evaluate read `epsilon_curve is DEFAULT_EPSILON_CURVE` as "not given", so passing the public
    tuple at epsilon 0.6 dropped its multiple 2 (a budget of 1.2) unasked, where any equal curve
    given was refused for it; left out, the curve still leaves it out."""
    from adt_fast.attacks import DEFAULT_EPSILON_CURVE, evaluate

    from split_net import SplitNet, split_data

    x, y = split_data()
    with pytest.raises(ValueError, match=r"^epsilon_curve's multiple 2 of epsilon 0\.6 is a budget of 1\.2, above 1 "):
        evaluate(SplitNet(), x, y, epsilon=0.6, attacks="fgsm", epsilon_curve=DEFAULT_EPSILON_CURVE)
    report = evaluate(SplitNet(), x, y, epsilon=0.6, attacks="fgsm")
    assert [p["multiple"] for p in report.curves["pgd_epsilon"]["points"]] == [0.0, 0.25, 0.5, 1.0, 1.5]
