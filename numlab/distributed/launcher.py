"""The launcher: ``world_size`` worker processes joined by ``torch.distributed``, and no
process left behind on any way out.

:func:`run_workers` runs one module-level function in every worker; :func:`_launch` runs
several experiments (:class:`Job`: check arguments here, run in the workers, finish here) in
one launch, since a launch costs seconds. What each worker runs is in
:mod:`numlab.distributed.bootstrap`.

Worker functions must live in an importable module. A worker (forked from the fork server,
see :func:`_context`, or a new interpreter) imports the function by its module and name; a
function typed into a notebook cell belongs to the kernel's ``__main__``, which has no file
the worker could import.
"""
from __future__ import annotations

import os
import pickle
import queue as queue_module
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from numlab._checks import int_at_least
from numlab.distributed.bootstrap import bootstrap

FP32_FP64 = (torch.float32, torch.float64)  # the dtypes the experiments train in
BACKENDS = ("auto", "gloo", "nccl")
HOST = "127.0.0.1"


# --- errors --------------------------------------------------------------------------


class WorkerError(RuntimeError):
    """A worker process raised (or died); ``.rank`` and ``.worker_traceback`` say where."""

    def __init__(self, rank: int, summary: str, worker_traceback: str = ""):
        self.rank = rank
        self.summary = summary
        self.worker_traceback = worker_traceback
        text = f"worker rank {rank} failed: {summary}"
        if worker_traceback:
            text += f"\n--- traceback in worker rank {rank} ---\n{worker_traceback.rstrip()}"
        super().__init__(text)


class WorkerTimeout(TimeoutError):
    """The workers did not all finish within ``timeout`` seconds (they have been stopped).

    ``.missing`` lists the ranks that never reported; ``.stacks[rank]`` is where each of
    them was when the time ran out (every thread's Python stack, from ``faulthandler``).
    """

    def __init__(self, timeout: float, missing: list[int], stacks: dict | None = None):
        self.timeout = timeout
        self.missing = missing
        self.stacks = stacks or {}
        text = (f"worker rank(s) {missing} had not finished after timeout={timeout:g} s; "
                "all workers were stopped")
        for rank, stack in self.stacks.items():
            text += f"\n--- where rank {rank} was ---\n{_trim_stack(stack)}"
        super().__init__(text)


def _trim_stack(stack: str, lines: int = 12) -> str:
    # faulthandler prints the innermost frame first; the top few lines say where it hung
    kept = stack.strip().splitlines()
    return "\n".join(kept[:lines] + (["  ..."] if len(kept) > lines else []))


# --- the launcher --------------------------------------------------------------------

_NOTEBOOK_HINT = (
    "a worker is a Python process that never ran this notebook: it imports fn by module and "
    "name, and {name!r} lives in the '__main__' of this interpreter, which has no file to import "
    "(a notebook cell or an interactive session). Put the function in a .py module "
    "(e.g. my_workers.py next to the notebook) and import it."
)


def _check_spawnable(fn) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be a module-level function, got {type(fn).__name__}")
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", repr(fn))
    if module == "__main__" and getattr(sys.modules.get("__main__"), "__file__", None) is None:
        raise ValueError("fn cannot be started in a worker: " + _NOTEBOOK_HINT.format(name=name))
    if "<locals>" in name or "<lambda>" in name:
        raise ValueError(f"fn must be defined at module level (a worker imports it by name), "
                         f"got the local function or lambda {name!r}")
    try:
        pickle.dumps(fn)
    except Exception as err:
        raise TypeError(f"fn must be picklable to reach a worker, {name!r} is not: {err}") from None


