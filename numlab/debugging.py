"""Hunting NaNs: find *when* a run goes wrong, *where*, and whether it is numerics at all.

Four tools and one set of experiments:

* :class:`GradNormLogger` records each layer's gradient norm and weight norm every
  ``every`` steps through parameter hooks; ``.history`` is a table, ``.remove()`` detaches.
* :class:`NanGuard` is called once per step with the loss and raises ``FloatingPointError``
  at the first non-finite one, naming the step, the value and the last finite step.
* :func:`trace_nonfinite` hooks every module's forward and reports the first module, by
  qualified name and in call order, whose output holds an inf or a NaN, with min / max /
  finite fraction of its inputs and output. Anomaly mode cannot do this: it only looks at
  the *backward* pass.
* :func:`anomaly_report` / :func:`anomaly_demo` run ``torch.autograd.detect_anomaly()`` on a
  genuine backward-only NaN, capture what it prints, return the source line it blames, and
  :func:`anomaly_overhead` measures what it costs per training step.
* :func:`pathology_run` trains tiny models into four failures that look alike on one loss
  curve (numerical blow-up, overfitting, preprocessing mismatch, leak between splits) plus
  a healthy baseline; :func:`diagnose_curves` names the failure from the signals that
  separate them.

Only torch and numpy are imported here.
"""
from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from numlab._checks import flag, int_at_least, positive_number, real_array
from numlab._checks import seed as check_seed
from numlab.device import seeded, threads

__all__ = [
    "NormHistory", "GradNormLogger", "NanGuard", "TensorStats", "NonFiniteEvent",
    "NonFiniteTrace", "trace_nonfinite", "AnomalyReport", "anomaly_report", "AnomalyOverhead",
    "anomaly_overhead", "AnomalyDemo", "anomaly_demo", "PairwiseDistance", "MaskedEntropy",
    "LogCompress", "forward_nan_model", "misinit_mlp", "MisinitRun", "misinit_run",
    "GuardRun", "nanguard_run", "PATHOLOGIES", "Diagnosis", "diagnose_curves", "CurveRun",
    "pathology_run", "split_overlap", "input_shift", "falls_while_val_rises",
]


# --- argument checks ---------------------------------------------------------------------
def _check_module(model, name="model"):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")


def _check_dtype(dtype):
    from numlab.formats import COMPUTE_DTYPES, resolve_dtype  # lazy: imported on use

    return resolve_dtype(dtype, COMPUTE_DTYPES)




def _device(device):
    from numlab.device import pick

    return pick(device)


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


# --- anomaly mode ---------------------------------------------------------------------------
_TORCH_DIR = os.path.dirname(torch.__file__)
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n\s+(?P<src>[^\n]*)')


@dataclass(frozen=True)
class AnomalyReport:
    """What ``torch.autograd.detect_anomaly()`` said about one backward pass."""

    function: str | None   # backward node that returned NaN, e.g. 'PowBackward0'; None: no error
    file: str | None       # the frame anomaly mode blames: last frame outside torch itself
    lineno: int | None
    line: str | None       # that frame's source line
    error: str | None      # the RuntimeError's message
    captured: str          # every warning anomaly mode emitted, as text (not printed)

    @property
    def raised(self) -> bool:
        return self.function is not None

    def trimmed(self, frames: int = 3) -> str:
        """``captured`` with each forward traceback cut to its innermost ``frames`` frames,
        without line numbers."""
        frames = int_at_least("frames", frames, 1)
        out = []
        for text in self.captured.split("\nUserWarning: "):
            head, sep, rest = text.partition("Traceback of forward call that caused the error:\n")
            if not sep:
                out.append(text)
                continue
            body, _, tail = rest.partition(" (Triggered internally")
            found = list(_FRAME.finditer(body))
            kept = body[found[-frames].start():] if len(found) > frames else body
            skipped = f"  ... {len(found) - frames} outer frames ...\n" if len(found) > frames else ""
            out.append(head + sep + skipped + "  " + kept.rstrip() + "\n (Triggered internally" + tail)
        # line numbers dropped: they move with every edit of the file (a committed notebook
        # would show stale ones); the file, function and code line say where it was
        return re.sub(r", line \d+, in ", ", in ", "\nUserWarning: ".join(out))

    def __repr__(self):
        if not self.raised:
            return "AnomalyReport(no NaN in the backward pass: anomaly mode raised nothing)"
        # The file, not its line number: a number moves with every unrelated edit above it,
        # and the committed notebook would print a stale one (.lineno keeps it).
        return (f"AnomalyReport({self.function} returned NaN; blamed a line in "
                f"{os.path.basename(self.file or '?')}: {self.line})")


