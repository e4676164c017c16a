"""Local against synchronised BatchNorm statistics across workers: one exact check of the
synchronised layer, and a training sweep over per-device batch sizes.

``torch.nn.SyncBatchNorm`` refuses to train on CPU tensors, so on CPU the statistics are
all-reduced inside the autograd graph (:class:`CPUSyncBatchNorm`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from numlab._checks import fp32_number, int_at_least
from numlab._checks import seed as check_seed
from numlab.device import threads
from numlab.distributed.bootstrap import worker_device
from numlab.distributed.launcher import FP32_FP64, Job, _check_world_size, _launch
from numlab.formats import resolve_dtype, short_name


def _classification_data(n: int, generator: torch.Generator, features: int = 8, classes: int = 4):
    """Gaussian clusters, badly scaled and offset on purpose (BatchNorm has work to do)."""
    centers = torch.randn(classes, features, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, classes, (n,), generator=generator)
    x = centers[y] + torch.randn(n, features, generator=generator)
    return x * torch.linspace(0.2, 5.0, features) + 3.0, y


def _bn_classifier(seed: int, sync: bool, features: int = 8, hidden: int = 32, classes: int = 4):
    """Linear -> BatchNorm -> ReLU -> Linear; ``sync`` swaps in synchronised BatchNorm."""
    torch.manual_seed(seed)
    norm = CPUSyncBatchNorm(hidden) if sync else torch.nn.BatchNorm1d(hidden)
    return torch.nn.Sequential(torch.nn.Linear(features, hidden, bias=False), norm,
                               torch.nn.ReLU(), torch.nn.Linear(hidden, classes))


class _AllGather(torch.autograd.Function):
    """``all_gather`` that autograd can differentiate: every worker's tensor, stacked in rank
    order, on every worker.

    Each worker's loss ``L_q`` may depend on every row of the result, so the gradient of the
    total loss with respect to this worker's row is ``sum_q dL_q/d(row)``: its backward is
    one all-reduce-sum of the incoming gradients, of which each worker keeps its own row.
    """

    @staticmethod
    def forward(ctx, tensor):
        rows = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, tensor.contiguous())
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad):
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[dist.get_rank()]


class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are those of every worker's samples together, inside
    autograd.

    ``torch.nn.SyncBatchNorm`` only trains on accelerators. This one follows its design: each
    worker computes its shard's count, mean and sum of squared deviations ``M2`` (two passes
    over its own samples), one :class:`_AllGather` gives every worker all of them, and each
    combines them into the mean and biased variance of the *whole* batch:
    ``mean = sum_r n_r m_r / N``, ``M2 = sum_r (M2_r + n_r (m_r - mean)**2)`` (Chan et al.'s
    pairwise formula: no ``E[x^2] - E[x]^2`` cancellation). The gather's backward is one
    all-reduce-sum of the incoming gradients, so each worker's input gradient also sees the
    other workers' losses, exactly as in full-batch BatchNorm: one collective each way per
    layer and step, as torch's layer uses on a GPU.
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
        local_mean = x.mean(dims)
        local_m2 = (x - local_mean.view(shape)).square().sum(dims)
        local_count = torch.full_like(local_mean, x.numel() // x.shape[1])
        stats = _AllGather.apply(torch.stack([local_count, local_mean, local_m2]))
        counts, means, m2s = stats[:, 0].detach(), stats[:, 1], stats[:, 2]  # (workers, C)
        count = counts.sum(0)
        mean = (counts * means).sum(0) / count
        var = (m2s + counts * (means - mean).square()).sum(0) / count
        centred = x - mean.view(shape)
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


def _sync_batchnorm(model, device: torch.device):
    """Real ``torch.nn.SyncBatchNorm`` on CUDA (it converts any BatchNorm, ours included)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _no_buffer_sync() -> dict:
    # torch >= 2.13 renamed the option (and warns about the old name); older ones lack it
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def bn_check(x, cotangent, weight, bias, sizes=None):
    """One synchronised-BatchNorm forward/backward on this rank's shard of the batch ``x``:
    equal shards, or this rank's ``sizes[rank]`` rows (unequal shards, as a last batch gives)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = sizes or [x.shape[0] // world] * world
    start = sum(sizes[:rank])
    shard = slice(start, start + sizes[rank])
    device = worker_device()
    norm = CPUSyncBatchNorm(x.shape[1]).to(device, x.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    xs = x[shard].to(device).requires_grad_(True)
    y = norm(xs)
    (y * cotangent[shard].to(device)).sum().backward()
    out = {"y": y.detach(), "x_grad": xs.grad, "w_grad": norm.weight.grad,
           "b_grad": norm.bias.grad, "running_mean": norm.running_mean,
           "running_var": norm.running_var}
    return {k: v.detach().cpu().clone() for k, v in out.items()}


def bn_train(per_device_batches, steps: int, lr: float, seed: int, test_size: int):
    """Train :func:`_bn_classifier` with local and synchronised BatchNorm for each batch size.

    Returns ``{(b, sync): (test accuracy, test loss)}`` (the same on every rank: DDP keeps
    the weights equal, and the evaluation uses rank 0's broadcast BatchNorm buffers).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    device = worker_device()
    xt, yt = _classification_data(test_size, torch.Generator().manual_seed(seed + 10_000))
    out = {}
    for b in per_device_batches:
        for sync in (False, True):
            model = _bn_classifier(seed, sync)
            model = _sync_batchnorm(model, device) if sync else model
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
                x, y = _classification_data(b * world, g)
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


def _bn_train_single(global_batch: int, steps: int, lr: float, seed: int, test_size: int):
    """One process, plain BatchNorm on the whole ``global_batch``: what sync BN should equal."""
    with threads(1):
        return _bn_train_single_run(global_batch, steps, lr, seed, test_size)


def _bn_train_single_run(global_batch, steps, lr, seed, test_size):
    xt, yt = _classification_data(test_size, torch.Generator().manual_seed(seed + 10_000))
    model = _bn_classifier(seed, sync=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y = _classification_data(global_batch, g)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(xt)
    acc = float((logits.argmax(1) == yt).double().mean())
    return acc, float(torch.nn.functional.cross_entropy(logits, yt))


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
    dt = resolve_dtype(dtype, FP32_FP64)
    g = torch.Generator().manual_seed(check_seed(seed))
    # The inputs, built once: the workers normalise their shards of them, finish the whole.
    return {"x": (torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1).to(dt),
            "cotangent": torch.randn(*shape, generator=g, dtype=torch.float64).to(dt),
            "weight": torch.linspace(0.5, 2.0, shape[1], dtype=dt),
            "bias": torch.linspace(-1.0, 1.0, shape[1], dtype=dt), "world_size": world_size}


def _finish_bn_check(per_rank, kw) -> BatchNormCheck:
    x = kw["x"].clone().requires_grad_(True)
    weight, bias = kw["weight"].clone().requires_grad_(True), kw["bias"].clone().requires_grad_(True)
    channels, dt = x.shape[1], x.dtype
    running_mean, running_var = torch.zeros(channels, dtype=dt), torch.ones(channels, dtype=dt)
    y = torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias,
                                       training=True, momentum=0.1, eps=1e-5)
    (y * kw["cotangent"]).sum().backward()

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
    return BatchNormCheck(kw["world_size"], tuple(x.shape), str(dt).removeprefix("torch."), errors)


CHECK_JOB = Job(_prepare_bn_check, bn_check, _finish_bn_check)


def batchnorm_check(world_size: int = 2, shape=(16, 6), dtype="fp64", seed: int = 0, *,
                    backend: str = "auto", timeout: float = 120.0) -> BatchNormCheck:
    """Synchronised BatchNorm on ``world_size`` shards vs ``F.batch_norm`` on the whole batch.

    Compares the output, the gradients of input, weight and bias (for the loss
    ``sum(y * c)`` with a fixed random ``c``) and the running statistics.
    """
    return _launch(world_size, [(CHECK_JOB, dict(shape=shape, dtype=dtype, seed=seed))],
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


SYNC_JOB = Job(_prepare_bn_sweep, bn_train, _finish_bn_sweep)


def batchnorm_sync(world_size: int = 2, per_device_batch=(2, 4, 8, 32), steps: int = 60,
                   lr: float = 0.05, seed: int = 0, test_size: int = 2000, *,
                   backend: str = "auto", timeout: float = 300.0) -> BatchNormSweep:
    """Train a BatchNorm classifier with DDP, local vs synchronised statistics.

    For each per-device batch ``b`` (the global batch is ``world_size * b``), one run with
    each worker normalising by its own ``b`` samples, one with statistics all-reduced over
    all workers; the test accuracy and loss use the running statistics, as at inference.
    """
    return _launch(world_size, [(SYNC_JOB, dict(
        per_device_batch=per_device_batch, steps=steps, lr=lr, seed=seed, test_size=test_size))],
        backend=backend, timeout=timeout)[0]

