"""Data-parallel training for real, on one machine: worker processes and ``torch.distributed``.

* :func:`run_workers` starts ``world_size`` processes that join one process group (gloo on
  CPU, nccl on GPUs), runs ``fn(*args)`` in each and returns the results by rank. A worker's
  exception is raised here with its rank and traceback, a hang ends at ``timeout``, and on
  every way out (result, error, timeout, Ctrl-C / the notebook's stop button) no process
  is left behind.
* :func:`ddp_equivalence`: ``DistributedDataParallel`` on N shards vs one process on the
  whole batch, step by step (they differ only by the order of floating-point additions).
* :func:`stale_sgd` / :func:`stale_sweep`: gradients computed on weights ``k`` steps old,
  as asynchronous workers produce them, simulated in one process for a whole lr x k grid.
* :func:`batchnorm_sync` / :func:`batchnorm_check`: local vs synchronised BatchNorm
  statistics across workers (``torch.nn.SyncBatchNorm`` on CUDA; an all-reduce inside the
  autograd graph on CPU, where SyncBatchNorm cannot train).
* :func:`run_many`: several of these experiments in *one* launch (a launch costs seconds).

The same demos run under torchrun: ``torchrun --nproc-per-node 2 -m numlab.distributed ddp``.

Worker functions must live in an importable module (here: ``numlab._dist_workers``). A
spawned worker is a new interpreter that imports the function by its module and name; a
function typed into a notebook cell belongs to the kernel's ``__main__``, which has no file
the new interpreter could import, so it cannot be sent.
"""
from __future__ import annotations

import math
import os
import pickle
import queue as queue_module
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from numlab import _dist_workers as workers
from numlab._checks import fp32_number, int_at_least, positive_number, real_array
from numlab._checks import seed as check_seed
from numlab.device import threads
from numlab.formats import COMPUTE_DTYPES, resolve_dtype, short_name

_FP32_FP64 = (torch.float32, torch.float64)  # the dtypes these experiments train and solve in

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
    "a spawned worker is a fresh Python process that imports fn by module and name, and "
    "{name!r} lives in the '__main__' of this interpreter, which has no file to import "
    "(a notebook cell or an interactive session). Put the function in a .py module "
    "(e.g. numlab/_dist_workers.py) and import it."
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
    ctx = mp.get_context("spawn")
    results_queue = ctx.Queue()
    # Collectives give up a little after the launcher would, so a hang is reported as one.
    group_timeout = timeout + 30.0
    stack_dir = tempfile.mkdtemp(prefix="numlab-stacks-")
    processes = [
        ctx.Process(target=workers.bootstrap, name=f"numlab-worker-{rank}",
                    args=(rank, world_size, backend, HOST, store.port, group_timeout, fn, args,
                          results_queue, os.getpid(), stack_dir))
        for rank in range(world_size)
    ]
    results: dict[int, object] = {}
    reported: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.start()
        last_worker_pids[:] = [p.pid for p in processes]
        while len(results) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [r for r in range(world_size) if r not in results]
                raise WorkerTimeout(timeout, missing, _stacks(processes, missing, stack_dir))
            try:
                message = results_queue.get(timeout=min(0.2, remaining))
            except queue_module.Empty:
                if any(p.exitcode is not None for r, p in enumerate(processes)
                       if r not in reported):
                    error = _root_cause(processes, reported, results_queue, results, None)
                    if error is not None:
                        raise error from None
                continue
            reported.add(message[1])
            if message[0] == "error":
                raise _root_cause(processes, reported, results_queue, results, message) from None
            results[message[1]] = pickle.loads(message[2])
        return [results[rank] for rank in range(world_size)]
    finally:
        for process in processes:
            _kill(process)
        results_queue.close()
        results_queue.cancel_join_thread()
        shutil.rmtree(stack_dir, ignore_errors=True)
        del store


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


# --- experiments that can share one launch -----------------------------------------------


