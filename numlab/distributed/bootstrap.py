"""What runs inside each worker: join the process group, run the function, send back
its result or traceback, and never outlive the launcher.

A worker leads its own process group, so one ``killpg`` ends it and whatever it started: the
launcher does that on every way out, and a worker does it itself when it fails or when its
launcher is gone (a kernel killed with SIGKILL cannot clean up after itself).
"""
from __future__ import annotations

import faulthandler
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
from datetime import timedelta
from multiprocessing.connection import wait

import torch
import torch.distributed as dist


def worker_device() -> torch.device:
    """Inside a worker: the CUDA device of this rank under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _end_with_group(code: int) -> None:
    """End this worker and everything it started (its process group, which it leads)."""
    if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(code)


def _watch_launcher() -> None:
    # If the launcher dies without cleaning up (kill -9 of a kernel), the worker would live
    # on. multiprocessing keeps a pipe open from the launcher to each worker it started
    # (spawned or forked by the fork server alike), which reaches its end when the launcher
    # is gone: the worker then takes its whole process group (what it started, and itself)
    # down with it.
    wait([multiprocessing.parent_process().sentinel])
    _end_with_group(3)


def _stack_on_request(stack_dir: str, rank: int):
    """On SIGUSR1 (sent by the launcher when this rank hangs), write every thread's Python
    stack to ``stack_dir/rank<r>.stack``: the launcher's WorkerTimeout then shows where it was."""
    if stack_dir is None or not hasattr(signal, "SIGUSR1"):
        return None
    f = open(os.path.join(stack_dir, f"rank{rank}.stack"), "w")  # noqa: SIM115 - open for life
    faulthandler.register(signal.SIGUSR1, file=f, all_threads=True)
    return f


def bootstrap(rank, world_size, backend, host, port, timeout_s, fn, args, queue, stack_dir=None):
    """Join the process group, run ``fn(*args)``, send back a pickled result or traceback."""
    if hasattr(os, "setpgrp"):
        # Own process group: the launcher can kill this worker *and anything it started*
        # with one killpg, and a notebook's interrupt (SIGINT to the kernel's group) reaches
        # only the launcher, which then tears the workers down in order.
        os.setpgrp()
    threading.Thread(target=_watch_launcher, daemon=True).start()
    _stack_file = _stack_on_request(stack_dir, rank)  # noqa: F841 - kept open while fn runs
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        store = dist.TCPStore(host, port, None, False, timeout=timedelta(seconds=timeout_s))
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        result = fn(*args)
        # A rank whose fn used no collective must not tear the group down while a peer is
        # still connecting to it (gloo: "connectFullMesh failed ... closed by peer", seen on
        # a busy machine once workers started within milliseconds of each other).
        dist.barrier()
        # A plain pickle (not multiprocessing's, which would share tensor storage through
        # file descriptors that die with this process): the bytes travel on their own.
        message = ("ok", rank, pickle.dumps(result))
    except BaseException as err:  # noqa: B036 - everything is reported, then the process ends
        message = ("error", rank, f"{type(err).__name__}: {err}", traceback.format_exc())
    queue.put(message)
    # Flush before anything else: this rank's report must reach the launcher before the
    # other ranks notice it is gone and report their own (secondary) errors.
    queue.close()
    queue.join_thread()
    if message[0] == "ok":
        dist.destroy_process_group()
    # A failed worker takes what it started with it. So does any worker whose launcher is
    # gone: when a killed launcher's first worker ends its group, its peer's collective
    # fails at once ("connection reset"), and that peer must not leave its children behind
    # even if its own watch has not yet been scheduled.
    if message[0] != "ok" or not multiprocessing.parent_process().is_alive():
        _end_with_group(1)
