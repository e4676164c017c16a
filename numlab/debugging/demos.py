"""Two demonstration runs: a mis-initialised layer found from its norms, and NanGuard
stopping a run at the one batch with a missing label."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from numlab._checks import int_at_least, positive_number
from numlab._checks import seed as check_seed
from numlab.debugging.tools import GradNormLogger, NanGuard, NormHistory
from numlab.device import seeded, threads
from numlab.formats import COMPUTE_DTYPES, resolve_dtype


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
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
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
    model = misinit_mlp(bad_layer, scale, seed=seed, dtype=dtype)  # validates the rest
    with threads(1):
        return _misinit_train(model, bad_layer, scale, steps, every, seed, model[0].weight.dtype)


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
