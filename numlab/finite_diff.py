"""Finite differences and step-size sweeps with an error model.

Two formulas estimate ``f'(x)`` from values of ``f``::

    forward  (f(x + h) - f(x)) / h            truncation |f''| h / 2
    central  (f(x + h) - f(x - h)) / (2 h)    truncation |f'''| h**2 / 6

Both also carry rounding error. With unit roundoff ``u = eps_mach / 2``, each value of
``f`` is off by about ``u |f|`` and the stored point ``x + h`` by about ``u |x|`` (which
moves ``f`` by ``u |x f'|``); the difference divides those by ``h`` (forward) or ``2 h``
(central), so the rounding term grows like ``1 / h`` while truncation shrinks. The sum
has a minimum: ``h* = sqrt(b / a)`` for ``a h + b / h`` and ``h* = (b / (2 a)) ** (1/3)``
for ``a h**2 + b / h``; the rules of thumb ``sqrt(eps_mach)`` and ``cbrt(eps_mach)`` are
these with every derivative set to one.

Gradient checking, central differences applied to a whole Jacobian, is in
:mod:`numlab.gradcheck`; its names are importable from here too.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from numlab.device import pick
from numlab.formats import COMPUTE_DTYPES, resolve_dtype, short_name
from numlab.gradcheck import Entry, GradcheckReport, SpeedComparison, gradcheck, speed_vs_torch

DTYPES = COMPUTE_DTYPES


def _layer(t: torch.Tensor) -> torch.Tensor:
    """A 1 -> 8 -> 1 tanh layer with fixed weights, applied elementwise."""
    w = torch.linspace(-1.5, 2.0, 8, dtype=t.dtype, device=t.device)
    b = torch.linspace(0.5, -0.5, 8, dtype=t.dtype, device=t.device)
    v = torch.linspace(1.0, -0.25, 8, dtype=t.dtype, device=t.device)
    return (v * torch.tanh(t[..., None] * w + b)).sum(-1)


FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp,
    "sin": torch.sin,
    "tanh": torch.tanh,
    "x**3": lambda t: t**3,
    "layer": _layer,
}


# --- argument checks ------------------------------------------------------------------------
def _function(f, name: str = "f") -> Callable:
    if isinstance(f, str):
        if f not in FUNCTIONS:
            raise ValueError(f"{name} must be a callable or one of {sorted(FUNCTIONS)}, got {f!r}")
        return FUNCTIONS[f]
    if not callable(f):
        raise TypeError(f"{name} must be a callable mapping a tensor to a tensor, got {type(f)}")
    return f


def _point(x, dtype: torch.dtype | None, device=None) -> torch.Tensor:
    """``x`` as a 0-dim tensor in ``dtype`` (default: x's own dtype, float64 for numbers)."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point number or tensor, got dtype {x.dtype}")
        if x.numel() != 1:
            raise ValueError(f"x must be a single point (one element), got shape {tuple(x.shape)}")
        t = x.detach().reshape(())
    elif isinstance(x, int | float) and not isinstance(x, bool):
        t = torch.tensor(float(x), dtype=torch.float64)
    else:
        raise TypeError(f"x must be a float or a one-element floating tensor, got {type(x)}")
    if not math.isfinite(float(t)):
        raise ValueError(f"x must be finite, got {float(t)}")
    device = pick(device) if device is not None else t.device
    return t.to(dtype=resolve_dtype(dtype, COMPUTE_DTYPES) if dtype is not None else None, device=device)


def _steps(h, dtype: torch.dtype, device, name: str = "h") -> torch.Tensor:
    """Step sizes as a 1-D tensor in ``dtype``; refuses h <= 0, non-finite, or lost in dtype."""
    bad = TypeError(f"{name} must be a positive number or a 1-D sequence/tensor of them, got {h!r:.40}")
    if isinstance(h, bool | str) or not isinstance(h, int | float | Sequence | torch.Tensor):
        raise bad
    try:
        h64 = torch.as_tensor(h, dtype=torch.float64).detach().reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise bad from None
    if h64.numel() == 0:
        raise ValueError(f"{name} must contain at least one step size")
    if not torch.isfinite(h64).all() or (h64 <= 0).any():
        bad = h64[(h64 <= 0) | ~torch.isfinite(h64)][:3].tolist()
        raise ValueError(f"every step in {name} must be positive and finite, got {bad}")
    hd = h64.to(dtype)
    if (hd == 0).any() or not torch.isfinite(hd).all():
        fi = torch.finfo(dtype)
        raise ValueError(
            f"some steps in {name} are 0 or infinite in {short_name(dtype)}: they must lie in "
            f"[{fi.smallest_normal:.3g}, {fi.max:.3g}] for this dtype"
        )
    return hd.to(device)


def _call(f: Callable, t: torch.Tensor) -> torch.Tensor:
    out = f(t)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"f must return a tensor, got {type(out).__name__}")
    if out.shape != t.shape:
        raise ValueError(
            f"f must act elementwise (output shape {tuple(t.shape)}), got {tuple(out.shape)}"
        )
    return out


