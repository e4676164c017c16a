"""The experiments by name, for :func:`run_many` and the command line."""
from __future__ import annotations

from numlab.distributed import batchnorm, ddp, workers
from numlab.distributed.launcher import Job, _launch

JOBS: dict[str, Job] = {
    "rank_info": workers.RANK_INFO_JOB,
    "torch_syncbn_on_cpu": workers.SYNCBN_ON_CPU_JOB,
    "ddp_equivalence": ddp.JOB,
    "batchnorm_check": batchnorm.CHECK_JOB,
    "batchnorm_sync": batchnorm.SYNC_JOB,
}


def run_many(world_size: int, *jobs: tuple[str, dict], backend: str = "auto",
             timeout: float = 300.0) -> list:
    """Several experiments in one launch: ``run_many(2, ("ddp_equivalence", {...}), ...)``."""
    if not jobs:
        raise ValueError(f"jobs must name at least one of {sorted(JOBS)}")
    for item in jobs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict)):
            raise TypeError(f"each job must be a (name, kwargs dict) pair, got {item!r}")
        if item[0] not in JOBS:
            raise ValueError(f"unknown job {item[0]!r}; known jobs: {sorted(JOBS)}")
    return _launch(world_size, [(JOBS[name], kwargs) for name, kwargs in jobs],
                  backend=backend, timeout=timeout)
