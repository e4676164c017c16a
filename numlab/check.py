"""Self-check for the notebooks' exercises.

``check("00.1", answer)`` compares a reader's answer with the value the library computes
for that exercise and returns a truthy/falsy :class:`Verdict` that displays itself. The
expected value is never shown on a wrong answer; a hint is. Each notebook's exercises
live in ``numlab/exercises/nbNN.py`` as a dict ``EXERCISES`` of :class:`Exercise`.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Exercise:
    """One question: ``expected()`` computes the answer; floats compare within ``rtol``."""

    prompt: str
    expected: Callable[[], Any]
    rtol: float = 1e-6
    hint: str = ""


@dataclass(frozen=True)
class Verdict:
    exercise: str
    correct: bool
    message: str

    def __bool__(self):
        return self.correct

    def __repr__(self):
        return self.message


def exercises(notebook: str) -> dict[str, Exercise]:
    """The exercises of notebook ``"00"``, ``"01"``, ..."""
    if not (isinstance(notebook, str) and len(notebook) == 2 and notebook.isdigit()):
        raise ValueError(f"notebook must be a two-digit string such as '00', got {notebook!r}")
    try:
        module = importlib.import_module(f"numlab.exercises.nb{notebook}")
    except ModuleNotFoundError:
        raise ValueError(f"notebook {notebook!r} has no exercises") from None
    return module.EXERCISES


def _matches(answer, expected, rtol: float) -> bool:
    if isinstance(expected, bool) or isinstance(expected, str):
        return answer == expected
    if isinstance(expected, int | float):
        if isinstance(answer, bool):
            return False
        try:
            answer = float(answer)  # tensors, numpy scalars
        except (TypeError, ValueError):
            return False
        if math.isnan(expected):
            return math.isnan(answer)
        if math.isinf(expected):
            return answer == expected
        return math.isclose(answer, expected, rel_tol=rtol, abs_tol=0.0)
    if isinstance(expected, tuple | list):
        if not isinstance(answer, tuple | list):
            return False
        return len(answer) == len(expected) and all(
            _matches(a, e, rtol) for a, e in zip(answer, expected, strict=True)
        )
    return answer == expected


def check(exercise: str, answer) -> Verdict:
    """Check ``answer`` for ``exercise`` (e.g. ``"00.1"``); the Verdict shows itself in a notebook."""
    if not isinstance(exercise, str) or "." not in exercise:
        raise ValueError(f"exercise must look like '00.1', got {exercise!r}")
    table = exercises(exercise.split(".")[0])
    if exercise not in table:
        raise ValueError(f"unknown exercise {exercise!r}; this notebook has {sorted(table)}")
    item = table[exercise]
    ok = _matches(answer, item.expected(), item.rtol)
    if ok:
        message = f"✓ {exercise}: correct."
    else:
        message = f"✗ {exercise}: not yet ({answer!r})." + (f" Hint: {item.hint}" if item.hint else "")
    return Verdict(exercise, ok, message)
