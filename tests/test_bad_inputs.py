"""Every public function of every compute module, called with bad values for each argument.

The rule: a value of the wrong kind (a string for a number, a number for a name, a float for
a count) gets a ValueError or TypeError whose message names the argument. A value of the
right kind but out of range (NaN, inf, negative, zero) gets the same, or a result; never a
RuntimeError, IndexError, KeyError or AssertionError from somewhere below.
The table below is the list of public functions: a test fails if a module grows one the
table does not name.
"""
import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from numlab import (
    check,
    clipping,
    debugging,
    device,
    distributed,
    finite_diff,
    formats,
    gradcheck,
    layers,
    links,
)
from numlab import mixed_precision as mp
from numlab import softmax as sm
from numlab.clipping import clip, depth, rnn
from numlab.debugging import anomaly, demos, pathologies, tools, tracer
from numlab.distributed import batchnorm, ddp, jobs, launcher, stale, workers
from numlab.mixed_precision import speed, training
from numlab.softmax import breaks, forms, sweeps

# Seeded: the values show in the test ids, which must be the same in every pytest-xdist worker.
_RNG = torch.Generator().manual_seed(0)
X = torch.randn(4, 3, dtype=torch.float64, generator=_RNG)
Y = torch.tensor([0, 1, 2, 0])
Z = torch.tensor([0.5, -2.0])
T = torch.tensor([1.0, 0.0])
G = torch.tensor([3.0, 4.0])
LINEAR = nn.Linear(3, 2)


def _grad_fn():
    return layers.problem("tanh", 4)


