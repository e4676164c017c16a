"""Softmax, log-sum-exp, cross-entropy and softplus: the naive recipe beside the stable one,
and where each naive form breaks. Everything is re-exported here (``numlab.softmax.X``):

* :mod:`~numlab.softmax.forms`: the functions themselves, each pair written to be read line
  by line, computing in the dtype of its input (an fp16 tensor gives fp16 arithmetic);
* :mod:`~numlab.softmax.breaks`: the exact logit scale at which each naive quantity turns
  non-finite or wrong (:func:`breakpoints`, :func:`softplus_breakpoint`);
* :mod:`~numlab.softmax.sweeps`: naive and stable side by side over logit scales
  (:func:`sweep_logits`) and single logits (:func:`sweep_bce`, :func:`softplus_table`).

The stable forms rest on two identities (exact in real arithmetic):

    logsumexp(z) = m + log(sum_j exp(z_j - m)),          m = max_j z_j
    log(1 + e^z) = max(z, 0) + log1p(exp(-|z|))

After the shift the largest term is exp(0) = 1, so the sum lies in [1, n] and cannot
overflow; cross-entropy is then ``logsumexp(z) - z_y``, with no log of a probability.
"""
from numlab.softmax.breaks import (
    WRONG,
    Breakpoints,
    breakpoints,
    logit_pattern,
    overflow_threshold,
    softplus_breakpoint,
    wrong_limit,
)
from numlab.softmax.forms import (
    REDUCTIONS,
    TARGETS,
    bce_naive,
    bce_stable,
    cross_entropy_naive,
    cross_entropy_stable,
    logsumexp_naive,
    logsumexp_stable,
    shifted_sum,
    softmax_naive,
    softmax_stable,
    softplus_naive,
    softplus_stable,
)
from numlab.softmax.sweeps import BinarySweep, LogitSweep, softplus_table, sweep_bce, sweep_logits

__all__ = [
    "REDUCTIONS", "TARGETS", "WRONG", "softmax_naive", "softmax_stable", "logsumexp_naive",
    "logsumexp_stable", "shifted_sum", "cross_entropy_naive", "cross_entropy_stable",
    "softplus_naive", "softplus_stable", "bce_naive", "bce_stable", "logit_pattern",
    "Breakpoints", "breakpoints", "overflow_threshold", "softplus_breakpoint", "wrong_limit",
    "LogitSweep", "sweep_logits", "BinarySweep", "sweep_bce", "softplus_table",
]