def resolve_backend(backend: str, world_size: int) -> str:
    """``"auto"`` -> ``"nccl"`` with one CUDA device per worker, else ``"gloo"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    world_size = _check_world_size(world_size)
    if backend == "auto":
        enough_gpus = torch.cuda.is_available() and torch.cuda.device_count() >= world_size
        return "nccl" if enough_gpus and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise ValueError("backend='nccl' needs CUDA and an NCCL build of torch; "
                         "use backend='gloo' (CPU) or 'auto'")
    return backend


# What every worker imports anyway: loaded once into multiprocessing's fork server, from
# which each worker is forked with them in place. torch._dynamo is the first
# DistributedDataParallel's (DDP asks torch._dynamo.utils), 1.0-1.4 s of CPU per process.
PRELOAD = ["numlab.distributed.workers", "torch.nn.parallel", "torch._dynamo"]


def _context():
    """The multiprocessing context workers start from: the fork server where there is one.

    A fork server (Linux, macOS) is a process that imports torch and :data:`PRELOAD` once and
    forks a worker per request: after the first launch, a worker starts in milliseconds
    instead of importing torch for 2-3 s. It has only imported, never computed (no OpenMP
    pool, no CUDA context), so forking it is safe, and it ends with the process that started
    it. Elsewhere (Windows), spawn.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _check_world_size(world_size) -> int:
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"world_size must be an int, got {type(world_size).__name__}")
    if not 1 <= world_size <= 64:
        raise ValueError(f"world_size must be between 1 and 64, got {world_size}")
    return world_size


_MAX_TIMEOUT = 86400.0  # a day; beyond it torch's store timeout overflows a C int of ms


def _check_timeout(timeout) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not 1 <= timeout <= _MAX_TIMEOUT:  # under a second no worker can even start
        raise ValueError(f"timeout must be between 1 and {_MAX_TIMEOUT:.0f} seconds, got {timeout}")
    return float(timeout)


def _kill(process) -> None:
    """SIGKILL a worker and everything in its process group (what it started), then reap it."""
    if process.pid is None:
        return
    if hasattr(os, "killpg"):
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the worker made itself group leader
        except (ProcessLookupError, PermissionError):
            pass
    if process.is_alive():
        process.kill()
    process.join()


def run_workers(fn: Callable, world_size: int, *args, backend: str = "auto",
                timeout: float = 120.0) -> list:
    """Run ``fn(*args)`` in ``world_size`` fresh processes joined by ``torch.distributed``.

    Each worker sees an initialised default process group (``dist.get_rank()``,
    ``dist.get_world_size()``), rendezvous through a ``TCPStore`` this process holds on a
    free port of 127.0.0.1. Returns ``[result of rank 0, result of rank 1, ...]``.

    Raises :class:`WorkerError` (rank + the worker's traceback) as soon as any worker fails,
    and :class:`WorkerTimeout` after ``timeout`` seconds; in every case, Ctrl-C included,
    all workers and the processes they started are killed before this returns.
    """
    _check_spawnable(fn)
    world_size = _check_world_size(world_size)
    timeout = _check_timeout(timeout)
    backend = resolve_backend(backend, world_size)
    try:
        pickle.dumps(args)
    except Exception as err:
        raise TypeError(f"args must be picklable to reach the workers: {err}") from None

    # The parent owns the rendezvous store: port 0 lets the OS pick a free port, and the
    # port cannot be taken by someone else between choosing and using it.
    store = dist.TCPStore(HOST, 0, None, True, timeout=timedelta(seconds=timeout),
                          wait_for_workers=False)
    ctx = _context()
    results_queue = ctx.Queue()
    # Collectives give up a little after the launcher would, so a hang is reported as one.
    group_timeout = timeout + 30.0
    stack_dir = tempfile.mkdtemp(prefix="numlab-stacks-")
    processes = [
        ctx.Process(target=bootstrap, name=f"numlab-worker-{rank}",
                    args=(rank, world_size, backend, HOST, store.port, group_timeout, fn, args,
                          results_queue, stack_dir))
        for rank in range(world_size)
    ]
    try:
        for process in processes:
            process.start()
        last_worker_pids[:] = [p.pid for p in processes]
        return _collect(processes, results_queue, timeout, stack_dir)
    finally:
        for process in processes:
            _kill(process)
        results_queue.close()
        results_queue.cancel_join_thread()
        shutil.rmtree(stack_dir, ignore_errors=True)
        del store


def _collect(processes, results_queue, timeout: float, stack_dir: str) -> list:
    """Results by rank as the workers report them; the first real error or a timeout raises."""
    world_size = len(processes)
    results: dict[int, object] = {}
    reported: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(results) < world_size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = [r for r in range(world_size) if r not in results]
            raise WorkerTimeout(timeout, missing, _stacks(processes, missing, stack_dir))
        try:
            message = results_queue.get(timeout=min(0.2, remaining))
        except queue_module.Empty:
            if any(p.exitcode is not None for r, p in enumerate(processes) if r not in reported):
                error = _root_cause(processes, reported, results_queue, results, None)
                if error is not None:
                    raise error from None
            continue
        reported.add(message[1])
        if message[0] == "error":
            raise _root_cause(processes, reported, results_queue, results, message) from None
        results[message[1]] = pickle.loads(message[2])
    return [results[rank] for rank in range(world_size)]


