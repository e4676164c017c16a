"""Where the naive forms break: the exact logit scale at which each naive quantity turns
non-finite or wrong (found by bisection on the bit patterns), and sweeps over logit scales
and binary logits that show naive and stable side by side."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from numlab._checks import real_array
from numlab.device import pick
from numlab.formats import COMPUTE_DTYPES, info, resolve_dtype, short_name
from numlab.softmax.forms import (
    cross_entropy_naive,
    cross_entropy_stable,
    shifted_sum,
    softmax_naive,
    softmax_stable,
    softplus_naive,
)


def logit_pattern(scale, n_classes: int, dtype="fp32", device="cpu") -> torch.Tensor:
    """Logits ``scale * linspace(1, -1, n)`` in ``dtype``: class 0 highest, class n-1 lowest.

    ``scale`` may be a number or a 1-D tensor of scales (one row of logits per scale). The
    top logit is ``scale`` itself; the gap between the top and bottom class is ``2 * scale``.
    """
    dtype, device = resolve_dtype(dtype, COMPUTE_DTYPES), pick(device)
    n = _check_n_classes(n_classes)
    s = torch.from_numpy(real_array("scale", scale)).to(device)
    u = torch.linspace(1.0, -1.0, n, dtype=torch.float64, device=device)
    return (s.unsqueeze(-1) * u).to(dtype)


def _check_n_classes(n_classes) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    return int(n_classes)


def _target_index(target, n: int) -> int:
    if target == "high":
        return 0
    if target == "low":
        return n - 1
    if isinstance(target, int | np.integer) and not isinstance(target, bool) and 0 <= target < n:
        return int(target)
    raise ValueError(f"target must be 'high', 'low' or a class index in [0, {n - 1}], got {target!r}")


def _naive_all(logits: torch.Tensor, target: int):
    """Naive normaliser, softmax, per-row loss and gradient for rows of logits."""
    z = logits.detach().clone().requires_grad_(True)
    y = torch.full(z.shape[:-1], target, dtype=torch.long, device=z.device)
    loss = cross_entropy_naive(z, y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), z)  # rows are independent: one call for all
    return torch.exp(logits).sum(-1), softmax_naive(logits), loss.detach(), grad


def _stable_all(logits: torch.Tensor, target: int):
    z = logits.detach().clone().requires_grad_(True)
    y = torch.full(z.shape[:-1], target, dtype=torch.long, device=z.device)
    loss = cross_entropy_stable(z, y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return shifted_sum(logits), softmax_stable(logits), loss.detach(), grad


def _first_bad(bad, dtype: torch.dtype, per_round: int = 256, known_bad: float | None = None) -> float:
    """Smallest positive value s of ``dtype`` with ``bad(s)``, by bisection on the bit patterns.

    ``bad`` maps a 1-D tensor of values to a bool tensor, and must be false up to some
    value and true from there on. First a bracket [lo, hi] is found: by doubling s from 1
    (so no absurdly large logits are tried), or, given a ``known_bad`` value, by halving
    down from it. Then the bracket is narrowed over the bit patterns: for positive floats
    the pattern, read as an integer, grows with the value, so every representable number
    between is a candidate, not a grid. Each round tests up to ``per_round`` evenly spaced
    patterns in one batched call and keeps the bracket where the first bad one lies.
    """
    itype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.empty((), dtype=dtype).element_size()]
    largest, tiny = info(dtype).max, info(dtype).tiny

    def values(patterns):
        return torch.tensor(patterns, dtype=itype).view(dtype)

    def pattern(value: float) -> int:
        return int(torch.tensor(value, dtype=dtype).view(itype))

    def bad_at(value: float) -> bool:
        return bool(bad(torch.tensor([value], dtype=dtype))[0])

    if known_bad is not None and math.isfinite(known_bad) and bad_at(known_bad):
        lo_value, hi_value = known_bad / 2, known_bad
        while lo_value >= tiny and bad_at(lo_value):
            lo_value, hi_value = lo_value / 2, lo_value
        if lo_value < tiny:
            lo_value = 0.0  # +0.0 is safe for every naive form here
    else:
        lo_value, hi_value = 0.0, 1.0
        while not bad_at(hi_value):
            if hi_value == largest:
                return math.inf
            lo_value, hi_value = hi_value, min(2 * hi_value, largest)
    lo, hi = pattern(lo_value), pattern(hi_value)
    while hi - lo > 1:  # invariant: bad(value(hi)) and not bad(value(lo))
        step = max(1, (hi - lo) // per_round)
        patterns = list(range(lo + step, hi, step))
        flags = bad(values(patterns)).tolist() + [True]
        first = flags.index(True)
        hi = patterns[first] if first < len(patterns) else hi
        lo = patterns[first - 1] if first > 0 else lo
    return float(values([hi])[0])


WRONG = 0.01  # a naive gradient entry off by more than this (gradients lie in [-1, 1]) is wrong


def wrong_limit(dtype) -> float:
    """How far a gradient entry may be off before it counts as wrong: ``WRONG`` (1 %), or
    4 eps in a format too coarse for that (bf16: 0.031), where rounding alone reaches 1 %."""
    return max(WRONG, 4 * info(resolve_dtype(dtype, COMPUTE_DTYPES)).eps)


def _first_true_scan(bad, dtype: torch.dtype, hi: float) -> float:
    """Smallest positive s <= hi with ``bad(s)``, without assuming bad stays true once true
    (a rounded gradient's error goes up and down): every representable value of an 8- or
    16-bit format is tried, and 8192 geometrically spaced ones below ``hi`` for fp32/fp64."""
    if not math.isfinite(hi):
        hi = info(dtype).max
    if info(dtype).bits <= 16:
        itype = {1: torch.uint8, 2: torch.int16}[torch.empty((), dtype=dtype).element_size()]
        top = int(torch.tensor(hi, dtype=dtype).view(itype))
        candidates = torch.arange(1, top + 1, dtype=torch.int64).to(itype).view(dtype)
    else:
        candidates = torch.unique(torch.logspace(math.log10(hi) - 6, math.log10(hi), 8192,
                                                 dtype=torch.float64).to(dtype))
    flags = torch.cat([bad(chunk) for chunk in candidates.split(1024)])
    return float(candidates[flags][0]) if bool(flags.any()) else math.inf


@dataclass(frozen=True)
class Breakpoints:
    """The smallest logit scale at which each naive quantity first turns inf or NaN, and
    ``grad_wrong``: the first at which the naive gradient, still finite, is off by more than
    :func:`wrong_limit` from the exact one (it goes wrong before it goes NaN). It is exact
    for fp16/bf16 (every value tried) and on a grid of 8192 scales for fp32/fp64."""

    dtype: str
    n_classes: int
    target: int
    softmax: float
    loss: float
    grad: float
    grad_wrong: float = math.inf

    def __repr__(self):
        return (
            f"Breakpoints({self.dtype}, {self.n_classes} classes, target {self.target}: "
            f"softmax {self.softmax:.7g}, loss {self.loss:.7g}, grad {self.grad:.7g}; "
            f"grad wrong from {self.grad_wrong:.7g})"
        )


def _grad_error(logits: torch.Tensor, naive_grad: torch.Tensor, target: int) -> torch.Tensor:
    """Largest |naive - exact| gradient entry per row (inf where the naive one is not finite).
    Exact: softmax of the same stored logits in float64, minus the one-hot target."""
    exact = torch.softmax(logits.double(), -1)
    exact[..., target] -= 1
    err = (naive_grad.double() - exact).abs().amax(-1)
    return torch.where(torch.isfinite(naive_grad).all(-1), err, torch.full_like(err, math.inf))


@functools.lru_cache(maxsize=256)
def _breakpoints(dtype: torch.dtype, n: int, target: int) -> Breakpoints:
    def rows(s: torch.Tensor) -> torch.Tensor:
        return logit_pattern(s.double(), n, dtype)

    def targets(z):
        return torch.full(z.shape[:-1], target, dtype=torch.long)

    def sum_bad(s):  # the normaliser overflowed: p is NaN (inf/inf) or all 0 (x/inf)
        return torch.isinf(torch.exp(rows(s)).sum(-1))

    def loss_bad(s):
        z = rows(s)
        return ~torch.isfinite(cross_entropy_naive(z, targets(z), reduction="none"))

    def grad_bad(s):
        return ~torch.isfinite(_naive_all(rows(s), target)[3]).all(-1)

    def grad_off(s):
        z = rows(s)
        return _grad_error(z, _naive_all(z, target)[3], target) > wrong_limit(dtype)

    # torch runs exp/log on large tensors across threads; on a busy machine that
    # wake-up costs more than the work, so each round stays at about 1024 logits.
    per_round = max(16, 1024 // n)
    # Once the sum overflows the loss is inf/NaN, and a non-finite loss has a NaN gradient,
    # so each search starts from the previous threshold and halves down to a bracket.
    softmax = _first_bad(sum_bad, dtype, per_round)
    loss = _first_bad(loss_bad, dtype, per_round, known_bad=softmax)
    grad = _first_bad(grad_bad, dtype, per_round, known_bad=loss)
    grad_wrong = _first_true_scan(grad_off, dtype, grad)
    return Breakpoints(dtype=short_name(dtype), n_classes=n, target=target,
                       softmax=softmax, loss=loss, grad=grad, grad_wrong=grad_wrong)


def breakpoints(dtype="fp32", n_classes: int = 2, target="low") -> Breakpoints:
    """Where the naive softmax, its cross-entropy and its gradient first break, per dtype.

    Logits are ``logit_pattern(s, n_classes)``; ``target`` is the true class ("high": the
    top logit, "low": the bottom one, or an index). Each threshold is the smallest
    representable ``s`` at which that quantity has an inf or NaN (inf when it never breaks).
    """
    n = _check_n_classes(n_classes)
    return _breakpoints(resolve_dtype(dtype, COMPUTE_DTYPES), n, _target_index(target, n))


def overflow_threshold(dtype="fp32", n_classes: int = 2) -> float:
    """Smallest logit scale at which the naive softmax of ``logit_pattern(s, n)`` breaks.

    Broken means the normaliser sum_j exp(z_j) overflowed to inf, after which the naive
    probabilities are NaN (inf/inf) or all zero, and their log is -inf. Found by bisection
    over the representable values of ``dtype``. For two classes the last safe value is
    ``numlab.formats.info(dtype).exp_overflow``, the largest x whose exp is finite; more
    classes add terms to the sum, so it overflows a little earlier.
    """
    return breakpoints(dtype, n_classes, "high").softmax


def softplus_breakpoint(dtype="fp32") -> float:
    """Smallest representable z at which the naive ``log(1 + e^z)`` is inf in ``dtype``.

    Found like :func:`breakpoints`, by bisection over every representable value, so it is
    exact where a sweep over a grid of z only brackets it.
    """
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
    return _breakpoint_softplus(dtype)


@functools.lru_cache(maxsize=8)
def _breakpoint_softplus(dtype: torch.dtype) -> float:
    return _first_bad(lambda z: ~torch.isfinite(softplus_naive(z)), dtype)
