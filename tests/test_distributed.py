"""numlab.distributed: the launcher's guarantees, DDP and synchronised BatchNorm against one
process, stale SGD against its closed-form stability bound, and the torchrun entry point.

A launch costs seconds (the first starts the fork server, which imports torch; every worker
then trains), so the experiments share one launch (the ``launched`` fixture) and each
launcher guarantee gets exactly one.
"""
from __future__ import annotations

import math
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numlab import distributed as nd
from numlab.distributed import __main__ as cli
from numlab.distributed import batchnorm, ddp, launcher, workers

ROOT = pathlib.Path(__file__).resolve().parent.parent


# --- helpers: is a pid still running? ----------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return not sys.platform.startswith("linux")
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _survivors(pids, grace: float = 3.0) -> list[int]:
    # SIGKILL is delivered asynchronously: give the kernel a moment before calling it a leak
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _pids(folder: pathlib.Path, ranks: int) -> list[int]:
    files = sorted(folder.glob("rank*.pid"))
    assert len(files) == ranks, f"expected {ranks} pid files, found {[f.name for f in files]}"
    return [int(p) for f in files for p in f.read_text().split()]


def test_alive_helper_sees_a_live_and_a_dead_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not _alive(proc.pid)


# --- the launcher ---------------------------------------------------------------------


def test_results_come_back_by_rank(launched):
    # run_many -> run_workers(run_jobs, ...): the per-rank list, in rank order
    assert launched[0] == [(0, 2, 1.0, "gloo"), (1, 2, 1.0, "gloo")]


def test_worker_exception_names_rank_and_traceback_and_leaves_nothing(tmp_path):
    with pytest.raises(nd.WorkerError) as info:
        nd.run_workers(workers.fail_on, 2, 1, "boom-42", str(tmp_path), timeout=120)
    err = info.value
    assert err.rank == 1
    assert "worker rank 1 failed: RuntimeError: boom-42" in str(err)
    assert "in fail_on" in err.worker_traceback  # the worker's own frames, not the launcher's
    assert sorted(_pids(tmp_path, 2)) == sorted(nd.last_worker_pids)
    assert _survivors(nd.last_worker_pids) == []


def test_worker_that_dies_silently_is_blamed_not_its_peer():
    # rank 1 then fails too ("Connection reset by peer") and may report first
    with pytest.raises(nd.WorkerError, match=r"rank 0 failed: process exited with code 7"):
        nd.run_workers(workers.die_on, 2, 0, 7, timeout=120)
    assert _survivors(nd.last_worker_pids) == []


def test_hang_stops_at_timeout_and_kills_the_workers(tmp_path):
    start = time.monotonic()
    with pytest.raises(nd.WorkerTimeout) as info:
        nd.run_workers(workers.hang_on, 2, 1, str(tmp_path), False, timeout=4)
    assert time.monotonic() - start < 60  # it stopped (the hanging rank sleeps 600 s)
    assert info.value.missing and set(info.value.missing) <= {0, 1}
    assert len(nd.last_worker_pids) == 2
    assert _survivors(nd.last_worker_pids) == []
    # where the hung rank was: its own stack, named in the message
    assert 1 in info.value.missing and "hang_on" in info.value.stacks[1]
    assert "where rank 1 was" in str(info.value) and "hang_on" in str(info.value)