# function -> good keyword arguments (small and fast). Positional-only arguments are named.
GOOD = {
    formats.resolve_dtype: dict(dtype="fp16"),
    formats.short_name: dict(dtype="fp16"),
    formats.info: dict(dtype="fp16"),
    formats.round_to: dict(x=0.1, dtype="fp16"),
    formats.neighbors: dict(x=0.1, dtype="fp16"),
    formats.ulp: dict(x=0.1, dtype="fp16"),
    formats.decompose: dict(x=0.1, dtype="fp16"),
    formats.add_in_format: dict(a=1.0, b=0.5, dtype="fp16"),
    formats.eps_by_halving: dict(dtype="fp16"),
    formats.table: dict(dtypes=("fp16", "bf16")),
    finite_diff.forward_difference: dict(f="exp", x=1.0, h=[1e-3]),
    finite_diff.central_difference: dict(f="exp", x=1.0, h=[1e-3]),
    finite_diff.error_models: dict(f="exp", x=1.0, dtype="fp32"),
    finite_diff.default_steps: dict(dtype="fp32"),
    finite_diff.usable_step: dict(h=1e-9, dtype="fp16"),
    finite_diff.sweep_h: dict(f="exp", x=1.0, dtype="fp32", hs=[1e-3, 1e-2]),
    gradcheck.gradcheck: dict(fn=torch.tanh, inputs=(torch.randn(3, generator=_RNG, dtype=torch.float64,
                                                                 requires_grad=True),),
                              eps=1e-6, atol=1e-5, rtol=1e-3, top=2, batched=True),
    gradcheck.speed_vs_torch: dict(fn=torch.tanh, inputs=(torch.randn(3, generator=_RNG, dtype=torch.float64,
                                                                      requires_grad=True),), repeat=1),
    sm.softmax_naive: dict(logits=X), sm.softmax_stable: dict(logits=X),
    sm.logsumexp_naive: dict(logits=X), sm.logsumexp_stable: dict(logits=X),
    sm.shifted_sum: dict(logits=X),
    sm.cross_entropy_naive: dict(logits=X, target=Y, reduction="mean"),
    sm.cross_entropy_stable: dict(logits=X, target=Y, reduction="mean"),
    sm.softplus_naive: dict(z=Z), sm.softplus_stable: dict(z=Z),
    sm.bce_naive: dict(z=Z, target=T, reduction="mean"),
    sm.bce_stable: dict(z=Z, target=T, reduction="mean"),
    sm.logit_pattern: dict(scale=2.0, n_classes=3, dtype="fp32", device="cpu"),
    sm.breakpoints: dict(dtype="fp16", n_classes=2, target="low"),
    sm.overflow_threshold: dict(dtype="fp16", n_classes=2),
    sm.softplus_breakpoint: dict(dtype="fp16"),
    sm.wrong_limit: dict(dtype="fp16"),
    sm.sweep_logits: dict(scales=[1.0, 2.0], dtype="fp16", n_classes=2, target="low", device="cpu"),
    sm.sweep_bce: dict(zs=[1.0, -2.0], dtype="fp32", target=1.0, device="cpu"),
    sm.softplus_table: dict(zs=[1.0, -20.0], dtypes=["fp16", "fp32"]),
    clipping.orthogonal_stack: dict(depth=2, width=3, gain=1.0, seed=0, dtype="fp64", device="cpu"),
    clipping.gradient_norms_by_depth: dict(depth=3, width=4, gain=1.0, nonlinearity="linear", batch=2, seed=0,
                                           dtype="fp32", device="cpu"),
    clipping.fit_rate: dict(distance=torch.arange(4.0), norms=torch.tensor([1.0, 2.0, 4.0, 8.0])),
    clipping.clip_comparison: dict(grad=G, max_norm=1.0, clip_value=0.5, error_if_nonfinite=False),
    clipping.clip_grad_norm_checked_: dict(parameters=[nn.Parameter(torch.ones(2))], max_norm=1.0,
                                           error_if_nonfinite=True),
    clipping.adding_problem: dict(batch=2, seq_len=3, generator=None, dtype="fp32", device="cpu"),
    clipping.train_rnn: dict(clip="norm", max_norm=1.0, lr=0.1, steps=2, seed=0, seq_len=3, hidden=4,
                             batch=2),
    clipping.threshold_sweep: dict(thresholds=(0.5, 1.0), clip="norm", steps=2, seq_len=3, hidden=4, batch=2),
    mp.resolve_precision: dict(precision="fp16"),
    mp.demo_problem: dict(seed=0, device="cpu", width=4, batch=8),
    mp.train: dict(precision="fp32", scaler=False, device="cpu", steps=2, seed=0, loss_scale=1.0,
                   init_scale=1024.0),
    mp.gradient_magnitudes: dict(loss_scale=1e-5, scale=1024.0, seed=0, device="cpu", threads=1),
    mp.speed_reading: dict(ratios={"bf16": 2.0, "fp16": 0.1}, device="cpu"),
    mp.step_times: dict(precisions=("fp32",), device="cpu", width=8, batch=8, steps=1, warmup=1, seed=0,
                        threads=1),
    distributed.resolve_backend: dict(backend="gloo", world_size=2),
    distributed.alive_pids: dict(pids=[1]),
    distributed.critical_lr: dict(staleness=1, curvature=1.0),
    distributed.least_squares_problem: dict(n=16, features=4, seed=0, dtype="fp64"),
    distributed.stale_sgd: dict(staleness=1, lr=0.1, steps=3, batch_size=None, seed=0, dtype="fp64"),
    distributed.stale_sweep: dict(lrs=[0.1, 0.5], staleness=[0, 1], steps=3, batch_size=None, seed=0,
                                  dtype="fp64"),
    distributed.reduction_order: dict(world_size=3, n=10, dtype="fp32", seed=0),
    debugging.GradNormLogger: dict(model=LINEAR, every=1),
    debugging.trace_nonfinite: dict(model=LINEAR, raise_on_first=False, max_events=4),
    debugging.anomaly_report: dict(fn=lambda: None),
    debugging.forward_nan_model: dict(seed=0),
    debugging.anomaly_overhead: dict(depth=2, width=4, batch=2, repeats=1, seed=0),
    debugging.anomaly_demo: dict(case="sqrt", measure=False, seed=0),
    debugging.misinit_mlp: dict(bad_layer=1, scale=1e-3, depth=2, width=4, seed=0, dtype="fp32"),
    debugging.misinit_run: dict(bad_layer=1, scale=1e-3, steps=2, every=1, seed=0, dtype="fp32"),
    debugging.nanguard_run: dict(bad_batch=2, batches=3, batch_size=4, seed=0),
    debugging.split_overlap: dict(train_x=X, val_x=X[:2]),
    debugging.input_shift: dict(train_x=X, val_x=X[:2]),
    debugging.diagnose_curves: dict(train_loss=[1.0, 0.8, 0.6, 0.5], val_loss=[1.0, 0.9, 0.8, 0.8],
                                    grad_norm=[1.0, 1.0, 1.0, 1.0], overlap=0.0, shift=0.0),
    debugging.falls_while_val_rises: dict(train_loss=[1.0, 0.8, 0.6, 0.5], val_loss=[1.0, 0.9, 0.8, 0.8]),
    debugging.pathology_tables: dict(runs={}),
    debugging.pathology_run: dict(pathology="healthy", steps=3, every=1, seed=0, dtype="fp32", device="cpu"),
    device.pick: dict(device="cpu"),
    device.threads: dict(n=1),
    device.seeded: dict(seed=0),
    device.time_calls: dict(call=lambda: None, repeat=2, warmup=1),
    links.colab_url: dict(path="notebooks/00_floating_point.ipynb"),
    links.binder_lab_url: dict(path="notebooks/00_floating_point.ipynb"),
    links.binder_voila_url: dict(path="notebooks/00_floating_point.ipynb"),
    links.launch_line: dict(path="notebooks/00_floating_point.ipynb"),
    device.capabilities: dict(device="cpu"),
    layers.problem: dict(name="tanh", n=4, wrong=False, dtype="fp64", device="cpu", seed=0, scale=1.0),
    layers.check_all: dict(n=4),
    layers.verdict_table: dict(verdicts=[]),
    check.exercises: dict(notebook="00"),
    check.check: dict(exercise="00.1", answer=1.0),
    check.matches: dict(answer=1.0, expected=1.0, rtol=1e-6),
}
# Launch real worker processes: their arguments are checked before any process starts, and
# each bad value must be refused there (a launch costs seconds; it is never reached here).
LAUNCHERS = {
    distributed.ddp_equivalence: dict(world_size=2, global_batch=4, steps=1, dtype="fp32", lr=0.1, seed=0,
                                      backend="gloo", timeout=30.0),
    distributed.batchnorm_check: dict(world_size=2, shape=(4, 3), dtype="fp64", seed=0, backend="gloo",
                                      timeout=30.0),
    distributed.batchnorm_sync: dict(world_size=2, per_device_batch=(2,), steps=1, lr=0.05, seed=0,
                                     test_size=10, backend="gloo", timeout=30.0),
    distributed.run_workers: dict(fn=distributed.alive_pids, world_size=2, backend="gloo", timeout=30.0),
}
# Callables that are not argument-taking entry points (objects, layers, the torchrun main).
NOT_IN_TABLE = {"main", "install_spec", "install_guard", "Job", "NanGuard", "PairwiseDistance",
                "MaskedEntropy", "LogCompress",
                "run_many", "available", "softplus", "softplus_wrong_sign", "layer_norm",
                "layer_norm_forgot_mean", "tanh", "tanh_small_x", "dense_tanh",
                "dense_tanh_forgot_activation", "WorkerError", "WorkerTimeout", "CPUSyncBatchNorm",
                # worker functions: the launcher calls them inside a process group, with
                # arguments its public entry point (run_many, ddp_equivalence, ...) checked
                "rank_info", "fail_on", "die_on", "hang_on", "torch_syncbn_on_cpu", "ddp_train",
                "bn_check", "bn_train"}
