"""The command line and torchrun entry point: ``python -m numlab.distributed ddp`` spawns
workers; ``torchrun --nproc-per-node 2 -m numlab.distributed ddp`` uses torchrun's."""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from numlab.distributed.jobs import JOBS, run_many
from numlab.distributed.launcher import BACKENDS, _worker_kwargs, resolve_backend

_CLI_JOBS = {"ddp": "ddp_equivalence", "batchnorm": "batchnorm_sync",
             "bncheck": "batchnorm_check"}


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m numlab.distributed",
        description="Run a numlab distributed demo, under torchrun or by spawning workers.",
        epilog="Under torchrun (RANK and WORLD_SIZE set) the launcher's processes are used; "
               "otherwise --nproc workers are spawned here.")
    parser.add_argument("demo", choices=sorted(_CLI_JOBS))
    parser.add_argument("--nproc", type=int, default=2, help="workers to spawn (no torchrun)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--dtype", default=None, help="ddp / bncheck: fp32 or fp64")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batchnorm: per-device batch sizes")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    args = parser.parse_args(argv)
    kwargs = {}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    if args.dtype is not None and args.demo != "batchnorm":
        kwargs["dtype"] = args.dtype
    if args.batch is not None and args.demo == "batchnorm":
        kwargs["per_device_batch"] = tuple(args.batch)
    return args, _CLI_JOBS[args.demo], kwargs


def main(argv=None) -> int:
    args, name, kwargs = _parse(argv)
    job = JOBS[name]
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        world_size = int(os.environ["WORLD_SIZE"])
        backend = resolve_backend(args.backend, world_size)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        try:
            prepared = job.prepare(world_size=world_size, **kwargs)
            mine = job.worker(**_worker_kwargs(prepared))
            gathered = [None] * world_size if dist.get_rank() == 0 else None
            dist.gather_object(mine, gathered, dst=0)
            if dist.get_rank() == 0:
                print(f"torchrun, {world_size} processes, backend {backend}")
                print(job.finish(gathered, prepared))
        finally:
            dist.destroy_process_group()
        return 0
    print(f"spawning {args.nproc} workers")
    print(run_many(args.nproc, (name, kwargs), backend=args.backend)[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
