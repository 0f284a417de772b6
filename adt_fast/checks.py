"""Argument checks every layer shares, so one kind of mistake gets one wording everywhere."""

from __future__ import annotations

import math
from typing import Optional

# The most steps (or queries) one attack, or one inner loop of training, takes per example: the
# paper's longest attack takes 100, Square 5,000 queries. A typo such as pgd:10000000000 would
# otherwise run for days, while PGD's per-step record of which examples survive grows by one byte
# per example and step.
MAX_ATTACK_STEPS = 100_000


def check_int(value, name: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """``value`` if it is an int (not a bool) in [minimum, maximum]; a ValueError naming ``name``
    otherwise. A float such as 5.0 is refused: a count given as a float is usually a mistake."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return value


def check_steps(value, name: str, minimum: int = 1) -> int:
    """``value`` if it is an int in [minimum, MAX_ATTACK_STEPS]; a ValueError naming ``name`` otherwise."""
    return check_int(value, name, minimum, MAX_ATTACK_STEPS)


def check_finite(value, name: str) -> float:
    """``value`` as a float if it is a finite real number (not a bool); a ValueError naming
    ``name`` otherwise. NaN or inf in a coefficient would spread to every value it touches, silently."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_non_negative(value, name: str) -> float:
    """A finite real number >= 0 (a weight such as lambda, a learning rate), or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)
