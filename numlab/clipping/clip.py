"""One gradient clipped by global norm (``torch.nn.utils.clip_grad_norm_``) and by value
(``torch.nn.utils.clip_grad_value_``), with the norms and the cosine of each to the original;
and a norm clip that refuses a non-finite gradient instead of spreading it."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from numlab._checks import flag, fp32_number

_NEGATIVE_MAX_NORM = (
    " (torch.nn.utils.clip_grad_norm_ accepts a negative max_norm and silently flips the"
    " sign of every gradient; a zero one erases the gradient)"
)


def _check_max_norm(max_norm) -> float:
    return fp32_number("max_norm", max_norm, _NEGATIVE_MAX_NORM)


def _check_clip_value(clip_value) -> float:
    return fp32_number(
        "clip_value", clip_value,
        " (torch.nn.utils.clip_grad_value_ with a negative value sets every entry to it)",
    )



@dataclass(frozen=True, repr=False)
class ClipComparison:
    """A gradient (flattened) and its norm-clipped and value-clipped versions."""

    original: torch.Tensor
    by_norm: torch.Tensor
    by_value: torch.Tensor
    max_norm: float
    clip_value: float
    norm: float
    norm_by_norm: float
    norm_by_value: float
    cos_by_norm: float
    cos_by_value: float
    finite: bool

    @property
    def clipped(self) -> bool:
        """Whether ``clip_grad_norm_`` scaled the gradient down (its norm exceeded max_norm)."""
        return self.norm > self.max_norm

    def __repr__(self):
        flag = "" if self.finite else ", NON-FINITE"
        return (
            f"ClipComparison(|g| = {self.norm:.4g}; by norm (max_norm={self.max_norm:g}): "
            f"|g| = {self.norm_by_norm:.4g}, cos = {self.cos_by_norm:.4f}; by value "
            f"(clip_value={self.clip_value:g}): |g| = {self.norm_by_value:.4g}, "
            f"cos = {self.cos_by_value:.4f}{flag})"
        )


def _as_grads(grad) -> list[torch.Tensor]:
    if isinstance(grad, torch.Tensor):
        grads = [grad]
    elif isinstance(grad, Sequence) and not isinstance(grad, str) and grad:
        grads = list(grad)
    else:
        raise TypeError(f"grad must be a tensor or a non-empty list of tensors, got {grad!r}")
    for g in grads:
        if not isinstance(g, torch.Tensor) or not g.is_floating_point():
            raise TypeError(f"grad must hold floating-point tensors, got {type(g).__name__}"
                            f"{'' if not isinstance(g, torch.Tensor) else ' of ' + str(g.dtype)}")
    return grads


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a @ b) / (a.norm() * b.norm()))


def clip_comparison(grad, max_norm: float = 1.0, clip_value: float | None = None, *,
                    error_if_nonfinite: bool = False) -> ClipComparison:
    """Clip ``grad`` by global norm and by value, with torch's own functions, and compare.

    ``grad`` is a tensor or a list of tensors (one per parameter); the list is clipped
    jointly, as ``clip_grad_norm_`` does for a model. ``clip_value`` defaults to
    ``max_norm``. By norm, ``g -> g * min(1, max_norm / |g|)``: the direction is kept
    (cosine 1). By value, each entry is clamped to ``[-clip_value, clip_value]``: the
    direction turns towards the diagonal of the box.

    A non-finite gradient is flagged (``finite=False``); with ``error_if_nonfinite=True``
    it raises ``ValueError`` instead, mirroring torch's argument of the same name.
    """
    grads = _as_grads(grad)
    max_norm = _check_max_norm(max_norm)
    clip_value = max_norm if clip_value is None else _check_clip_value(clip_value)
    error_if_nonfinite = flag("error_if_nonfinite", error_if_nonfinite)
    by_norm = [torch.nn.Parameter(g.detach().clone()) for g in grads]
    by_value = [torch.nn.Parameter(g.detach().clone()) for g in grads]
    for p, g in zip(by_norm + by_value, grads + grads, strict=True):
        p.grad = g.detach().clone()
    try:
        total = torch.nn.utils.clip_grad_norm_(by_norm, max_norm,
                                               error_if_nonfinite=error_if_nonfinite)
    except RuntimeError as err:
        raise ValueError(
            "grad has a non-finite norm (inf or NaN), so it cannot be clipped; pass "
            "error_if_nonfinite=False to get a flagged result, or find where it came from "
            "(numlab.debugging)"
        ) from err
    torch.nn.utils.clip_grad_value_(by_value, clip_value)
    flat = lambda ps: torch.cat([p.grad.reshape(-1) for p in ps])
    original = torch.cat([g.detach().reshape(-1) for g in grads])
    g_norm, g_value = flat(by_norm), flat(by_value)
    return ClipComparison(
        original=original, by_norm=g_norm, by_value=g_value, max_norm=max_norm,
        clip_value=clip_value, norm=float(total), norm_by_norm=float(g_norm.double().norm()),
        norm_by_value=float(g_value.double().norm()), cos_by_norm=_cosine(original, g_norm),
        cos_by_value=_cosine(original, g_value), finite=bool(torch.isfinite(total)),
    )


def clip_grad_norm_checked_(parameters, max_norm: float, *, error_if_nonfinite: bool = True):
    """``torch.nn.utils.clip_grad_norm_`` that refuses ``max_norm <= 0`` and non-finite norms.

    Returns the total norm before clipping. torch itself accepts a negative ``max_norm``
    and then multiplies every gradient by a negative number (the optimiser climbs);
    by default it also scales by a NaN norm silently.
    """
    max_norm = _check_max_norm(max_norm)
    error_if_nonfinite = flag("error_if_nonfinite", error_if_nonfinite)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    if not isinstance(parameters, Iterable) or isinstance(parameters, str):
        raise TypeError(f"parameters must be a tensor or an iterable of tensors, got {parameters!r}")
    try:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm,
                                              error_if_nonfinite=error_if_nonfinite)
    except RuntimeError as err:
        raise ValueError(
            "the gradients have a non-finite total norm (inf or NaN); pass "
            "error_if_nonfinite=False to clip anyway (the result is NaN)"
        ) from err