def anomaly_report(fn) -> AnomalyReport:
    """Run ``fn()`` (a forward + backward) under ``torch.autograd.detect_anomaly()``.

    Anomaly mode writes its findings as Python warnings (one on entry, one with the
    forward traceback of the failing node); they are captured here, not printed, and
    returned as ``.captured``. Errors other than anomaly mode's own propagate.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable that runs a forward and a backward pass, got {fn!r}")
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly():
                fn()
        except RuntimeError as err:
            if "returned nan values" not in str(err):
                raise
            error = str(err)
    captured = "\n".join(f"{w.category.__name__}: {w.message}" for w in caught)
    if error is None:
        return AnomalyReport(None, None, None, None, None, captured)
    function = re.search(r"Function '(\w+)'", error).group(1)
    file = lineno = line = None
    for w in caught:
        text = str(w.message)
        if "Traceback of forward call" not in text:
            continue
        frames = [m for m in _FRAME.finditer(text) if not m["file"].startswith(_TORCH_DIR)]
        if frames:
            file, lineno, line = frames[-1]["file"], int(frames[-1]["line"]), frames[-1]["src"].strip()
    return AnomalyReport(function, file, lineno, line, error, captured)


class PairwiseDistance(nn.Module):
    """All pairwise Euclidean distances between rows: the diagonal is exactly 0.

    Forward is fine (sqrt(0) = 0); backward is not: d sqrt(s)/ds = 1/(2 sqrt(s)) is inf at
    s = 0, and the next node multiplies it by (x_i - x_i) = 0, giving inf * 0 = NaN.
    """

    def forward(self, x):
        sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        return sq.sqrt()


class MaskedEntropy(nn.Module):
    """Entropy of softmax(logits) with 0 log 0 masked out by ``torch.where`` (the NaN trap).

    Forward is finite; but ``where`` routes a zero gradient into the masked branch, and that
    branch's backward computes 0 * log(0) = 0 * (-inf) = NaN wherever p underflowed to 0.
    """

    def forward(self, logits):
        p = torch.softmax(logits, dim=-1)
        plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
        return -plogp.sum(-1)


class LogCompress(nn.Module):
    """log of the features: NaN in the *forward* pass as soon as a feature is negative."""

    def forward(self, x):
        return torch.log(x)


def forward_nan_model(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A model whose forward pass creates NaN in module ``"3"`` (LogCompress), and its input."""
    seed = int_at_least("seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    with seeded(seed):
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), LogCompress(), nn.Linear(8, 1))
    return model, torch.randn(16, 4, generator=gen)


@dataclass(frozen=True)
class AnomalyOverhead:
    """Median wall time of one training step with anomaly mode off and on."""

    off_s: float
    on_s: float
    repeats: int
    ops_per_step: str

    @property
    def slowdown(self) -> float:
        return self.on_s / self.off_s

    def __repr__(self):
        return (f"AnomalyOverhead(step {self.off_s * 1e3:.2f} ms off, {self.on_s * 1e3:.2f} ms on: "
                f"{self.slowdown:.1f}x slower; {self.ops_per_step}, median of {self.repeats})")


