"""Data-parallel training for real, on one machine: worker processes and ``torch.distributed``.

One module per concept, everything re-exported here (``numlab.distributed.run_workers`` etc.):

* :mod:`~numlab.distributed.launcher`: :func:`run_workers` starts ``world_size`` processes
  that join one process group (gloo on CPU, nccl on GPUs), runs ``fn(*args)`` in each and
  returns the results by rank. A worker's exception is raised here with its rank and
  traceback, a hang ends at ``timeout``, and on every way out (result, error, timeout,
  Ctrl-C / the notebook's stop button) no process is left behind.
* :mod:`~numlab.distributed.ddp`: :func:`ddp_equivalence`, ``DistributedDataParallel`` on N
  shards vs one process on the whole batch, step by step (they differ only by the order of
  floating-point additions), and :func:`reduction_order`.
* :mod:`~numlab.distributed.batchnorm`: :func:`batchnorm_sync` / :func:`batchnorm_check`,
  local vs synchronised BatchNorm statistics across workers (``torch.nn.SyncBatchNorm`` on
  CUDA; on CPU, where SyncBatchNorm cannot train, the workers' statistics gathered and merged
  inside the autograd graph).
* :mod:`~numlab.distributed.stale`: :func:`stale_sgd` / :func:`stale_sweep`, gradients
  computed on weights ``k`` steps old, simulated in one process for a whole lr x k grid.
* :mod:`~numlab.distributed.jobs`: :func:`run_many`, several experiments by name in *one*
  launch (a launch costs seconds); :mod:`~numlab.distributed.workers`: small worker
  functions (rank info, ways to fail) for the tests and the notebook.

The same demos run from the command line and under torchrun (``__main__``):
``torchrun --nproc-per-node 2 -m numlab.distributed ddp``.

Worker functions must live in an importable module (numlab's are in this package). A
worker is a process that has never run the notebook (forked from multiprocessing's fork
server, or a new interpreter where there is none): it imports the function by its module and
name, and a function typed into a notebook cell belongs to the kernel's ``__main__``, which
has no file the worker could import, so it cannot be sent.
"""
from numlab.distributed.batchnorm import (
    BatchNormCheck,
    BatchNormSweep,
    CPUSyncBatchNorm,
    batchnorm_check,
    batchnorm_sync,
)
from numlab.distributed.ddp import DDPEquivalence, ReductionOrder, ddp_equivalence, reduction_order
from numlab.distributed.jobs import JOBS, run_many
from numlab.distributed.launcher import (
    BACKENDS,
    HOST,
    Job,
    WorkerError,
    WorkerTimeout,
    alive_pids,
    last_worker_pids,
    resolve_backend,
    run_workers,
)
from numlab.distributed.stale import (
    StaleRun,
    StaleSweep,
    critical_lr,
    least_squares_problem,
    stale_sgd,
    stale_sweep,
)

__all__ = [
    "BACKENDS", "HOST", "Job", "JOBS", "WorkerError", "WorkerTimeout", "alive_pids",
    "last_worker_pids", "resolve_backend", "run_workers", "run_many", "DDPEquivalence",
    "ddp_equivalence", "ReductionOrder", "reduction_order", "BatchNormCheck", "batchnorm_check",
    "BatchNormSweep", "batchnorm_sync", "CPUSyncBatchNorm", "StaleRun", "stale_sgd",
    "StaleSweep", "stale_sweep", "critical_lr", "least_squares_problem",
]