def test_workers_die_with_a_launcher_killed_by_sigkill(tmp_path):
    # A kernel killed with SIGKILL cannot clean up: its workers (and what they started)
    # notice the lost parent and take their process group down themselves.
    code = ("from numlab.distributed import workers; from numlab import distributed as nd; "
            f"nd.run_workers(workers.hang_on, 2, 1, {str(tmp_path)!r}, True, timeout=300)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("rank*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = _pids(tmp_path, 2)
        assert len(pids) == 4  # two workers and their grandchildren
        launcher.kill()
        launcher.wait()
        assert _survivors(pids, grace=15.0) == []  # the watch polls every 0.5 s; a loaded CI is slower
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_keyboard_interrupt_leaves_no_process(tmp_path):
    def interrupt_when_started():
        deadline = time.monotonic() + 100
        while len(list(tmp_path.glob("rank*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C / the notebook's stop button sends

    # A shell that starts the test run in the background (`make test &`) makes it ignore
    # SIGINT; a kernel never does. Put Python's own Ctrl-C handler in place for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            nd.run_workers(workers.hang_on, 2, 1, str(tmp_path), True, timeout=120)
    finally:
        signal.signal(signal.SIGINT, previous)
    pids = _pids(tmp_path, 2)
    assert len(pids) == 4  # two workers, each with a grandchild it started
    assert _survivors(pids) == []


def _notebook_function(monkeypatch):
    """A function as a notebook cell makes it: module ``__main__``, and a main without a file."""
    fake_main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", fake_main)

    def worker():
        return 1

    worker.__module__, worker.__qualname__ = "__main__", "worker"
    fake_main.worker = worker
    return worker


def test_function_from_a_notebook_cell_is_refused_with_the_reason(monkeypatch):
    worker = _notebook_function(monkeypatch)
    with pytest.raises(ValueError, match=r"'__main__'.*no file to import"):
        nd.run_workers(worker, 2)


def test_workers_are_forked_by_one_fork_server_and_spawned_without_one(monkeypatch):
    # os.getppid in the workers: who started them
    first, second = nd.run_workers(os.getppid, 2), nd.run_workers(os.getppid, 2)
    assert len(set(first + second)) == 1  # one fork server, kept from launch to launch
    assert first[0] != os.getpid() and _alive(first[0])
    monkeypatch.setattr(launcher.mp, "get_all_start_methods", lambda: ["spawn"])  # Windows
    assert nd.run_workers(os.getppid, 2) == [os.getpid()] * 2  # spawned by the launcher


def test_why_a_notebook_function_cannot_be_spawned(monkeypatch):
    # pickle sends only "__main__.worker"; a fresh interpreter has no such attribute
    payload = pickle.dumps(_notebook_function(monkeypatch))
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    proc = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True,
                          timeout=60)
    assert proc.returncode != 0
    assert b"Can't get attribute 'worker' on <module '__main__'" in proc.stderr


@pytest.mark.parametrize("fn, error", [
    (lambda: 1, ValueError),
    (42, TypeError),
])
def test_bad_worker_functions(fn, error):
    with pytest.raises(error, match="fn"):
        nd.run_workers(fn, 2)


def test_local_function_is_refused():
    def inner():
        return 1

    with pytest.raises(ValueError, match="module level"):
        nd.run_workers(inner, 2)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"world_size": 0}, ValueError, "world_size"),
    ({"world_size": 2.0}, TypeError, "world_size"),
    ({"world_size": True}, TypeError, "world_size"),
    ({"world_size": 2, "backend": "mpi"}, ValueError, "backend"),
    ({"world_size": 2, "timeout": -1}, ValueError, "timeout"),
    ({"world_size": 2, "timeout": math.inf}, ValueError, "timeout"),
    ({"world_size": 2, "timeout": "10"}, TypeError, "timeout"),
])
def test_bad_launcher_arguments(kwargs, error, match):
    world_size = kwargs.pop("world_size")
    with pytest.raises(error, match=match):
        nd.run_workers(workers.rank_info, world_size, **kwargs)


def test_unpicklable_args_are_refused_before_launch():
    with pytest.raises(TypeError, match="args must be picklable"):
        nd.run_workers(workers.fail_on, 2, lambda: 0)


def test_backend_choice():
    if not torch.cuda.is_available():
        assert nd.resolve_backend("auto", 2) == "gloo"
        with pytest.raises(ValueError, match="backend='nccl' needs CUDA"):
            nd.resolve_backend("nccl", 2)
    assert nd.resolve_backend("gloo", 2) == "gloo"


# --- experiments, all in one launch --------------------------------------------------------

BN_SWEEP = {"per_device_batch": (2, 3), "steps": 15, "lr": 0.05, "seed": 0, "test_size": 300}


@pytest.fixture(scope="module")
def launched():
    return nd.run_many(
        2,
        ("rank_info", {}),
        ("ddp_equivalence", {"dtype": "fp32", "steps": 4}),
        ("ddp_equivalence", {"dtype": "fp64", "steps": 4}),
        ("batchnorm_check", {"shape": (16, 6), "dtype": "fp64"}),
        ("batchnorm_check", {"shape": (8, 3, 4, 4), "dtype": "fp64"}),
        ("batchnorm_check", {"shape": (12, 5), "dtype": "fp32"}),
        ("batchnorm_sync", BN_SWEEP),
        ("torch_syncbn_on_cpu", {}),
        timeout=240,
    )


def test_torch_syncbatchnorm_refuses_cpu_in_a_process_group(launched):
    if torch.cuda.is_available():
        pytest.skip("workers use CUDA here")
    assert launched[7].startswith("ValueError: SyncBatchNorm expected input tensor to be on GPU")