def _stacks(processes, ranks, stack_dir, wait_s: float = 1.0) -> dict[int, str]:
    """Ask each hung rank for its Python stacks (SIGUSR1 -> faulthandler) and read them."""
    if not hasattr(signal, "SIGUSR1"):
        return {}
    for rank in ranks:
        if processes[rank].is_alive():
            os.kill(processes[rank].pid, signal.SIGUSR1)
    out, deadline = {}, time.monotonic() + wait_s
    while time.monotonic() < deadline and len(out) < len(ranks):
        time.sleep(0.05)
        for rank in ranks:
            path = os.path.join(stack_dir, f"rank{rank}.stack")
            if rank not in out and os.path.exists(path) and os.path.getsize(path) > 0:
                time.sleep(0.05)  # let faulthandler finish writing
                with open(path) as f:
                    out[rank] = f.read()
    return out


#: The pids of the workers of the latest launch (to check that none is left running).
last_worker_pids: list[int] = []


def alive_pids(pids) -> list[int]:
    """The pids in ``pids`` still running (a zombie, dead but not yet reaped, is not)."""
    if isinstance(pids, int | str) or not isinstance(pids, Sequence | set | tuple):
        raise TypeError(f"pids must be a list of process ids, got {pids!r}")
    alive = []
    for pid in (int_at_least("pids", p) for p in pids):
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            continue
        except PermissionError:  # exists, belongs to someone else
            alive.append(pid)
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:  # no /proc (macOS): os.kill's answer stands
            state = "R"
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def _root_cause(processes, reported: set, results_queue, results: dict, first,
                grace: float = 1.0):
    """The error to raise once something went wrong, preferring the cause to its echoes.

    When one worker dies, its peers soon fail too ("Connection reset by peer") and may
    report first. So wait ``grace`` seconds for more reports, and blame a worker that died
    without reporting (segfault, ``os._exit``, killed) before any worker that reported.
    Returns None when nothing was wrong after all (a finished worker's result was late).
    """
    errors = [] if first is None else [first]
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            message = results_queue.get(timeout=0.05)
        except queue_module.Empty:
            continue
        reported.add(message[1])
        if message[0] == "error":
            errors.append(message)
        else:  # a late but good result (its process had already exited)
            results[message[1]] = pickle.loads(message[2])
    for rank, process in enumerate(processes):
        if rank not in reported and process.exitcode is not None:
            return WorkerError(rank, f"process exited with code {process.exitcode} "
                                     "before reporting")
    if not errors:
        return None
    _, rank, summary, tb = errors[0]
    return WorkerError(rank, summary, tb)


# --- several experiments in one launch ------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """An experiment split in three: ``prepare(world_size=..., **kwargs)`` checks the arguments
    here and returns them as a dict; ``worker(**that dict minus world_size)``, a module-level
    function (it travels to the workers by name), runs in every worker;
    ``finish(per_rank_results, that dict)`` builds the result here."""

    prepare: Callable[..., dict]
    worker: Callable
    finish: Callable[[list, dict], object]


def _worker_kwargs(prepared: dict) -> dict:
    return {k: v for k, v in prepared.items() if k != "world_size"}


def _run_calls(calls):
    """Inside a worker: ``[(fn, kwargs), ...]`` -> ``[fn(**kwargs), ...]``."""
    return [fn(**kwargs) for fn, kwargs in calls]


def _launch(world_size: int, jobs: list[tuple[Job, dict]], backend: str = "auto",
           timeout: float = 300.0) -> list:
    """Prepare each ``(job, kwargs)``, run all of them in one launch, finish each one."""
    prepared = [(job, job.prepare(world_size=world_size, **kwargs)) for job, kwargs in jobs]
    calls = [(job.worker, _worker_kwargs(kw)) for job, kw in prepared]
    per_rank = run_workers(_run_calls, world_size, calls, backend=backend, timeout=timeout)
    return [job.finish([r[i] for r in per_rank], kw) for i, (job, kw) in enumerate(prepared)]
