"""The forms: softmax, log-sum-exp, cross-entropy and softplus, the naive recipe beside the stable one.

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

import math

import torch

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
