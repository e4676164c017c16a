"""A small tanh RNN on the adding problem (a long-range toy task), trained with plain SGD with
and without clipping, and a sweep over clipping thresholds."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from numlab._checks import fp32_number, int_at_least, positive_number, real_array
from numlab._checks import seed as check_seed
from numlab.clipping.clip import _NEGATIVE_MAX_NORM, _check_max_norm
from numlab.clipping.depth import orthogonal_stack
from numlab.device import pick, threads
from numlab.formats import COMPUTE_DTYPES, resolve_dtype

CLIP_MODES = (None, "norm", "value")
ORDERS = ("backward-clip-step", "backward-step-clip")


@dataclass(frozen=True, repr=False)
class TrainingRun:
    """Loss and pre-clip gradient norm per step of one :func:`train_rnn` run.

    After the first non-finite loss or gradient norm the run stops; later entries are NaN.
    """

    clip: str | None
    max_norm: float
    lr: float
    losses: torch.Tensor
    grad_norms: torch.Tensor
    clipped_steps: torch.Tensor
    spike_steps: torch.Tensor
    nonfinite_step: int | None

    @property
    def diverged(self) -> bool:
        """True if the loss or the gradient norm became inf/NaN at some step."""
        return self.nonfinite_step is not None

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 20 steps (NaN if the run diverged)."""
        return float(self.losses[-20:].mean())

    @property
    def max_grad_norm(self) -> float:
        """Largest finite pre-clip gradient norm seen."""
        finite = self.grad_norms[torch.isfinite(self.grad_norms)]
        return float(finite.max()) if finite.numel() else float("nan")

    @property
    def loss_spike(self) -> float:
        """Largest finite loss divided by the first loss."""
        finite = self.losses[torch.isfinite(self.losses)]
        return float(finite.max() / self.losses[0])

    def __repr__(self):
        how = "no clipping" if self.clip is None else f"clip by {self.clip} at {self.max_norm:g}"
        end = (f"non-finite at step {self.nonfinite_step}" if self.diverged
               else f"final loss {self.final_loss:.4f}")
        return (f"TrainingRun({how}, lr={self.lr:g}, {len(self.losses)} steps: max |grad| "
                f"{self.max_grad_norm:.3g}, max loss / first {self.loss_spike:.3g}, "
                f"{len(self.clipped_steps)} steps clipped, {end})")


def adding_problem(batch: int, seq_len: int, *, generator: torch.Generator | None = None,
                   dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of the adding problem: inputs (batch, seq_len, 2), targets (batch, 1).

    Channel 0 holds uniform random numbers, channel 1 marks one position in the first half
    and one in the second; the target is the sum of the two marked numbers, so the answer
    depends on inputs up to ``seq_len`` steps back. Predicting the mean (1.0) scores an MSE
    of 1/6. Draws from ``generator`` (a fresh one seeded 0 if None).
    """
    batch = int_at_least("batch", batch)
    seq_len = int_at_least("seq_len", seq_len, 2)
    dtype, device = resolve_dtype(dtype, COMPUTE_DTYPES), pick(device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    values = torch.rand(batch, seq_len, generator=gen, dtype=torch.float64)
    half = seq_len // 2
    first = torch.randint(0, half, (batch, 1), generator=gen)
    second = torch.randint(half, seq_len, (batch, 1), generator=gen)
    marks = torch.zeros_like(values).scatter_(1, first, 1.0).scatter_(1, second, 1.0)
    x = torch.stack([values, marks], dim=-1)
    y = (values * marks).sum(dim=1, keepdim=True)
    return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)


def _make_rnn(hidden: int, gain: float, seed: int, dtype, device):
    """A tanh ``nn.RNN`` (2 -> hidden) with a ``gain``-scaled orthogonal recurrence, and a readout."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        rnn = torch.nn.RNN(2, hidden, nonlinearity="tanh", batch_first=True)
        head = torch.nn.Linear(hidden, 1)
    bound = 1.0 / math.sqrt(hidden)  # torch's default uniform bound, drawn from our generator
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.empty(hidden, 2).uniform_(-bound, bound, generator=gen))
        rnn.weight_hh_l0.copy_(orthogonal_stack(1, hidden, gain, seed=seed)[0])
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
        head.weight.copy_(torch.empty(1, hidden).uniform_(-bound, bound, generator=gen))
        head.bias.zero_()
    return rnn.to(dtype=dtype, device=device), head.to(dtype=dtype, device=device)


