"""Exploding gradients and gradient clipping, measured. One module per experiment, each
returning a small frozen dataclass, everything re-exported here (``numlab.clipping.X``):

* :mod:`~numlab.clipping.depth`: :func:`gradient_norms_by_depth` backpropagates through a
  deep stack whose layers have Jacobians of known spectral norm (``gain`` times an
  orthogonal matrix) and records the gradient norm at every layer, beside the geometric
  rate the gain predicts.
* :mod:`~numlab.clipping.clip`: :func:`clip_comparison` clips one gradient by global norm
  (``torch.nn.utils.clip_grad_norm_``) and by value (``torch.nn.utils.clip_grad_value_``),
  with the norms and the cosine of each to the original; :func:`clip_grad_norm_checked_`.
* :mod:`~numlab.clipping.rnn`: :func:`train_rnn` and :func:`threshold_sweep`, a small tanh
  RNN on the adding problem (a long-range toy task), trained with plain SGD with and
  without clipping.

Only torch is imported here; the drawing lives in :mod:`numlab.viz.clipping`.
"""
from numlab.clipping.clip import ClipComparison, clip_comparison, clip_grad_norm_checked_
from numlab.clipping.depth import (
    NONLINEARITIES,
    DepthProfile,
    fit_rate,
    gradient_norms_by_depth,
    orthogonal_stack,
)
from numlab.clipping.rnn import (
    CLIP_MODES,
    ORDERS,
    ThresholdSweep,
    TrainingRun,
    adding_problem,
    threshold_sweep,
    train_rnn,
)

__all__ = [
    "NONLINEARITIES", "CLIP_MODES", "ORDERS", "DepthProfile", "orthogonal_stack",
    "gradient_norms_by_depth", "fit_rate", "ClipComparison", "clip_comparison",
    "clip_grad_norm_checked_", "TrainingRun", "adding_problem", "train_rnn", "ThresholdSweep",
    "threshold_sweep",
]
