"""Exploding gradients and gradient clipping, measured.

Three experiments, each returning a small frozen dataclass:

* :func:`gradient_norms_by_depth`: backpropagate through a deep stack whose layers have
  Jacobians of known spectral norm (``gain`` times an orthogonal matrix) and record the
  gradient norm at every layer, beside the geometric rate the gain predicts.
* :func:`clip_comparison`: one gradient clipped by global norm
  (``torch.nn.utils.clip_grad_norm_``) and by value (``torch.nn.utils.clip_grad_value_``),
  with the norms and the cosine of each to the original.
* :func:`train_rnn` and :func:`threshold_sweep`: a small tanh RNN on the adding problem
  (a long-range toy task), trained with plain SGD with and without clipping.

Only torch is imported here; the drawing lives in :mod:`numlab.viz.clipping`.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from numlab._checks import flag, fp32_number, int_at_least, positive_number, real_array
from numlab._checks import seed as check_seed
from numlab.device import threads
from numlab.formats import COMPUTE_DTYPES, resolve_dtype

NONLINEARITIES = ("linear", "tanh", "relu")
CLIP_MODES = (None, "norm", "value")
ORDERS = ("backward-clip-step", "backward-step-clip")

# How the per-layer factor relates to ``gain`` for each nonlinearity (see the docstring of
# gradient_norms_by_depth): the word is shown next to the number so nobody reads a bound
# as an equality.
_RATE_KIND = {"linear": "exact", "tanh": "upper bound", "relu": "mean-field"}


# --- argument checks (messages name the argument and what is allowed) ---------------------
def _resolve_dtype(dtype) -> torch.dtype:
    return resolve_dtype(dtype, COMPUTE_DTYPES)


def _resolve_device(device) -> torch.device:
    from numlab.device import pick

    return pick(device)


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


# --- 1. growth with depth -------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class DepthProfile:
    """Gradient norm at every layer of a deep stack, with the rate the gain predicts.

    ``norms[l]`` is the root-mean-square over the batch of ``|dL/dh_l|``, where ``h_0`` is
    the input and ``h_depth`` the output, and the loss is scaled so that ``norms[depth] = 1``.
    """

    depth: int
    width: int
    gain: float
    nonlinearity: str
    dtype: torch.dtype
    layers: torch.Tensor
    norms: torch.Tensor
    predicted: torch.Tensor
    predicted_rate: float
    rate_kind: str
    fitted_rate: float

    @property
    def input_norm(self) -> float:
        """Gradient norm at the input of the stack (``depth`` layers away from the loss)."""
        return float(self.norms[0])

    @property
    def overflowed(self) -> bool:
        """True if some layer's gradient norm is not finite in ``dtype``."""
        return not bool(torch.isfinite(self.norms).all())

    def __repr__(self):
        return (
            f"DepthProfile({self.nonlinearity}, depth={self.depth}, width={self.width}, "
            f"gain={self.gain:g}, {str(self.dtype).replace('torch.', '')}: |grad| at input "
            f"{self.input_norm:.3g}, fitted rate {self.fitted_rate:.4f}/layer, predicted "
            f"{self.predicted_rate:.4f} ({self.rate_kind}))"
        )


