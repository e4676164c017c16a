"""Small worker functions for the tests and the notebook: what a rank sees, and the ways a
worker can fail (raise, vanish, hang). Each runs inside :func:`~numlab.distributed.run_workers`
once ``torch.distributed`` is initialised and reads its rank with ``dist.get_rank()``."""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from numlab.distributed.bootstrap import worker_device
from numlab.distributed.launcher import Job


def rank_info():
    """``(rank, world_size, sum of ranks by all_reduce, backend)``."""
    t = torch.tensor([float(dist.get_rank())], device=worker_device())  # nccl needs CUDA tensors
    dist.all_reduce(t)
    return dist.get_rank(), dist.get_world_size(), float(t), dist.get_backend()


def _record_pids(pid_dir, extra=()):
    """Write this worker's pid (and ``extra`` pids) to ``pid_dir/rank<r>.pid``, atomically."""
    if pid_dir is None:
        return
    import pathlib

    folder = pathlib.Path(pid_dir)
    tmp = folder / f"rank{dist.get_rank()}.tmp"
    tmp.write_text(" ".join(map(str, [os.getpid(), *extra])))
    tmp.rename(folder / f"rank{dist.get_rank()}.pid")  # a reader never sees half a file


def fail_on(bad_rank: int, message: str = "boom", pid_dir=None):
    """Rank ``bad_rank`` raises ``RuntimeError(message)``; the others wait at a barrier."""
    _record_pids(pid_dir)
    if dist.get_rank() == bad_rank:
        raise RuntimeError(f"{message} (raised on rank {bad_rank})")
    dist.barrier()
    return dist.get_rank()


def die_on(bad_rank: int, code: int = 7):
    """Rank ``bad_rank`` vanishes with exit code ``code`` without a word (like a segfault)."""
    if dist.get_rank() == bad_rank:
        os._exit(code)
    dist.barrier()
    return dist.get_rank()


def hang_on(bad_rank: int, pid_dir: str, spawn_child: bool = False):
    """Write this process's pid to ``pid_dir``; rank ``bad_rank`` then sleeps for ever.

    With ``spawn_child`` every rank also starts a ``sleep`` grandchild and records its pid,
    to show that the launcher's clean-up reaches processes the workers started.
    """
    import subprocess
    import sys

    rank = dist.get_rank()
    extra = []
    if spawn_child:
        extra.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid)
    _record_pids(pid_dir, extra)
    if rank == bad_rank:
        time.sleep(600)
    else:
        dist.barrier()  # waits for the hanging rank, like a real collective would
    return rank


def torch_syncbn_on_cpu() -> str:
    """Try one training step of ``torch.nn.SyncBatchNorm`` on CPU tensors; say what happened."""
    norm = torch.nn.SyncBatchNorm(3)
    try:
        norm(torch.randn(4, 3)).sum().backward()
    except Exception as err:  # the answer is the message, whatever torch raises
        return f"{type(err).__name__}: {err}"
    return "trained on CPU"


def _no_arguments(world_size):
    return {}


RANK_INFO_JOB = Job(_no_arguments, rank_info, lambda per_rank, kw: per_rank)
SYNCBN_ON_CPU_JOB = Job(_no_arguments, torch_syncbn_on_cpu, lambda per_rank, kw: per_rank[0])
