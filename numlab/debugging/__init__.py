"""Hunting NaNs: find *when* a run goes wrong, *where*, and whether it is numerics at all.

One module per concept, everything re-exported here (``numlab.debugging.NanGuard`` etc.):

* :mod:`~numlab.debugging.tools`: :class:`GradNormLogger` (per-layer gradient and weight
  norms through parameter hooks) and :class:`NanGuard` (raises at the first non-finite loss);
* :mod:`~numlab.debugging.tracer`: :func:`trace_nonfinite`, the first module whose forward
  output holds an inf or NaN, which anomaly mode cannot tell: it only looks at the
  *backward* pass.
* :mod:`~numlab.debugging.anomaly`: :func:`anomaly_report` / :func:`anomaly_demo` run
  ``torch.autograd.detect_anomaly()`` on a genuine backward-only NaN and return the source
  line it blames; :func:`anomaly_overhead` measures its cost per training step.
* :mod:`~numlab.debugging.demos`: :func:`misinit_run` (a layer initialised too small,
  found from its norms) and :func:`nanguard_run` (a missing label in one batch).
* :mod:`~numlab.debugging.pathologies`: :func:`pathology_run` trains tiny models into four
  failures that look alike on one loss curve plus a healthy baseline;
  :func:`diagnose_curves` names the failure from the signals that separate them.

Only torch and numpy are imported here.
"""
from numlab.debugging.anomaly import (
    AnomalyDemo,
    AnomalyOverhead,
    AnomalyReport,
    LogCompress,
    MaskedEntropy,
    PairwiseDistance,
    anomaly_demo,
    anomaly_overhead,
    anomaly_report,
    forward_nan_model,
)
from numlab.debugging.demos import GuardRun, MisinitRun, misinit_mlp, misinit_run, nanguard_run
from numlab.debugging.pathologies import (
    PATHOLOGIES,
    CurveRun,
    Diagnosis,
    diagnose_curves,
    falls_while_val_rises,
    input_shift,
    pathology_run,
    pathology_tables,
    split_overlap,
)
from numlab.debugging.tools import GradNormLogger, NanGuard, NormHistory
from numlab.debugging.tracer import NonFiniteEvent, NonFiniteTrace, TensorStats, trace_nonfinite

__all__ = [
    "NormHistory", "GradNormLogger", "NanGuard", "TensorStats", "NonFiniteEvent",
    "NonFiniteTrace", "trace_nonfinite", "AnomalyReport", "anomaly_report", "AnomalyOverhead",
    "anomaly_overhead", "AnomalyDemo", "anomaly_demo", "PairwiseDistance", "MaskedEntropy",
    "LogCompress", "forward_nan_model", "misinit_mlp", "MisinitRun", "misinit_run",
    "GuardRun", "nanguard_run", "PATHOLOGIES", "Diagnosis", "diagnose_curves", "CurveRun",
    "pathology_run", "pathology_tables", "split_overlap", "input_shift", "falls_while_val_rises",
]
