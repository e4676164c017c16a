"""Five training runs whose loss curves look alike (healthy, numerical blow-up, overfitting,
preprocessing mismatch, leak between splits), and the signals that tell them apart."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from numlab._checks import int_at_least, real_array
from numlab.debugging.tools import GradNormLogger, NanGuard, NormHistory
from numlab.device import pick, seeded, threads
from numlab.formats import COMPUTE_DTYPES, resolve_dtype

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
    blowup = _blowup(train, val, grad)
    if blowup is not None:
        return blowup
    signals: dict = {}
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


def _blowup(train, val, grad) -> Diagnosis | None:
    """Rule 1 of :func:`diagnose_curves`: a non-finite value, or training loss up 10x."""
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
    return None


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
    dtype = resolve_dtype(dtype, COMPUTE_DTYPES)
    dev = pick(device)
    small = pathology in ("overfitting", "leak between splits")
    every = int_at_least("every", every, 1)
    steps = int_at_least("steps", (200 if small else 150) if steps is None else steps, 3 * every)
    with threads(1):
        return _pathology_run(pathology, steps, every, seed, dtype, dev, small)


def _pathology_data(pathology, seed, dtype, small):
    """Training, validation and fresh held-out sets as the run's pipelines deliver them."""
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
    return x_tr, y_tr, x_va, y_va, x_fr, y_fr


def _pathology_run(pathology, steps, every, seed, dtype, dev, small):
    data = _pathology_data(pathology, seed, dtype, small)
    overlap, shift = split_overlap(data[0], data[2]), input_shift(data[0], data[2])
    x_tr, y_tr, x_va, y_va, x_fr, y_fr = (t.to(dev) for t in data)

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
    grad = _grad_at(evals, norms, stopped)
    diagnosis = diagnose_curves(tr_l, va_l, grad, overlap=overlap, shift=shift)
    return CurveRun(pathology, np.array(evals), np.array(tr_l), np.array(va_l), np.array(fr_l),
                    np.array(acc), grad, np.array(zmax), norms, overlap, shift, stopped, diagnosis)


def _grad_at(evals, norms: NormHistory, stopped) -> np.ndarray:
    """The global gradient norm logged at each evaluated step (NaN where none was, or where
    the run stopped before its backward pass)."""
    grad = np.full(len(evals), np.nan)
    index = {int(s): i for i, s in enumerate(norms.steps)}
    for i, s in enumerate(evals):
        if s in index and s != stopped:
            grad[i] = norms.global_grad[index[s]]
    return grad
