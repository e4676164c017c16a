"""Reusable tools for a training loop: per-layer gradient norms and a NaN guard.

* :class:`GradNormLogger` records each layer's gradient norm and weight norm every
  ``every`` steps through parameter hooks; ``.history`` (a :class:`NormHistory`) is a table.
* :class:`NanGuard` is called once per step with the loss and raises ``FloatingPointError``
  at the first non-finite one, naming the step, the value and the last finite step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from numlab._checks import int_at_least


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