def test_alive_pids_agrees_with_the_independent_helper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert nd.alive_pids([proc.pid]) == [proc.pid] and _alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert nd.alive_pids([proc.pid]) == [] and not _alive(proc.pid)


def test_ddp_matches_one_process_up_to_rounding(launched):
    fp32, fp64 = launched[1], launched[2]
    assert fp32.ranks_agree and fp64.ranks_agree
    assert fp32.steps == fp64.steps == 4
    # a handful of eps at most: the same sums, added in another order
    assert fp32.max_diff.max() <= 20 * fp32.eps * fp32.param_scale
    assert fp64.max_diff.max() <= 20 * fp64.eps * fp64.param_scale
    assert fp64.max_diff.max() < 1e-6 * fp32.max_diff.max() + 1e-300
    assert fp32.emulated_diff.max() <= 20 * fp32.eps * fp32.param_scale
    assert "fp32, 2 workers, 4 steps" in repr(fp32)


def test_ddp_really_trained(launched):
    # guard against a trivially equal comparison: the parameters moved away from their init
    kw = ddp._prepare_ddp(2, dtype="fp32", steps=4)
    trained = ddp._reference_ddp(**kw, emulate=False)
    init = ddp._flat_params(ddp._mlp(0, torch.float32))
    assert (trained[-1] - init).abs().max() > 1e3 * launched[1].max_diff.max()


@pytest.mark.parametrize("index, tol", [(3, 1e-13), (4, 1e-13), (5, 1e-5)])
def test_synchronised_batchnorm_equals_full_batch(launched, index, tol):
    check = launched[index]
    assert set(check.errors) == {"y", "dx", "dweight", "dbias", "running_mean", "running_var"}
    assert check.worst < tol, check


def test_synchronised_batchnorm_merges_shards_of_unequal_size():
    # 3 and 7 samples: a merge that averaged the shards' means without their counts would
    # pass the equal shards above and fail here. Oracle: torch's batch_norm on all 10 rows.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=gen, dtype=torch.float64) * 3 + 2
    cotangent = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    ranks = nd.run_workers(batchnorm.bn_check, 2, x, cotangent, ones, zeros, (3, 7), timeout=120)
    xr = x.clone().requires_grad_(True)
    weight = torch.ones(4, dtype=torch.float64, requires_grad=True)
    running_var = torch.ones(4, dtype=torch.float64)
    y = torch.nn.functional.batch_norm(xr, torch.zeros(4, dtype=torch.float64), running_var,
                                       weight, torch.zeros(4, dtype=torch.float64), training=True)
    (y * cotangent).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), xr.grad)
    torch.testing.assert_close(ranks[0]["w_grad"] + ranks[1]["w_grad"], weight.grad)  # DDP sums these
    for r in ranks:
        torch.testing.assert_close(r["running_var"], running_var)


def test_local_batchnorm_is_not_full_batch():
    # the contrast to the test above: normalising each shard by itself changes the output
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    full = torch.nn.functional.batch_norm(x, None, None, training=True)
    local = torch.cat([torch.nn.functional.batch_norm(p, None, None, training=True)
                       for p in x.chunk(2)])
    assert (full - local).abs().max() > 1e-2


def test_sync_batchnorm_training_equals_one_big_batch(launched):
    sweep = launched[6]
    assert sweep.per_device_batch == (2, 3)
    for i, b in enumerate(sweep.per_device_batch):
        acc, loss = batchnorm._bn_train_single(2 * b, BN_SWEEP["steps"], BN_SWEEP["lr"], 0,
                                      BN_SWEEP["test_size"])
        assert sweep.loss_sync[i] == pytest.approx(loss, rel=1e-4)
        assert abs(sweep.acc_sync[i] - acc) <= 1 / BN_SWEEP["test_size"]
    assert not np.allclose(sweep.loss_local, sweep.loss_sync, rtol=1e-3)
    assert np.all((sweep.acc_local >= 0) & (sweep.acc_local <= 1))
    assert "b=2:" in repr(sweep)


def test_cpu_sync_batchnorm_is_plain_batchnorm_without_a_process_group():
    torch.manual_seed(0)
    x = torch.randn(10, 4) * 2 + 1
    ours, ref = batchnorm.CPUSyncBatchNorm(4), torch.nn.BatchNorm1d(4)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    with pytest.raises(ValueError, match="shape"):
        ours(torch.ones(3))


