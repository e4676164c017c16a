"""Training runs and gradient magnitudes: autocast in fp16 or bf16, with or without a GradScaler.

A run trains a small fp32 model (the master weights stay fp32) whose forward and backward
matmuls run in the chosen 16-bit format under ``torch.autocast(device_type, dtype=...)``.
Loss scaling uses ``torch.amp.GradScaler(device)``, the current API on every device type;
the deprecated ``torch.cuda.amp`` spellings are never used here.

The demo task is a least-squares fit, ``loss = loss_scale * mean((f(x) - y)**2)``, with
``f = Linear(64, 64) -> tanh -> Linear(64, 1)`` on one batch of 256 points. A small
``loss_scale`` (1e-5) puts the gradient entries near fp16's smallest subnormal,
``2**-24 ~ 5.96e-8``, so fp16 without scaling flushes most of them to zero. The learning
rate is divided by ``loss_scale``, so that in exact arithmetic every ``loss_scale`` takes
the same steps: what differs between runs is rounding only.

Every step also computes the fp32 gradient at the same weights (outside the timed part):
``zero_fraction`` is the share of entries that the mixed-precision backward returned as
exactly zero although fp32 has them non-zero.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from numlab import device as _device
from numlab._checks import flag, fp32_number, int_at_least, positive_number
from numlab._checks import seed as check_seed

PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WIDTH, BATCH = 64, 256  # the demo model and batch


# --- argument checks ---------------------------------------------------------------------
def resolve_precision(precision) -> str:
    """``"fp32"``, ``"fp16"`` or ``"bf16"`` from a name ("half", "bfloat16", ...) or a dtype."""
    from numlab.formats import resolve_dtype

    try:
        dtype = resolve_dtype(precision)
    except ValueError:
        dtype = None
    for name, known in _DTYPES.items():
        if dtype == known:
            return name
    raise ValueError(
        f"precision must be one of {PRECISIONS} (or torch.float32/float16/bfloat16), "
        f"got {precision!r}"
    )


def _check_device(precision: str, device, scaler: bool) -> torch.device:
    """The device to use; refuses (with the reason and a way out) what it cannot do."""
    dev = _device.pick(device)  # ValueError naming what is available for an absent device
    if precision == "fp32" and not scaler:
        return dev
    caps = _device.capabilities(dev.type)
    works = {"fp16": caps.autocast_fp16, "bf16": caps.autocast_bf16, "fp32": True}[precision]
    if not works:
        other = [p for p in ("bf16", "fp16") if p != precision]
        raise ValueError(
            f"precision={precision!r}: torch {torch.__version__} cannot autocast to "
            f"{precision} on device {dev.type!r} ({caps!r}); nothing was run. Use "
            f"precision={other[0]!r} or 'fp32', or another device from {_device.available()}."
        )
    if scaler and not caps.grad_scaler:
        raise ValueError(
            f"scaler=True: torch.amp.GradScaler({dev.type!r}) does not work with torch "
            f"{torch.__version__} ({caps!r}); nothing was run. Use scaler=False with "
            "precision='bf16', or another device."
        )
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --- the demo task -----------------------------------------------------------------------
def demo_problem(seed: int = 0, device="cpu", width: int = WIDTH, batch: int = BATCH):
    """``(model, x, y)``: a fresh fp32 MLP and one batch, the same for the same seed."""
    seed = check_seed(seed)
    device = _device.pick(device)
    int_at_least("width", width)
    int_at_least("batch", batch)
    with _device.seeded(seed):  # never touch the reader's global RNG state
        model = torch.nn.Sequential(
            torch.nn.Linear(width, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)
        )
        x = torch.randn(batch, width)
        direction = torch.randn(width) / math.sqrt(width)
    y = torch.sin(2.0 * (x @ direction)).unsqueeze(1)  # a smooth target the MLP can learn
    return model.to(device), x.to(device), y.to(device)


def _flat_grads(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).float() for p in params])


def _fp32_grads(model, x, y, loss_scale: float) -> torch.Tensor:
    """The fp32 gradient at the current weights (no autocast, no scaling)."""
    params = list(model.parameters())
    with torch.autocast(x.device.type, enabled=False):
        loss = torch.nn.functional.mse_loss(model(x), y) * loss_scale
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


# --- one training run --------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class TrainingRun:
    """What one run recorded, per step (arrays of length ``steps``)."""

    precision: str  # actually used
    device: str  # actually used
    scaler: bool
    loss: np.ndarray  # mean squared error (divided by loss_scale), before each step's update
    scale: np.ndarray  # loss scale used at each step (1.0 without a scaler)
    skipped: list[int]  # steps whose gradients held inf/NaN and were not applied
    zero_fraction: np.ndarray  # share of entries exactly 0 where fp32 has them non-zero
    grad_sample: np.ndarray  # |gradient| entries the optimizer saw at step 0 (unscaled)
    step_ms: np.ndarray  # wall time of each step (forward, backward, unscale, update)
    loss_scale: float
    init_scale: float
    growth_interval: int
    overflow_at: tuple[int, ...] = field(default=())

    @property
    def steps(self) -> int:
        return len(self.loss)

    @property
    def median_step_ms(self) -> float:
        return float(np.median(self.step_ms))

    def __repr__(self):
        scaler = f"scaler from 2**{math.log2(self.init_scale):g}" if self.scaler else "no scaler"
        skipped = self.skipped if len(self.skipped) <= 6 else f"{self.skipped[:6]}..."
        return (
            f"TrainingRun({self.precision} on {self.device}, {scaler}, {self.steps} steps: "
            f"loss {self.loss[0]:.4g} -> {self.loss[-1]:.4g}, "
            f"zero grads {100 * self.zero_fraction.mean():.1f}%, skipped {skipped}, "
            f"{self.median_step_ms:.2f} ms/step)"
        )


def train(
    precision="fp32",
    scaler: bool = False,
    device="auto",
    steps: int = 100,
    seed: int = 0,
    loss_scale: float = 1.0,
    init_scale: float = 2.0**16,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 2000,
    overflow_at: Iterable[int] = (),
    lr: float = 0.2,
    threads: int | None = 1,
    progress=None,
) -> TrainingRun:
    """Train the demo model for ``steps`` full-batch SGD steps and record what happened.

    ``precision``: "fp32" (no autocast), "fp16" or "bf16" (``torch.autocast`` to that dtype).
    ``scaler``: use ``torch.amp.GradScaler(device, init_scale, growth_factor,
    backoff_factor, growth_interval)``; torch's defaults are 2**16, 2.0, 0.5, 2000.
    ``loss_scale``: the loss magnitude (the loss is multiplied by it, the learning rate
    divided by it); small values push gradients toward fp16's underflow threshold.
    ``overflow_at``: steps at which one gradient entry is set to inf after backward, as if
    that batch had overflowed; with a scaler those steps are skipped and the scale backs off.
    ``threads``: torch CPU threads during the run (restored afterwards); None leaves them.
    ``progress``: optional callable ``progress(step)`` called after each step.
    """
    precision, scaler = resolve_precision(precision), flag("scaler", scaler)
    overflow_at = _check_train_args(steps, seed, loss_scale, init_scale, lr, growth_interval,
                                    growth_factor, backoff_factor, overflow_at, threads, progress)
    dev = _check_device(precision, device, scaler)
    model, x, y = demo_problem(seed, dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr / loss_scale)  # same steps for every loss_scale
    grad_scaler = (
        torch.amp.GradScaler(dev.type, init_scale=init_scale, growth_factor=growth_factor,
                             backoff_factor=backoff_factor, growth_interval=growth_interval)
        if scaler else None
    )

    with _device.threads(threads):
        record = _train_steps(model, x, y, opt, grad_scaler, _DTYPES[precision], loss_scale,
                              steps, overflow_at, progress, dev)
    return TrainingRun(
        precision=precision, device=dev.type, scaler=scaler, loss=np.array(record["loss"]),
        scale=np.array(record["scale"]), skipped=record["skipped"],
        zero_fraction=np.array(record["zero"]), grad_sample=record["sample"],
        step_ms=np.array(record["ms"]), loss_scale=float(loss_scale), init_scale=float(init_scale),
        growth_interval=growth_interval, overflow_at=overflow_at,
    )


def _train_steps(model, x, y, opt, grad_scaler, dtype, loss_scale, steps, overflow_at, progress,
                 dev) -> dict:
    """The timed steps of :func:`train` and what each one did."""
    params = list(model.parameters())

    def inject_overflow():
        # In the output layer's weight: unlike a tanh unit, which saturates an inf weight
        # back to +-1, this one cannot hide it.
        params[-2].grad.view(-1)[0] = float("inf")

    record = {"loss": [], "scale": [], "zero": [], "ms": [], "skipped": [], "sample": None}
    for step in range(steps):
        reference = _fp32_grads(model, x, y, loss_scale)  # untimed
        record["scale"].append(float(grad_scaler.get_scale() if grad_scaler else 1.0))
        _sync(dev)
        start = time.perf_counter()
        mse, grads = _amp_step(model, x, y, opt, dtype, grad_scaler, loss_scale,
                               inject=inject_overflow if step in overflow_at else None,
                               inspect=lambda: _flat_grads(params))
        _sync(dev)
        record["ms"].append(1e3 * (time.perf_counter() - start))
        flushed = (grads == 0) & (reference != 0)
        record["zero"].append(float(flushed.sum() / (reference != 0).sum().clamp(min=1)))
        record["loss"].append(float(mse.detach()))
        if grad_scaler and not bool(torch.isfinite(grads).all()):
            record["skipped"].append(step)  # GradScaler.step skipped the update
        if record["sample"] is None:
            record["sample"] = grads.abs().cpu().numpy()
        if progress is not None:
            progress(step)
    return record


def _check_train_args(steps, seed, loss_scale, init_scale, lr, growth_interval, growth_factor,
                      backoff_factor, overflow_at, threads, progress) -> tuple[int, ...]:
    """Check :func:`train`'s numbers; return ``overflow_at`` as a sorted tuple."""
    int_at_least("steps", steps)
    check_seed(seed)
    fp32_number("loss_scale", loss_scale, " (the loss is multiplied by it in float32)")
    fp32_number("init_scale", init_scale, " (GradScaler keeps its scale in float32)")
    fp32_number("lr", lr)
    int_at_least("growth_interval", growth_interval)
    if positive_number("growth_factor", growth_factor) <= 1:
        raise ValueError(f"growth_factor must be > 1, got {growth_factor!r}")
    if not 0 < positive_number("backoff_factor", backoff_factor) < 1:
        raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
    if isinstance(overflow_at, int | str) or not isinstance(overflow_at, Iterable):
        raise TypeError(f"overflow_at must be a collection of step numbers, e.g. [{overflow_at!r}], "
                        f"got {overflow_at!r}")
    overflow_at = tuple(sorted(set(overflow_at)))
    bad = [s for s in overflow_at if isinstance(s, bool) or not isinstance(s, int)]
    if bad or any(not 0 <= s < steps for s in overflow_at):
        raise ValueError(f"overflow_at must hold integer steps in [0, {steps}), got {overflow_at}")
    if threads is not None:
        int_at_least("threads", threads)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable progress(step) or None, got {progress!r}")
    return overflow_at


