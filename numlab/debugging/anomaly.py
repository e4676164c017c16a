"""Anomaly mode: what ``torch.autograd.detect_anomaly()`` reports for a backward-only NaN,
the small modules that make one, and what the mode costs per training step."""
from __future__ import annotations

import os
import re
import statistics
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from numlab._checks import flag, int_at_least
from numlab._checks import seed as check_seed
from numlab.device import seeded, threads, time_calls

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

    def timed(anomaly, warmup=0):
        with torch.autograd.set_detect_anomaly(anomaly):
            return time_calls(step, repeat=1, warmup=warmup)[0]

    with warnings.catch_warnings(), threads(1):
        warnings.simplefilter("ignore")  # anomaly mode's "will increase the runtime" notice
        off, on = [timed(False, warmup=1)], [timed(True, warmup=1)]  # interleaved: same load
        for _ in range(repeats - 1):
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
