"""Finite differences, step-size sweeps with an error model, and a batched gradcheck.

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

:func:`gradcheck` compares a hand-written backward with central differences entry by
entry, with the criterion of ``torch.autograd.gradcheck`` (``|a - n| <= atol + rtol |n|``),
but evaluates every perturbed input in one batched call and gets the whole analytical
Jacobian from one batched backward.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import math
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from numlab.device import pick
from numlab.formats import COMPUTE_DTYPES, resolve_dtype, short_name

DTYPES = COMPUTE_DTYPES
# gradcheck's block sizes, in elements. Each vmap call of fn or of its backward costs
# ~0.5 ms of fixed overhead for a custom autograd.Function, so fn sees big blocks (one call
# up to n = 1024); the elementwise passes of the comparison, which cost nothing per call,
# run on 1 MB blocks that stay in cache between passes.
_EVAL_ELEMENTS = 1 << 21
_VJP_ELEMENTS = 1 << 19
_PASS_ELEMENTS = 1 << 17
_SCRATCH = threading.local()  # per-thread work buffers of gradcheck, see _scratch
_SCRATCH_MAX_BYTES = 32 << 20  # a bigger work buffer is allocated per call, not kept
_POOL_MAX_BYTES = 64 << 20  # reusable memory for the Jacobians reports keep, per thread


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
def _float_dtype(dtype, name: str = "dtype") -> torch.dtype:
    return resolve_dtype(dtype, COMPUTE_DTYPES, name)


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
    return t.to(dtype=_float_dtype(dtype) if dtype is not None else None, device=device)


def _steps(h, dtype: torch.dtype, device) -> torch.Tensor:
    """Step sizes as a 1-D tensor in ``dtype``; refuses h <= 0, non-finite, or lost in dtype."""
    bad = TypeError(f"h must be a positive number or a 1-D sequence/tensor of them, got {h!r:.40}")
    if isinstance(h, bool | str) or not isinstance(h, int | float | Sequence | torch.Tensor):
        raise bad
    try:
        h64 = torch.as_tensor(h, dtype=torch.float64).detach().reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise bad from None
    if h64.numel() == 0:
        raise ValueError("h must contain at least one step size")
    if not torch.isfinite(h64).all() or (h64 <= 0).any():
        bad = h64[(h64 <= 0) | ~torch.isfinite(h64)][:3].tolist()
        raise ValueError(f"every step h must be positive and finite, got {bad}")
    hd = h64.to(dtype)
    if (hd == 0).any() or not torch.isfinite(hd).all():
        fi = torch.finfo(dtype)
        raise ValueError(
            f"some steps h are 0 or infinite in {short_name(dtype)}: h must lie in "
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
    dtype = _float_dtype(dtype)
    x64 = _point(x, torch.float64)
    fx, d1, d2, d3 = _derivatives(f, x64)
    u = torch.finfo(dtype).eps / 2
    xr = abs(float(x64)) * abs(d1)  # the stored x + h is off by u|x|, moving f by u|x f'|
    forward = ErrorModel("forward", 1, abs(d2) / 2, u * (2 * abs(fx) + xr))
    central = ErrorModel("central", 2, abs(d3) / 6, u * (abs(fx) + xr))
    return forward, central


# --- the sweep ------------------------------------------------------------------------------
def default_steps(dtype=torch.float64) -> torch.Tensor:
    """10**-16 .. 1 in tenths of a decade, without steps below dtype's smallest normal."""
    dtype = _float_dtype(dtype)
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
    dtype = _float_dtype(dtype)
    xd = _point(x, dtype, device)
    h = _steps(default_steps(dtype) if hs is None else hs, dtype, xd.device)
    n = h.numel()
    values = _call(f, torch.cat([xd + h, xd - h, xd.reshape(1)])).double().cpu()
    hd = h.double().cpu()
    # Same arithmetic as forward_difference/central_difference, in dtype, then widened.
    fwd = ((values[:n] - values[-1]).to(dtype) / h.cpu()).double()
    cen = ((values[:n] - values[n:2 * n]).to(dtype) / (2 * h.cpu())).double()
    if df is None:
        true = float(torch.func.grad(f)(_point(x, torch.float64)))
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