def anomaly_overhead(depth: int = 8, width: int = 64, batch: int = 64, repeats: int = 15,
                     seed: int = 0) -> AnomalyOverhead:
    """Time one SGD step of a ``depth``-layer tanh MLP with anomaly mode off and on (interleaved).

    Single-threaded, so that the ratio does not depend on what else the machine is doing.
    """
    depth = int_at_least("depth", depth, 1)
    width = int_at_least("width", width, 1)
    batch = int_at_least("batch", batch, 1)
    repeats = int_at_least("repeats", repeats, 1)
    with seeded(check_seed(seed)):
        layers = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.Tanh()]
        model = nn.Sequential(*layers, nn.Linear(width, 1))
        x, y = torch.randn(batch, width), torch.randn(batch, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    def timed(anomaly):
        with torch.autograd.set_detect_anomaly(anomaly):
            start = time.perf_counter()
            step()
            return time.perf_counter() - start

    with warnings.catch_warnings(), threads(1):
        warnings.simplefilter("ignore")  # anomaly mode's "will increase the runtime" notice
        for anomaly in (False, True):  # warm-up both paths
            timed(anomaly)
        off, on = [], []
        for _ in range(repeats):
            off.append(timed(False))
            on.append(timed(True))
    return AnomalyOverhead(statistics.median(off), statistics.median(on), repeats,
                           f"{depth} x Linear({width},{width})+Tanh, batch {batch}")


@dataclass(frozen=True)
class AnomalyDemo:
    """A backward-only NaN: silent without anomaly mode, located with it."""

    case: str
    forward_loss: float       # finite: nothing looks wrong in the forward pass
    nan_grads_without: int    # NaN gradient entries after a plain backward (no error raised)
    report: AnomalyReport     # what anomaly mode blamed
    overhead: AnomalyOverhead | None

    def __repr__(self):
        cost = f"; {self.overhead!r}" if self.overhead is not None else ""
        return (f"AnomalyDemo({self.case}: loss {self.forward_loss:.4g} finite, "
                f"{self.nan_grads_without} NaN grads without anomaly mode; {self.report!r}{cost})")


ANOMALY_CASES = ("sqrt", "entropy")


def _anomaly_case(case, seed):
    with seeded(seed):
        return _anomaly_model(case, seed)


def _anomaly_model(case, seed):
    if case == "sqrt":
        # points embedded by a linear layer and spread apart by their mean pairwise distance
        embed, head = nn.Linear(4, 3), PairwiseDistance()
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
        return embed, lambda: head(embed(x)).mean()
    # very confident logits: some softmax probabilities underflow to exactly 0 in fp32
    layer, head = nn.Linear(4, 5), MaskedEntropy()
    x = 300.0 * torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))
    return layer, lambda: head(layer(x)).mean()


def anomaly_demo(case: str = "sqrt", *, measure: bool = True, seed: int = 0) -> AnomalyDemo:
    """A genuine backward-only NaN (``"sqrt"``: distance at 0; ``"entropy"``: masked 0 log 0).

    Runs it once plainly (the loss is finite, no error, the gradients hold NaN) and once
    under ``detect_anomaly()`` (it raises, and names a node and a source line); with
    ``measure=True`` also times a training step with anomaly mode off and on.
    """
    if case not in ANOMALY_CASES:
        raise ValueError(f"case must be one of {ANOMALY_CASES}, got {case!r}")
    measure = flag("measure", measure)
    model, loss_fn = _anomaly_case(case, int_at_least("seed", seed, 0))
    loss = loss_fn()
    loss.backward()
    nan_grads = sum(int(torch.isnan(p.grad).sum()) for p in model.parameters())
    model.zero_grad(set_to_none=True)
    report = anomaly_report(lambda: loss_fn().backward())
    overhead = anomaly_overhead() if measure else None
    return AnomalyDemo(case, loss.item(), nan_grads, report, overhead)