@functools.lru_cache(maxsize=16)
def _haar_orthogonal(depth: int, width: int, seed: int) -> torch.Tensor:
    # Cached: a slider that only moves the gain reuses the QR (the costly part). Callers
    # only read the result (gain * q makes a new tensor).
    gen = torch.Generator().manual_seed(seed)
    with threads(1):
        # QR of a Gaussian matrix in float64 (one batched call); fixing the signs of R's
        # diagonal makes Q Haar-distributed rather than biased by the QR convention.
        q, r = torch.linalg.qr(torch.randn(depth, width, width, generator=gen,
                                           dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def orthogonal_stack(depth: int, width: int, gain: float = 1.0, *, seed: int = 0,
                     dtype=torch.float64, device="cpu") -> torch.Tensor:
    """``depth`` matrices ``gain * Q`` with ``Q`` orthogonal (Haar), shape (depth, width, width).

    Every singular value of ``gain * Q`` equals ``gain``, so its spectral norm is ``gain``.
    """
    depth = int_at_least("depth", depth)
    width = int_at_least("width", width)
    gain = positive_number("gain", gain)
    seed = check_seed(seed)
    # Draw at least 256 layers' worth (when that is small) and keep the first `depth`: a depth
    # slider then reuses one cached QR, and a deeper stack extends a shallower one.
    q = _haar_orthogonal(max(depth, min(256, 2**22 // (width * width))), width, seed)[:depth]
    return (gain * q).to(dtype=_resolve_dtype(dtype), device=_resolve_device(device))


def gradient_norms_by_depth(depth: int, width: int = 64, gain: float = 1.0,
                            nonlinearity: str = "linear", *, batch: int = 8, seed: int = 0,
                            dtype=torch.float32, device="cpu") -> DepthProfile:
    """Backpropagate through ``h_l = f(W_l h_{l-1})``, ``W_l = gain * Q_l``, and record |dL/dh_l|.

    The chain rule gives ``dL/dh_{l-1} = W_l^T diag(f'(W_l h_{l-1})) dL/dh_l``. With
    ``W_l = gain * Q_l`` and ``Q_l`` orthogonal, ``|W_l^T g| = gain * |g|`` exactly, so:

    * ``linear``: each layer multiplies the norm by exactly ``gain``;
    * ``tanh``: ``0 < tanh' <= 1``, so ``gain`` is an upper bound on the factor (tanh
      saturates for large pre-activations and the factor drops well below it);
    * ``relu``: ``relu'`` zeroes about half the entries of a zero-mean pre-activation,
      so the factor is about ``gain / sqrt(2)`` (a mean-field estimate, not a bound).

    ``predicted[l] = predicted_rate ** (depth - l)``; ``fitted_rate`` is ``exp`` of the
    least-squares slope of ``log norms`` against the distance from the output.
    """
    depth = int_at_least("depth", depth)
    width = int_at_least("width", width)
    batch = int_at_least("batch", batch)
    gain = positive_number("gain", gain)
    seed = check_seed(seed)
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    dtype = _resolve_dtype(dtype)
    device = _resolve_device(device)
    act = {"linear": lambda z: z, "tanh": torch.tanh, "relu": torch.relu}[nonlinearity]

    weights = orthogonal_stack(depth, width, gain, seed=seed, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)  # dL/dh_depth = v: unit norm for every sample
    x, v = x.to(dtype=dtype, device=device), v.to(dtype=dtype, device=device)

    with threads(1):
        hs = [x.requires_grad_(True)]
        for w in weights:  # a loop over layers (<= a few hundred), not over data points
            hs.append(act(hs[-1] @ w.T))
        loss = (hs[-1] * v).sum()  # samples are independent: each row gets its own gradient
        grads = torch.autograd.grad(loss, hs)
    per_sample = torch.stack([g.detach().double().norm(dim=1) for g in grads])  # (depth+1, batch)
    norms = per_sample.pow(2).mean(dim=1).sqrt().cpu()

    rate = gain / math.sqrt(2.0) if nonlinearity == "relu" else gain
    layers = torch.arange(depth + 1)
    distance = (depth - layers).double()
    predicted = torch.tensor(rate, dtype=torch.float64).pow(distance)
    return DepthProfile(
        depth=depth, width=width, gain=gain, nonlinearity=nonlinearity, dtype=dtype,
        layers=layers, norms=norms, predicted=predicted, predicted_rate=rate,
        rate_kind=_RATE_KIND[nonlinearity], fitted_rate=fit_rate(distance, norms),
    )


def fit_rate(distance: torch.Tensor, norms: torch.Tensor) -> float:
    """``exp`` of the least-squares slope of ``log(norms)`` on ``distance`` (finite, > 0 only)."""
    distance = torch.from_numpy(real_array("distance", distance, dims=1))
    norms = torch.from_numpy(real_array("norms", norms, dims=1))
    if distance.shape != norms.shape:
        raise ValueError(f"distance and norms must have the same length, got {len(distance)} "
                         f"and {len(norms)}")
    keep = torch.isfinite(norms) & (norms > 0)
    if int(keep.sum()) < 2:
        return float("nan")
    d, y = distance[keep], norms[keep].log()
    d0 = d - d.mean()
    slope = (d0 * (y - y.mean())).sum() / (d0 * d0).sum()
    return float(slope.exp())


# --- 2. clip by norm vs by value ------------------------------------------------------------
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


# --- 3. a recurrent net with and without clipping -------------------------------------------
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
    dtype, device = _resolve_dtype(dtype), _resolve_device(device)
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
    dtype, device = _resolve_dtype(dtype), _resolve_device(device)
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