@dataclass(frozen=True)
class Job:
    """An experiment split in three: check arguments here, run in workers, finish here."""

    prepare: Callable[..., dict]
    worker: Callable
    finish: Callable[[list, dict], object]


JOBS: dict[str, Job] = {}


def run_many(world_size: int, *jobs: tuple[str, dict], backend: str = "auto",
             timeout: float = 300.0) -> list:
    """Several experiments in one launch: ``run_many(2, ("ddp_equivalence", {...}), ...)``."""
    if not jobs:
        raise ValueError(f"jobs must name at least one of {sorted(JOBS)}")
    prepared = []
    for item in jobs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict)):
            raise TypeError(f"each job must be a (name, kwargs dict) pair, got {item!r}")
        name, kwargs = item
        if name not in JOBS:
            raise ValueError(f"unknown job {name!r}; known jobs: {sorted(JOBS)}")
        prepared.append((name, JOBS[name].prepare(world_size=world_size, **kwargs)))
    per_rank = run_workers(workers.run_jobs, world_size, prepared, backend=backend,
                           timeout=timeout)
    return [JOBS[name].finish([r[i] for r in per_rank], kwargs)
            for i, (name, kwargs) in enumerate(prepared)]


def _train_dtype(dtype) -> str:
    return str(resolve_dtype(dtype, _FP32_FP64)).removeprefix("torch.")


JOBS["rank_info"] = Job(
    lambda world_size: {},
    lambda: workers.rank_info(),
    lambda per_rank, kw: per_rank,
)


JOBS["torch_syncbn_on_cpu"] = Job(
    lambda world_size: {},
    lambda: workers.torch_syncbn_on_cpu(),
    lambda per_rank, kw: per_rank[0],
)


# --- DDP vs one process --------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class DDPEquivalence:
    """Largest |parameter difference| after each step, DDP on N shards vs one process."""

    world_size: int
    dtype: str
    global_batch: int
    max_diff: np.ndarray  # vs one process computing the full-batch gradient
    emulated_diff: np.ndarray  # vs one process averaging per-shard gradients, like DDP
    param_scale: float  # max |parameter|, to read max_diff in units of eps
    eps: float
    ranks_agree: bool

    @property
    def steps(self) -> int:
        return len(self.max_diff)

    @property
    def worst_in_eps(self) -> float:
        """Largest difference in units of ``eps * max|param|``."""
        return float(self.max_diff.max() / (self.eps * self.param_scale))

    def __repr__(self):
        return (f"DDPEquivalence({short_name(self.dtype)}, {self.world_size} workers, "
                f"{self.steps} steps: max |DDP - single| = {self.max_diff.max():.2e} "
                f"= {self.worst_in_eps:.1f} eps x max|w|, "
                f"ranks {'agree' if self.ranks_agree else 'DISAGREE'})")


def _prepare_ddp(world_size, global_batch=32, steps=10, dtype="fp32", lr=0.1, seed=0):
    _check_world_size(world_size)
    int_at_least("global_batch", global_batch)
    if global_batch % world_size:
        raise ValueError(f"global_batch must be a multiple of world_size={world_size}, "
                         f"got {global_batch}")
    return {"global_batch": global_batch, "steps": int_at_least("steps", steps),
            "dtype": _train_dtype(dtype), "lr": fp32_number("lr", lr),
            "seed": check_seed(seed), "world_size": world_size}


def _reference_ddp(global_batch, steps, dtype, lr, seed, world_size, emulate: bool):
    """One process: the full-batch gradient, or DDP's arithmetic (sum of g_r / N) emulated."""
    dt = getattr(torch, dtype)
    model = workers.mlp(seed, dt)
    x, y = workers.regression_data(seed, steps, global_batch, dt)
    per = global_batch // world_size
    snapshots = []
    for t in range(steps):
        if emulate:
            total = None
            for r in range(world_size):
                model.zero_grad(set_to_none=True)
                part = slice(r * per, (r + 1) * per)
                torch.nn.functional.mse_loss(model(x[t, part]), y[t, part]).backward()
                grads = [p.grad / world_size for p in model.parameters()]
                total = grads if total is None else [a + b for a, b in zip(total, grads,
                                                                           strict=True)]
        else:
            model.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x[t]), y[t]).backward()
            total = [p.grad for p in model.parameters()]
        with torch.no_grad():
            for p, g in zip(model.parameters(), total, strict=True):
                p.sub_(lr * g)
        snapshots.append(workers.flat_params(model))
    return torch.stack(snapshots)


