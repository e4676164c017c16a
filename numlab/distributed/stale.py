"""Stale gradients, as asynchronous workers produce them: gradient descent on weights ``k``
steps old, simulated in one process for a whole lr x k grid (no ``torch.distributed``)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from numlab._checks import int_at_least, positive_number, real_array
from numlab._checks import seed as check_seed
from numlab.device import threads
from numlab.formats import COMPUTE_DTYPES, resolve_dtype

_FP32_FP64 = (torch.float32, torch.float64)  # the dtypes the simulation runs in



def critical_lr(staleness: int, curvature: float = 1.0) -> float:
    """Largest stable learning rate of k-stale gradient descent on ``curvature/2 * w**2``.

    ``w_{t+1} = w_t - lr * c * w_{t-k}`` is stable iff ``lr * c < 2 sin(pi / (2 (2k + 1)))``
    (roots of ``z**(k+1) - z**k + lr*c`` inside the unit circle); k = 0 gives 2 / c.
    """
    staleness = int_at_least("staleness", staleness, 0)
    return 2.0 * math.sin(math.pi / (2 * (2 * staleness + 1))) / positive_number("curvature", curvature)


def least_squares_problem(n: int = 256, features: int = 8, seed: int = 0, dtype="fp64"):
    """``(X, y)`` whose loss ``0.5 mean((X w - y)**2)`` has Hessian eigenvalues in [0.05, 1]."""
    dt = resolve_dtype(dtype, COMPUTE_DTYPES)
    features = int_at_least("features", features)
    n = int_at_least("n", n)
    if n < features:
        raise ValueError(f"n must be at least features = {features} (an n x features matrix with "
                         f"orthonormal columns), got n={n}")
    return _least_squares(n, features, check_seed(seed), dt)


def _least_squares(n, features, seed, dt):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, features, generator=g, dtype=torch.float64))
    # X = sqrt(n) Q diag(s): Hessian X^T X / n = diag(s^2), largest curvature exactly 1
    scales = torch.linspace(math.sqrt(0.05), 1.0, features, dtype=torch.float64)
    x = math.sqrt(n) * q * scales
    y = x @ torch.randn(features, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        n, generator=g, dtype=torch.float64)
    return x.to(dt), y.to(dt)


def _stale_losses(lrs, ks, steps, batch_size, seed, dtype):
    """Loss curves of k-stale (S)GD for every (lr, k) pair at once: shape (L, K, steps + 1)."""
    x, y = _least_squares(256, 8, seed, dtype)
    n, d = x.shape
    hessian = x.T @ x / n
    w_best = torch.linalg.solve(hessian, x.T @ y / n)
    floor = 0.5 * ((x @ w_best - y) ** 2).mean()
    lr = torch.as_tensor(lrs, dtype=x.dtype)[:, None, None]
    k = torch.as_tensor(ks, dtype=torch.long)
    depth = int(k.max()) + 1
    w = torch.zeros(len(lrs), len(ks), d, dtype=x.dtype)
    history = w.expand(depth, *w.shape).clone()  # slot t % depth holds w_t; w_{t<0} = w_0
    g = torch.Generator().manual_seed(seed + 1)

    def loss(w):
        # 0.5 mean((Xw - y)^2) = floor + 0.5 e^T H e with e = w - w_best: no cancellation
        e = w - w_best
        return floor + 0.5 * ((e @ hessian) * e).sum(-1)

    losses = [loss(w)]
    cols = torch.arange(len(ks))
    for t in range(steps):
        stale = history[(t - k) % depth, :, cols].transpose(0, 1)  # (L, K, d): w_{t-k}
        if batch_size is None:
            grad = (stale - w_best) @ hessian
        else:  # the same minibatch for every (lr, k): only lr and k differ between curves
            idx = torch.randperm(n, generator=g)[:batch_size]
            grad = (stale @ x[idx].T - y[idx]) @ x[idx] / batch_size
        w = w - lr * grad
        history[(t + 1) % depth] = w
        losses.append(loss(w))
    out = torch.stack(losses, dim=-1).double()
    return torch.nan_to_num(out, nan=math.inf).numpy()


def _check_stale_args(steps, batch_size):
    int_at_least("steps", steps)
    if batch_size is not None:
        int_at_least("batch_size", batch_size)
        if batch_size > 256:
            raise ValueError(f"batch_size must be at most the 256 samples, got {batch_size}")


def _diverged(curves: np.ndarray) -> np.ndarray:
    # Diverged: the loss overflowed, or ended 10x above the lowest value it reached. (An
    # unstable mode may start tiny and grow late, so "ends above the start" misses some.)
    return ~np.isfinite(curves[..., -1]) | (curves[..., -1] > 10 * curves.min(axis=-1))


@dataclass(frozen=True, repr=False)
class StaleRun:
    """Loss curves of synchronous (k = 0) and k-stale SGD at one learning rate."""

    lr: float
    staleness: int
    loss_sync: np.ndarray
    loss_stale: np.ndarray
    critical_lr: float  # theory, full batch, for this staleness

    @property
    def diverged(self) -> bool:
        return bool(_diverged(self.loss_stale))

    @property
    def sync_diverged(self) -> bool:
        return bool(_diverged(self.loss_sync))

    def __repr__(self):
        state = {True: "diverges", False: "converges"}
        return (f"StaleRun(lr={self.lr:g}, k={self.staleness}: sync {state[self.sync_diverged]} "
                f"(final loss {self.loss_sync[-1]:.3g}), stale {state[self.diverged]} "
                f"(final loss {self.loss_stale[-1]:.3g}); theory: stable below lr "
                f"{self.critical_lr:.3f})")


def stale_sgd(staleness: int, lr: float, steps: int = 200, batch_size: int | None = None,
              seed: int = 0, dtype="fp64") -> StaleRun:
    """SGD whose gradient at step t is computed on the weights of step t - ``staleness``.

    Least squares with Hessian eigenvalues in [0.05, 1] (``least_squares_problem``), so a
    synchronous run is stable for lr < 2 and a k-stale one for lr < :func:`critical_lr`.
    ``batch_size=None`` uses the full batch; otherwise a fresh minibatch each step.
    """
    int_at_least("staleness", staleness, 0)
    positive_number("lr", lr)
    _check_stale_args(steps, batch_size)
    seed, dt = check_seed(seed), resolve_dtype(dtype, _FP32_FP64)
    with threads(1):
        curves = _stale_losses([lr], [0, staleness], steps, batch_size, seed, dt)[0]
    return StaleRun(lr, staleness, curves[0], curves[1], critical_lr(staleness))


@dataclass(frozen=True, repr=False)
class StaleSweep:
    """Every (lr, staleness) pair: loss curves and whether each diverged."""

    lrs: np.ndarray
    staleness: np.ndarray
    losses: np.ndarray  # (len(lrs), len(staleness), steps + 1)

    @property
    def diverged(self) -> np.ndarray:
        return _diverged(self.losses)

    def boundary(self) -> np.ndarray:
        """Per staleness: the largest lr of the grid below the first divergent one."""
        out = []
        for j in range(len(self.staleness)):
            bad = np.flatnonzero(self.diverged[:, j])
            out.append(self.lrs[bad[0] - 1] if len(bad) and bad[0] > 0 else
                       (np.nan if len(bad) else self.lrs[-1]))
        return np.array(out)

    def curve(self, lr: float, staleness: int) -> np.ndarray:
        """Loss curve at the grid point nearest to (lr, staleness)."""
        i = int(np.argmin(np.abs(np.log(self.lrs) - math.log(lr))))
        j = int(np.argmin(np.abs(self.staleness - staleness)))
        return self.losses[i, j]

    def __repr__(self):
        return (f"StaleSweep({len(self.lrs)} lrs in [{self.lrs[0]:.3g}, {self.lrs[-1]:.3g}] x "
                f"staleness {self.staleness.tolist()}: {int(self.diverged.sum())} of "
                f"{self.diverged.size} runs diverge)")


def stale_sweep(lrs: Sequence[float] | None = None, staleness: Sequence[int] = range(9),
                steps: int = 200, batch_size: int | None = None, seed: int = 0,
                dtype="fp64") -> StaleSweep:
    """:func:`stale_sgd` for every lr x staleness pair, vectorised (one tensor op per step)."""
    lrs = np.geomspace(0.02, 2.5, 60) if lrs is None else real_array("lrs", lrs)
    ks = real_array("staleness", staleness)
    if np.any(ks != np.round(ks)):
        raise ValueError(f"staleness must hold whole numbers of steps, got {ks}")
    ks = ks.astype(np.int64)
    if lrs.ndim != 1 or lrs.size == 0 or not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"lrs must be a non-empty 1-D sequence of finite numbers > 0, got {lrs}")
    if ks.ndim != 1 or ks.size == 0 or ks.min() < 0:
        raise ValueError(f"staleness must be a non-empty sequence of ints >= 0, got {ks}")
    _check_stale_args(steps, batch_size)
    seed, dt = check_seed(seed), resolve_dtype(dtype, _FP32_FP64)
    lrs = np.sort(lrs)
    with threads(1):
        losses = _stale_losses(lrs.tolist(), ks.tolist(), steps, batch_size, seed, dt)
    return StaleSweep(lrs, ks, losses)