@pytest.mark.parametrize("call, error, match", [
    (lambda: nd.ddp_equivalence(2, global_batch=31), ValueError, "global_batch"),
    (lambda: nd.ddp_equivalence(2, dtype="fp16"), ValueError, "dtype"),
    (lambda: nd.ddp_equivalence(2, dtype="int8"), ValueError, "dtype"),
    (lambda: nd.ddp_equivalence(2, steps=0), ValueError, "steps"),
    (lambda: nd.ddp_equivalence(2, lr=-1.0), ValueError, "lr"),
    (lambda: nd.ddp_equivalence(0), ValueError, "world_size"),
    (lambda: nd.batchnorm_check(2, shape=(15, 3)), ValueError, "shape"),
    (lambda: nd.batchnorm_check(2, shape=(16,)), ValueError, "shape"),
    (lambda: nd.batchnorm_sync(2, per_device_batch=1), ValueError, "per_device_batch"),
    (lambda: nd.batchnorm_sync(2, per_device_batch=()), ValueError, "per_device_batch"),
    (lambda: nd.batchnorm_sync(2, steps=2.5), TypeError, "steps"),
    (lambda: nd.run_many(2), ValueError, "jobs"),
    (lambda: nd.run_many(2, ("nope", {})), ValueError, "unknown job"),
    (lambda: nd.run_many(2, "ddp_equivalence"), TypeError, "job"),
])
def test_bad_experiment_arguments_fail_before_any_launch(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- the order of additions -----------------------------------------------------------


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([1, 2, 4, 8, 16]), st.integers(0, 1000), st.sampled_from(["fp32", "fp64"]))
def test_dividing_first_is_exact_for_powers_of_two(n_workers, seed, dtype):
    r = nd.reduction_order(n_workers, n=2000, dtype=dtype, seed=seed)
    assert r.differ == 0.0 and r.max_diff_eps == 0.0


@pytest.mark.parametrize("n_workers", [3, 5, 7])
def test_dividing_first_differs_by_a_few_ulps_otherwise(n_workers):
    r = nd.reduction_order(n_workers, n=20_000)
    assert 0.1 < r.differ < 1.0
    # each of the N divisions and 2N additions rounds once: a few eps of the magnitude sum
    assert 0 < r.max_diff_eps <= 2 * n_workers
    # independent check of one entry, in plain Python floats rounded to fp32 through torch
    g = torch.randn(n_workers, 20_000, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64).float()
    pre = sum((g[i] / n_workers for i in range(n_workers)), torch.zeros(20_000))
    post = sum((g[i] for i in range(n_workers)), torch.zeros(20_000)) / n_workers
    assert r.differ == pytest.approx(float((pre != post).double().mean()))


def test_reduction_order_bad_input():
    with pytest.raises(ValueError, match="world_size"):
        nd.reduction_order(0)
    with pytest.raises(ValueError, match="n must"):
        nd.reduction_order(2, n=0)
    with pytest.raises(ValueError, match="dtype"):
        nd.reduction_order(2, dtype="int3")


# --- stale gradients -------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=12))
def test_critical_lr_is_where_the_characteristic_roots_leave_the_unit_circle(k):
    a = nd.critical_lr(k)

    def spectral_radius(a):  # w_{t+1} = w_t - a w_{t-k}  <=>  z^(k+1) - z^k + a = 0
        return max(abs(np.roots([1.0, -1.0] + [0.0] * (k - 1) + [a]))) if k else abs(1 - a)

    assert spectral_radius(a * (1 - 1e-6)) < 1 < spectral_radius(a * (1 + 1e-6))


def test_critical_lr_values_and_curvature():
    assert nd.critical_lr(0) == pytest.approx(2.0)
    assert nd.critical_lr(1) == pytest.approx(1.0)
    assert nd.critical_lr(2, curvature=2.0) == pytest.approx((math.sqrt(5) - 1) / 4)


def test_problem_has_largest_curvature_one():
    x, _ = nd.least_squares_problem()
    eig = torch.linalg.eigvalsh(x.T @ x / len(x))
    assert float(eig.max()) == pytest.approx(1.0, rel=1e-12)
    assert float(eig.min()) == pytest.approx(0.05, rel=1e-12)


def _plain_stale_gd(k, lr, steps):
    """Independent reference: a Python loop with autograd and an explicit list of weights."""
    x, y = nd.least_squares_problem()
    ws = [torch.zeros(x.shape[1], dtype=x.dtype)]
    losses = [float(0.5 * ((x @ ws[0] - y) ** 2).mean())]
    for t in range(steps):
        old = ws[max(t - k, 0)].clone().requires_grad_(True)
        (0.5 * ((x @ old - y) ** 2).mean()).backward()
        ws.append(ws[-1] - lr * old.grad)
        losses.append(float(0.5 * ((x @ ws[-1] - y) ** 2).mean()))
    return np.array(losses)