def _amp_step(model, x, y, opt, dtype, scaler, loss_scale: float = 1.0, *, inject=None,
              inspect=None):
    """One mixed-precision training step, the recipe of torch's AMP documentation: forward
    under ``torch.autocast`` (off for fp32), backward through the ``GradScaler`` if there is
    one, ``unscale_``, then ``scaler.step`` (which skips the update when a gradient is inf or
    NaN) and ``scaler.update``. ``inject()`` runs after backward (to plant an overflow);
    ``inspect()`` sees the unscaled gradients before the update. Returns (mse, inspected)."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        mse = torch.nn.functional.mse_loss(model(x), y)  # autocast runs this in fp32
    loss = mse * loss_scale
    (scaler.scale(loss) if scaler else loss).backward()
    if inject is not None:
        inject()
    if scaler:
        scaler.unscale_(opt)  # grads now hold loss_scale * dmse/dw, in fp32
    seen = inspect() if inspect is not None else None
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return mse, seen


# --- gradient magnitudes against the formats' ranges -------------------------------------
@dataclass(frozen=True, repr=False)
class GradientMagnitudes:
    """|gradient| entries of the demo model at its initial weights, before and after scaling."""

    fp32: np.ndarray  # |grad| computed in fp32 (the true values, unscaled)
    scaled: np.ndarray  # fp32 * scale: what the backward pass must represent with a scaler
    scale: float
    loss_scale: float
    zero_fp16: float  # share flushed to zero by fp16 autocast without scaling
    zero_fp16_scaled: float  # ... with the loss multiplied by ``scale`` before backward
    zero_bf16: float  # ... by bf16 autocast without scaling

    def __repr__(self):
        return (
            f"GradientMagnitudes(loss_scale={self.loss_scale:g}, median |grad| "
            f"{np.median(self.fp32):.2e}; zero in fp16 {100 * self.zero_fp16:.1f}%, "
            f"fp16 x 2**{math.log2(self.scale):g} {100 * self.zero_fp16_scaled:.1f}%, "
            f"bf16 {100 * self.zero_bf16:.1f}%)"
        )


def _autocast_grads(model, x, y, dtype, loss_scale: float, scale: float) -> torch.Tensor:
    params = list(model.parameters())
    with torch.autocast(x.device.type, dtype=dtype):
        loss = torch.nn.functional.mse_loss(model(x), y) * loss_scale
    grads = torch.autograd.grad(loss * scale, params)
    return torch.cat([g.reshape(-1).float() for g in grads]) / scale


def gradient_magnitudes(
    loss_scale: float = 1e-5, scale: float = 2.0**15, seed: int = 0, device="cpu",
    threads: int | None = 1,
) -> GradientMagnitudes:
    """Gradient magnitudes of the demo task and the share each 16-bit backward flushes to 0."""
    fp32_number("loss_scale", loss_scale, " (the loss is multiplied by it in float32)")
    fp32_number("scale", scale, " (the loss is multiplied by it in float32)")
    check_seed(seed)
    dev = _check_device("fp16", device, scaler=False)
    _check_device("bf16", dev, scaler=False)
    with _device.threads(threads):
        model, x, y = demo_problem(seed, dev)
        ref = _fp32_grads(model, x, y, loss_scale)
        nonzero = ref != 0

        def flushed(dtype, s):
            g = _autocast_grads(model, x, y, dtype, loss_scale, s)
            return float(((g == 0) & nonzero).sum() / nonzero.sum().clamp(min=1))

        mags = ref[nonzero].abs().double().cpu().numpy()
        return GradientMagnitudes(
            fp32=mags, scaled=mags * scale, scale=float(scale), loss_scale=float(loss_scale),
            zero_fp16=flushed(torch.float16, 1.0), zero_fp16_scaled=flushed(torch.float16, scale),
            zero_bf16=flushed(torch.bfloat16, 1.0),
        )
