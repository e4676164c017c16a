"""A gradient check with a per-entry report: torch's criterion, batched evaluation.

``torch.autograd.gradcheck`` answers pass or fail. :func:`gradcheck` applies the same test,
``|a - n| <= atol + rtol |n|`` for every entry of the analytical Jacobian ``a`` against the
central-difference one ``n``, on the same outputs and inputs torch checks, and keeps both
Jacobians and the worst entries, so a reader sees *where* a backward is wrong.

The speed comes from batching, not from tricks: all perturbed inputs go through ``fn`` in one
``torch.func.vmap`` call, and the analytical Jacobian is one vmapped backward over unit
cotangents. Where batching cannot be trusted, it falls back to torch's own way (one call
per perturbation, the caller's input perturbed in place) and says so in the report:

* ``fn`` cannot run under vmap (in-place ops, ``.item()``, old-style autograd Functions);
* vmap runs but batches wrongly (seen with ``index_fill`` and a 0-d fill value): the first
  perturbation is evaluated both ways and compared;
* a checked input is a view into a larger storage (a storage offset, strides): a function
  that reads it through ``as_strided`` sees the storage, so only perturbing the caller's
  tensor in place gives it the function torch differentiates.

Measured against ``torch.autograd.gradcheck`` on torch's operator database (the first
float64 sample of every real-valued differentiable operator, ``tests/test_gradcheck_opdb.py``):
the same verdict on all 484, and both catch each of 150 deliberately wrong backwards. One
operator is left out of that count because torch's verdict is the wrong one:
``native_group_norm``, whose gradient test torch's own suite marks as an expected failure
(``TestBwdGradients.test_fn_grad``); numlab passes it.
"""
from __future__ import annotations

import bisect
import itertools
import math
import warnings
from dataclasses import dataclass, field

import torch

from numlab._jacobians import _analytical, _as_tuple, _is_plain, _numerical_batched, _numerical_loop, _outputs
from numlab.formats import short_name


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


def _precision_warning(dtype: torch.dtype, eps: float) -> str:
    mach = torch.finfo(dtype).eps
    return (f"gradcheck: inputs in {short_name(dtype)}, not float64. The central difference "
            f"then carries rounding error of about eps_mach*|f|/eps = {mach:.1e}*|f|/{eps:.0e} "
            f"= {mach / eps:.0e} relative, far above float64's {2.2e-16 / 1e-6:.0e}: "
            "failures may be rounding, not bugs. Check in float64.")


def _fallback_warning(note: str) -> str:
    return f"gradcheck: fell back from the batched path ({note}); slower, same verdict."


@dataclass(frozen=True)
class GradcheckReport:
    """The verdict of :func:`gradcheck`, the two Jacobians and the worst entries.

    ``outputs`` lists the outputs that were checked (those that require grad, as in torch);
    ``note`` says why the batched path was left, if it was.
    """

    passed: bool
    eps: float
    atol: float
    rtol: float
    dtype: torch.dtype
    batched: bool
    analytical: torch.Tensor = field(repr=False)  # (checked outputs, checked inputs), float64
    numerical: torch.Tensor = field(repr=False)
    worst: tuple[Entry, ...] = field(repr=False)
    n_failed: int = 0
    outputs: tuple[int, ...] = (0,)
    note: str = ""

    def __bool__(self):
        return self.passed

    @property
    def warnings(self) -> tuple[str, ...]:
        """What a reader of this verdict should be warned about (gradcheck warns the same)."""
        out = [] if self.dtype == torch.float64 else [_precision_warning(self.dtype, self.eps)]
        return (*out, _fallback_warning(self.note)) if self.note else tuple(out)

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
        ]
        if self.note:
            lines.append(f"  note: {self.note}")
        lines.append(f"  {'output':<14}{'input':<14}{'analytical':>13}{'numerical':>13}{'rel err':>10}")
        for e in self.worst:
            lines.append(
                f"  {f'{e.output}{list(e.out_index)}':<14}{f'{e.input}{list(e.in_index)}':<14}"
                f"{e.analytical:>13.6g}{e.numerical:>13.6g}{e.rel_error:>10.1e}"
            )
        return "\n".join(lines)


# --- the report -------------------------------------------------------------------------------
def _compare(a: torch.Tensor, n: torch.Tensor, atol: float, rtol: float):
    """torch's test per entry, ``|a - n| <= atol + rtol |n|`` where both are finite and
    ``a == n`` elsewhere (``torch.isclose``: inf == inf), and a score that ranks entries:
    ``|a - n| / (atol + rtol |n|)``, at least 1 exactly where the test fails."""
    diff = (a - n).abs()
    tol = n.abs().mul_(rtol).add_(atol)
    score = diff / tol
    if bool(torch.isfinite(score).all()):  # the common case: everything finite, atol > 0
        return diff <= tol, score
    finite = a.isfinite() & n.isfinite()
    ok = torch.where(finite, diff <= tol, a == n)
    # inf/NaN, or 0/0 where atol = 0: passing entries score 0, failing ones at least 1
    score = torch.where(ok, score.nan_to_num(0.0, posinf=0.0), score.nan_to_num(math.inf).clamp(min=1.0))
    return ok, score


def _worst(score: torch.Tensor, err: torch.Tensor, k: int) -> list[int]:
    """Flat indices of the k largest scores; ties by the larger |a - n|, then the later index."""
    flat, err = score.reshape(-1), err.reshape(-1).nan_to_num(math.inf)
    if k == 0 or flat.numel() == 0:
        return []
    values, chosen = torch.topk(flat, min(k + 1, flat.numel()))
    if values.numel() > k and values[k - 1] == values[k]:  # a tie across the cut
        cut = values[k - 1]
        above = torch.nonzero(flat > cut).reshape(-1)
        tied = torch.nonzero(flat == cut).reshape(-1)
        keys = sorted(zip(err[tied].tolist(), tied.tolist(), strict=True), reverse=True)
        chosen = torch.cat([above, torch.tensor([t for _, t in keys[:k - above.numel()]], dtype=torch.long)])
    chosen = chosen[:k].tolist()
    return sorted(chosen, key=lambda f: (-float(flat[f]), -float(err[f]), -f))


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


