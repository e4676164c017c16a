"""What runs inside each worker process of :func:`numlab.distributed.run_workers`.

Everything here lives in an importable module on purpose: a spawned worker is a fresh
Python interpreter that receives the function *by name* (``module.qualname``) and imports
it, so a function defined in a notebook cell (module ``__main__`` of the kernel, which has
no file) cannot be found there.

Every worker function is called as ``fn(*args)`` once ``torch.distributed`` is
initialised; it reads its rank with ``dist.get_rank()``.
"""
from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from numlab.device import threads

# --- the bootstrap every spawned worker runs -------------------------------------------


def _watch_parent(parent_pid: int) -> None:
    # If the launching process dies without cleaning up (kill -9 of a kernel), the worker
    # would be re-parented and live on; it notices and takes its whole process group (what
    # it started, and itself) down with it.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
                os.killpg(os.getpid(), signal.SIGKILL)
            os._exit(3)


def _stack_on_request(stack_dir: str, rank: int):
    """On SIGUSR1 (sent by the launcher when this rank hangs), write every thread's Python
    stack to ``stack_dir/rank<r>.stack``: the launcher's WorkerTimeout then shows where it was."""
    if stack_dir is None or not hasattr(signal, "SIGUSR1"):
        return None
    f = open(os.path.join(stack_dir, f"rank{rank}.stack"), "w")  # noqa: SIM115 - open for life
    faulthandler.register(signal.SIGUSR1, file=f, all_threads=True)
    return f


def bootstrap(rank, world_size, backend, host, port, timeout_s, fn, args, queue, parent_pid,
              stack_dir=None):
    """Join the process group, run ``fn(*args)``, send back a pickled result or traceback."""
    if hasattr(os, "setpgrp"):
        # Own process group: the launcher can kill this worker *and anything it started*
        # with one killpg, and a notebook's interrupt (SIGINT to the kernel's group) reaches
        # only the launcher, which then tears the workers down in order.
        os.setpgrp()
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    _stack_file = _stack_on_request(stack_dir, rank)  # noqa: F841 - kept open while fn runs
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        store = dist.TCPStore(host, port, None, False, timeout=timedelta(seconds=timeout_s))
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
        # A plain pickle (not multiprocessing's, which would share tensor storage through
        # file descriptors that die with this process): the bytes travel on their own.
        message = ("ok", rank, pickle.dumps(fn(*args)))
    except BaseException as err:  # noqa: B036 - everything is reported, then the process ends
        message = ("error", rank, f"{type(err).__name__}: {err}", traceback.format_exc())
    queue.put(message)
    # Flush before anything else: this rank's report must reach the launcher before the
    # other ranks notice it is gone and report their own (secondary) errors.
    queue.close()
    queue.join_thread()
    if message[0] == "ok":
        dist.destroy_process_group()
    else:
        os._exit(1)


# --- small worker functions used by the tests and the notebook ---------------------------


def rank_info():
    """``(rank, world_size, sum of ranks by all_reduce, backend)``."""
    t = torch.tensor([float(dist.get_rank())], device=_device())  # nccl needs CUDA tensors
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


def run_jobs(jobs):
    """Run several experiments in one launch: ``[(name, kwargs), ...]`` -> list of results."""
    from numlab import distributed

    return [distributed.JOBS[name].worker(**kwargs) for name, kwargs in jobs]


# --- models and data shared by the workers and the single-process references -----------


def regression_data(seed: int, steps: int, batch: int, dtype: torch.dtype, features: int = 8):
    """``steps`` batches of a smooth regression target: ``X (steps, batch, features)``, ``Y``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, features, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True)) + 0.1 * torch.randn(steps, batch, 1, generator=g,
                                                                 dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def mlp(seed: int, dtype: torch.dtype, features: int = 8, hidden: int = 32):
    """The DDP experiment's model, identical for a given seed in every process."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
    ).to(dtype)


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def classification_data(n: int, generator: torch.Generator, features: int = 8, classes: int = 4):
    """Gaussian clusters, badly scaled and offset on purpose (BatchNorm has work to do)."""
    centers = torch.randn(classes, features, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, classes, (n,), generator=generator)
    x = centers[y] + torch.randn(n, features, generator=generator)
    return x * torch.linspace(0.2, 5.0, features) + 3.0, y


def bn_classifier(seed: int, sync: bool, features: int = 8, hidden: int = 32, classes: int = 4):
    """Linear -> BatchNorm -> ReLU -> Linear; ``sync`` swaps in synchronised BatchNorm."""
    torch.manual_seed(seed)
    norm = CPUSyncBatchNorm(hidden) if sync else torch.nn.BatchNorm1d(hidden)
    return torch.nn.Sequential(torch.nn.Linear(features, hidden, bias=False), norm,
                               torch.nn.ReLU(), torch.nn.Linear(hidden, classes))


class AllReduceSum(torch.autograd.Function):
    """``all_reduce(SUM)`` that autograd can differentiate: its backward all-reduces too.

    If every worker's output is ``S = sum_r t_r``, the total loss depends on ``t_r`` only
    through ``S``, so ``dL/dt_r = sum_q dL_q/dS``: the sum of all workers' incoming grads.
    """

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        out = grad.clone()
        dist.all_reduce(out)
        return out