# --- a mis-initialised layer ------------------------------------------------------------------
def misinit_mlp(bad_layer: int = 2, scale: float = 1e-3, depth: int = 4, width: int = 32,
                seed: int = 0, dtype="fp32") -> nn.Sequential:
    """A ReLU MLP of ``depth`` Linear layers named ``"0", "2", ...``; one initialised ``scale`` x too small.

    ``bad_layer`` is the position of the bad Linear (0-based among Linear layers).
    """
    depth = int_at_least("depth", depth, 2)
    bad_layer = int_at_least("bad_layer", bad_layer, 0)
    if bad_layer >= depth:
        raise ValueError(f"bad_layer must be in 0..{depth - 1} (depth={depth}), got {bad_layer}")
    scale = positive_number("scale", scale)
    width = int_at_least("width", width, 1)
    dtype = _check_dtype(dtype)
    sizes = [8] + [width] * (depth - 1) + [1]
    layers = []
    with seeded(check_seed(seed)):
        for i in range(depth):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < depth - 1:
                layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(dtype)
    with torch.no_grad():
        linear = model[2 * bad_layer]
        linear.weight.mul_(scale)
        linear.bias.mul_(scale)
    return model


@dataclass(frozen=True)
class MisinitRun:
    bad_layer: str
    scale: float
    history: NormHistory
    losses: np.ndarray

    @property
    def flagged(self) -> str | None:
        """The layer the gradient-to-weight ratio singles out."""
        return self.history.outlier("ratio")

    def __repr__(self):
        return (f"MisinitRun(layer {self.bad_layer!r} scaled by {self.scale:g}; the ratio "
                f"|grad|/|weight| singles out {self.flagged!r}; loss {self.losses[0]:.3g} -> "
                f"{self.losses[-1]:.3g})")


def misinit_run(bad_layer: int = 2, scale: float = 1e-3, steps: int = 40, every: int = 5,
                seed: int = 0, dtype="fp32") -> MisinitRun:
    """Train :func:`misinit_mlp` for a few Adam steps on a smooth regression, logging norms."""
    steps = int_at_least("steps", steps, 1)
    every = int_at_least("every", every, 1)
    model = misinit_mlp(bad_layer, scale, seed=seed, dtype=dtype)
    dtype = _check_dtype(dtype)
    with threads(1):
        return _misinit_train(model, bad_layer, scale, steps, every, seed, dtype)


def _misinit_train(model, bad_layer, scale, steps, every, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=gen, dtype=dtype)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    with GradNormLogger(model, every=every) as log:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        history = log.history
    return MisinitRun(str(2 * bad_layer), float(scale), history, np.array(losses))


# --- NanGuard on a run with one corrupt batch ------------------------------------------------
@dataclass(frozen=True)
class GuardRun:
    """A minibatch run with one NaN label planted in batch ``bad_batch``."""

    bad_batch: int
    stopped_at: int | None          # the step NanGuard raised at (None: it never did)
    message: str
    nonfinite_params_unguarded: int  # steps later, without the guard: NaN weights everywhere
    unguarded_losses: np.ndarray

    def __repr__(self):
        return (f"GuardRun(NaN label in batch {self.bad_batch}; NanGuard stopped at step "
                f"{self.stopped_at}; unguarded run ends with {self.nonfinite_params_unguarded} "
                f"NaN weights)")


