"""Softmax, log-sum-exp, cross-entropy and softplus: the naive recipe beside the stable one.

Each pair is written so the two can be read line by line. Every function computes in the
dtype of its input (an fp16 tensor gives fp16 arithmetic), so the same code shows where
each format breaks. Classes run along the last dimension.

The stable forms rest on two identities (exact in real arithmetic):

    logsumexp(z) = m + log(sum_j exp(z_j - m)),          m = max_j z_j
    log(1 + e^z) = max(z, 0) + log1p(exp(-|z|))

After the shift the largest term is exp(0) = 1, so the sum lies in [1, n] and cannot
overflow; cross-entropy is then ``logsumexp(z) - z_y``, with no log of a probability.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from numlab._checks import real_array
from numlab.device import pick
from numlab.formats import COMPUTE_DTYPES, info, resolve_dtype, short_name

REDUCTIONS = ("mean", "sum", "none")
TARGETS = ("high", "low")


# --- input checks ------------------------------------------------------------------------
def _check_float(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor (fp16, bf16, fp32 or fp64), got {x.dtype}; "
            f"convert with {name}.float() or .to(dtype)"
        )
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the classes), got a scalar")
    return x


def _check_classes(logits, target) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _check_float(logits, "logits")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices (torch.long), got {target.dtype}; "
            "class probabilities as targets are not supported here"
        )
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
            f"got {tuple(target.shape)}"
        )
    n = logits.shape[-1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n):
        raise ValueError(
            f"target must hold class indices in [0, {n - 1}] (logits have {n} classes), "
            f"got values from {int(target.min())} to {int(target.max())}"
        )
    return logits, target.to(device=logits.device, dtype=torch.long)


def _check_binary(z, target) -> tuple[torch.Tensor, torch.Tensor]:
    z = _check_float(z, "z")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of values in [0, 1], got {type(target).__name__}")
    if tuple(target.shape) != tuple(z.shape):
        raise ValueError(f"target must have the shape of z, {tuple(z.shape)}, got {tuple(target.shape)}")
    if target.numel() and not bool(((target >= 0) & (target <= 1)).all()):
        raise ValueError("target must hold values in [0, 1] (labels or soft labels)")
    return z, target.to(device=z.device, dtype=z.dtype)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


# --- softmax and log-sum-exp -------------------------------------------------------------
def softmax_naive(logits: torch.Tensor) -> torch.Tensor:
    """p_j = exp(z_j) / sum_k exp(z_k), exactly as written: overflows once exp(max z) does."""
    e = torch.exp(_check_float(logits, "logits"))
    return e / e.sum(-1, keepdim=True)


def _shift(logits: torch.Tensor) -> torch.Tensor:
    # The max is a constant shift: d/dz of the result does not depend on it, so detaching
    # it leaves the gradient exact. A row of all -inf (or an inf) keeps shift 0, like torch.
    if logits.shape[-1] == 0:  # no classes: nothing to shift (softmax of nothing is empty)
        return logits.detach().new_zeros(*logits.shape[:-1], 1)
    m = logits.detach().amax(-1, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def softmax_stable(logits: torch.Tensor) -> torch.Tensor:
    """The same ratio with the max subtracted first: every exponent is <= 0."""
    e = torch.exp(_check_float(logits, "logits") - _shift(logits))
    return e / e.sum(-1, keepdim=True)  # the sum lies in [1, n]


def logsumexp_naive(logits: torch.Tensor) -> torch.Tensor:
    """log(sum_j exp(z_j)): inf as soon as the sum overflows, -inf when every term underflows."""
    return torch.log(torch.exp(_check_float(logits, "logits")).sum(-1))


def _rounding_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a + b) - fl(a + b), exactly (Knuth's TwoSum), detached; 0 where a or b is not finite.

    exp(fl(z - m)) is off by |z - m| * eps/2 relatively (logits 40 and -0.3 in fp32: 16
    ulp), the error of the subtraction, not of exp. Since exp(d + err) = exp(d) (1 + err)
    to first order, multiplying by 1 + err puts the lost digits back.
    """
    a, b = a.detach(), b.detach()
    s = a + b
    a_part = s - b
    err = (a - a_part) + (b - (s - a_part))
    return torch.where(torch.isfinite(err), err, torch.zeros_like(err))


