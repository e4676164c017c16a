"""Argument checks shared by the compute modules: each error names the argument and what is allowed."""
from __future__ import annotations

import math
import numbers


def int_at_least(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int, if it is one (numpy ints too, bools not) and ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def positive_number(name: str, value, why: str = "") -> float:
    """``value`` as a float, if it is a real number, finite and > 0; ``why`` ends the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive finite number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}{why}")
    return float(value)
