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
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from numlab.device import pick
from numlab.formats import resolve_dtype, short_name

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BATCH_ELEMENTS = 1 << 22  # perturbed copies per chunk: at most ~32 MB of float64 at once


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
    dt = resolve_dtype(dtype)
    if dt not in DTYPES:
        raise ValueError(f"{name} must be one of fp16, bf16, fp32, fp64, got {dtype!r}")
    return dt


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


def _perturbed(x: torch.Tensor, start: int, stop: int, eps: float) -> torch.Tensor:
    """Rows x + eps e_j for j in [start, stop), then x - eps e_j, as one (2k, *x.shape) batch."""
    k = stop - start
    flat = x.detach().reshape(1, -1).repeat(2 * k, 1)
    rows = torch.arange(2 * k, device=x.device)
    cols = torch.arange(start, stop, device=x.device).repeat(2)
    # Same arithmetic as torch: the perturbed element is x_j + eps (rounded in x's dtype).
    flat[rows[:k], cols[:k]] += eps
    flat[rows[k:], cols[k:]] -= eps
    return flat.reshape(2 * k, *x.shape)


def _numerical_block(fn, args, i, eps, batched) -> tuple[torch.Tensor, bool]:
    """Columns of the numerical Jacobian for input i, (outputs, n_i), in float64."""
    x = args[i]
    n = x.numel()
    chunk = max(1, min(n, _BATCH_ELEMENTS // max(1, 2 * n)))
    cols = []

    def one(xi):
        return _cat([o.reshape(-1) for o in _outputs(fn, args[:i] + (xi,) + args[i + 1:])])

    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        batch = _perturbed(x, start, stop, eps)
        k = stop - start
        out = None
        if batched:
            try:
                out = torch.func.vmap(one)(batch)
            except Exception:  # not batchable (in-place ops, .item(), old-style Function, ...)
                batched = False
        if out is None:
            out = torch.stack([one(row) for row in batch])
        # torch's (b - a) / (2 eps), written over the first half of the batch (no new buffer).
        cols.append(torch.sub(out[:k], out[k:], out=out[:k]).div_(2 * eps).double())
    # Rows were perturbations; the Jacobian has one row per output entry.
    return _cat(cols).T.contiguous(), batched


def _analytical(fn, args, checked, outputs, batched) -> tuple[torch.Tensor, bool]:
    """The full analytical Jacobian (all outputs x all checked inputs) from VJPs, float64.

    First choice: ``torch.func.vmap`` over ``torch.func.vjp`` with unit cotangents (one
    batched backward); then autograd's ``is_grads_batched``; last, one backward per row.
    """
    diff_inputs = [args[i] for i in checked]
    sizes = [o.numel() for o in outputs]
    m = sum(sizes)
    width = sum(x.numel() for x in diff_inputs)
    chunk = max(1, min(m, _BATCH_ELEMENTS // max(1, m + width)))
    dtype, device = outputs[0].dtype, outputs[0].device

    def unit_rows(start, stop):
        eye = torch.zeros(stop - start, m, dtype=dtype, device=device)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
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
            blocks = []
            for start in range(0, m, chunk):
                grads = torch.func.vmap(vjp_fn)(unit_rows(start, min(m, start + chunk)))
                blocks.append(_cat([g.reshape(g.shape[0], -1) for g in grads], dim=1).double())
            return _cat(blocks).cpu(), True
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


def _top_entries(score: torch.Tensor, a: torch.Tensor, n: torch.Tensor, k: int) -> list[int]:
    """Flat indices of the k largest scores, ties broken by the larger |a - n| (no full sort)."""
    if k == 0:
        return []

    def abs_err(idx):
        return (a[idx] - n[idx]).abs().nan_to_num(math.inf)

    values, chosen = torch.topk(score, min(k + 1, score.numel()))
    if values.numel() > k and values[k - 1] == values[k]:
        # A tie across the cut (e.g. many exact zeros): settle it by |a - n|.
        threshold = values[k - 1]
        above = torch.nonzero(score > threshold).reshape(-1)
        tied = torch.nonzero(score == threshold).reshape(-1)
        tied = tied[torch.topk(abs_err(tied), k - above.numel()).indices]
        chosen = torch.cat([above, tied])
    chosen = chosen[:k]
    # Small final sort (k entries, in Python): by score, then by |a - n|, both descending.
    keys = zip(score[chosen].tolist(), abs_err(chosen).tolist(), chosen.tolist(), strict=True)
    return [flat for *_, flat in sorted(keys, key=lambda t: (-t[0], -t[1]))]


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

    with torch.enable_grad():
        outputs = _outputs(fn, args)
        analytical, batched_ok = _analytical(fn, args, checked, outputs, batched)
    with torch.no_grad():
        plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        blocks = []
        for i in checked:
            block, ok = _numerical_block(fn, plain, i, eps, batched_ok)
            batched_ok = batched_ok and ok
            blocks.append(block)
        numerical = _cat(blocks, dim=1).cpu()
    if batched and not batched_ok:
        warnings.warn(
            "gradcheck: fn could not run under torch.func.vmap (or its backward under "
            "is_grads_batched); fell back to one call per perturbation, which is slower.",
            UserWarning, stacklevel=2,
        )
    if analytical.shape != numerical.shape:
        raise ValueError(f"fn's outputs changed size under perturbation: {analytical.shape} "
                         f"vs {numerical.shape}")

    # torch's criterion |a - n| <= atol + rtol |n|, and the same as a ratio (> 1 fails).
    diff = analytical.sub(numerical).abs_()
    tol = numerical.abs().mul_(rtol).add_(atol)
    ok = diff <= tol  # bit for bit what isclose computes for finite values
    all_ok = bool(ok.all())
    score = diff.div_(tol)  # in place: |a - n| itself is recomputed only where reported
    del diff, tol
    finite = all_ok or bool(torch.isfinite(analytical).all() and torch.isfinite(numerical).all())
    if not finite:  # inf == inf counts as close, as in isclose; NaN ratios: 0 if close, else inf
        ok = torch.isclose(analytical, numerical, rtol=rtol, atol=atol)
        all_ok = bool(ok.all())
        score = torch.where(ok, score.nan_to_num(0.0, posinf=0.0),
                            score.nan_to_num(math.inf).clamp(min=1.0))
    elif atol == 0:
        score.nan_to_num_(0.0)  # 0 / 0: an exact match where tol is 0
    n_failed = 0 if all_ok else int(ok.numel() - int(ok.sum()))
    out_shapes = [o.shape for o in outputs]
    out_starts = [0, *itertools.accumulate(o.numel() for o in outputs)]
    in_shapes = [args[i].shape for i in checked]
    in_starts = [0, *itertools.accumulate(args[i].numel() for i in checked)]
    worst = []
    a_flat, n_flat = analytical.reshape(-1), numerical.reshape(-1)
    for flat in _top_entries(score.reshape(-1), a_flat, n_flat, min(top, score.numel())):
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
