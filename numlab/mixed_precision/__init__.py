"""Mixed precision: autocast in fp16 or bf16, with or without a GradScaler, everything
re-exported here (``numlab.mixed_precision.X``):

* :mod:`~numlab.mixed_precision.training`: :func:`train`, a small fp32 model (the master
  weights stay fp32) whose forward and backward matmuls run in the chosen 16-bit format
  under ``torch.autocast(device_type, dtype=...)``, loss scaling by
  ``torch.amp.GradScaler(device)``, and what each step did (flushed gradients, skipped
  steps, the scale); :func:`gradient_magnitudes` against the formats' ranges.
* :mod:`~numlab.mixed_precision.speed`: :func:`step_times`, one training step per precision
  timed on this device (the same step function as :func:`train`), and
  :func:`speed_reading`, what those ratios mean here.

The deprecated ``torch.cuda.amp`` spellings are never used.
"""
from numlab.mixed_precision.speed import StepTimes, speed_reading, step_times
from numlab.mixed_precision.training import (
    BATCH,
    PRECISIONS,
    WIDTH,
    GradientMagnitudes,
    TrainingRun,
    demo_problem,
    gradient_magnitudes,
    resolve_precision,
    train,
)

__all__ = [
    "PRECISIONS", "WIDTH", "BATCH", "resolve_precision", "demo_problem", "TrainingRun", "train",
    "GradientMagnitudes", "gradient_magnitudes", "StepTimes", "step_times", "speed_reading",
]
