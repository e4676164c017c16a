"""Reusable tools for a training loop: per-layer gradient norms, a NaN guard, a forward tracer.

* :class:`GradNormLogger` records each layer's gradient norm and weight norm every
  ``every`` steps through parameter hooks; ``.history`` (a :class:`NormHistory`) is a table.
* :class:`NanGuard` is called once per step with the loss and raises ``FloatingPointError``
  at the first non-finite one, naming the step, the value and the last finite step.
* :func:`trace_nonfinite` hooks every module's forward and reports the first module, by
  qualified name and in call order, whose output holds an inf or a NaN.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from numlab._checks import flag, int_at_least


def _check_module(model, name="model"):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")


# --- gradient-norm logging ---------------------------------------------------------------
@dataclass(frozen=True)
class NormHistory:
    """Per-layer norms at the logged steps: ``grad[i, j]`` is layer j's gradient norm at ``steps[i]``.

    A layer's norm is the L2 norm of all its own parameters' entries taken together,
    ``sqrt(sum_p ||p||^2)``; a layer that got no gradient at a logged step holds NaN.
    """

    steps: np.ndarray
    layers: tuple[str, ...]
    grad: np.ndarray
    weight: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        """``||grad|| / ||weight||``: the relative size of a plain SGD step (per unit lr)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.grad / self.weight

    @property
    def global_grad(self) -> np.ndarray:
        """The whole model's gradient norm at each logged step (what clip_grad_norm_ sees)."""
        return np.sqrt(np.nansum(self.grad**2, axis=1)) if self.grad.size else self.grad

    def layer(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(gradient norms, weight norms) of one layer over the logged steps."""
        if name not in self.layers:
            raise ValueError(f"name must be one of the logged layers {list(self.layers)}, got {name!r}")
        j = self.layers.index(name)
        return self.grad[:, j], self.weight[:, j]

    def outlier(self, what: str = "ratio", min_decades: float = 1.5) -> str | None:
        """The layer that strays farthest from the others, in powers of ten, at any logged step.

        At each step every layer's log10 value is compared with the median over layers; a
        layer's score is its largest such distance. Returns the top-scoring layer, or None
        when no score reaches ``min_decades``.
        """
        values = {"ratio": self.ratio, "grad": self.grad, "weight": self.weight}.get(what)
        if values is None:
            raise ValueError(f"what must be 'ratio', 'grad' or 'weight', got {what!r}")
        if isinstance(min_decades, bool) or not isinstance(min_decades, int | float) \
                or not min_decades >= 0:
            raise ValueError(f"min_decades must be a number >= 0, got {min_decades!r}")
        if len(self.layers) < 2 or not self.steps.size:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(values)
        logs[~np.isfinite(logs)] = np.nan
        rows = ~np.isnan(logs).all(axis=1)
        if not rows.any():
            return None
        logs = logs[rows]
        distance = np.abs(logs - np.nanmedian(logs, axis=1, keepdims=True))
        score = np.where(np.isnan(distance).all(axis=0), -np.inf,
                         np.nanmax(np.where(np.isnan(distance), -np.inf, distance), axis=0))
        if score.max() < min_decades:
            return None
        return self.layers[int(np.argmax(score))]

    def table(self, max_rows: int = 12) -> str:
        """The history as a fixed-width text table (one row per step and layer)."""
        head = f"{'step':>6}  {'layer':<14} {'|grad|':>10} {'|weight|':>10} {'ratio':>10}"
        rows = [head]
        ratio = self.ratio
        for i, step in enumerate(self.steps):
            for j, name in enumerate(self.layers):
                rows.append(f"{int(step):>6}  {name:<14} {self.grad[i, j]:>10.3e} "
                            f"{self.weight[i, j]:>10.3e} {ratio[i, j]:>10.3e}")
        if len(rows) > max_rows + 1:
            keep = max_rows // 2
            rows = rows[: keep + 1] + [f"... ({len(rows) - 1 - 2 * keep} rows)"] + rows[-keep:]
        return "\n".join(rows)

    def rows(self) -> list[dict]:
        """One dict per (step, layer), ready for ``pandas.DataFrame(history.rows())``."""
        return [
            {"step": int(s), "layer": name, "grad_norm": float(self.grad[i, j]),
             "weight_norm": float(self.weight[i, j])}
            for i, s in enumerate(self.steps) for j, name in enumerate(self.layers)
        ]

    def __repr__(self):
        return (f"NormHistory({len(self.steps)} logged steps x {len(self.layers)} layers "
                f"{list(self.layers)})")


class GradNormLogger:
    """Record each layer's gradient and weight norm every ``every`` steps, through hooks.

    A *step* is one forward call of ``model`` with autograd enabled (evaluation under
    ``torch.no_grad()`` does not count); the first is step 0. After each backward, a
    ``register_post_accumulate_grad_hook`` on every parameter stores ``||p.grad||`` and
    ``||p||`` (in float64) if the current step is a multiple of ``every``. With gradient
    accumulation the last backward of a step wins, i.e. the norm the optimiser sees.
    Use ``.remove()`` (or ``with GradNormLogger(model) as log:``) to detach the hooks.
    """

    def __init__(self, model: nn.Module, every: int = 1):
        _check_module(model)
        self.every = int_at_least("every", every, 1)
        self.step = -1
        self._layers: list[str] = []
        self._records: dict[int, dict[str, list[float]]] = {}
        self._handles = [model.register_forward_pre_hook(self._on_forward)]
        for name, module in model.named_modules():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not params:
                continue
            label = name or type(module).__name__
            self._layers.append(label)
            for index, param in enumerate(params):
                hook = self._make_hook(label, index, len(params))
                self._handles.append(param.register_post_accumulate_grad_hook(hook))
        if not self._layers:
            self.remove()
            raise ValueError("model must have at least one parameter with requires_grad=True")

    def _on_forward(self, _module, _inputs):
        if torch.is_grad_enabled():
            self.step += 1

    def _make_hook(self, label, index, count):
        def hook(param):
            step = max(self.step, 0)
            if step % self.every:
                return
            g = torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float64).item()
            w = torch.linalg.vector_norm(param.detach(), dtype=torch.float64).item()
            per_param = self._records.setdefault(step, {}).setdefault(
                label, [np.nan] * (2 * count))
            per_param[index], per_param[count + index] = g, w

        return hook

    @property
    def history(self) -> NormHistory:
        steps = sorted(self._records)
        grad = np.full((len(steps), len(self._layers)), np.nan)
        weight = np.full_like(grad, np.nan)
        for i, step in enumerate(steps):
            for j, label in enumerate(self._layers):
                values = self._records[step].get(label)
                if values is None:
                    continue
                half = len(values) // 2
                # sqrt(sum of squares) over the layer's parameters: one norm per layer.
                grad[i, j] = np.sqrt(np.sum(np.square(values[:half])))
                weight[i, j] = np.sqrt(np.sum(np.square(values[half:])))
        return NormHistory(np.array(steps, dtype=np.int64), tuple(self._layers), grad, weight)

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Detach every hook (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self):
        state = "attached" if self.attached else "removed"
        return f"GradNormLogger({len(self._layers)} layers, every={self.every}, {state}, " \
               f"{len(self._records)} steps logged)"


# --- NaN guard ----------------------------------------------------------------------------
class NanGuard:
    """Call once per step with the loss; raises ``FloatingPointError`` at the first non-finite one.

    ``guard(loss)`` numbers the steps 0, 1, 2, ... itself (or pass ``step=``). The error
    names the step, the offending value and the last step whose loss was finite, so the
    run stops at the batch that went wrong instead of an hour later. As a context manager
    (``with NanGuard() as guard:``) it starts fresh on entry and records ``.tripped_at``.
    """

    def __init__(self):
        self._reset()

    def _reset(self):
        self.next_step = 0
        self.last_finite_step: int | None = None
        self.last_finite_loss: float | None = None
        self.tripped_at: int | None = None
        self.checked = 0

    def __call__(self, loss, step: int | None = None) -> float:
        if isinstance(loss, torch.Tensor):
            if not loss.is_floating_point() or loss.numel() == 0:
                raise TypeError(f"loss must be a non-empty floating-point tensor or a float, "
                                f"got a {loss.dtype} tensor of shape {tuple(loss.shape)}")
            values = loss.detach().reshape(-1)
            finite = bool(torch.isfinite(values).all())
            bad = values[~torch.isfinite(values)]
            value = float(values[0] if finite or values.numel() == 1 else bad[0])
        elif isinstance(loss, int | float | np.floating | np.integer) and not isinstance(loss, bool):
            value = float(loss)
            finite = bool(np.isfinite(value))
        else:
            raise TypeError(f"loss must be a floating-point tensor or a float, got {type(loss).__name__}")
        if step is None:
            step = self.next_step
        else:
            step = int_at_least("step", step, 0)
        self.next_step = step + 1
        self.checked += 1
        if finite:
            self.last_finite_step, self.last_finite_loss = step, value
            return value
        self.tripped_at = step
        if self.last_finite_step is None:
            before = "no earlier step had a finite loss"
        else:
            before = f"last finite step {self.last_finite_step} (loss {self.last_finite_loss:.4g})"
        raise FloatingPointError(f"non-finite loss at step {step}: loss = {value}; {before}")

    def __enter__(self):
        self._reset()
        return self

    def __exit__(self, *exc):
        return False

    def __repr__(self):
        state = f"tripped at step {self.tripped_at}" if self.tripped_at is not None else "quiet"
        return f"NanGuard({self.checked} steps checked, {state}, last finite step " \
               f"{self.last_finite_step})"


# --- forward non-finite tracer --------------------------------------------------------------
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