def _finish_ddp(per_rank, kw) -> DDPEquivalence:
    ddp = per_rank[0]
    with threads(1):
        single = _reference_ddp(**kw, emulate=False)
        emulated = _reference_ddp(**kw, emulate=True)
    return DDPEquivalence(
        world_size=kw["world_size"], dtype=kw["dtype"], global_batch=kw["global_batch"],
        max_diff=(ddp - single).abs().amax(dim=1).double().numpy(),
        emulated_diff=(ddp - emulated).abs().amax(dim=1).double().numpy(),
        param_scale=float(single.abs().max()), eps=torch.finfo(getattr(torch, kw["dtype"])).eps,
        ranks_agree=all(torch.equal(r, ddp) for r in per_rank),
    )


JOBS["ddp_equivalence"] = Job(
    _prepare_ddp,
    lambda world_size, **kw: workers.ddp_train(**kw),
    _finish_ddp,
)


def ddp_equivalence(world_size: int = 2, global_batch: int = 32, steps: int = 10,
                    dtype="fp32", lr: float = 0.1, seed: int = 0, *, backend: str = "auto",
                    timeout: float = 120.0) -> DDPEquivalence:
    """Train one MLP with DDP on ``world_size`` shards and in one process on the whole batch.

    DDP divides each worker's gradient by N and all-reduces (sums) them, which is the
    full-batch mean gradient up to the order of the additions; the result reports the
    largest parameter difference after every step, and the difference to a one-process
    emulation of DDP's own order of operations.
    """
    return run_many(world_size, ("ddp_equivalence", dict(
        global_batch=global_batch, steps=steps, dtype=dtype, lr=lr, seed=seed)),
        backend=backend, timeout=timeout)[0]


@dataclass(frozen=True, repr=False)
class ReductionOrder:
    """How often DDP's way of averaging differs from averaging the sum, elementwise."""

    world_size: int
    dtype: str
    differ: float  # fraction of entries where the two results are not bitwise equal
    max_diff_eps: float  # largest |difference| / (eps * mean of |g_r|), the sum's error scale

    def __repr__(self):
        return (f"ReductionOrder({short_name(self.dtype)}, N={self.world_size}: "
                f"{100 * self.differ:.1f}% of entries differ, at most "
                f"{self.max_diff_eps:.2f} eps)")


def reduction_order(world_size: int, n: int = 100_000, dtype="fp32",
                    seed: int = 0) -> ReductionOrder:
    """Compare ``g_1/N + ... + g_N/N`` (DDP divides, then all-reduces) with ``(g_1+...+g_N)/N``.

    Both are added left to right, elementwise, over ``n`` random gradient entries per worker,
    so the result is the same on every IEEE-754 machine. For N a power of two the division
    is exact (barring underflow) and the two agree bit for bit; otherwise each g_r/N is
    rounded first and the sums can differ by an ulp or so.
    """
    _check_world_size(world_size)
    int_at_least("n", n)
    dt = resolve_dtype(dtype, COMPUTE_DTYPES)
    g = torch.randn(world_size, n, generator=torch.Generator().manual_seed(check_seed(seed)),
                    dtype=torch.float64)
    parts = g.to(dt)
    pre = torch.zeros(n, dtype=dt)
    post = torch.zeros(n, dtype=dt)
    for r in range(world_size):
        pre = pre + parts[r] / world_size
        post = post + parts[r]
    post = post / world_size
    # The error scale of a sum is eps times the sum of magnitudes (not of the possibly
    # cancelling result): measure the difference in those units.
    scale = torch.finfo(dt).eps * parts.double().abs().sum(0) / world_size
    worst = float(((pre.double() - post.double()).abs() / scale).max())
    return ReductionOrder(world_size, str(dt).removeprefix("torch."),
                          float((pre != post).double().mean()), worst)