# --- the two formulas -----------------------------------------------------------------------
def forward_difference(f, x, h, dtype=None, device=None) -> torch.Tensor:
    """``(f(x + h) - f(x)) / h`` for every step in ``h``, in one call of ``f``, in x's dtype."""
    f = _function(f)
    x = _point(x, dtype, device)
    h = _steps(h, x.dtype, x.device)
    values = _call(f, torch.cat([x + h, x.reshape(1)]))
    return (values[:-1] - values[-1]) / h


def central_difference(f, x, h, dtype=None, device=None) -> torch.Tensor:
    """``(f(x + h) - f(x - h)) / (2 h)`` for every step in ``h``, in one call of ``f``."""
    f = _function(f)
    x = _point(x, dtype, device)
    h = _steps(h, x.dtype, x.device)
    values = _call(f, torch.cat([x + h, x - h]))
    n = h.numel()
    return (values[:n] - values[n:]) / (2 * h)


# --- the error model ------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorModel:
    """Absolute error ``truncation * h**order + rounding / h`` of one formula, and its minimum."""

    formula: str
    order: int
    truncation: float
    rounding: float

    @property
    def h_opt(self) -> float:
        """The h minimising the modelled error (inf when the truncation term vanishes)."""
        a, b, p = self.truncation, self.rounding, self.order
        if a == 0:
            return math.inf
        return (b / (p * a)) ** (1.0 / (p + 1))

    @property
    def error_opt(self) -> float:
        return float(self.predict(self.h_opt)) if math.isfinite(self.h_opt) else 0.0

    def predict(self, h):
        """Modelled absolute error at step(s) ``h`` (float or tensor)."""
        return self.truncation * h**self.order + self.rounding / h

    def __repr__(self):
        return (f"ErrorModel({self.formula}: {self.truncation:.2e}*h**{self.order} + "
                f"{self.rounding:.2e}/h, h*={self.h_opt:.2e})")


def _derivatives(f: Callable, x64: torch.Tensor) -> tuple[float, float, float, float]:
    """f, f', f'', f''' at x, by autograd in float64."""
    d1 = torch.func.grad(f)
    d2 = torch.func.grad(d1)
    d3 = torch.func.grad(d2)
    return tuple(float(g(x64)) for g in (f, d1, d2, d3))


def error_models(f, x, dtype=torch.float64) -> tuple[ErrorModel, ErrorModel]:
    """The (forward, central) error models of ``f`` at ``x`` when computing in ``dtype``."""
    f = _function(f)
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
    x64 = _point(x, torch.float64)
    fx, d1, d2, d3 = _derivatives(f, x64)
    u = torch.finfo(dtype).eps / 2
    xr = abs(float(x64)) * abs(d1)  # the stored x + h is off by u|x|, moving f by u|x f'|
    forward = ErrorModel("forward", 1, abs(d2) / 2, u * (2 * abs(fx) + xr))
    central = ErrorModel("central", 2, abs(d3) / 6, u * (abs(fx) + xr))
    return forward, central


# --- the sweep ------------------------------------------------------------------------------
def usable_step(h: float, dtype=torch.float64) -> float:
    """``h``, or the smallest normal number of ``dtype`` if ``h`` is below it: a smaller
    step does not exist in the format as a full-precision number."""
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
    if isinstance(h, bool) or not isinstance(h, int | float) or not h > 0 or not math.isfinite(h):
        raise ValueError(f"h must be a positive finite number, got {h!r}")
    return max(float(h), torch.finfo(dtype).smallest_normal)


def default_steps(dtype=torch.float64) -> torch.Tensor:
    """10**-16 .. 1 in tenths of a decade, without steps below dtype's smallest normal."""
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
    hs = torch.logspace(-16, 0, 161, dtype=torch.float64)
    return hs[hs >= torch.finfo(dtype).smallest_normal]