# --- gradcheck ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One Jacobian entry: d output[out_index] / d input[in_index]."""

    output: int
    out_index: tuple[int, ...]
    input: int
    in_index: tuple[int, ...]
    analytical: float
    numerical: float
    abs_error: float
    rel_error: float
    score: float  # |a - n| / (atol + rtol |n|): above 1 fails the check

    def __repr__(self):
        return (f"Entry(out {self.output}{list(self.out_index)}, in {self.input}"
                f"{list(self.in_index)}: a={self.analytical:.6g}, n={self.numerical:.6g}, "
                f"rel={self.rel_error:.1e})")


@dataclass(frozen=True)
class GradcheckReport:
    """The verdict of :func:`gradcheck`, the two Jacobians and the worst entries."""

    passed: bool
    eps: float
    atol: float
    rtol: float
    dtype: torch.dtype
    batched: bool
    analytical: torch.Tensor = field(repr=False)  # (outputs, inputs), float64
    numerical: torch.Tensor = field(repr=False)
    worst: tuple[Entry, ...] = field(repr=False)
    n_failed: int = 0

    def __bool__(self):
        return self.passed

    @property
    def abs_error(self) -> torch.Tensor:
        return (self.analytical - self.numerical).abs()

    @property
    def rel_error(self) -> torch.Tensor:
        """Per entry |a - n| / max(|a|, |n|); 0 where both are exactly 0."""
        den = torch.maximum(self.analytical.abs(), self.numerical.abs())
        rel = self.abs_error / den
        return torch.where(den == 0, torch.zeros_like(rel), rel)

    @property
    def max_abs_error(self) -> float:
        return float(self.abs_error.max()) if self.abs_error.numel() else 0.0

    @property
    def max_rel_error(self) -> float:
        return float(self.rel_error.max()) if self.abs_error.numel() else 0.0

    @property
    def norm_rel_error(self) -> float:
        """||A - N|| / ||N|| (Frobenius): one relative error for the whole Jacobian."""
        den = float(torch.linalg.norm(self.numerical))
        num = float(torch.linalg.norm(self.analytical - self.numerical))
        return num / den if den > 0 else (0.0 if num == 0 else math.inf)

    def __repr__(self):
        verdict = "passed" if self.passed else "FAILED"
        shape = "x".join(map(str, self.analytical.shape))
        lines = [
            f"GradcheckReport: {verdict}, {self.n_failed} of {self.analytical.numel()} entries "
            f"outside atol + rtol*|n| (Jacobian {shape}, {short_name(self.dtype)}, eps={self.eps:.0e}, "
            f"atol={self.atol:.0e}, rtol={self.rtol:.0e}, {'batched' if self.batched else 'loop'})",
            f"  max abs err {self.max_abs_error:.2e}   max rel err {self.max_rel_error:.2e}   "
            f"norm rel err {self.norm_rel_error:.2e}",
            f"  {'output':<14}{'input':<14}{'analytical':>13}{'numerical':>13}{'rel err':>10}",
        ]
        for e in self.worst:
            lines.append(
                f"  {f'{e.output}{list(e.out_index)}':<14}{f'{e.input}{list(e.in_index)}':<14}"
                f"{e.analytical:>13.6g}{e.numerical:>13.6g}{e.rel_error:>10.1e}"
            )
        return "\n".join(lines)


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, tuple | list) else (x,)


def _outputs(fn, args) -> tuple[torch.Tensor, ...]:
    out = _as_tuple(fn(*args))
    if not out or not all(isinstance(o, torch.Tensor) for o in out):
        raise TypeError(
            "fn must return a tensor or a tuple of tensors, got "
            f"{[type(o).__name__ for o in out] or 'an empty tuple'}"
        )
    if not all(o.is_floating_point() for o in out):
        raise TypeError(f"fn must return floating-point tensors, got {[o.dtype for o in out]}")
    return out