# --- synchronised BatchNorm --------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class BatchNormCheck:
    """Largest relative error of synchronised BatchNorm vs full-batch BatchNorm, per output."""

    world_size: int
    shape: tuple
    dtype: str
    errors: dict = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.errors.values())

    def __repr__(self):
        parts = ", ".join(f"{k} {v:.1e}" for k, v in self.errors.items())
        return (f"BatchNormCheck({short_name(self.dtype)}, {self.world_size} workers, "
                f"shape {self.shape}: relative error {parts})")


def _prepare_bn_check(world_size, shape=(16, 6), dtype="fp64", seed=0):
    _check_world_size(world_size)
    if not (isinstance(shape, tuple | list) and len(shape) >= 2
            and all(isinstance(s, int) and s >= 1 for s in shape)):
        raise ValueError(f"shape must be a tuple (N, C, ...) of positive ints, got {shape!r}")
    if shape[0] % world_size or shape[0] // world_size * math.prod(shape[2:]) < 1:
        raise ValueError(f"shape[0] must be a multiple of world_size={world_size}, got {shape[0]}")
    return {"shape": tuple(shape), "dtype": _train_dtype(dtype),
            "seed": check_seed(seed), "world_size": world_size}


def _finish_bn_check(per_rank, kw) -> BatchNormCheck:
    shape, dt = kw["shape"], getattr(torch, kw["dtype"])
    g = torch.Generator().manual_seed(kw["seed"])
    x_all = (torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1).to(dt)
    cot_all = torch.randn(*shape, generator=g, dtype=torch.float64).to(dt)
    x = x_all.clone().requires_grad_(True)
    weight = torch.linspace(0.5, 2.0, shape[1], dtype=dt).requires_grad_(True)
    bias = torch.linspace(-1.0, 1.0, shape[1], dtype=dt).requires_grad_(True)
    running_mean, running_var = torch.zeros(shape[1], dtype=dt), torch.ones(shape[1], dtype=dt)
    y = torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias,
                                       training=True, momentum=0.1, eps=1e-5)
    (y * cot_all).sum().backward()

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    errors = {
        "y": rel(torch.cat([r["y"] for r in per_rank]), y.detach()),
        "dx": rel(torch.cat([r["x_grad"] for r in per_rank]), x.grad),
        "dweight": rel(sum(r["w_grad"] for r in per_rank), weight.grad),
        "dbias": rel(sum(r["b_grad"] for r in per_rank), bias.grad),
        "running_mean": rel(per_rank[0]["running_mean"], running_mean),
        "running_var": rel(per_rank[0]["running_var"], running_var),
    }
    return BatchNormCheck(kw["world_size"], kw["shape"], kw["dtype"], errors)


JOBS["batchnorm_check"] = Job(
    _prepare_bn_check,
    lambda world_size, **kw: workers.bn_check(**kw),
    _finish_bn_check,
)


def batchnorm_check(world_size: int = 2, shape=(16, 6), dtype="fp64", seed: int = 0, *,
                    backend: str = "auto", timeout: float = 120.0) -> BatchNormCheck:
    """Synchronised BatchNorm on ``world_size`` shards vs ``F.batch_norm`` on the whole batch.

    Compares the output, the gradients of input, weight and bias (for the loss
    ``sum(y * c)`` with a fixed random ``c``) and the running statistics.
    """
    return run_many(world_size, ("batchnorm_check", dict(shape=shape, dtype=dtype, seed=seed)),
                    backend=backend, timeout=timeout)[0]


