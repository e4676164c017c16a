"""Argument checks shared by the compute modules: each error names the argument and what is allowed."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch


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


def seed(value, name: str = "seed") -> int:
    """A random seed: an int >= 0 (what ``torch.Generator.manual_seed`` takes)."""
    return int_at_least(name, value, 0)


def flag(name: str, value) -> bool:
    """``value`` if it is True or False (numpy bools too); anything else is refused."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def fp32_number(name: str, value, why: str = "") -> float:
    """A positive finite number that stays positive and finite once stored in float32 (a step
    size, a loss scale, a threshold that torch keeps as a float32 tensor or C float)."""
    value = positive_number(name, value, why)
    if not _FP32_TINY <= value <= _FP32_MAX:
        raise ValueError(f"{name} must lie in float32's normal range [{_FP32_TINY:.3g}, {_FP32_MAX:.3g}], "
                         f"got {value!r}{why}")
    return value


def real_array(name: str, value, dims: int | None = None) -> np.ndarray:
    """Real numbers (a sequence, an array or a tensor) as a float64 array, refusing strings,
    objects and non-numeric entries with an error that names the argument."""
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be numbers (a list, array or tensor), got the string {value!r}")
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be real numbers, got a tensor of {value.dtype}")
        value = value.double().numpy()
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        raw = np.asarray([], dtype=object)
    if raw.dtype.kind not in "iuf":  # strings, objects, bools, complex: not numbers here
        raise TypeError(f"{name} must be real numbers (a list, array or tensor), got {value!r:.60}")
    out = raw.astype(np.float64)
    if dims is not None and out.ndim != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {out.shape}")
    return out


_FP32_TINY, _FP32_MAX = 2.0**-126, (2 - 2.0**-23) * 2.0**127
