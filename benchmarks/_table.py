"""Small helpers shared by the benchmark scripts: timing and markdown tables."""
from __future__ import annotations

import statistics

from numlab.device import time_calls  # noqa: F401  (the one timing helper, re-exported)


def median(xs):
    return statistics.median(xs)


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
