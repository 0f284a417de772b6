"""Argument checks every layer shares, so one kind of mistake gets one wording everywhere."""

from __future__ import annotations

import math
import numbers
import re
import unicodedata
from collections.abc import Mapping, Set
from typing import Optional

import torch

# The most steps (or queries) one attack, or one inner loop of training, takes per example: the
# paper's longest attack takes 100, Square 5,000 queries. A typo such as pgd:10000000000 would
# otherwise run for days, while PGD's per-step record of which examples survive grows by one byte
# per example and step.
MAX_ATTACK_STEPS = 100_000
# The most tries one attack makes per example: APGD's restarts, APGD-T's and FAB-T's targets,
# FeaAttack's target images, the distribution attack's samples. Each multiplies the attack's cost
# (a restart or a target is a whole run of its steps; the samples multiply the batch at every step),
# so a typo such as 100000000 would run for days or exhaust the memory. The most any protocol uses
# is FeaAttack's 200 targets (the paper's); 1,000 also covers every target of a 1,000-class model.
MAX_ATTACK_TRIES = 1_000
_SHOWN = 40  # the most characters of a value an error message quotes
# What int() reads in base 10: a sign and decimal digits of any script, single underscores between
# them, within spaces (Unicode's, but of ASCII's separators \x1c-\x1f none).
_INT_NUMERAL = re.compile(r"[^\S\x1c-\x1f]*([+-]?)(\d+(?:_\d+)*)[^\S\x1c-\x1f]*")


def shown(value) -> str:
    """repr(value) for an error message, cut to about 40 characters: a flag or an attack name of
    5,000 digits is named by its start and length rather than echoed (the repr of an int of more
    than 4,300 digits raises a ValueError of its own)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * _SHOWN:
        return f"an integer of about {round(value.bit_length() * math.log10(2))} digits"
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def int_range(minimum: int, maximum: Optional[int] = None) -> str:
    """The one wording of an integer's range in every message: "must be an integer from 0 to 100000"."""
    return f"must be an integer >= {minimum}" if maximum is None else f"must be an integer from {minimum} to {maximum}"


def as_int(value) -> Optional[int]:
    """``value`` as a Python int if it is an integer of any type but bool (numpy's, from a sweep
    over np.arange, say), else None: callers keep the plain int, which a report's JSON can write."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def as_real(value) -> Optional[float]:
    """``value`` as a Python float if it is a real number of any type but bool (numpy's float32, a
    Fraction), else None; an int too large for a float as +-inf, which every caller refuses."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def unreadable_tensor_problem(tensor: torch.Tensor) -> Optional[str]:
    """Why `tensor`'s values cannot be read as a plain array, worded to follow its name in an error
    ("x must be a dense tensor, ..."), or None: torch's own errors for these name no argument."""
    if tensor.is_nested:
        return "must be a dense tensor, got a nested one; stack its items, of one shape, into one tensor"
    if tensor.layout != torch.strided:
        return f"must be a dense tensor, got a {tensor.layout} one; convert it with .to_dense()"
    if tensor.is_meta:
        return "is on the meta device, which holds no values (only a shape); pass it with its data, on the CPU or a GPU"
    if tensor.is_quantized:
        return (f"is a quantized tensor ({tensor.dtype}); convert it with .dequantize() (its real values) or "
                f".int_repr() (its stored integers)")
    return None


def check_betas(betas, name: str = "betas") -> tuple[float, float]:
    """Adam's betas as two Python floats in [0, 1) (numpy's too, which a report's JSON cannot
    write); a ValueError naming ``name`` otherwise, where torch's Adam would fail without one."""
    try:  # a sequence or an array: a set's or a dict's order is no pair's, an iterator may not end
        ordered = not isinstance(betas, (str, bytes, Set, Mapping)) and iter(betas) is not betas
    except TypeError:  # not iterable
        ordered = False
    pair = tuple(betas) if ordered else ()
    values = [as_real(b) for b in pair]
    if len(values) != 2 or any(b is None or not 0 <= b < 1 for b in values):  # NaN fails 0 <= b
        raise ValueError(f"{name} must be two numbers in [0, 1) (Adam's), got {shown(betas)}")
    return values[0], values[1]


def check_int(value, name: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """``value`` as a Python int if it is an integer (not a bool) in [minimum, maximum]; a ValueError
    naming ``name`` otherwise. A float such as 5.0 is refused: a count given as a float is usually
    a mistake."""
    number = as_int(value)
    if number is None or number < minimum or (maximum is not None and number > maximum):
        raise ValueError(f"{name} {int_range(minimum, maximum)}, got {shown(value)}")
    return number


def parse_int(text: str, minimum: Optional[int] = 1, maximum: Optional[int] = None) -> int:
    """The integer that ``text`` (a flag's value, pgd:N's N) writes, if in [minimum, maximum]; else a
    ValueError in check_int's words, without a name: the caller's flag or attack names it. int()
    refuses more than 4,300 digits, leading zeros included, with an error of its own: the numeral
    (int()'s: spaces, a sign, decimal digits of any script, single underscores between them) is
    read without its leading zeros, and one longer than ``maximum``'s is refused unread.
    ``minimum=None``: any integer (a caller that checks the range later, as TrainConfig does for
    train's flags)."""
    numeral = _INT_NUMERAL.fullmatch(text)
    digits = numeral and "".join(str(unicodedata.decimal(c)) for c in numeral[2] if c != "_").lstrip("0")
    value = None
    if numeral and (maximum is None or len(digits) <= len(str(maximum))):
        try:
            value = int(numeral[1] + (digits or "0"))
        except ValueError:  # past int()'s 4,300 digits
            pass
    if value is None and minimum is None:
        raise ValueError(f"{'is too long a number' if numeral else 'must be an integer'}, got {shown(text)}")
    if value is None or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{int_range(minimum, maximum)}, got {shown(text)}")
    return value


def check_steps(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int if it is one in [minimum, MAX_ATTACK_STEPS]; a ValueError naming ``name`` otherwise."""
    return check_int(value, name, minimum, MAX_ATTACK_STEPS)


def check_tries(value, name: str) -> int:
    """``value`` as an int if it is one in [1, MAX_ATTACK_TRIES]; a ValueError naming ``name`` otherwise."""
    return check_int(value, name, 1, MAX_ATTACK_TRIES)


def check_finite(value, name: str) -> float:
    """``value`` as a float if it is a finite real number (not a bool); a ValueError naming
    ``name`` otherwise. NaN or inf in a coefficient would spread to every value it touches, silently."""
    number = as_real(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {shown(value)}")
    return number


def check_non_negative(value, name: str) -> float:
    """A finite real number >= 0 (a weight such as lambda, a learning rate), or ValueError naming it."""
    number = as_real(value)
    if number is None or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {shown(value)}")
    return number