def train_rnn(clip: str | None = None, max_norm: float = 1.0, *, lr: float = 0.3,
              steps: int = 300, seed: int = 0, seq_len: int = 10, hidden: int = 32,
              batch: int = 32, gain: float = 1.0, order: str = "backward-clip-step",
              dtype=torch.float32, device="cpu",
              progress: Callable[[int, int], None] | None = None) -> TrainingRun:
    """Train a tanh RNN on :func:`adding_problem` with plain SGD; clip or not.

    ``clip``: ``None``, ``"norm"`` (``clip_grad_norm_(params, max_norm)``) or ``"value"``
    (``clip_grad_value_(params, max_norm)``). ``order="backward-clip-step"`` is the right
    place for the clip; ``"backward-step-clip"`` clips after ``optimizer.step()``, where it
    no longer changes the update. Everything (data, initial weights) is fixed by ``seed``.
    ``progress(step, steps)`` is called every 10 steps (for a progress bar).

    A run is a pure function of its arguments, so runs without ``progress`` are memoised
    (the last 64): a notebook that asks twice trains once. Treat the tensors as read-only.
    """
    if clip not in CLIP_MODES:
        raise ValueError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
    max_norm = _check_max_norm(max_norm)
    lr = fp32_number("lr", lr)
    gain = positive_number("gain", gain)
    steps = int_at_least("steps", steps)
    hidden = int_at_least("hidden", hidden)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    dtype, device = resolve_dtype(dtype, COMPUTE_DTYPES), pick(device)
    batch = int_at_least("batch", batch)
    seq_len = int_at_least("seq_len", seq_len, 2)
    seed = check_seed(seed)
    args = (clip, max_norm, lr, steps, seed, seq_len, hidden, batch, gain, order, dtype, device)
    if progress is None:
        return _train_memo(*args)
    return _train(*args, progress)


@functools.lru_cache(maxsize=64)
def _train_memo(*args) -> TrainingRun:
    return _train(*args, None)