def nanguard_run(bad_batch: int = 37, batches: int = 60, batch_size: int = 16,
                 seed: int = 0) -> GuardRun:
    """Train a small regressor over ``batches`` minibatches, one holding a missing (NaN) label.

    Guarded, the run stops at that batch with a message naming it; unguarded, the NaN loss
    is back-propagated, the optimiser writes NaN into every weight and all later losses are
    NaN, with no error anywhere.
    """
    batches = int_at_least("batches", batches, 1)
    bad_batch = int_at_least("bad_batch", bad_batch, 0)
    if bad_batch >= batches:
        raise ValueError(f"bad_batch must be in 0..{batches - 1}, got {bad_batch}")
    batch_size = int_at_least("batch_size", batch_size, 1)
    seed = int_at_least("seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, 6, generator=gen)
    y = x[:, :1] - 0.5 * x[:, 1:2] + 0.1 * torch.randn(len(x), 1, generator=gen)
    y[bad_batch * batch_size + 3] = float("nan")  # a missing target read from a file

    def train(guard):
        with seeded(seed):
            model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses = []
        for b in range(batches):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            loss = nn.functional.mse_loss(model(x[sl]), y[sl])
            if guard is not None:
                guard(loss, step=b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return model, np.array(losses)

    stopped, message = None, ""
    with threads(1):  # a fixed summation order: the same losses on every run
        try:
            with NanGuard() as guard:
                train(guard)
        except FloatingPointError as err:
            stopped, message = guard.tripped_at, str(err)
        model, losses = train(None)
    bad_params = sum(int(torch.isnan(p).sum()) for p in model.parameters())
    return GuardRun(bad_batch, stopped, message, bad_params, losses)


# --- four pathologies that look alike on one curve ------------------------------------------
PATHOLOGIES = ("healthy", "numerical blow-up", "overfitting", "preprocessing mismatch",
               "leak between splits")


def split_overlap(train_x, val_x) -> float:
    """Fraction of validation rows that also occur, exactly, among the training rows."""
    # Compared as values, not bytes: float32 and float64 copies of a row are the same row,
    # and -0.0 is 0.0 (adding 0.0 turns -0.0 into +0.0).
    a, b = (real_array(name, t) + 0.0 for name, t in (("train_x", train_x), ("val_x", val_x)))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"train_x and val_x must be 2-D with the same number of columns, got "
                         f"shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if len(b) == 0:
        raise ValueError("val_x must have at least one row")
    seen = {row.tobytes() for row in np.ascontiguousarray(a)}
    return float(np.mean([row.tobytes() in seen for row in np.ascontiguousarray(b)]))


def input_shift(train_x, val_x) -> float:
    """Largest |mean_val - mean_train| / std_train over the features, as the model receives them."""
    a, b = (torch.from_numpy(real_array(name, t)) for name, t in (("train_x", train_x), ("val_x", val_x)))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"train_x and val_x must be 2-D with the same number of columns, got "
                         f"shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) == 0:
        raise ValueError("train_x needs at least 2 rows and val_x at least 1")
    std = a.std(0).clamp_min(1e-12)
    return float(((b.mean(0) - a.mean(0)).abs() / std).max())


@dataclass(frozen=True)
class Diagnosis:
    verdict: str
    reason: str
    signals: dict

    def __repr__(self):
        return f"Diagnosis({self.verdict}: {self.reason})"


def _as_curve(values, name):
    arr = real_array(name, values).reshape(-1)
    if arr.size < 2:
        raise ValueError(f"{name} must hold at least 2 evaluations, got {arr.size}")
    if (arr < 0).any():  # NaN/inf are kept: they are the blow-up signal
        raise ValueError(f"{name} must hold values >= 0 (a loss such as cross-entropy or MSE, or a "
                         f"norm; the diagnosis compares ratios), got min {np.nanmin(arr):g}")
    return arr


def diagnose_curves(train_loss, val_loss, grad_norm=None, *, overlap: float | None = None,
                    shift: float | None = None) -> Diagnosis:
    """Name the pathology behind a pair of loss curves (evaluated at the same steps).

    The order of the tests is the order in which a practitioner should rule things out:

    1. numerical blow-up: a non-finite loss or gradient norm, or training loss rising
       to 10x its start, with the gradient norm growing with it;
    2. leak between splits: ``overlap`` (fraction of validation rows found in training,
       :func:`split_overlap`) above 1%: validation is not held out, whatever the curves say;
    3. preprocessing mismatch: ``shift`` (:func:`input_shift`) above 1 train std, or, from the
       curves alone, validation never better than at step 0 while training loss halves;
    4. overfitting: validation improves, reaches its minimum, then rises 20% above it while
       training loss keeps falling;
    5. otherwise healthy. A leak cannot be told from health by the curves alone: a
       validation loss close to (or below) a memorised training loss is the only hint.
    """
    train = _as_curve(train_loss, "train_loss")
    val = _as_curve(val_loss, "val_loss")
    if train.shape != val.shape:
        raise ValueError(f"train_loss and val_loss must have the same length, got "
                         f"{train.size} and {val.size}")
    grad = None if grad_norm is None else _as_curve(grad_norm, "grad_norm")
    for value, name in ((overlap, "overlap"), (shift, "shift")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not value >= 0):
            raise ValueError(f"{name} must be a number >= 0 or None, got {value!r}")
    signals: dict = {}
    bad = ~(np.isfinite(train) & np.isfinite(val))
    if grad is not None:
        bad[: grad.size] |= ~np.isfinite(grad[: train.size])
    if bad.any():
        first = int(np.argmax(bad))
        signals["first_nonfinite_eval"] = first
        if grad is not None and first > 0 and grad[0] > 0:
            signals["grad_growth"] = float(np.nanmax(grad[:first]) / grad[0])
        return Diagnosis("numerical blow-up",
                         f"loss or gradient became non-finite at evaluation {first}", signals)
    if train.max() > 10 * train[0]:
        signals["train_rise"] = float(train.max() / train[0])
        return Diagnosis("numerical blow-up", f"training loss rose {signals['train_rise']:.3g}x "
                         "above its start: the steps are too large for the curvature", signals)
    best = int(np.argmin(val))
    signals.update(train_drop=float(train[-1] / train[0]), val_best_eval=best,
                   val_rise=float(val[-1] / val[best]), val_gain=float(val[best] / val[0]),
                   final_gap=float(val[-1] / train[-1]))
    if overlap is not None and overlap > 0.01:
        signals["overlap"] = float(overlap)
        return Diagnosis("leak between splits", f"{overlap:.0%} of validation rows are "
                         "training rows: validation measures memory, not generalisation", signals)
    if shift is not None and shift > 1.0:
        signals["shift"] = float(shift)
        return Diagnosis("preprocessing mismatch", f"validation inputs are {shift:.3g} train "
                         "stds away from the training inputs: the pipelines differ", signals)
    if best == 0 and signals["train_drop"] < 0.5:
        return Diagnosis("preprocessing mismatch", "validation never improves on its step-0 "
                         "value while training loss falls: it does not see the same inputs",
                         signals)
    if best < val.size - 1 and signals["val_rise"] > 1.2 and train[-1] < train[best]:
        return Diagnosis("overfitting", f"validation bottoms out at evaluation {best} and ends "
                         f"{signals['val_rise']:.3g}x above it while training keeps falling",
                         signals)
    return Diagnosis("healthy", "both curves fall together (if validation sits at or below a "
                     "memorised training loss, check the splits for a leak)", signals)


def falls_while_val_rises(train_loss, val_loss) -> bool:
    """The section's symptom: training loss ends lower than where validation was best, and
    validation ends at least 20% above its best, every value finite."""
    train = _as_curve(train_loss, "train_loss")
    val = _as_curve(val_loss, "val_loss")
    if train.shape != val.shape:
        raise ValueError("train_loss and val_loss must have the same length")
    if not (np.isfinite(train).all() and np.isfinite(val).all()):
        return False
    best = int(np.argmin(val))
    return bool(train[-1] < train[best] and val[-1] > 1.2 * val[best])


@dataclass(frozen=True)
class CurveRun:
    """One small training run, evaluated every few steps (``steps``)."""

    pathology: str
    steps: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray          # validation as its (possibly buggy) pipeline delivers it
    fresh_loss: np.ndarray        # an untouched held-out set, processed like the training set
    val_acc: np.ndarray           # validation accuracy
    grad_norm: np.ndarray         # whole-model gradient norm at the same steps
    max_logit: np.ndarray         # largest |logit| on the training set (exp overflows past 88.7)
    norms: NormHistory            # per layer
    overlap: float                # split_overlap(train rows, validation rows)
    shift: float                  # input_shift(train inputs, validation inputs)
    stopped_at: int | None        # step at which NanGuard stopped the run, if it did
    diagnosis: Diagnosis

    @property
    def symptom(self) -> bool:
        """Does this run show "training loss falls while validation diverges"?"""
        return falls_while_val_rises(self.train_loss, self.val_loss)

    def __repr__(self):
        stop = f", NanGuard stopped it at step {self.stopped_at}" if self.stopped_at is not None else ""
        return (f"CurveRun({self.pathology}: train {self.train_loss[0]:.3g} -> "
                f"{self.train_loss[-1]:.3g}, val {self.val_loss[0]:.3g} -> "
                f"{self.val_loss[-1]:.3g}{stop}; verdict {self.diagnosis.verdict!r})")


def pathology_tables(runs: dict[str, CurveRun]) -> str:
    """Two narrow tables (each under 80 characters, so no notebook cell wraps them): the
    verdict from all signals beside the one from the curves alone (:func:`diagnose_curves`
    without ``overlap`` and ``shift``), then the numbers behind them, at the last finite
    evaluation."""
    if not isinstance(runs, dict) or not all(isinstance(r, CurveRun) for r in runs.values()):
        raise TypeError("runs must be a dict of name -> CurveRun (from pathology_run)")
    lines = [f"{'run':<23} {'verdict (all signals)':<23} verdict (curves only)"]
    for name, r in runs.items():
        curves_only = diagnose_curves(r.train_loss, r.val_loss, r.grad_norm).verdict
        lines.append(f"{name:<23} {r.diagnosis.verdict:<23} {curves_only}")
    lines += ["", f"{'run':<23} {'best val step':>13} {'train':>7} {'val':>7} {'fresh':>7} "
                  f"{'overlap':>7} {'shift':>6}"]
    for name, r in runs.items():
        finite = np.isfinite(r.train_loss) & np.isfinite(r.val_loss) & np.isfinite(r.fresh_loss)
        last = int(np.flatnonzero(finite)[-1]) if finite.any() else -1  # last all-finite evaluation
        lines.append(f"{name:<23} {r.steps[np.nanargmin(r.val_loss)]:>13} {r.train_loss[last]:7.3g} "
                     f"{r.val_loss[last]:7.3g} {r.fresh_loss[last]:7.3g} {r.overlap:7.0%} "
                     f"{r.shift:6.2g}")
    return "\n".join(lines)


_OFFSET = torch.linspace(-20.0, 30.0, 8, dtype=torch.float64)  # raw units of the 8 features
_SCALE = torch.logspace(-1, 1.5, 8, dtype=torch.float64)


def _classification_data(n, gen, label_noise, dtype):
    """Eight raw features in their own units (offsets -20..30, scales 0.1..32), three classes.

    The class is the argmax of three smooth scores of the standardised features; a fraction
    ``label_noise`` of the labels is replaced by a uniformly random class.
    """
    z = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    scores = torch.stack([z[:, 0] + 0.5 * z[:, 1] * z[:, 2], z[:, 3] - z[:, 0],
                          0.8 * z[:, 1] - 0.6 * z[:, 3] + torch.sin(2 * z[:, 4])], dim=1)
    y = scores.argmax(1)
    noisy = torch.rand(n, generator=gen, dtype=torch.float64) < label_noise
    y = torch.where(noisy, torch.randint(0, 3, (n,), generator=gen), y)
    return (_OFFSET + _SCALE * z).to(dtype), y


def _naive_cross_entropy(logits, y):
    """log(softmax) written out by hand: exp overflows to inf once a logit passes ~88.7 (fp32)."""
    p = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(p[torch.arange(len(y), device=y.device), y]).mean()


def pathology_run(pathology: str, *, steps: int | None = None, every: int = 5, seed: int = 0,
                  dtype="fp32", device="cpu") -> CurveRun:
    """Train a small 3-class MLP (full batch) into one of :data:`PATHOLOGIES` and diagnose it.

    * healthy: 400 rows of 8 features, standardised with the training statistics,
      ``F.cross_entropy``, Adam at lr 1e-3.
    * numerical blow-up: the same, but the loss is log(softmax) written out by hand and
      Adam runs at lr 0.1: as the model grows confident a logit passes 88.7, exp overflows
      to inf, inf / inf is NaN, and NanGuard stops the run.
    * overfitting: 40 rows, 20% of labels random, a 128-wide MLP trained long.
    * preprocessing mismatch: the healthy setup, but the validation pipeline skips the
      standardisation (raw units reach the model).
    * leak between splits: the overfitting data oversampled 8x *before* a random 50/50
      split, so nearly every validation row is a copy of a training row. ``fresh_loss`` (an
      untouched held-out set) shows what the leaky validation hides.
    """
    if pathology not in PATHOLOGIES:
        raise ValueError(f"pathology must be one of {PATHOLOGIES}, got {pathology!r}")
    seed = int_at_least("seed", seed, 0)
    dtype = _check_dtype(dtype)
    dev = _device(device)
    small = pathology in ("overfitting", "leak between splits")
    every = int_at_least("every", every, 1)
    steps = int_at_least("steps", (200 if small else 150) if steps is None else steps, 3 * every)
    with threads(1):
        return _pathology_run(pathology, steps, every, seed, dtype, dev, small)


def _pathology_run(pathology, steps, every, seed, dtype, dev, small):
    gen = torch.Generator().manual_seed(seed)
    n_train = 40 if small else 400
    x_raw, y = _classification_data(n_train + 600, gen, 0.2 if small else 0.0, dtype)
    tr, va, fr = slice(0, n_train), slice(n_train, n_train + 300), slice(n_train + 300, None)
    mean, std = x_raw[tr].mean(0), x_raw[tr].std(0)

    def prep(raw):
        return (raw - mean) / std

    x_tr, y_tr = prep(x_raw[tr]), y[tr]
    x_va, y_va = prep(x_raw[va]), y[va]
    x_fr, y_fr = prep(x_raw[fr]), y[fr]
    if pathology == "preprocessing mismatch":
        x_va = x_raw[va]  # the bug: the validation pipeline skips the standardisation
    elif pathology == "leak between splits":
        # oversampling (8 copies of each row) done before a random 50/50 split
        order = torch.randperm(8 * n_train, generator=gen)
        x_all, y_all = x_tr.repeat(8, 1)[order], y_tr.repeat(8)[order]
        half = len(order) // 2
        x_tr, y_tr, x_va, y_va = x_all[:half], y_all[:half], x_all[half:], y_all[half:]
    overlap = split_overlap(x_tr, x_va)
    shift = input_shift(x_tr, x_va)
    x_tr, y_tr, x_va, y_va, x_fr, y_fr = (t.to(dev) for t in (x_tr, y_tr, x_va, y_va, x_fr, y_fr))

    width = 128 if small else 64
    with seeded(seed):
        model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                              nn.Linear(width, 3)).to(device=dev, dtype=dtype)
    blowup = pathology == "numerical blow-up"
    opt = torch.optim.Adam(model.parameters(), lr=0.1 if blowup else 1e-3)
    loss_fn = _naive_cross_entropy if blowup else nn.functional.cross_entropy
    evals, tr_l, va_l, fr_l, acc, zmax = [], [], [], [], [], []
    stopped = None
    with GradNormLogger(model, every=every) as log, NanGuard() as guard:
        for step in range(steps):
            logits = model(x_tr)
            loss = loss_fn(logits, y_tr)
            if step % every == 0:
                with torch.no_grad():
                    evals.append(step)
                    tr_l.append(loss.item())
                    zmax.append(logits.abs().max().item())
                    out = model(x_va)
                    va_l.append(loss_fn(out, y_va).item())
                    acc.append((out.argmax(1) == y_va).double().mean().item())
                    fr_l.append(loss_fn(model(x_fr), y_fr).item())
            try:
                guard(loss, step=step)
            except FloatingPointError:
                stopped = step
                if step % every:  # keep the non-finite value that stopped the run
                    evals.append(step)
                    tr_l.append(loss.item())
                    zmax.append(logits.detach().abs().max().item())
                    va_l.append(float("nan"))
                    fr_l.append(float("nan"))
                    acc.append(float("nan"))
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        norms = log.history
    grad = np.full(len(evals), np.nan)
    index = {int(s): i for i, s in enumerate(norms.steps)}
    glob = norms.global_grad
    for i, s in enumerate(evals):
        if s in index and not (stopped is not None and s == stopped):
            grad[i] = glob[index[s]]
    diagnosis = diagnose_curves(tr_l, va_l, grad, overlap=overlap, shift=shift)
    return CurveRun(pathology, np.array(evals), np.array(tr_l), np.array(va_l), np.array(fr_l),
                    np.array(acc), grad, np.array(zmax), norms, overlap, shift, stopped, diagnosis)
