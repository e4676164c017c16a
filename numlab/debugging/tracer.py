"""The forward non-finite tracer: :func:`trace_nonfinite` hooks every module's forward and
reports the first module, by qualified name and in call order, whose output holds an inf or a
NaN, with min / max / finite fraction of its inputs and output. Anomaly mode cannot do this:
it only looks at the *backward* pass."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from numlab._checks import flag, int_at_least
from numlab.debugging.tools import _check_module


@dataclass(frozen=True)
class TensorStats:
    """min / max over the non-NaN entries (infinities included), finite fraction, NaN count."""

    shape: tuple[int, ...]
    min: float
    max: float
    finite_fraction: float
    nan_count: int

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorStats:
        t = t.detach()
        if not t.is_floating_point() and not t.is_complex():
            t = t.double()
        if t.is_complex():
            t = t.abs()
        notnan = t[~torch.isnan(t)]
        lo = float(notnan.min()) if notnan.numel() else float("nan")
        hi = float(notnan.max()) if notnan.numel() else float("nan")
        finite = float(torch.isfinite(t).double().mean()) if t.numel() else 1.0
        return cls(tuple(t.shape), lo, hi, finite, int(torch.isnan(t).sum()))

    @property
    def finite(self) -> bool:
        return self.finite_fraction == 1.0

    def __repr__(self):
        return (f"[{'x'.join(map(str, self.shape))}] min {self.min:.3g} max {self.max:.3g} "
                f"finite {self.finite_fraction:.1%} NaN {self.nan_count}")


def _tensors(obj) -> list[torch.Tensor]:
    """Every tensor inside nested tuples / lists / dicts."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, tuple | list):
        return [t for item in obj for t in _tensors(item)]
    return []


@dataclass(frozen=True)
class NonFiniteEvent:
    """One module call whose output held an inf or a NaN."""

    module: str          # qualified name, as in model.named_modules(); "" is the model itself
    kind: str            # class name
    call_index: int      # position of this call among all module calls of the forward pass
    inputs: tuple[TensorStats, ...]
    output: tuple[TensorStats, ...]

    @property
    def inputs_finite(self) -> bool:
        """True when this module *created* the non-finite values (its inputs were clean)."""
        return all(s.finite for s in self.inputs)

    def __repr__(self):
        name = self.module or "(model)"
        origin = "created here" if self.inputs_finite else "inputs already non-finite"
        ins = "; ".join(map(repr, self.inputs)) or "none"
        outs = "; ".join(map(repr, self.output))
        return (f"NonFiniteEvent({name!r} ({self.kind}), call #{self.call_index}, {origin}\n"
                f"  inputs: {ins}\n  output: {outs})")


@dataclass
class NonFiniteTrace:
    """What :func:`trace_nonfinite` saw: ``.first`` is the first non-finite module output."""

    events: list[NonFiniteEvent] = field(default_factory=list)
    calls: int = 0

    @property
    def first(self) -> NonFiniteEvent | None:
        return self.events[0] if self.events else None

    @property
    def found(self) -> bool:
        return bool(self.events)

    def __repr__(self):
        if not self.events:
            return f"NonFiniteTrace({self.calls} module calls, all outputs finite)"
        first = self.first
        return (f"NonFiniteTrace({self.calls} module calls; first non-finite output from "
                f"{first.module or '(model)'!r} ({first.kind}, call #{first.call_index}); "
                f"{len(self.events)} non-finite outputs in all)")


def trace_nonfinite(model: nn.Module, *, raise_on_first: bool = False, max_events: int = 64):
    """Hook every module of ``model``; report the first whose forward output is non-finite.

    A module's forward hook fires when its call *finishes*, so children report before
    their parent and the first event is the innermost module that produced the bad value.
    ``raise_on_first=True`` raises ``FloatingPointError`` right there (the rest of the
    forward pass is skipped). The hooks are removed on exit, also when the body raises.

        with trace_nonfinite(model) as trace:
            loss = loss_fn(model(x), y)
        print(trace.first)

    The arguments are checked at the call, before the ``with`` block starts.
    """
    _check_module(model)
    return _traced(model, flag("raise_on_first", raise_on_first), int_at_least("max_events", max_events, 1))


@contextlib.contextmanager
def _traced(model: nn.Module, raise_on_first: bool, max_events: int):
    trace = NonFiniteTrace()
    started: list[int] = []  # call indices of the module calls in progress (a stack)

    def pre_hook(_module, _inputs):
        started.append(trace.calls)
        trace.calls += 1

    def make_post_hook(name):
        def post_hook(module, inputs, output):
            index = started.pop() if started else -1
            outs = _tensors(output)
            # the cheap test first; the statistics only for the rare bad call
            if all(bool(torch.isfinite(t).all()) for t in outs if t.is_floating_point()):
                return
            if len(trace.events) < max_events:
                trace.events.append(NonFiniteEvent(
                    name, type(module).__name__, index,
                    tuple(TensorStats.of(t) for t in _tensors(inputs)),
                    tuple(TensorStats.of(t) for t in outs)))
            if raise_on_first and len(trace.events) == 1:
                raise FloatingPointError(f"non-finite output from module {name or '(model)'!r} "
                                         f"({type(module).__name__}): {trace.events[0]!r}")

        return post_hook

    handles = []
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(make_post_hook(name)))
        yield trace
    finally:
        for handle in handles:
            handle.remove()