@dataclass(frozen=True, repr=False)
class BatchNormSweep:
    """Test accuracy and loss with local vs synchronised BatchNorm, per per-device batch."""

    world_size: int
    per_device_batch: tuple
    acc_local: np.ndarray
    acc_sync: np.ndarray
    loss_local: np.ndarray
    loss_sync: np.ndarray
    steps: int

    def __repr__(self):
        rows = ", ".join(f"b={b}: {a:.3f}/{s:.3f}" for b, a, s in
                         zip(self.per_device_batch, self.acc_local, self.acc_sync, strict=True))
        return f"BatchNormSweep({self.world_size} workers, accuracy local/sync: {rows})"


def _prepare_bn_sweep(world_size, per_device_batch=(2, 4, 8, 32), steps=60, lr=0.05, seed=0,
                      test_size=2000):
    _check_world_size(world_size)
    batches = (per_device_batch,) if isinstance(per_device_batch, int) else per_device_batch
    if not (isinstance(batches, tuple | list) and batches
            and all(isinstance(b, int) and not isinstance(b, bool) and b >= 2 for b in batches)):
        raise ValueError(f"per_device_batch must be an int >= 2 or a sequence of them "
                         f"(BatchNorm needs 2 samples), got {per_device_batch!r}")
    return {"per_device_batches": tuple(batches), "steps": int_at_least("steps", steps),
            "lr": fp32_number("lr", lr), "seed": check_seed(seed),
            "test_size": int_at_least("test_size", test_size), "world_size": world_size}


def _finish_bn_sweep(per_rank, kw) -> BatchNormSweep:
    table, bs = per_rank[0], kw["per_device_batches"]

    def column(sync, i):
        return np.array([table[(b, sync)][i] for b in bs])

    return BatchNormSweep(kw["world_size"], bs, column(False, 0), column(True, 0),
                          column(False, 1), column(True, 1), kw["steps"])


JOBS["batchnorm_sync"] = Job(
    _prepare_bn_sweep,
    lambda world_size, **kw: workers.bn_train(**kw),
    _finish_bn_sweep,
)


def batchnorm_sync(world_size: int = 2, per_device_batch=(2, 4, 8, 32), steps: int = 60,
                   lr: float = 0.05, seed: int = 0, test_size: int = 2000, *,
                   backend: str = "auto", timeout: float = 300.0) -> BatchNormSweep:
    """Train a BatchNorm classifier with DDP, local vs synchronised statistics.

    For each per-device batch ``b`` (the global batch is ``world_size * b``), one run with
    each worker normalising by its own ``b`` samples, one with statistics all-reduced over
    all workers; the test accuracy and loss use the running statistics, as at inference.
    """
    return run_many(world_size, ("batchnorm_sync", dict(
        per_device_batch=per_device_batch, steps=steps, lr=lr, seed=seed, test_size=test_size)),
        backend=backend, timeout=timeout)[0]


# --- stale gradients (one process) ---------------------------------------------------------


def critical_lr(staleness: int, curvature: float = 1.0) -> float:
    """Largest stable learning rate of k-stale gradient descent on ``curvature/2 * w**2``.

    ``w_{t+1} = w_t - lr * c * w_{t-k}`` is stable iff ``lr * c < 2 sin(pi / (2 (2k + 1)))``
    (roots of ``z**(k+1) - z**k + lr*c`` inside the unit circle); k = 0 gives 2 / c.
    """
    staleness = int_at_least("staleness", staleness, 0)
    return 2.0 * math.sin(math.pi / (2 * (2 * staleness + 1))) / positive_number("curvature", curvature)