@dataclass(frozen=True)
class SweepResult:
    """Forward and central estimates of f'(x) at many steps h, their errors and models."""

    x: float
    dtype: torch.dtype
    true: float
    hs: torch.Tensor = field(repr=False)
    forward: torch.Tensor = field(repr=False)
    central: torch.Tensor = field(repr=False)
    forward_err: torch.Tensor = field(repr=False)
    central_err: torch.Tensor = field(repr=False)
    forward_model: ErrorModel = field(repr=False)
    central_model: ErrorModel = field(repr=False)
    relative: bool = True

    def _best(self, err: torch.Tensor) -> int:
        return int(torch.nan_to_num(err, nan=math.inf).argmin())

    @property
    def best_forward_h(self) -> float:
        return float(self.hs[self._best(self.forward_err)])

    @property
    def best_central_h(self) -> float:
        return float(self.hs[self._best(self.central_err)])

    @property
    def best_forward_err(self) -> float:
        return float(self.forward_err[self._best(self.forward_err)])

    @property
    def best_central_err(self) -> float:
        return float(self.central_err[self._best(self.central_err)])

    @property
    def eps(self) -> float:
        return torch.finfo(self.dtype).eps

    @property
    def rule_of_thumb(self) -> tuple[float, float]:
        """(sqrt(eps), cbrt(eps)): the usual forward and central step sizes."""
        return self.eps ** 0.5, self.eps ** (1 / 3)

    def model_err(self, formula: str) -> torch.Tensor:
        """The error model evaluated at ``hs`` (relative when the sweep's errors are)."""
        model = self._model(formula)
        scale = abs(self.true) if self.relative else 1.0
        return model.predict(self.hs) / scale

    def _model(self, formula: str) -> ErrorModel:
        if formula not in ("forward", "central"):
            raise ValueError(f"formula must be 'forward' or 'central', got {formula!r}")
        return self.forward_model if formula == "forward" else self.central_model

    def slope(self, formula: str, h_min: float | None = None, h_max: float | None = None) -> float:
        """Least-squares slope of log10(error) against log10(h) on [h_min, h_max].

        The default window starts five times above the model's optimal h (truncation
        dominates there) and ends at h = 0.3, before higher Taylor terms matter.
        """
        model = self._model(formula)
        err = self.forward_err if formula == "forward" else self.central_err
        lo = 5 * model.h_opt if h_min is None else h_min
        hi = 0.3 if h_max is None else h_max
        keep = (self.hs >= lo) & (self.hs <= hi) & (err > 0) & torch.isfinite(err)
        if int(keep.sum()) < 3:
            raise ValueError(
                f"fewer than 3 steps with nonzero error in [h_min, h_max] = [{lo:.2g}, {hi:.2g}]; "
                "pass a wider window"
            )
        lh, le = self.hs[keep].log10(), err[keep].log10()
        lh0 = lh - lh.mean()
        return float((lh0 * (le - le.mean())).sum() / (lh0 * lh0).sum())

    def __repr__(self):
        kind = "rel" if self.relative else "abs"
        return (
            f"SweepResult(x={self.x:g}, {short_name(self.dtype)}, {self.hs.numel()} steps: "
            f"best forward h={self.best_forward_h:.1e} ({kind} err {self.best_forward_err:.1e}), "
            f"best central h={self.best_central_h:.1e} ({kind} err {self.best_central_err:.1e}); "
            f"model h* {self.forward_model.h_opt:.1e} / {self.central_model.h_opt:.1e})"
        )


def sweep_h(f, x, dtype=torch.float64, hs=None, df=None, device=None) -> SweepResult:
    """Both difference formulas at every step in ``hs`` (one call of ``f`` for all of them).

    ``f`` is elementwise (a callable or a name in :data:`FUNCTIONS`); values and the
    difference are computed in ``dtype``; errors are relative to ``df`` (default: autograd
    of ``f`` in float64 at ``x``), or absolute where the true derivative is exactly 0.
    """
    f = _function(f)
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
    xd = _point(x, dtype, device)
    h = _steps(default_steps(dtype) if hs is None else hs, dtype, xd.device, "hs")
    n = h.numel()
    values = _call(f, torch.cat([xd + h, xd - h, xd.reshape(1)])).double().cpu()
    hd = h.double().cpu()
    # Same arithmetic as forward_difference/central_difference, in dtype, then widened.
    fwd = ((values[:n] - values[-1]).to(dtype) / h.cpu()).double()
    cen = ((values[:n] - values[n:2 * n]).to(dtype) / (2 * h.cpu())).double()
    if df is None:
        true = float(torch.func.grad(f)(_point(x, torch.float64)))
        if not math.isfinite(true) or not bool(torch.isfinite(values[-1])):
            raise ValueError(f"x must be a point where f and its derivative are finite, got x={x!r} "
                             f"(f(x) = {float(values[-1]):g}, f'(x) = {true:g})")
    else:
        true = float(df)
        if not math.isfinite(true):
            raise ValueError(f"df must be finite, got {df!r}")
    scale = abs(true) if true != 0 else 1.0
    forward_model, central_model = error_models(f, float(_point(x, torch.float64)), dtype)
    return SweepResult(
        x=float(xd), dtype=dtype, true=true, hs=hd, forward=fwd, central=cen,
        forward_err=(fwd - true).abs() / scale, central_err=(cen - true).abs() / scale,
        forward_model=forward_model, central_model=central_model, relative=true != 0,
    )


__all__ = [
    "DTYPES", "ErrorModel", "SweepResult", "central_difference", "default_steps", "error_models",
    "forward_difference", "sweep_h", "usable_step", "Entry", "GradcheckReport", "SpeedComparison",
    "gradcheck", "speed_vs_torch",
]