def _cat(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _scratch(role: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """A reusable work buffer (contents undefined) for one role, kept between calls.

    Why: at n = 1024 a check touches tens of MB of temporaries. glibc hands big blocks back
    to the OS when they are freed, so every fresh one is paid again in page faults (on a
    VM about 2 us per 4 kB page: 8 MB costs ~4 ms, as much as the arithmetic). Buffers that
    never leave this module (the perturbation batch, the unit cotangents, the score) are
    therefore kept per thread, one per role, and only replaced when the shape changes.
    Large ones are not kept, so memory held between calls stays under _SCRATCH_MAX_BYTES.
    """
    numel = math.prod(shape)
    if getattr(_SCRATCH, "depth", 0) > 1:  # fn runs a gradcheck itself: the outer one's
        return torch.empty(shape, dtype=dtype, device=device)  # buffers are in use
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (role, dtype, torch.device(device))
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=dtype, device=device)
        if numel * buf.element_size() <= _SCRATCH_MAX_BYTES:
            cache[key] = buf
        else:
            cache.pop(key, None)
    return buf[:numel].view(shape)


@functools.cache
def _refcounts_track_views() -> bool:
    """Whether a bytearray's reference count shows the tensors made from it (CPython: yes)."""
    buf = bytearray(16)
    before = sys.getrefcount(buf)
    view = torch.frombuffer(buf, dtype=torch.float64)[1:]
    during = sys.getrefcount(buf)
    del view
    return before == 2 and during == 3 and sys.getrefcount(buf) == 2


def _jacobian_buffer(shape: tuple[int, int], device) -> torch.Tensor:
    """A float64 (outputs, inputs) buffer for a Jacobian the report keeps (contents undefined).

    Why: these two buffers are the only big ones a check must hand out fresh, and fresh
    memory costs a page fault per 4 kB on first touch (about 4 ms per 8 MB here). On the
    CPU they are therefore carved from bytearrays this module keeps: ``torch.frombuffer``
    holds a reference to the bytearray for as long as any tensor or view of it lives, so a
    reference count of 2 (the pool's list and getrefcount's argument) proves that every
    earlier report using it is gone and its pages, already mapped, can be reused. While
    reports are alive their buffers stay theirs; past _POOL_MAX_BYTES, plain torch.empty.
    """
    if torch.device(device).type != "cpu" or not _refcounts_track_views():
        return torch.empty(shape, dtype=torch.float64, device=device)
    nbytes = 8 * shape[0] * shape[1]
    pool = _SCRATCH.__dict__.setdefault("jacobians", [])
    for i in range(len(pool)):
        if len(pool[i]) == nbytes and sys.getrefcount(pool[i]) == 2:
            return torch.frombuffer(pool[i], dtype=torch.float64).view(shape)
    held = sum(len(b) for b in pool)
    for i in reversed(range(len(pool))):  # make room: drop unused buffers of other sizes
        if held + nbytes > _POOL_MAX_BYTES and sys.getrefcount(pool[i]) == 2:
            held -= len(pool.pop(i))
    if nbytes == 0 or held + nbytes > _POOL_MAX_BYTES:
        return torch.empty(shape, dtype=torch.float64)
    pool.append(bytearray(nbytes))
    return torch.frombuffer(pool[-1], dtype=torch.float64).view(shape)


def _chunk(budget: int, row: int, rows: int) -> int:
    """Rows per block so that a block of ``row``-wide rows holds about ``budget`` elements."""
    return max(1, min(rows, budget // max(1, row)))


def _numerical_into(out: torch.Tensor, fn, args, i, eps, batched) -> bool:
    """Write the central-difference columns for input i into ``out`` (outputs, n_i).

    k columns need 2k perturbed copies of x (x + eps e_j, then x - eps e_j), evaluated in
    one vmap call; blocks of columns bound the memory of the batch and of fn's output.
    Returns whether the vmap path worked (False: fell back to a loop).
    """
    x = args[i].detach()
    n = x.numel()
    m = out.shape[0]
    k_max = _chunk(_EVAL_ELEMENTS, 2 * max(n, m), n)
    batch_all = _scratch("batch", (2 * k_max, n), x.dtype, x.device)

    def one(xi):
        return _cat([o.reshape(-1) for o in _outputs(fn, args[:i] + (xi,) + args[i + 1:])])

    for start in range(0, n, k_max):
        k = min(k_max, n - start)
        batch = batch_all[:2 * k]
        batch.copy_(x.reshape(1, n).expand(2 * k, n))
        # Perturb entry start + r in row r (and in row k + r) through a diagonal view: no
        # index tensors. Same arithmetic as torch: x_j + eps, x_j - eps rounded in x's dtype.
        batch[:k, start:start + k].diagonal().add_(eps)
        batch[k:, start:start + k].diagonal().sub_(eps)
        batch_x = batch.view(2 * k, *x.shape)
        vals = None
        if batched:
            try:
                vals = torch.func.vmap(one)(batch_x)
            except Exception:  # not batchable (in-place ops, .item(), old-style Function, ...)
                batched = False
        if vals is None:
            vals = torch.stack([one(row) for row in batch_x])
        if vals.shape[1] != m:
            raise ValueError(f"fn's outputs changed size under perturbation: {m} entries "
                             f"before, {vals.shape[1]} after")
        # torch's (f(x + eps) - f(x - eps)) / (2 eps), rounded the same way.
        # Written over the first half of vals (no new buffer); then one transposing copy
        # into the report's Jacobian (torch's copy_ transposes in cache-sized tiles, where
        # writing the difference through the transposed view directly is 10x slower).
        diff = torch.sub(vals[:k], vals[k:], out=vals[:k]).div_(2 * eps)
        out[:, start:start + k].copy_(diff.T)
    return batched


def _analytical(fn, args, checked, outputs, batched) -> tuple[torch.Tensor, bool]:
    """The full analytical Jacobian (all outputs x all checked inputs) from VJPs, float64.

    First choice: ``torch.func.vmap`` over ``torch.func.vjp`` with unit cotangents (one
    batched backward per block of rows); then autograd's ``is_grads_batched``; last, one
    backward per row.
    """
    diff_inputs = [args[i] for i in checked]
    sizes = [o.numel() for o in outputs]
    m = sum(sizes)
    width = sum(x.numel() for x in diff_inputs)
    chunk = _chunk(_VJP_ELEMENTS, m + width, m)
    dtype, device = outputs[0].dtype, outputs[0].device

    def unit_rows(start, stop, buf=None):
        # Rows e_start .. e_stop-1 of the identity; a kept buffer is re-zeroed every time,
        # so a backward that (wrongly) writes into its cotangent cannot leak into the next.
        eye = torch.zeros(stop - start, m, dtype=dtype, device=device) if buf is None \
            else buf[:stop - start].zero_()
        eye[:, start:stop].diagonal().fill_(1)
        return eye

    if m == 0:
        return torch.zeros(0, width, dtype=torch.float64), batched
    if batched:
        try:
            def flat(*diff):
                full = list(args)
                for i, d in zip(checked, diff, strict=True):
                    full[i] = d
                return _cat([o.reshape(-1) for o in _outputs(fn, tuple(full))])

            _, vjp_fn = torch.func.vjp(flat, *(x.detach() for x in diff_inputs))
            jac = _jacobian_buffer((m, width), device)
            cot = _scratch("cotangents", (chunk, m), dtype, device)
            for start in range(0, m, chunk):
                stop = min(m, start + chunk)
                grads = torch.func.vmap(vjp_fn)(unit_rows(start, stop, cot))
                col = 0
                for g in grads:  # copied out: the report never holds a view of cot
                    g = g.reshape(stop - start, -1)
                    jac[start:stop, col:col + g.shape[1]].copy_(g)
                    col += g.shape[1]
            return jac.cpu(), True
        except Exception:  # fn or its backward is not functorch-compatible: try autograd's
            pass

    live = [j for j, o in enumerate(outputs) if o.requires_grad]
    if not live:
        return torch.zeros(m, width, dtype=torch.float64), batched
    offsets = [sum(sizes[:j]) for j in range(len(sizes))]
    targets = [outputs[j] for j in live]

    def rows(start, stop, batched_grads):
        # Unit cotangents e_r for output rows r in [start, stop), split per live output.
        k = stop - start
        eye = unit_rows(start, stop)
        cot = [eye[:, offsets[j]:offsets[j] + sizes[j]].reshape(k, *outputs[j].shape)
               .to(outputs[j].dtype) for j in live]
        if not batched_grads:
            cot = [c[0] for c in cot]
        grads = torch.autograd.grad(targets, diff_inputs, cot, retain_graph=True,
                                    allow_unused=True, is_grads_batched=batched_grads)
        grads = [torch.zeros((k, *x.shape) if batched_grads else x.shape, dtype=x.dtype,
                             device=x.device) if g is None else g
                 for g, x in zip(grads, diff_inputs, strict=True)]
        shape = (k, -1) if batched_grads else (1, -1)
        return _cat([g.reshape(shape) for g in grads], dim=1).double()

    blocks = []
    if batched:
        try:
            for start in range(0, m, chunk):
                blocks.append(rows(start, min(m, start + chunk), True))
        except Exception:  # a backward that cannot run under vmap
            batched, blocks = False, []
    if not batched:
        blocks = [rows(r, r + 1, False) for r in range(m)]
    return _cat(blocks).cpu(), batched


def _scores(analytical, numerical, atol, rtol) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-entry ``|a - n| / (atol + rtol |n|)`` (above 1 fails), its maximum per row, and
    the number of entries failing ``|a - n| <= atol + rtol |n|``.

    Computed block by block of rows into kept buffers: every pass then runs on a block
    that sits in cache, and no Jacobian-sized temporary is allocated (the score buffer
    itself is reused between calls; the caller only reads a few entries of it).
    """
    m, w = analytical.shape
    score = _scratch("score", (m, w), torch.float64, analytical.device)
    rows = _chunk(_PASS_ELEMENTS, w, m)
    tol_buf = _scratch("tol", (rows, w), torch.float64, analytical.device)
    diff_buf = _scratch("absdiff", (rows, w), torch.float64, analytical.device)
    ok_buf = _scratch("ok", (rows, w), torch.bool, analytical.device)
    row_max = torch.empty(m, dtype=torch.float64, device=analytical.device)
    n_ok, finite = 0, True
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        a, n, s = analytical[start:stop], numerical[start:stop], score[start:stop]
        tol, d, ok = tol_buf[:stop - start], diff_buf[:stop - start], ok_buf[:stop - start]
        torch.abs(n, out=tol).mul_(rtol).add_(atol)  # atol + rtol |n|, torch's order
        torch.sub(a, n, out=d).abs_()                # |a - n|
        torch.div(d, tol, out=s)
        top = float(torch.amax(s, dim=1, out=row_max[start:stop]).max())
        if not math.isfinite(top):
            # inf/NaN in a or n (or 0/0 where atol = 0): settled exactly below.
            finite = False
        elif top < 1:
            # Every ratio < 1, so every |a - n| <= tol: a true |a - n| > tol would make
            # the quotient > 1, which rounds to >= 1. The block passes without a compare.
            n_ok += s.numel()
        else:
            torch.le(d, tol, out=ok)  # the exact test (a ratio of 1.0 may hide either side)
            n_ok += int(ok.sum())
    if not finite:  # as isclose: inf == inf is close; ratios: NaN -> 0 if close, else inf
        ok = torch.isclose(analytical, numerical, rtol=rtol, atol=atol)
        n_ok = int(ok.sum())
        score = torch.where(ok, score.nan_to_num(0.0, posinf=0.0),
                            score.nan_to_num(math.inf).clamp(min=1.0))
        row_max = score.amax(dim=1)
    return score, row_max, m * w - n_ok


def _top_entries(score: torch.Tensor, row_max: torch.Tensor, a: torch.Tensor, n: torch.Tensor,
                 k: int) -> list[int]:
    """Flat indices of the k largest scores, ties broken by the larger |a - n| (no full sort).

    ``score`` is (rows, cols), ``row_max`` its maximum per row; ``a`` and ``n`` are flat.
    """
    if k == 0:
        return []
    width = score.shape[1]
    flat_score = score.reshape(-1)

    def abs_err(idx):
        return (a[idx] - n[idx]).abs().nan_to_num(math.inf)

    chosen = None
    if k + 1 < score.shape[0]:
        # Why: topk over all m*w scores is one slow partial sort (~3 ms for 1M entries).
        # The k largest entries lie in the k + 1 rows with the largest maxima: an entry v
        # outside those rows is <= the smallest of their k + 1 maxima <= the (k+1)-th
        # candidate. So when the k-th candidate is strictly above the (k+1)-th, no entry
        # elsewhere can reach or tie it, and the k candidates are the global top k.
        rows = torch.topk(row_max, k + 1).indices
        values, pos = torch.topk(score[rows].reshape(-1), k + 1)
        if values[k - 1] > values[k]:
            chosen = rows[pos[:k] // width] * width + pos[:k] % width
    if chosen is None:
        values, chosen = torch.topk(flat_score, min(k + 1, flat_score.numel()))
        if values.numel() > k and values[k - 1] == values[k]:
            # A tie across the cut (e.g. many exact zeros): settle it by |a - n|.
            threshold = values[k - 1]
            above = torch.nonzero(flat_score > threshold).reshape(-1)
            tied = torch.nonzero(flat_score == threshold).reshape(-1)
            tied = tied[torch.topk(abs_err(tied), k - above.numel()).indices]
            chosen = torch.cat([above, tied])
        chosen = chosen[:k]
    # Small final sort (k entries, in Python): by score, then by |a - n|, both descending,
    # then by position (later first), so the order does not depend on how the k were found.
    keys = zip(flat_score[chosen].tolist(), abs_err(chosen).tolist(), chosen.tolist(), strict=True)
    return [flat for *_, flat in sorted(keys, key=lambda t: (-t[0], -t[1], -t[2]))]


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    """Row-major multi-index of a flat position (plain Python: k entries, no tensors)."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


def gradcheck(fn, inputs, eps=None, atol=1e-5, rtol=1e-3, *, top=5, batched=True) -> GradcheckReport:
    """Compare ``fn``'s autograd Jacobian with central differences, entry by entry.

    An entry passes when ``|a - n| <= atol + rtol * |n|`` (``a`` analytical, ``n``
    numerical), the test ``torch.autograd.gradcheck`` applies, so with the same eps, atol
    and rtol the verdicts agree. Inputs that require grad are checked. ``eps=None`` means
    torch's 1e-6 for float64 inputs and ``cbrt(eps_mach)`` of the least precise input
    otherwise. All perturbed inputs go through ``fn`` in one ``torch.func.vmap`` call and
    the analytical Jacobian comes from one batched backward (``is_grads_batched``); a
    function that cannot be batched is evaluated in a loop instead, with one warning.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    args = _as_tuple(inputs)
    checked = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("inputs must contain at least one tensor with requires_grad=True")
    for i in checked:
        if not args[i].is_floating_point():
            raise TypeError(f"inputs[{i}] requires grad but has dtype {args[i].dtype}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 \
                or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not isinstance(top, int) or top < 0:
        raise ValueError(f"top must be an int >= 0, got {top!r}")
    dtypes = {args[i].dtype for i in checked}
    least = max(dtypes, key=lambda d: torch.finfo(d).eps)
    if eps is None:
        eps = 1e-6 if least == torch.float64 else torch.finfo(least).eps ** (1 / 3)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    if least != torch.float64:
        mach = torch.finfo(least).eps
        warnings.warn(
            f"gradcheck: inputs in {short_name(least)}, not float64. The central difference "
            f"then carries rounding error of about eps_mach*|f|/eps = {mach:.1e}*|f|/{eps:.0e} "
            f"= {mach / eps:.0e} relative, far above float64's {2.2e-16 / 1e-6:.0e}: "
            "failures may be rounding, not bugs. Check in float64.",
            UserWarning, stacklevel=2,
        )

    _SCRATCH.depth = getattr(_SCRATCH, "depth", 0) + 1
    try:
        return _gradcheck(fn, args, checked, eps, atol, rtol, top, batched, least)
    finally:
        _SCRATCH.depth -= 1


def _gradcheck(fn, args, checked, eps, atol, rtol, top, batched, least) -> GradcheckReport:
    """The work of :func:`gradcheck`, on checked arguments."""
    with torch.enable_grad():
        outputs = _outputs(fn, args)
        analytical, batched_ok = _analytical(fn, args, checked, outputs, batched)
    with torch.no_grad():
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        # One (outputs, inputs) float64 buffer; each input's block writes its own columns.
        numerical = _jacobian_buffer(tuple(analytical.shape), outputs[0].device)
        col = 0
        for i in checked:
            n_i = args[i].numel()
            batched_ok = _numerical_into(numerical[:, col:col + n_i], fn, plain, i, eps,
                                         batched_ok) and batched_ok
            col += n_i
        numerical = numerical.cpu()
    if batched and not batched_ok:
        warnings.warn(
            "gradcheck: fn could not run under torch.func.vmap (or its backward under "
            "is_grads_batched); fell back to one call per perturbation, which is slower.",
            UserWarning, stacklevel=3,
        )

    # torch's criterion |a - n| <= atol + rtol |n|, and the same as a ratio (> 1 fails).
    score, row_max, n_failed = _scores(analytical, numerical, atol, rtol)
    out_shapes = [o.shape for o in outputs]
    out_starts = [0, *itertools.accumulate(o.numel() for o in outputs)]
    in_shapes = [args[i].shape for i in checked]
    in_starts = [0, *itertools.accumulate(args[i].numel() for i in checked)]
    worst = []
    a_flat, n_flat = analytical.reshape(-1), numerical.reshape(-1)
    for flat in _top_entries(score, row_max, a_flat, n_flat, min(top, score.numel())):
        r, c = divmod(flat, score.shape[1])
        o = bisect.bisect_right(out_starts, r) - 1
        j = bisect.bisect_right(in_starts, c) - 1
        a, n = float(analytical[r, c]), float(numerical[r, c])
        big = max(abs(a), abs(n))
        worst.append(Entry(
            output=o, out_index=_index(r - out_starts[o], out_shapes[o]),
            input=checked[j], in_index=_index(c - in_starts[j], in_shapes[j]),
            analytical=a, numerical=n, abs_error=abs(a - n),
            rel_error=abs(a - n) / big if big > 0 else 0.0, score=float(score[r, c]),
        ))
    return GradcheckReport(
        passed=n_failed == 0, eps=float(eps), atol=float(atol), rtol=float(rtol), dtype=least,
        batched=batched_ok, analytical=analytical, numerical=numerical, worst=tuple(worst),
        n_failed=n_failed,
    )


@dataclass(frozen=True)
class SpeedComparison:
    """Best-of-``repeat`` seconds of numlab's and torch's full gradcheck on the same inputs."""

    numlab_s: float
    torch_s: float

    @property
    def ratio(self) -> float:
        return self.torch_s / self.numlab_s

    def __repr__(self):
        return (f"numlab {self.numlab_s * 1e3:.1f} ms, torch full check {self.torch_s * 1e3:.1f} ms: "
                f"{self.ratio:.0f}x")


def speed_vs_torch(fn, inputs, repeat: int = 5) -> SpeedComparison:
    """Time :func:`gradcheck` against ``torch.autograd.gradcheck(fast_mode=False)``, one thread.

    One thread, as in ``benchmarks/bench_gradcheck.py``: steadier on a busy laptop. Each
    side is called once untimed first; the best of ``repeat`` calls is kept.
    """
    import time

    from numlab.device import threads

    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")

    def best(call):
        call()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return min(times)

    with threads(1):
        ours = best(lambda: gradcheck(fn, inputs))
        theirs = best(lambda: torch.autograd.gradcheck(fn, inputs))
    return SpeedComparison(ours, theirs)
