"""Each rule of the attacks' arguments is stated in one place, and every caller says it in the
same words: the budget (suite.check_epsilon, evaluate's curve, eval's --epsilon) and Adam's betas."""

import pytest

from adt_fast.attacks import suite


def test_the_budget_hint_is_check_epsilons_and_a_step_gets_none():
    with pytest.raises(ValueError, match=r"^epsilon must be a finite number in \(0, 1\] \(an l_inf budget for "
                                         r"inputs in \[0, 1\], e\.g\. 8/255\), got 1\.5$"):
        suite.check_epsilon(1.5)
    with pytest.raises(ValueError, match=r"^step_size must be a finite number in \(0, 1\], got 1\.5$"):
        suite.check_step_size(1.5)