@pytest.mark.parametrize("k, lr", [(0, 0.7), (1, 0.7), (3, 0.3)])
def test_stale_sgd_matches_a_plain_loop(k, lr):
    run = nd.stale_sgd(k, lr, steps=40)
    np.testing.assert_allclose(run.loss_stale, _plain_stale_gd(k, lr, 40), rtol=1e-9)
    np.testing.assert_allclose(run.loss_sync, _plain_stale_gd(0, lr, 40), rtol=1e-9)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_stale_diverges_just_above_its_bound_while_sync_converges(k):
    below = nd.stale_sgd(k, 0.85 * nd.critical_lr(k), steps=300)
    above = nd.stale_sgd(k, 1.15 * nd.critical_lr(k), steps=300)
    assert not below.diverged and above.diverged
    assert not above.sync_diverged  # same lr, fresh gradients: fine
    assert "stale diverges" in repr(above)


def test_sweep_rows_equal_single_runs_and_boundary_follows_theory():
    sweep = nd.stale_sweep(np.geomspace(0.05, 2.5, 120), [0, 1, 2, 4], steps=200)
    np.testing.assert_allclose(sweep.curve(0.5, 2), nd.stale_sgd(2, sweep.lrs[
        np.argmin(abs(np.log(sweep.lrs / 0.5)))], steps=200).loss_stale, rtol=1e-12)
    theory = np.array([nd.critical_lr(k) for k in sweep.staleness])
    assert np.all(np.abs(sweep.boundary() / theory - 1) < 0.12)
    assert sweep.diverged.shape == (120, 4)
    assert "x staleness [0, 1, 2, 4]" in repr(sweep)


def test_minibatch_of_everything_is_the_full_batch():
    full = nd.stale_sgd(2, 0.5, steps=30)
    every = nd.stale_sgd(2, 0.5, steps=30, batch_size=256)
    np.testing.assert_allclose(every.loss_stale, full.loss_stale, rtol=1e-9)
    noisy = nd.stale_sgd(2, 0.5, steps=30, batch_size=8)
    assert not np.allclose(noisy.loss_stale, full.loss_stale, rtol=1e-3)


def test_stale_sweep_restores_thread_count():
    before = torch.get_num_threads()
    nd.stale_sweep([0.1], [1], steps=3)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("call, error, match", [
    (lambda: nd.stale_sgd(-1, 0.1), ValueError, "staleness"),
    (lambda: nd.stale_sgd(1.5, 0.1), TypeError, "staleness"),
    (lambda: nd.stale_sgd(1, 0.0), ValueError, "lr"),
    (lambda: nd.stale_sgd(1, math.nan), ValueError, "lr"),
    (lambda: nd.stale_sgd(1, 0.1, steps=0), ValueError, "steps"),
    (lambda: nd.stale_sgd(1, 0.1, batch_size=1000), ValueError, "batch_size"),
    (lambda: nd.stale_sgd(1, 0.1, dtype="int8"), ValueError, "dtype"),
    (lambda: nd.stale_sweep([-0.1, 0.2]), ValueError, "lrs"),
    (lambda: nd.stale_sweep([]), ValueError, "lrs"),
    (lambda: nd.stale_sweep([0.1], [-1]), ValueError, "staleness"),
    (lambda: nd.stale_sweep([0.1], [0.5]), ValueError, "staleness"),
    (lambda: nd.critical_lr(-2), ValueError, "staleness"),
    (lambda: nd.critical_lr(1, curvature=0), ValueError, "curvature"),
])
def test_bad_stale_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- the command line and torchrun ---------------------------------------------------------


def test_cli_parses_demo_options():
    args, name, kwargs = cli._parse(["batchnorm", "--batch", "2", "8", "--steps", "5"])
    assert name == "batchnorm_sync" and kwargs == {"per_device_batch": (2, 8), "steps": 5}
    with pytest.raises(SystemExit):
        cli._parse(["nope"])


def test_torchrun_runs_the_entry_point_with_two_processes():
    torchrun = pathlib.Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", "--nproc-per-node", "2", "-m", "numlab.distributed", "bncheck"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # never leave torchrun or its workers behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "torchrun, 2 processes, backend gloo" in out
    errors = [float(v) for v in re.findall(r"(?:y|dx|dweight|dbias|running_\w+) ([0-9.e+-]+)", out)]
    assert len(errors) == 6 and max(errors) < 1e-13, out