def _entries(analytical, numerical, score, outputs, keep, args, checked, top) -> tuple[Entry, ...]:
    out_starts = [0, *itertools.accumulate(outputs[j].numel() for j in keep)]
    in_starts = [0, *itertools.accumulate(args[i].numel() for i in checked)]
    entries = []
    for flat in _worst(score, analytical - numerical, top):
        r, c = divmod(flat, score.shape[1])
        o = bisect.bisect_right(out_starts, r) - 1
        j = bisect.bisect_right(in_starts, c) - 1
        a, n = float(analytical[r, c]), float(numerical[r, c])
        big = max(abs(a), abs(n))
        entries.append(Entry(
            output=keep[o], out_index=_index(r - out_starts[o], outputs[keep[o]].shape),
            input=checked[j], in_index=_index(c - in_starts[j], args[checked[j]].shape),
            analytical=a, numerical=n, abs_error=abs(a - n),
            rel_error=abs(a - n) / big if big > 0 else 0.0, score=float(score[r, c]),
        ))
    return tuple(entries)


def _check_settings(fn, inputs, eps, atol, rtol, top, batched):
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    args = _as_tuple(inputs)
    checked = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("inputs must contain at least one tensor with requires_grad=True")
    for i in checked:
        if not args[i].is_floating_point():
            raise TypeError(f"inputs[{i}] requires grad but has dtype {args[i].dtype}: "
                            "gradcheck checks real floating-point inputs")
        if args[i].layout != torch.strided:
            raise TypeError(f"inputs[{i}] is a {args[i].layout} tensor: gradcheck checks dense "
                            "tensors (convert with .to_dense())")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 \
                or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top must be an int >= 0, got {top!r}")
    if not isinstance(batched, bool):
        raise TypeError(f"batched must be True or False, got {batched!r}")
    least = max({args[i].dtype for i in checked}, key=lambda d: torch.finfo(d).eps)
    if eps is None:
        eps = 1e-6 if least == torch.float64 else torch.finfo(least).eps ** (1 / 3)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    return args, checked, float(eps), least


def gradcheck(fn, inputs, eps=None, atol=1e-5, rtol=1e-3, *, top=5, batched=True) -> GradcheckReport:
    """Compare ``fn``'s autograd Jacobian with central differences, entry by entry.

    An entry passes when ``|a - n| <= atol + rtol * |n|`` (``a`` analytical, ``n``
    numerical), torch's test, on the outputs that require grad (torch skips the others,
    e.g. the saved mean and inverse std that ``native_layer_norm`` returns) and the inputs
    that require grad; with the same eps, atol and rtol the verdict is torch's. ``eps=None``
    means torch's 1e-6 for float64 inputs and ``cbrt(eps_mach)`` of the least precise input
    otherwise. ``batched=False`` forces the loop.
    """
    args, checked, eps, least = _check_settings(fn, inputs, eps, atol, rtol, top, batched)
    if least != torch.float64:
        warnings.warn(_precision_warning(least, eps), UserWarning, stacklevel=2)
    with torch.enable_grad():
        outputs = _outputs(fn, args)
    keep = [j for j, o in enumerate(outputs) if o.requires_grad]
    if not keep:
        raise TypeError("fn must return at least one floating-point tensor that requires grad, got "
                        f"{[(o.dtype, o.requires_grad) for o in outputs]}: nothing to check")
    note = ""
    if batched and not all(_is_plain(args[i]) for i in checked):
        batched, note = False, "an input is a view into a larger storage: perturbed in place, one call each"
    with torch.enable_grad():
        analytical, batched_ok = _analytical(fn, args, checked, outputs, keep, batched)
    columns = []
    for i in checked:
        if args[i].numel() == 0:  # nothing to perturb
            columns.append(torch.zeros(analytical.shape[0], 0, dtype=torch.float64))
            continue
        col = _numerical_batched(fn, args, i, eps, keep) if batched_ok else None
        if col is None:
            if batched_ok:
                note = "fn could not be batched (or batched differently): one call per perturbation"
            batched_ok = False
            col = _numerical_loop(fn, args, i, eps, keep)
        columns.append(col.detach().cpu())
    numerical, analytical = torch.cat(columns, 1), analytical.detach()
    if batched and not batched_ok:
        note = note or "fn's backward could not be batched: one backward per output entry"
        warnings.warn(_fallback_warning(note), UserWarning, stacklevel=2)
    ok, score = _compare(analytical, numerical, atol, rtol)
    return GradcheckReport(
        passed=bool(ok.all()), eps=eps, atol=float(atol), rtol=float(rtol), dtype=least,
        batched=batched_ok, analytical=analytical, numerical=numerical,
        worst=_entries(analytical, numerical, score, outputs, keep, args, checked, min(top, score.numel())),
        n_failed=int((~ok).sum()), outputs=tuple(keep), note=note,
    )


# --- speed ------------------------------------------------------------------------------------
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
    """Time :func:`gradcheck` against ``torch.autograd.gradcheck(fast_mode=False)``, one thread."""
    from numlab.device import threads, time_calls

    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
    with threads(1):
        ours = min(time_calls(lambda: gradcheck(fn, inputs), repeat))
        theirs = min(time_calls(lambda: torch.autograd.gradcheck(fn, inputs), repeat))
    return SpeedComparison(ours, theirs)