MODULES = [formats, finite_diff, gradcheck, sm, forms, breaks, sweeps, clipping, depth, clip, rnn,
           mp, training, speed,
           distributed, launcher, ddp, batchnorm, stale, jobs, workers,
           debugging, tools, tracer, anomaly, demos, pathologies, device, layers, check, links]


class Odd:
    """An object of no kind numlab accepts anywhere."""

    def __repr__(self):
        return "Odd()"


def _wrong_kind(good):
    """Values of another kind than ``good``: these must be refused."""
    if isinstance(good, bool):
        return ["no", 2, Odd()]
    if isinstance(good, int):
        return ["3", 1.5, True, Odd()]
    if isinstance(good, float):
        return ["0.5", Odd(), [1.0, "a"]]
    if isinstance(good, str):
        return ["no-such-choice", 3, Odd()]
    if isinstance(good, torch.Tensor):
        return ["x", Odd()]
    return [Odd()]


def _out_of_range(good):
    """Values of the right kind that may be out of range: refused or computed, never a crash."""
    if isinstance(good, bool):
        return []
    if isinstance(good, int):
        return [-1, 0]
    if isinstance(good, float):
        return [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e300, 1e-300]
    if isinstance(good, torch.Tensor) and good.is_floating_point():
        return [good * math.nan, good.flatten()[:0], good.half()]
    return []


# A student's answer may be anything: check() and matches() give a verdict, never an error.
ANY_VALUE = {(check.check, "answer"), (check.matches, "answer"), (check.matches, "expected")}


def _cases(table, launch=False):
    for fn, good in table.items():
        for name, value in good.items():
            if (fn, name) in ANY_VALUE:
                continue
            for bad in _wrong_kind(value):
                yield pytest.param(fn, good, name, bad, True, id=f"{fn.__name__}-{name}-{bad!r}"[:80])
            for bad in _out_of_range(value):
                if launch and isinstance(bad, float) and math.isfinite(bad) and bad > 0:
                    continue  # a valid lr or timeout would launch workers: not here
                yield pytest.param(fn, good, name, bad, False, id=f"{fn.__name__}-{name}-{bad!r}"[:80])


