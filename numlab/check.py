"""Self-check for the notebooks' exercises.

``check("00.1", answer)`` compares a reader's answer with the value the library computes
for that exercise and returns a truthy/falsy :class:`Verdict` that displays itself. The
expected value is never shown on a wrong answer; a hint is, in tiers: a nudge on the first
wrong answer, the method on the next ones. Each notebook's exercises live in
``numlab/exercises/nbNN.py`` as a dict ``EXERCISES`` of :class:`Exercise`.

:func:`matches` is the comparison itself; the classroom assignments' hidden tests
(``tools/assignments.py``) call it with the value computed when the assignment was made.
"""
from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Exercise:
    """One question: ``expected()`` computes the answer; floats compare within ``rtol``.

    ``hints`` are (nudge, method): the nudge says what to think about, the method how to
    work it out; neither holds the answer or the call that computes it. ``points`` is what
    the exercise is worth in the graded assignment.
    """

    prompt: str
    expected: Callable[[], Any]
    rtol: float = 1e-6
    hints: tuple[str, ...] = ()
    points: int = 1


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


def matches(answer, expected, rtol: float = 1e-6) -> bool:
    """Whether ``answer`` counts as ``expected``: floats within relative ``rtol`` (nan matches
    nan, inf only itself), bools and strings exactly, tuples and lists entry by entry."""
    if isinstance(rtol, bool) or not isinstance(rtol, int | float) or not 0 <= rtol < 1:
        raise ValueError(f"rtol must be a number in [0, 1), got {rtol!r}")
    return _matches(answer, expected, rtol)


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
        return Verdict(exercise, True, f"✓ {exercise}: correct.")
    _wrong[exercise] += 1
    message = f"✗ {exercise}: not yet ({answer!r})."
    if item.hints:
        tier = min(_wrong[exercise], len(item.hints))
        message += f" Hint {tier} of {len(item.hints)}: {item.hints[tier - 1]}"
        if tier < len(item.hints):
            message += " (Check again for the method.)"
    return Verdict(exercise, False, message)


_wrong: Counter[str] = Counter()  # wrong answers per exercise in this kernel: which hint is next