def least_squares_problem(n: int = 256, features: int = 8, seed: int = 0, dtype="fp64"):
    """``(X, y)`` whose loss ``0.5 mean((X w - y)**2)`` has Hessian eigenvalues in [0.05, 1]."""
    dt = resolve_dtype(dtype, COMPUTE_DTYPES)
    features = int_at_least("features", features)
    n = int_at_least("n", n)
    if n < features:
        raise ValueError(f"n must be at least features = {features} (an n x features matrix with "
                         f"orthonormal columns), got n={n}")
    g = torch.Generator().manual_seed(check_seed(seed))
    q, _ = torch.linalg.qr(torch.randn(n, features, generator=g, dtype=torch.float64))
    # X = sqrt(n) Q diag(s): Hessian X^T X / n = diag(s^2), largest curvature exactly 1
    scales = torch.linspace(math.sqrt(0.05), 1.0, features, dtype=torch.float64)
    x = math.sqrt(n) * q * scales
    y = x @ torch.randn(features, generator=g, dtype=torch.float64) + 0.1 * torch.randn(
        n, generator=g, dtype=torch.float64)
    return x.to(dt), y.to(dt)


def _stale_losses(lrs, ks, steps, batch_size, seed, dtype):
    """Loss curves of k-stale (S)GD for every (lr, k) pair at once: shape (L, K, steps + 1)."""
    x, y = least_squares_problem(seed=seed, dtype=dtype)
    n, d = x.shape
    hessian = x.T @ x / n
    w_best = torch.linalg.solve(hessian, x.T @ y / n)
    floor = 0.5 * ((x @ w_best - y) ** 2).mean()
    lr = torch.as_tensor(lrs, dtype=x.dtype)[:, None, None]
    k = torch.as_tensor(ks, dtype=torch.long)
    depth = int(k.max()) + 1
    w = torch.zeros(len(lrs), len(ks), d, dtype=x.dtype)
    history = w.expand(depth, *w.shape).clone()  # slot t % depth holds w_t; w_{t<0} = w_0
    g = torch.Generator().manual_seed(seed + 1)

    def loss(w):
        # 0.5 mean((Xw - y)^2) = floor + 0.5 e^T H e with e = w - w_best: no cancellation
        e = w - w_best
        return floor + 0.5 * ((e @ hessian) * e).sum(-1)

    losses = [loss(w)]
    cols = torch.arange(len(ks))
    for t in range(steps):
        stale = history[(t - k) % depth, :, cols].transpose(0, 1)  # (L, K, d): w_{t-k}
        if batch_size is None:
            grad = (stale - w_best) @ hessian
        else:  # the same minibatch for every (lr, k): only lr and k differ between curves
            idx = torch.randperm(n, generator=g)[:batch_size]
            grad = (stale @ x[idx].T - y[idx]) @ x[idx] / batch_size
        w = w - lr * grad
        history[(t + 1) % depth] = w
        losses.append(loss(w))
    out = torch.stack(losses, dim=-1).double()
    return torch.nan_to_num(out, nan=math.inf).numpy()


def _check_stale_args(steps, batch_size):
    int_at_least("steps", steps)
    if batch_size is not None:
        int_at_least("batch_size", batch_size)
        if batch_size > 256:
            raise ValueError(f"batch_size must be at most the 256 samples, got {batch_size}")


def _diverged(curves: np.ndarray) -> np.ndarray:
    # Diverged: the loss overflowed, or ended 10x above the lowest value it reached. (An
    # unstable mode may start tiny and grow late, so "ends above the start" misses some.)
    return ~np.isfinite(curves[..., -1]) | (curves[..., -1] > 10 * curves.min(axis=-1))


@dataclass(frozen=True, repr=False)
class StaleRun:
    """Loss curves of synchronous (k = 0) and k-stale SGD at one learning rate."""

    lr: float
    staleness: int
    loss_sync: np.ndarray
    loss_stale: np.ndarray
    critical_lr: float  # theory, full batch, for this staleness

    @property
    def diverged(self) -> bool:
        return bool(_diverged(self.loss_stale))

    @property
    def sync_diverged(self) -> bool:
        return bool(_diverged(self.loss_sync))

    def __repr__(self):
        state = {True: "diverges", False: "converges"}
        return (f"StaleRun(lr={self.lr:g}, k={self.staleness}: sync {state[self.sync_diverged]} "
                f"(final loss {self.loss_sync[-1]:.3g}), stale {state[self.diverged]} "
                f"(final loss {self.loss_stale[-1]:.3g}); theory: stable below lr "
                f"{self.critical_lr:.3f})")


