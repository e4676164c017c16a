"""The machine: the one place that picks cuda, then mps, then cpu, knows what each can do,
sets threads and seeds for a reproducible demo, and times a call."""
from __future__ import annotations

import contextlib
import functools
import time
import warnings
from dataclasses import dataclass

import torch

KINDS = ("auto", "cuda", "mps", "cpu")


def available() -> list[str]:
    """Device kinds usable in this process, best first."""
    kinds = []
    if torch.cuda.is_available():
        kinds.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        kinds.append("mps")
    kinds.append("cpu")
    return kinds


def pick(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to the best device; refuse (never silently replace) one that is absent."""
    if isinstance(device, torch.device):
        device = device.type
    if not isinstance(device, str) or device.split(":")[0] not in KINDS:
        raise ValueError(f"device must be one of {KINDS} (or a torch.device), got {device!r}")
    if device == "auto":
        return torch.device(available()[0])
    if device.split(":")[0] not in available():
        raise ValueError(
            f"device={device!r} was asked for but is not available here; "
            f"available: {available()}. Pass device='auto' to use {available()[0]!r}."
        )
    return torch.device(device)


@contextlib.contextmanager
def threads(n: int | None = 1):
    """Run torch with ``n`` intra-op threads inside (``None``: leave it alone), restoring after.

    numlab's demo models are tiny (a 32x32 recurrence, a 256x64 matmul): waking a thread pool
    costs more than the work, and on a laptop or shared machine whose cores are busy an
    oversubscribed pool made runs 10-40x slower. One thread also fixes the order of reductions,
    so a seeded run gives the same numbers every time.
    """
    if n is None:
        yield
        return
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive int or None, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global RNG seeded with ``seed`` inside the block; the reader's RNG state (CPU and
    every CUDA device) is restored afterwards, so a demo never shifts the reader's own draws.

    For code that draws from the global RNG by design (``nn.Linear``'s initialisation).
    """
    from numlab._checks import seed as check_seed

    seed = check_seed(seed)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def time_calls(call, repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls of ``call()``, after ``warmup`` untimed ones.

    The one timing helper: the benchmarks, gradcheck's speed comparison and the anomaly-mode
    overhead all use it (take ``min`` for a best-of, ``statistics.median`` for a median).
    """
    from numlab._checks import int_at_least

    if not callable(call):
        raise TypeError(f"call must be callable, got {call!r}")
    repeat, warmup = int_at_least("repeat", repeat, 1), int_at_least("warmup", warmup, 0)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


@dataclass(frozen=True)
class Capabilities:
    """What mixed precision can do on one device, found by trying it."""

    device: str
    autocast_fp16: bool
    autocast_bf16: bool
    grad_scaler: bool

    def __repr__(self):
        yes = {True: "yes", False: "no"}
        return (
            f"Capabilities({self.device}: autocast fp16 {yes[self.autocast_fp16]}, "
            f"autocast bf16 {yes[self.autocast_bf16]}, GradScaler {yes[self.grad_scaler]})"
        )


def _autocast_works(kind: str, dtype: torch.dtype) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning means autocast quietly disabled itself
            layer = torch.nn.Linear(4, 4).to(kind)
            with torch.autocast(kind, dtype=dtype):
                out = layer(torch.ones(2, 4, device=kind))
            out.float().sum().backward()
        return out.dtype == dtype
    except (RuntimeError, UserWarning, TypeError, AssertionError):
        return False


def _grad_scaler_works(kind: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            layer = torch.nn.Linear(4, 1).to(kind)
            opt = torch.optim.SGD(layer.parameters(), lr=0.1)
            scaler = torch.amp.GradScaler(kind, init_scale=2.0**4)
            scaler.scale(layer(torch.ones(2, 4, device=kind)).sum()).backward()
            scaler.step(opt)
            scaler.update()
        return scaler.is_enabled() and scaler.get_scale() == 2.0**4
    except (RuntimeError, UserWarning, TypeError, AssertionError):
        return False


@functools.cache
def capabilities(device: str | torch.device = "auto") -> Capabilities:
    """Try fp16/bf16 autocast and ``torch.amp.GradScaler`` on ``device`` (cached)."""
    kind = pick(device).type
    return Capabilities(
        device=kind,
        autocast_fp16=_autocast_works(kind, torch.float16),
        autocast_bf16=_autocast_works(kind, torch.bfloat16),
        grad_scaler=_grad_scaler_works(kind),
    )