def _split_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, r)`` with logsumexp(z) = m + log1p(r): m the top logit, r the sum of the others'
    exp(z_j - m).

    The top term exp(0) = 1 stays out of the sum: ``log(1 + r)`` computed as ``log(sum)``
    would round 1 + r first and lose r whenever r is below eps (logits 1000 and 990 in
    fp32: r = 4.5e-5, and log(1.0000454) in fp32 is 4.6e-5 wrong by 1 %); log1p keeps it.
    m is the top logit itself (gathered, not detached), so autograd gives d/dz_k = 1/(1+r)
    for the top one and e^(z_j-m)/(1+r) for the others: the softmax, also for ties.
    A row whose top is inf, -inf or NaN keeps m = 0 and the plain sum, like torch.
    """
    k = logits.detach().argmax(-1, keepdim=True)
    top = logits.gather(-1, k)
    finite = torch.isfinite(top.detach())
    m = torch.where(finite, top, torch.zeros_like(top))
    e = torch.exp(logits - m) * (1 + _rounding_error(logits, -m))
    others = e.scatter(-1, k, 0.0).sum(-1)
    r = torch.where(finite.squeeze(-1), others, e.sum(-1) - 1)  # non-finite rows: log1p(sum - 1)
    return m.squeeze(-1), r


def logsumexp_stable(logits: torch.Tensor) -> torch.Tensor:
    """m + log1p(sum_{j != top} exp(z_j - m)) with m = max z: never overflows, and keeps the
    small terms that ``m + log(sum_j exp(z_j - m))`` (``torch.logsumexp``) rounds away."""
    logits = _check_float(logits, "logits")
    if logits.shape[-1] == 0:  # the empty sum: log 0, as torch.logsumexp gives
        return torch.full(logits.shape[:-1], -math.inf, dtype=logits.dtype, device=logits.device)
    m, r = _split_logsumexp(logits)
    return m + torch.log1p(r)


def shifted_sum(logits: torch.Tensor) -> torch.Tensor:
    """sum_j exp(z_j - max z), the stable normaliser: always in [1, n] for finite logits."""
    return torch.exp(_check_float(logits, "logits") - _shift(logits)).sum(-1)


# --- cross-entropy -----------------------------------------------------------------------
def cross_entropy_naive(logits, target, reduction: str = "mean") -> torch.Tensor:
    """-log(softmax(z)[y]): the log of a probability that may have overflowed or underflowed."""
    logits, target = _check_classes(logits, target)
    p = softmax_naive(logits)
    p_y = p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return _reduce(-torch.log(p_y), reduction)


def cross_entropy_stable(logits, target, reduction: str = "mean") -> torch.Tensor:
    """logsumexp(z) - z_y (what ``F.cross_entropy`` computes from raw logits)."""
    logits, target = _check_classes(logits, target)
    z_y = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    m, r = _split_logsumexp(logits)
    # (m - z_y) + log1p(r), not logsumexp - z_y: both terms are >= 0, so nothing cancels,
    # and a loss of 4.5e-5 is not rounded to the precision of m = 1000 first.
    return _reduce((m - z_y) + torch.log1p(r), reduction)


# --- the binary case ---------------------------------------------------------------------
def softplus_naive(z: torch.Tensor) -> torch.Tensor:
    """log(1 + e^z): overflows for large z, and 1 + e^z rounds to 1 for very negative z."""
    return torch.log(1 + torch.exp(_check_float(z, "z")))


def softplus_stable(z: torch.Tensor) -> torch.Tensor:
    """max(z, 0) + log1p(exp(-|z|)): the exponent is never positive (``F.softplus``)."""
    z = _check_float(z, "z")
    # log1p keeps the tiny e^-|z| that 1 + e^-|z| would round away.
    return torch.clamp(z, min=0) + torch.log1p(torch.exp(-z.abs()))


def bce_naive(z, target, reduction: str = "mean") -> torch.Tensor:
    """-(t log s + (1-t) log(1-s)) with s = sigmoid(z): s rounds to exactly 0 or 1 when |z| is large."""
    z, t = _check_binary(z, target)
    s = torch.sigmoid(z)
    return _reduce(-(t * torch.log(s) + (1 - t) * torch.log(1 - s)), reduction)


def bce_stable(z, target, reduction: str = "mean") -> torch.Tensor:
    """softplus(z) - t z = (max(z, 0) - t z) + log1p(exp(-|z|)) (``F.binary_cross_entropy_with_logits``)."""
    z, t = _check_binary(z, target)
    # -log s = softplus(-z) and -log(1-s) = softplus(z); their t-mix is softplus(z) - t z.
    # The bracket comes first: for t in {0, 1} it is exact (0 or |z|), so the small
    # log1p term is not lost against a large z.
    # max(z, 0) - t z is written as z (1 - t) or -t z, so a soft label near 1 does not
    # subtract two nearly equal products.
    linear = torch.where(z > 0, z * (1 - t), -t * z)
    return _reduce(linear + torch.log1p(torch.exp(-z.abs())), reduction)


# --- where the naive forms break ---------------------------------------------------------
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


# --- sweeps ------------------------------------------------------------------------------
def _as_grid(values, name: str, positive: bool) -> np.ndarray:
    try:
        grid = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a sequence of numbers, got {values!r}") from None
    if grid.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.isfinite(grid).all():
        raise ValueError(f"{name} must be finite numbers")
    if positive and (grid <= 0).any():
        raise ValueError(f"{name} must be > 0 (a logit magnitude), got min {grid.min():g}")
    return grid


def _first_nonfinite(xs: np.ndarray, values: np.ndarray) -> float | None:
    bad = ~np.isfinite(values.reshape(len(xs), -1)).all(1)
    return float(xs[bad.argmax()]) if bad.any() else None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


@dataclass(frozen=True, repr=False)
class LogitSweep:
    """Naive vs stable softmax cross-entropy over logit scales ``s`` (logits s*linspace(1,-1,n))."""

    dtype: str
    n_classes: int
    target: int
    scales: np.ndarray       # (S,) the scales as stored in dtype
    logits: np.ndarray       # (S, n)
    naive_sum: np.ndarray    # (S,) sum_j exp(z_j): overflows
    shifted_sum: np.ndarray  # (S,) sum_j exp(z_j - max z): in [1, n]
    probs_naive: np.ndarray  # (S, n)
    probs_stable: np.ndarray
    loss_naive: np.ndarray   # (S,)
    loss_stable: np.ndarray
    grad_naive: np.ndarray   # (S, n) d loss / d logits
    grad_stable: np.ndarray
    grad_error: np.ndarray   # (S,) largest |naive - exact| gradient entry (inf: non-finite)
    first_bad: dict = field(default_factory=dict)  # quantity -> first scale non-finite, or None

    @property
    def first_wrong(self) -> float | None:
        """First scale whose naive gradient is off by more than ``wrong_limit`` (or non-finite)."""
        wrong = np.flatnonzero(self.grad_error > wrong_limit(self.dtype))
        return float(self.scales[wrong[0]]) if wrong.size else None

    def __repr__(self):
        bad = ", ".join(f"{k} {'finite' if v is None else f'breaks at {v:.4g}'}"
                        for k, v in self.first_bad.items())
        wrong = self.first_wrong
        bad += f"; naive grad wrong {'nowhere' if wrong is None else f'from {wrong:.4g}'}"
        return (f"LogitSweep({self.dtype}, {self.n_classes} classes, target {self.target}, "
                f"{len(self.scales)} scales {self.scales[0]:.3g}..{self.scales[-1]:.3g}: {bad})")


def sweep_logits(scales, dtype="fp32", n_classes: int = 2, target="low", device="cpu") -> LogitSweep:
    """Naive and stable loss, probabilities and gradient for every scale, in one batched call.

    Row i holds the logits ``scales[i] * linspace(1, -1, n_classes)`` in ``dtype``;
    ``target`` is the true class ("high", "low" or an index). ``first_bad`` records the
    first scale where each quantity is inf/NaN: the naive gradient goes first (1/p
    overflows once p is tiny), then the naive loss (log 0 when p underflows to 0, or NaN
    when the sum overflows); the stable ones stay finite.
    """
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
    grid = _as_grid(scales, "scales", positive=True)
    n = _check_n_classes(n_classes)
    t = _target_index(target, n)
    logits = logit_pattern(torch.from_numpy(grid), n, dtype, device)
    naive_sum, p_naive, l_naive, g_naive = _naive_all(logits, t)
    s_sum, p_stable, l_stable, g_stable = _stable_all(logits, t)
    stored = _np(logits[:, 0])
    arrays = {k: _np(v) for k, v in dict(
        naive_sum=naive_sum, shifted_sum=s_sum, probs_naive=p_naive, probs_stable=p_stable,
        loss_naive=l_naive, loss_stable=l_stable, grad_naive=g_naive, grad_stable=g_stable).items()}
    first_bad = {
        "naive sum": _first_nonfinite(stored, arrays["naive_sum"]),
        "naive loss": _first_nonfinite(stored, arrays["loss_naive"]),
        "naive grad": _first_nonfinite(stored, arrays["grad_naive"]),
        "stable loss": _first_nonfinite(stored, arrays["loss_stable"]),
        "stable grad": _first_nonfinite(stored, arrays["grad_stable"]),
    }
    return LogitSweep(dtype=short_name(dtype), n_classes=n, target=t, scales=stored,
                      logits=_np(logits), first_bad=first_bad,
                      grad_error=_np(_grad_error(logits, g_naive, t)), **arrays)


@dataclass(frozen=True, repr=False)
class BinarySweep:
    """Naive vs stable softplus and binary cross-entropy over logits z, with the exact values."""

    dtype: str
    target: float
    z: np.ndarray               # (Z,) as stored in dtype
    softplus_naive: np.ndarray
    softplus_stable: np.ndarray
    softplus_exact: np.ndarray  # float64 stable form of the same stored z
    bce_naive: np.ndarray
    bce_stable: np.ndarray
    bce_exact: np.ndarray
    grad_naive: np.ndarray      # d bce / dz
    grad_stable: np.ndarray
    first_bad: dict = field(default_factory=dict)

    def rel_error(self, which: str = "softplus_naive") -> np.ndarray:
        """Relative error of one computed array against the exact value rounded to the format.

        The rounded exact value is the best any formula can return in this format (where
        the truth underflows, 0 is right and scores 0). inf/NaN results give inf/NaN.
        """
        if which not in ("softplus_naive", "softplus_stable", "bce_naive", "bce_stable"):
            raise ValueError(f"which must be softplus_naive/_stable or bce_naive/_stable, got {which!r}")
        exact = self.softplus_exact if which.startswith("softplus") else self.bce_exact
        best = torch.from_numpy(exact).to(resolve_dtype(self.dtype)).double().numpy()
        diff = np.abs(getattr(self, which) - best)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(diff == 0, 0.0, diff / np.abs(best))

    def __repr__(self):
        bad = ", ".join(f"{k} {'finite' if v is None else f'breaks at z={v:.4g}'}"
                        for k, v in self.first_bad.items())
        return f"BinarySweep({self.dtype}, target {self.target:g}, {len(self.z)} logits: {bad})"


def sweep_bce(zs, dtype="fp32", target: float = 1.0, device="cpu") -> BinarySweep:
    """softplus and BCE-with-logits, naive and stable, at every z in ``zs`` (one batched call).

    ``first_bad`` holds, for each naive quantity, the z of smallest magnitude at which it
    is inf/NaN (on either side of 0), or None.
    """
    dtype, device = resolve_dtype(dtype, COMPUTE_DTYPES), pick(device)
    grid = _as_grid(zs, "zs", positive=False)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 <= target <= 1:
        raise ValueError(f"target must be a number in [0, 1], got {target!r}")
    z = torch.from_numpy(grid).to(device=device, dtype=dtype)
    t = torch.full_like(z, float(target))
    out = {}
    for name, fn in (("naive", bce_naive), ("stable", bce_stable)):
        zz = z.clone().requires_grad_(True)
        loss = fn(zz, t, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), zz)
        out[f"bce_{name}"], out[f"grad_{name}"] = _np(loss), _np(grad)
    z64 = z.double()
    stored = _np(z)
    arrays = dict(
        softplus_naive=_np(softplus_naive(z)), softplus_stable=_np(softplus_stable(z)),
        softplus_exact=_np(softplus_stable(z64)),
        bce_exact=_np(bce_stable(z64, torch.full_like(z64, float(target)), reduction="none")),
        **out,
    )
    order = np.argsort(np.abs(stored), kind="stable")
    first_bad = {k: _first_nonfinite(stored[order], arrays[k][order])
                 for k in ("softplus_naive", "bce_naive", "grad_naive", "bce_stable", "grad_stable")}
    return BinarySweep(dtype=short_name(dtype), target=float(target), z=stored,
                       first_bad=first_bad, **arrays)