def stale_sgd(staleness: int, lr: float, steps: int = 200, batch_size: int | None = None,
              seed: int = 0, dtype="fp64") -> StaleRun:
    """SGD whose gradient at step t is computed on the weights of step t - ``staleness``.

    Least squares with Hessian eigenvalues in [0.05, 1] (``least_squares_problem``), so a
    synchronous run is stable for lr < 2 and a k-stale one for lr < :func:`critical_lr`.
    ``batch_size=None`` uses the full batch; otherwise a fresh minibatch each step.
    """
    int_at_least("staleness", staleness, 0)
    positive_number("lr", lr)
    _check_stale_args(steps, batch_size)
    seed = check_seed(seed)
    with threads(1):
        curves = _stale_losses([lr], [0, staleness], steps, batch_size, seed, _train_dtype(dtype))[0]
    return StaleRun(lr, staleness, curves[0], curves[1], critical_lr(staleness))


@dataclass(frozen=True, repr=False)
class StaleSweep:
    """Every (lr, staleness) pair: loss curves and whether each diverged."""

    lrs: np.ndarray
    staleness: np.ndarray
    losses: np.ndarray  # (len(lrs), len(staleness), steps + 1)

    @property
    def diverged(self) -> np.ndarray:
        return _diverged(self.losses)

    def boundary(self) -> np.ndarray:
        """Per staleness: the largest lr of the grid below the first divergent one."""
        out = []
        for j in range(len(self.staleness)):
            bad = np.flatnonzero(self.diverged[:, j])
            out.append(self.lrs[bad[0] - 1] if len(bad) and bad[0] > 0 else
                       (np.nan if len(bad) else self.lrs[-1]))
        return np.array(out)

    def curve(self, lr: float, staleness: int) -> np.ndarray:
        """Loss curve at the grid point nearest to (lr, staleness)."""
        i = int(np.argmin(np.abs(np.log(self.lrs) - math.log(lr))))
        j = int(np.argmin(np.abs(self.staleness - staleness)))
        return self.losses[i, j]

    def __repr__(self):
        return (f"StaleSweep({len(self.lrs)} lrs in [{self.lrs[0]:.3g}, {self.lrs[-1]:.3g}] x "
                f"staleness {self.staleness.tolist()}: {int(self.diverged.sum())} of "
                f"{self.diverged.size} runs diverge)")


def stale_sweep(lrs: Sequence[float] | None = None, staleness: Sequence[int] = range(9),
                steps: int = 200, batch_size: int | None = None, seed: int = 0,
                dtype="fp64") -> StaleSweep:
    """:func:`stale_sgd` for every lr x staleness pair, vectorised (one tensor op per step)."""
    lrs = np.geomspace(0.02, 2.5, 60) if lrs is None else real_array("lrs", lrs)
    ks = real_array("staleness", staleness)
    if np.any(ks != np.round(ks)):
        raise ValueError(f"staleness must hold whole numbers of steps, got {ks}")
    ks = ks.astype(np.int64)
    if lrs.ndim != 1 or lrs.size == 0 or not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"lrs must be a non-empty 1-D sequence of finite numbers > 0, got {lrs}")
    if ks.ndim != 1 or ks.size == 0 or ks.min() < 0:
        raise ValueError(f"staleness must be a non-empty sequence of ints >= 0, got {ks}")
    _check_stale_args(steps, batch_size)
    seed = check_seed(seed)
    lrs = np.sort(lrs)
    with threads(1):
        losses = _stale_losses(lrs.tolist(), ks.tolist(), steps, batch_size, seed, _train_dtype(dtype))
    return StaleSweep(lrs, ks, losses)


# --- the torchrun / command-line entry point ------------------------------------------------

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
            mine = job.worker(**prepared)
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
