"""adt_fast.checks: the argument checks every layer shares."""

import itertools
import random

import numpy as np
import pytest

from adt_fast.checks import check_betas, parse_int

ZEROS = "0" * 5000  # past int()'s 4,300 digits


@pytest.mark.parametrize("text, minimum, maximum, value", [
    (ZEROS + "7", 1, None, 7),
    (ZEROS + "7", 1, 100_000, 7),
    (ZEROS + "7", None, None, 7),
    (" -" + ZEROS + "7\n", None, None, -7),
    ("+0_" + "0_" * 3000 + "7", 1, 10, 7),
    (ZEROS, 0, 5, 0),
    ("-" + ZEROS, 0, None, 0),
    ("\u0660" * 5000 + "\u0667", 1, 10, 7),  # Arabic-Indic zeros and seven, as int() reads them
])
def test_parse_int_reads_leading_zeros_past_int_s_digit_limit(text, minimum, maximum, value):
    """int() counts leading zeros against its 4,300 digits, so 5,000 zeros and a 7 was refused as
    out of range (or as 'too long a number') although it writes 7."""
    assert parse_int(text, minimum, maximum) == value


@pytest.mark.parametrize("text, minimum, maximum, message", [
    (ZEROS + "11", 1, 10, "must be an integer from 1 to 10, got '000"),
    ("-" + ZEROS + "7", 1, None, "must be an integer >= 1, got '-000"),
    (ZEROS + "7x", None, None, "must be an integer, got '000"),
    (ZEROS + "_", 1, 10, "must be an integer from 1 to 10, got '000"),
    (ZEROS + "__7", None, None, "must be an integer, got '000"),
    ("1" * 5000, None, None, "is too long a number, got '111"),
    ("9" * 5000, 0, 100_000, "must be an integer from 0 to 100000, got '999"),
])
def test_parse_int_refuses_long_numerals_in_one_short_line(text, minimum, maximum, message):
    with pytest.raises(ValueError) as raised:
        parse_int(text, minimum, maximum)
    assert str(raised.value).startswith(message) and len(str(raised.value)) < 120


def test_parse_int_reads_what_int_reads():
    """Spaces (Unicode's, not ASCII's separators \\x1c-\\x1f), signs, digits of other scripts,
    underscores: parse_int accepts exactly the numerals int() accepts, with int()'s value."""
    alphabet = [" ", "\t", "\n", "\x0b", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u200b", "+", "-", "_",
                "0", "1", "7", "\u0660", "\u0667", "\uff10", "\U0001d7ce", "\xb2", "x", "."]
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        try:
            expected = int(text)
        except ValueError:
            with pytest.raises(ValueError):
                parse_int(text, minimum=None)
        else:
            assert parse_int(text, minimum=None) == expected, repr(text)


@pytest.mark.parametrize("betas", [{0.1, 0.2}, {0.1: 0, 0.2: 0}, iter([0.1, 0.2]), itertools.count(), "ab", 0.5,
                                   (0.1, 1.0), (0.1, float("nan")), (0.1,), (True, 0.5)])
def test_check_betas_takes_an_ordered_pair_in_unit_range_only(betas):
    """A set's or a dict's order is no pair's (the betas would swap silently), and an endless
    iterator would hang: refused with the rest, naming the argument."""
    with pytest.raises(ValueError, match=r"^opt's betas must be two numbers in \[0, 1\) \(Adam's\), got "):
        check_betas(betas, "opt's betas")


def test_check_betas_returns_python_floats_from_numpy():
    pair = check_betas(np.array([0.5, 0.999], dtype=np.float32))
    assert pair == (0.5, float(np.float32(0.999))) and all(type(b) is float for b in pair)
