"""DistributedDataParallel against one process on the whole batch, and the order of DDP's
additions (divide, then all-reduce) against averaging the sum."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from numlab._checks import fp32_number, int_at_least
from numlab._checks import seed as check_seed
from numlab.device import threads
from numlab.distributed.bootstrap import worker_device
from numlab.distributed.launcher import FP32_FP64, Job, _check_world_size, _launch
from numlab.formats import COMPUTE_DTYPES, resolve_dtype, short_name


def _regression_data(seed: int, steps: int, batch: int, dtype: torch.dtype, features: int = 8):
    """``steps`` batches of a smooth regression target: ``X (steps, batch, features)``, ``Y``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, features, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(-1, keepdim=True)) + 0.1 * torch.randn(steps, batch, 1, generator=g,
                                                                 dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def _mlp(seed: int, dtype: torch.dtype, features: int = 8, hidden: int = 32):
    """The DDP experiment's model, identical for a given seed in every process."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
    ).to(dtype)


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()





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
            "dtype": resolve_dtype(dtype, FP32_FP64), "lr": fp32_number("lr", lr),
            "seed": check_seed(seed), "world_size": world_size}


def _reference_ddp(global_batch, steps, dtype, lr, seed, world_size, emulate: bool):
    """One process: the full-batch gradient, or DDP's arithmetic (sum of g_r / N) emulated."""
    dt = dtype
    model = _mlp(seed, dt)
    x, y = _regression_data(seed, steps, global_batch, dt)
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
        snapshots.append(_flat_params(model))
    return torch.stack(snapshots)


def ddp_train(global_batch: int, steps: int, dtype: torch.dtype, lr: float, seed: int):
    """Train :func:`_mlp` with DDP on this rank's shard; rank 0 returns params after each step."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = dist.get_rank(), dist.get_world_size()
    device, dt = worker_device(), dtype
    model = _mlp(seed, dt).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    x, y = _regression_data(seed, steps, global_batch, dt)
    per = global_batch // world
    shard = slice(rank * per, (rank + 1) * per)
    snapshots = []
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(ddp(x[t, shard].to(device)), y[t, shard].to(device))
        loss.backward()
        opt.step()
        snapshots.append(_flat_params(model).cpu())
    return torch.stack(snapshots)


def _finish_ddp(per_rank, kw) -> DDPEquivalence:
    ddp = per_rank[0]
    with threads(1):
        single = _reference_ddp(**kw, emulate=False)
        emulated = _reference_ddp(**kw, emulate=True)
    return DDPEquivalence(
        world_size=kw["world_size"], dtype=str(kw["dtype"]).removeprefix("torch."),
        global_batch=kw["global_batch"],
        max_diff=(ddp - single).abs().amax(dim=1).double().numpy(),
        emulated_diff=(ddp - emulated).abs().amax(dim=1).double().numpy(),
        param_scale=float(single.abs().max()), eps=torch.finfo(kw["dtype"]).eps,
        ranks_agree=all(torch.equal(r, ddp) for r in per_rank),
    )


JOB = Job(_prepare_ddp, ddp_train, _finish_ddp)


def ddp_equivalence(world_size: int = 2, global_batch: int = 32, steps: int = 10,
                    dtype="fp32", lr: float = 0.1, seed: int = 0, *, backend: str = "auto",
                    timeout: float = 120.0) -> DDPEquivalence:
    """Train one MLP with DDP on ``world_size`` shards and in one process on the whole batch.

    DDP divides each worker's gradient by N and all-reduces (sums) them, which is the
    full-batch mean gradient up to the order of the additions; the result reports the
    largest parameter difference after every step, and the difference to a one-process
    emulation of DDP's own order of operations.
    """
    return _launch(world_size, [(JOB, dict(
        global_batch=global_batch, steps=steps, dtype=dtype, lr=lr, seed=seed))],
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