def _train(clip, max_norm, lr, steps, seed, seq_len, hidden, batch, gain, order, dtype, device,
           progress) -> TrainingRun:
    """The SGD loop of :func:`train_rnn` (arguments already checked)."""
    # A fresh batch per step from one generator: a shorter run sees the same first batches.
    data = torch.Generator().manual_seed(seed)
    rnn, head = _make_rnn(hidden, gain, seed, dtype, device)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr)

    def clip_now():
        if clip == "norm":
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        elif clip == "value":
            torch.nn.utils.clip_grad_value_(params, max_norm)

    losses = torch.full((steps,), float("nan"), dtype=torch.float64)
    norms = torch.full((steps,), float("nan"), dtype=torch.float64)
    nonfinite_step = None
    with threads(1):
        for step in range(steps):
            x, y = adding_problem(batch, seq_len, generator=data, dtype=dtype, device=device)
            out, _ = rnn(x)
            loss = torch.nn.functional.mse_loss(head(out[:, -1]), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Norm before clipping (what an unclipped run would apply), measured by torch.
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            loss_value, norm_value = loss.item(), norm.item()
            losses[step], norms[step] = loss_value, norm_value
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                nonfinite_step = step  # stop: every later step would be NaN anyway
                break
            if order == "backward-clip-step":
                clip_now()
                opt.step()
            else:
                opt.step()
                clip_now()  # too late: the update above used the unclipped gradient
            if progress is not None and step % 10 == 0:
                progress(step, steps)
    if progress is not None:
        progress(steps, steps)

    # A spike: a loss more than 10x the lowest loss seen before it (one vectorised pass).
    best_before = torch.cat([losses[:1], torch.cummin(losses, dim=0).values[:-1]])
    spikes = torch.nonzero(losses > 10 * best_before).flatten()
    clipped = (torch.nonzero(norms > max_norm).flatten() if clip is not None
               else torch.zeros(0, dtype=torch.long))
    return TrainingRun(clip=clip, max_norm=max_norm, lr=lr, losses=losses, grad_norms=norms,
                       clipped_steps=clipped, spike_steps=spikes, nonfinite_step=nonfinite_step)


@dataclass(frozen=True, repr=False)
class ThresholdSweep:
    """:func:`train_rnn` at several clipping thresholds on the same data and initial weights."""

    clip: str
    thresholds: torch.Tensor
    final_loss: torch.Tensor
    diverged: torch.Tensor
    fraction_clipped: torch.Tensor
    max_grad_norm: torch.Tensor
    unclipped: TrainingRun
    runs: tuple[TrainingRun, ...]

    def table(self) -> str:
        """A small markdown table: threshold, steps clipped, final loss, diverged."""
        rows = ["| threshold | steps clipped | final loss | diverged |", "|---|---|---|---|"]
        rows.append(f"| none | - | {self.unclipped.final_loss:.4f} | {self.unclipped.diverged} |")
        for t, f, loss, d in zip(self.thresholds.tolist(), self.fraction_clipped.tolist(),
                                 self.final_loss.tolist(), self.diverged.tolist(), strict=True):
            rows.append(f"| {t:g} | {f:.0%} | {loss:.4f} | {d} |")
        return "\n".join(rows)

    @property
    def best(self) -> float:
        """The threshold with the lowest final loss (NaN losses never win)."""
        loss = torch.where(torch.isnan(self.final_loss), torch.inf, self.final_loss)
        return float(self.thresholds[int(torch.argmin(loss))])

    def __repr__(self):
        finite = int((~self.diverged).sum())
        return (f"ThresholdSweep(clip by {self.clip}, {len(self.thresholds)} thresholds "
                f"{self.thresholds.min():g}..{self.thresholds.max():g}: {finite} stayed finite; "
                f"unclipped diverged={self.unclipped.diverged}; lowest final loss at {self.best:g})")


def threshold_sweep(thresholds: Iterable[float] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
                    clip: str = "norm", **train_kwargs) -> ThresholdSweep:
    """Run :func:`train_rnn` once per threshold (plus once unclipped) with the same seed."""
    if clip not in ("norm", "value"):
        raise ValueError(f"clip must be 'norm' or 'value' for a sweep, got {clip!r}")
    values = real_array("thresholds", thresholds, dims=1).tolist()
    thresholds = [positive_number("thresholds", t, _NEGATIVE_MAX_NORM) for t in values]
    if not thresholds:
        raise ValueError("thresholds must hold at least one positive number")
    unclipped = train_rnn(None, **train_kwargs)
    runs = tuple(train_rnn(clip, t, **train_kwargs) for t in thresholds)  # a handful of runs
    steps = len(unclipped.losses)
    return ThresholdSweep(
        clip=clip,
        thresholds=torch.tensor(thresholds, dtype=torch.float64),
        final_loss=torch.tensor([r.final_loss for r in runs], dtype=torch.float64),
        diverged=torch.tensor([r.diverged for r in runs]),
        fraction_clipped=torch.tensor([len(r.clipped_steps) / steps for r in runs]),
        max_grad_norm=torch.tensor([r.max_grad_norm for r in runs], dtype=torch.float64),
        unclipped=unclipped, runs=runs,
    )
