"""Speed: the median wall time of one autocast training step per precision on this device,
and what the measured ratios mean on this machine, in words that follow the numbers."""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from numlab import device as _device
from numlab._checks import int_at_least, positive_number
from numlab._checks import seed as check_seed
from numlab.mixed_precision.training import (
    _DTYPES,
    PRECISIONS,
    _amp_step,
    _check_device,
    _sync,
    resolve_precision,
)


@dataclass(frozen=True, repr=False)
class StepTimes:
    """Median time of one training step per precision, on one device."""

    device: str
    width: int
    batch: int
    ms: dict[str, float]  # precision -> median ms per step

    def ratio(self, precision: str) -> float:
        """Speed-up over fp32 (> 1 means faster than fp32)."""
        return self.ms["fp32"] / self.ms[precision]

    def __repr__(self):
        parts = ", ".join(f"{p} {t:.2f} ms (x{self.ratio(p):.2f})" for p, t in self.ms.items())
        return f"StepTimes({self.device}, MLP width {self.width}, batch {self.batch}: {parts})"


def step_times(
    precisions: Iterable = PRECISIONS, device="auto", width: int = 512, batch: int = 512,
    steps: int = 10, warmup: int = 2, seed: int = 0, threads: int | None = 1,
) -> StepTimes:
    """Median wall time of one autocast training step (forward, backward, SGD) per precision.

    A wider model than the demo's, so the matmuls dominate. fp32 is always measured (the
    ratios are against it). Runs use ``torch.amp.GradScaler`` for fp16, none otherwise.
    ``threads=1`` (the default) times one CPU core, which other work on a shared machine
    disturbs least; ``None`` uses torch's default thread count. Ignored on GPUs.
    """
    if isinstance(precisions, str) or not isinstance(precisions, Iterable):
        raise TypeError(f"precisions must be a collection of precisions, got {precisions!r}")
    names = list(dict.fromkeys(["fp32", *(resolve_precision(p) for p in precisions)]))
    int_at_least("steps", steps)
    int_at_least("width", width)
    int_at_least("batch", batch)
    seed = check_seed(seed)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    devs = {name: _check_device(name, device, scaler=name == "fp16") for name in names}
    dev = devs["fp32"]
    ms = {}
    with _device.threads(threads):
        for name in names:
            with _device.seeded(seed):
                layers = [torch.nn.Linear(width, width), torch.nn.Tanh()] * 3  # shared weights
                model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1)).to(dev)
                x = torch.randn(batch, width).to(dev)
                y = torch.randn(batch, 1).to(dev)
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(dev.type) if name == "fp16" else None
            times = []
            for i in range(warmup + steps):
                _sync(dev)
                start = time.perf_counter()
                _amp_step(model, x, y, opt, _DTYPES[name], scaler)
                _sync(dev)
                if i >= warmup:
                    times.append(1e3 * (time.perf_counter() - start))
            ms[name] = float(np.median(times))
    return StepTimes(device=dev.type, width=width, batch=batch, ms=ms)


def speed_reading(ratios: dict[str, float], device="cpu") -> str:
    """What measured speed-ups over fp32 (``{"bf16": x, "fp16": y}``) mean on this device,
    in plain words: the text follows the numbers, so it is right on the reader's machine."""
    dev = _device.pick(device)
    if not isinstance(ratios, dict) or not set(ratios) <= {"bf16", "fp16"}:
        raise TypeError(f"ratios must be a dict with keys 'bf16' and/or 'fp16', got {ratios!r}")
    parts = []
    for name in ("bf16", "fp16"):
        if name not in ratios:
            continue
        r = positive_number(f"ratios[{name!r}]", ratios[name])
        if r > 1.1:
            parts.append(f"{name} is faster than fp32 here (x{r:.2f})")
        elif r >= 0.9:
            parts.append(f"{name} is about as fast as fp32 here (x{r:.2f})")
        else:
            parts.append(f"{name} is slower than fp32 here (x{r:.2f}, {1 / r:.0f} times the time)")
    text = "; ".join(parts) + "."
    if dev.type == "cuda":
        return text + " " + _gpu_reading(torch.cuda.get_device_name(dev),
                                         torch.cuda.get_device_capability(dev))
    capability = torch.backends.cpu.get_cpu_capability()
    if ratios.get("bf16", 1.0) < 0.9:
        text += (f" This CPU ({capability}) has no fast bf16 matrix kernels, as on most laptops "
                 "(AVX2 without AVX-512 bf16 or AMX): bf16 autocast is then slow, so use it here "
                 "to see the numerics, not for speed.")
    elif ratios.get("bf16", 1.0) > 1.1:
        text += f" This CPU ({capability}) has fast bf16 matrix kernels (AVX-512 bf16 or AMX)."
    if ratios.get("fp16", 1.0) < 0.9:
        text += (" This CPU has no fast fp16 matrix kernels, like most CPUs: fp16 pays off on "
                 "GPUs with tensor cores.")
    elif "fp16" in ratios:
        text += (" This CPU runs fp16 matrices about as fast as fp32 or faster (AVX-512 FP16 or "
                 "AMX-FP16, found on recent server CPUs); most laptops do not.")
    return text


def _gpu_reading(name: str, capability: tuple[int, int]) -> str:
    """What the GPU's architecture offers each format (NVIDIA: tensor cores for fp16 from
    compute capability 7.0, Volta/Turing; for bf16 from 8.0, Ampere). torch may still accept
    bf16 on an older GPU (``torch.cuda.is_bf16_supported()`` can say yes) and run it without
    tensor cores: the measured ratios above are what counts."""
    major, minor = capability
    fp16 = "has" if major >= 7 else "has no"
    bf16 = "has" if major >= 8 else "has no"
    return (f"Measured on {name} (compute capability {major}.{minor}): it {fp16} fp16 tensor "
            f"cores and {bf16} bf16 tensor cores.")