def _call(fn, good, name, bad):
    kwargs = dict(good, **{name: bad})
    sig = inspect.signature(fn)
    positional = [p for p in sig.parameters.values() if p.kind == p.VAR_POSITIONAL]
    if fn is distributed.run_workers:
        kwargs.pop("fn"), kwargs.pop("world_size")
        return fn(good["fn"] if name != "fn" else bad, good["world_size"] if name != "world_size" else bad,
                  **kwargs)
    assert not positional, fn
    out = fn(**kwargs)
    if fn in (device.threads, device.seeded):
        with out:
            pass
    return out


def _expect(fn, good, name, bad, must_refuse):
    try:
        _call(fn, good, name, bad)
    except (ValueError, TypeError) as e:
        assert name in str(e), f"{fn.__name__}({name}={bad!r}): the message does not name {name!r}: {e}"
        return
    except Exception as e:  # noqa: BLE001 - any other exception is the defect being tested
        pytest.fail(f"{fn.__name__}({name}={bad!r}) raised {type(e).__name__}: {e}")
    assert not must_refuse, f"{fn.__name__}({name}={bad!r}) accepted a value of the wrong kind"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fn,good,name,bad,must_refuse", list(_cases(GOOD)))
def test_bad_value(fn, good, name, bad, must_refuse):
    _expect(fn, good, name, bad, must_refuse)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fn,good,name,bad,must_refuse", [
    c for c in _cases(LAUNCHERS, launch=True)
    if c.values[4] or c.values[2] in ("timeout", "world_size", "lr")])
def test_bad_value_before_any_worker_starts(fn, good, name, bad, must_refuse):
    _expect(fn, good, name, bad, True)


def test_the_good_values_work():
    failed = []
    for fn, good in GOOD.items():
        try:
            _call(fn, good, next(iter(good)), next(iter(good.values())))
        except Exception as e:  # noqa: BLE001 - collected: one report for the whole table
            failed.append(f"{fn.__name__}: {type(e).__name__}: {e}"[:200])
    assert not failed, "\n".join(failed)


def test_the_table_names_every_public_function():
    tabled = {f.__name__ for f in (*GOOD, *LAUNCHERS)}
    missing = []
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj) or (inspect.isclass(obj) and not _is_record(obj)):
                if name not in tabled and name not in NOT_IN_TABLE:
                    missing.append(f"{mod.__name__}.{name}")
    assert not missing, missing


def _is_record(cls) -> bool:
    """Result records (dataclasses, NamedTuples) are built by numlab, not called by readers."""
    return hasattr(cls, "__dataclass_fields__") or issubclass(cls, tuple) or issubclass(cls, Exception)


def test_nanguard_takes_numpy_scalars():
    guard = debugging.NanGuard()
    guard(np.float32(1.0))
    guard(np.float64(1.0))
    with pytest.raises(FloatingPointError):
        guard(np.float32("nan"))


def test_the_cases_the_review_found():
    # same rows as values: a float64 copy of float32 rows, and -0.0 against 0.0
    rows = torch.tensor([[0.0, 1.5], [2.0, -3.0]])
    assert debugging.split_overlap(rows, rows.double()) == 1.0
    assert debugging.split_overlap(torch.tensor([[0.0, 1.0]]), torch.tensor([[-0.0, 1.0]])) == 1.0
    with pytest.raises(ValueError, match="train_loss must hold values >= 0"):
        debugging.diagnose_curves([-1.0, -2.0, -3.0], [-1.0, -1.5, -2.0])
    with pytest.raises(ValueError, match="x must be a point where f"):
        finite_diff.sweep_h("exp", 1e308)
    with pytest.raises(TypeError, match="overflow_at must be a collection"):
        mp.train(overflow_at=5, steps=2)
    with pytest.raises(ValueError, match="loss_scale"):
        mp.train(loss_scale=1e-300, steps=2)
    with pytest.raises(ValueError, match="init_scale"):
        mp.train(init_scale=1e300, steps=2)
    with pytest.raises(ValueError, match="n must be at least features"):
        distributed.least_squares_problem(n=4)
    with pytest.raises(ValueError, match="width"):
        mp.step_times(width=0)
    with pytest.raises(TypeError, match="measure"):
        debugging.anomaly_demo(measure="no")
    with pytest.raises(ValueError, match="top"):
        gradcheck.gradcheck(*_grad_fn(), top=True)
    missing = next((d for d in ("cuda", "mps") if d not in device.available()), None)
    if missing:
        with pytest.raises(ValueError, match="not available"):
            mp.demo_problem(device=missing)