class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are summed over every worker, inside autograd.

    ``torch.nn.SyncBatchNorm`` only trains on accelerators. Here each worker sums ``x`` and
    its count over its shard; one :class:`AllReduceSum` gives the global sums and the
    global mean, a second one ``sum((x - mean)**2)``, hence the biased variance of the
    *whole* batch (two passes: no ``E[x^2] - E[x]^2`` cancellation). The backward of an
    all-reduce-sum is an all-reduce-sum of the incoming gradients, so each worker's input
    gradient also sees the other workers' losses, exactly as in full-batch BatchNorm.
    Outside training, or without a process group of size > 1, this is plain BatchNorm.
    Works for (N, C) and (N, C, ...) inputs.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected an input of shape (N, C, ...), got {tuple(x.shape)}")

    def forward(self, x):
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = x.new_full((1,), x.numel() // x.shape[1])
        sums = AllReduceSum.apply(torch.cat([x.sum(dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = AllReduceSum.apply((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                # running_var stores the unbiased variance of the whole (global) batch
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased)
        return y


def sync_batchnorm(model, device: torch.device):
    """Real ``torch.nn.SyncBatchNorm`` on CUDA (it converts any BatchNorm, ours included)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# --- the experiments' worker halves (the parent halves live in numlab.distributed) -----


def _device():
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _no_buffer_sync() -> dict:
    # torch >= 2.13 renamed the option (and warns about the old name); older ones lack it
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def ddp_train(global_batch: int, steps: int, dtype: str, lr: float, seed: int):
    """Train :func:`mlp` with DDP on this rank's shard; rank 0 returns params after each step."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    device, dt = _device(), getattr(torch, dtype)
    model = mlp(seed, dt).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    x, y = regression_data(seed, steps, global_batch, dt)
    per = global_batch // world
    shard = slice(rank * per, (rank + 1) * per)
    snapshots = []
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(ddp(x[t, shard].to(device)), y[t, shard].to(device))
        loss.backward()
        opt.step()
        snapshots.append(flat_params(model).cpu())
    return torch.stack(snapshots)


def bn_check(shape, seed: int, dtype: str):
    """One synchronised-BatchNorm forward/backward on this rank's shard of a fixed batch."""
    rank, world = dist.get_rank(), dist.get_world_size()
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(seed)
    x_all = (torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1).to(dt)
    cot_all = torch.randn(*shape, generator=g, dtype=torch.float64).to(dt)
    per = shape[0] // world
    shard = slice(rank * per, (rank + 1) * per)
    device = _device()
    norm = CPUSyncBatchNorm(shape[1]).to(device, dt)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, shape[1], dtype=dt))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, shape[1], dtype=dt))
    x = x_all[shard].to(device).requires_grad_(True)
    y = norm(x)
    (y * cot_all[shard].to(device)).sum().backward()
    out = {"y": y.detach(), "x_grad": x.grad, "w_grad": norm.weight.grad,
           "b_grad": norm.bias.grad, "running_mean": norm.running_mean,
           "running_var": norm.running_var}
    return {k: v.detach().cpu().clone() for k, v in out.items()}


def bn_train(per_device_batches, steps: int, lr: float, seed: int, test_size: int):
    """Train :func:`bn_classifier` with local and synchronised BatchNorm for each batch size.

    Returns ``{(b, sync): (test accuracy, test loss)}`` (the same on every rank: DDP keeps
    the weights equal, and the evaluation uses rank 0's broadcast BatchNorm buffers).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    device = _device()
    xt, yt = classification_data(test_size, torch.Generator().manual_seed(seed + 10_000))
    out = {}
    for b in per_device_batches:
        for sync in (False, True):
            model = bn_classifier(seed, sync)
            model = sync_batchnorm(model, device) if sync else model
            model = model.to(device)
            # No buffer broadcast at every forward: in training BatchNorm normalises with batch
            # statistics, and rank 0's running statistics are an average of rank 0's batches
            # either way; they are broadcast once, before the evaluation. One collective less
            # per step.
            ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                      **_no_buffer_sync())
            opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=0.9)
            g = torch.Generator().manual_seed(seed + 1)  # same global batches on every rank
            for _ in range(steps):
                x, y = classification_data(b * world, g)
                x, y = x[rank * b:(rank + 1) * b].to(device), y[rank * b:(rank + 1) * b].to(device)
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(ddp(x), y).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                # rank 0's running statistics are the ones DDP broadcasts: use them everywhere
                for buf in model.buffers():
                    dist.broadcast(buf, 0)
                logits = model(xt.to(device)).cpu()
            acc = float((logits.argmax(1) == yt).double().mean())
            out[(b, sync)] = (acc, float(torch.nn.functional.cross_entropy(logits, yt)))
    return out


def bn_train_single(global_batch: int, steps: int, lr: float, seed: int, test_size: int):
    """One process, plain BatchNorm on the whole ``global_batch``: what sync BN should equal."""
    with threads(1):
        return _bn_train_single(global_batch, steps, lr, seed, test_size)


def _bn_train_single(global_batch, steps, lr, seed, test_size):
    xt, yt = classification_data(test_size, torch.Generator().manual_seed(seed + 10_000))
    model = bn_classifier(seed, sync=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y = classification_data(global_batch, g)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(xt)
    acc = float((logits.argmax(1) == yt).double().mean())
    return acc, float(torch.nn.functional.cross_entropy(logits, yt))
