"""Sweeps that show naive and stable side by side: softmax cross-entropy over logit scales,
softplus and binary cross-entropy over single logits, each against its exact value."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from numlab.device import pick
from numlab.formats import COMPUTE_DTYPES, info, resolve_dtype, short_name
from numlab.softmax.breaks import (
    _check_n_classes,
    _grad_error,
    _naive_all,
    _stable_all,
    _target_index,
    logit_pattern,
    softplus_breakpoint,
    wrong_limit,
)
from numlab.softmax.forms import bce_naive, bce_stable, softplus_naive, softplus_stable


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

    def naive_off_below(self, tolerance: float = 0.01) -> float | None:
        """The largest negative z at which naive softplus is off by more than ``tolerance``
        (relative): below about there ``1 + e^z`` has rounded to 1 and the digits are gone."""
        off = self.z[(self.z < 0) & (self.rel_error("softplus_naive") > tolerance)]
        return float(off.max()) if off.size else None

    def stable_within(self, eps_multiple: float = 4.0) -> bool:
        """Whether stable softplus is within ``eps_multiple`` eps of the exact value wherever
        that value is a normal number (a subnormal result carries fewer bits: no formula can
        promise a few eps there)."""
        fmt = info(self.dtype)
        normal = np.abs(self.softplus_exact) >= fmt.tiny
        return bool((self.rel_error("softplus_stable")[normal] <= eps_multiple * fmt.eps).all())

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


def softplus_table(zs, dtypes=("fp16", "bf16", "fp32", "fp64")) -> str:
    """One row per format: where naive softplus turns inf (exact, :func:`softplus_breakpoint`),
    the largest negative z where it is more than 1% off (on the grid ``zs``), and whether the
    stable form stays within 4 eps wherever the result is a normal number."""
    if isinstance(dtypes, str) or not isinstance(dtypes, tuple | list) or not dtypes:
        raise TypeError(f"dtypes must be a non-empty list of format names, got {dtypes!r}")
    lines = [f"{'format':>6} {'naive is inf from z':>20} {'naive >1% off for z <=':>23} "
             f"{'stable within 4 eps':>20}"]
    for name in dtypes:
        sw = sweep_bce(zs, name)
        off = sw.naive_off_below(0.01)
        lines.append(f"{sw.dtype:>6} {softplus_breakpoint(name)!r:>20} "
                     f"{'none' if off is None else f'{off:.4g}':>23} {str(sw.stable_within(4)):>20}")
    return "\n".join(lines)
