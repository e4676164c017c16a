"""numlab.debugging: hooks that find when and where a run goes non-finite, and what is numerics."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from numlab import debugging as dbg


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _chain(depth=5, width=6):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers)


# --- trace_nonfinite --------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, 2, 4, 8])
def test_tracer_names_the_module_where_a_nan_weight_is_planted(bad):
    torch.manual_seed(0)
    model = _chain()
    with torch.no_grad():
        model[bad].weight[0, 0] = float("nan")
    with dbg.trace_nonfinite(model) as trace:
        out = model(torch.randn(3, 6))
    assert not torch.isfinite(out).all()  # the planted value does reach the output
    first = trace.first
    assert first.module == str(bad) and first.kind == "Linear"
    assert first.inputs_finite  # this module created it
    assert first.output[0].finite_fraction < 1.0
    # call order: the root starts first (#0), then children in order
    assert first.call_index == bad + 1
    # everything downstream is reported after it, in order
    names = [e.module for e in trace.events]
    assert names[: len(names) - 1] == [str(i) for i in range(bad, 10)]
    assert names[-1] == ""  # the model itself, last to finish
    assert _no_hooks(model)


def test_tracer_catches_an_inf_that_tanh_hides_downstream():
    torch.manual_seed(0)
    model = _chain(3)
    with torch.no_grad():
        model[2].weight[1, 1] = float("inf")
    with dbg.trace_nonfinite(model) as trace:
        out = model(torch.randn(4, 6))
    assert torch.isfinite(out).all()  # tanh(+-inf) = +-1: the output looks fine
    assert [e.module for e in trace.events] == ["2"]
    assert trace.first.output[0].max == math.inf or trace.first.output[0].min == -math.inf


def test_tracer_uses_qualified_names_in_nested_models_and_reports_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), dbg.LogCompress()),
                          nn.Linear(4, 1))
    x = torch.randn(32, 4)
    with dbg.trace_nonfinite(model) as trace:
        model(x)
    first = trace.first
    assert first.module == "1.1" and first.kind == "LogCompress"
    inner = model[1][0](model[0](x)).detach()
    expected = torch.log(inner)
    assert first.inputs[0].min == pytest.approx(inner.min().item())
    assert first.inputs[0].max == pytest.approx(inner.max().item())
    assert first.output[0].nan_count == int(torch.isnan(expected).sum()) > 0
    assert first.output[0].finite_fraction == pytest.approx(torch.isfinite(expected).double().mean().item())
    finite = expected[torch.isfinite(expected)]
    assert first.output[0].max == pytest.approx(finite.max().item())
    assert "1.1" in repr(trace) and "LogCompress" in repr(first)


def test_tracer_says_when_the_input_is_already_bad_and_when_all_is_finite():
    model = _chain(2)
    x = torch.randn(2, 6)
    x[0, 0] = float("nan")
    with dbg.trace_nonfinite(model) as trace:
        model(x)
    assert trace.first.module == "0" and not trace.first.inputs_finite
    with dbg.trace_nonfinite(model) as clean:
        model(torch.randn(2, 6))
    assert not clean.found and clean.first is None and clean.calls == 5
    assert "all outputs finite" in repr(clean)


def test_tracer_removes_hooks_on_error_and_on_raise_on_first():
    model = _chain(3)
    with pytest.raises(RuntimeError, match="shape"), dbg.trace_nonfinite(model):
        model(torch.randn(2, 5))  # wrong width: the forward itself fails
    assert _no_hooks(model)
    with torch.no_grad():
        model[2].bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match="'2'"), dbg.trace_nonfinite(
            model, raise_on_first=True) as trace:
        model(torch.randn(2, 6))
    assert _no_hooks(model)
    assert len(trace.events) == 1  # the forward stopped at the first bad module


def test_forward_nan_model_traced_vs_anomaly_mode():
    model, x = dbg.forward_nan_model()
    with dbg.trace_nonfinite(model) as trace:
        model(x)
    assert trace.first.module == "3"
    report = dbg.anomaly_report(lambda: model(x).pow(2).mean().backward())
    # anomaly mode blames the loss expression, not the layer that made the NaN
    assert report.function == "PowBackward0"
    assert "pow(2)" in report.line


# --- GradNormLogger ---------------------------------------------------------------------
def test_logger_norms_equal_norms_computed_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    expected = {}
    with dbg.GradNormLogger(model, every=2) as log:
        for step in range(5):
            with torch.no_grad():
                model(x)  # evaluation: not a step
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            if step % 2 == 0:
                expected[step] = [
                    (math.hypot(m.weight.grad.norm().item(), m.bias.grad.norm().item()),
                     math.hypot(m.weight.norm().item(), m.bias.norm().item()))
                    for m in (model[0], model[2])]
            opt.step()
        hist = log.history
    assert hist.layers == ("0", "2")
    assert hist.steps.tolist() == [0, 2, 4]
    for i, step in enumerate(hist.steps):
        for j in range(2):
            assert hist.grad[i, j] == pytest.approx(expected[int(step)][j][0], rel=1e-5)
            assert hist.weight[i, j] == pytest.approx(expected[int(step)][j][1], rel=1e-5)
    assert hist.ratio[1, 0] == pytest.approx(hist.grad[1, 0] / hist.weight[1, 0])
    assert hist.global_grad[0] == pytest.approx(math.hypot(*hist.grad[0]))
    g, w = hist.layer("2")
    assert g.tolist() == hist.grad[:, 1].tolist() and w.tolist() == hist.weight[:, 1].tolist()
    assert len(hist.rows()) == 6 and hist.rows()[0]["layer"] == "0"
    assert "step" in hist.table() and "3 logged steps x 2 layers" in repr(hist)


def test_logger_remove_detaches_everything():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    log = dbg.GradNormLogger(model)
    model(torch.randn(2, 3)).sum().backward()
    assert len(log.history.steps) == 1
    log.remove()
    log.remove()  # twice is fine
    assert not log.attached and _no_hooks(model)
    model(torch.randn(2, 3)).sum().backward()
    assert len(log.history.steps) == 1  # nothing recorded after removal
    assert "removed" in repr(log)


@pytest.mark.parametrize("bad", [0, 1, 2, 3])
def test_misinit_layer_is_singled_out(bad):
    run = dbg.misinit_run(bad_layer=bad, steps=12, every=4)
    assert run.flagged == run.bad_layer == str(2 * bad)
    # the tiny layer's weight norm is the smallest by orders of magnitude
    assert run.history.outlier("weight") == run.bad_layer
    assert "singles out" in repr(run)


def test_no_layer_is_singled_out_without_a_bad_init():
    run = dbg.misinit_run(scale=1.0, steps=12, every=4)
    assert run.flagged is None and run.history.outlier("weight") is None


def test_outlier_and_layer_reject_bad_names():
    hist = dbg.misinit_run(steps=4, every=2).history
    with pytest.raises(ValueError, match="what"):
        hist.outlier("bias")
    with pytest.raises(ValueError, match="name"):
        hist.layer("nope")
    with pytest.raises(ValueError, match="min_decades"):
        hist.outlier("grad", min_decades=-1)


# --- NanGuard -----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=30), st.data())
def test_nanguard_stops_at_the_planted_step(values, data):
    k = data.draw(st.integers(0, len(values)), label="k")
    bad = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    losses = values[:k] + [bad] + values[k:]
    guard = dbg.NanGuard()
    with pytest.raises(FloatingPointError) as info:
        for loss in losses:
            guard(torch.tensor(loss))
    assert guard.tripped_at == k
    assert f"step {k}:" in str(info.value)
    if k:
        assert guard.last_finite_step == k - 1
        assert guard.last_finite_loss == pytest.approx(np.float32(values[k - 1]))
        assert f"last finite step {k - 1}" in str(info.value)
    else:
        assert guard.last_finite_step is None and "no earlier step" in str(info.value)


def test_nanguard_context_manager_starts_fresh_and_takes_explicit_steps():
    guard = dbg.NanGuard()
    with guard:
        assert guard(0.5, step=10) == 0.5 and guard(torch.tensor([0.1, 0.2])) == pytest.approx(0.1)
        assert guard.last_finite_step == 11
        with pytest.raises(FloatingPointError, match=r"step 12: loss = nan"):
            guard(torch.tensor([0.1, float("nan")]))
    with guard:
        assert guard.tripped_at is None and guard.checked == 0
    assert "quiet" in repr(guard)


def test_nanguard_run_stops_at_the_corrupt_batch():
    run = dbg.nanguard_run(bad_batch=11, batches=20)
    assert run.stopped_at == 11
    assert "last finite step 10" in run.message
    assert np.isfinite(run.unguarded_losses[:11]).all()
    assert np.isnan(run.unguarded_losses[11:]).all()  # unguarded: NaN forever after
    assert run.nonfinite_params_unguarded > 0


# --- anomaly mode -------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "function", "text"), [
    ("sqrt", "PowBackward0", "** 2"), ("entropy", "MulBackward0", "p * torch.log(p)")])
def test_anomaly_demo_finds_a_backward_only_nan(case, function, text):
    demo = dbg.anomaly_demo(case, measure=False)
    assert math.isfinite(demo.forward_loss)  # nothing wrong in the forward pass
    assert demo.nan_grads_without > 0        # yet the gradients hold NaN, silently
    assert demo.report.function == function
    assert text in demo.report.line
    assert demo.report.file.endswith("anomaly.py")  # where the demo modules live
    assert "Traceback of forward call" in demo.report.captured
    assert demo.overhead is None
    short = demo.report.trimmed(frames=2)
    assert text in short and "outer frames" in short and len(short) < len(demo.report.captured)
    assert short.count('File "') == 2


def test_anomaly_report_quiet_when_backward_is_clean_and_reraises_other_errors():
    x = torch.ones(3, requires_grad=True)
    report = dbg.anomaly_report(lambda: (x * 2).sum().backward())
    assert not report.raised and "raised nothing" in repr(report)
    assert "Anomaly Detection has been enabled" in report.captured

    def broken():
        raise RuntimeError("unrelated")

    with pytest.raises(RuntimeError, match="unrelated"):
        dbg.anomaly_report(broken)


def test_anomaly_overhead_measures_both_modes():
    cost = dbg.anomaly_overhead(depth=2, width=8, batch=4, repeats=3)
    assert cost.off_s > 0 and cost.on_s > 0 and cost.slowdown == cost.on_s / cost.off_s
    assert "slower" in repr(cost)


# --- pathologies --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs():
    return {p: dbg.pathology_run(p) for p in dbg.PATHOLOGIES}


def test_each_pathology_is_diagnosed(runs):
    for name, run in runs.items():
        assert run.diagnosis.verdict == name, (name, run.diagnosis)


def test_pathology_signatures(runs):
    blow = runs["numerical blow-up"]
    assert blow.stopped_at is not None and not np.isfinite(blow.train_loss[-1])
    assert np.isfinite(blow.train_loss[:-1]).all()
    assert blow.max_logit[-2] > 50  # the logits were heading for exp's overflow at 88.7
    over = runs["overfitting"]
    best = int(np.argmin(over.val_loss))
    assert 0 < best < len(over.val_loss) - 1 and over.val_loss[-1] > 1.5 * over.val_loss[best]
    assert over.train_loss[-1] < 0.1 * over.train_loss[0]
    assert np.allclose(over.fresh_loss[-1], over.val_loss[-1], rtol=0.3)  # validation is honest
    mis = runs["preprocessing mismatch"]
    assert mis.shift > 5 and mis.val_loss[0] > 1.3 * mis.train_loss[0]
    assert np.argmin(mis.val_loss) == 0 and mis.val_loss[-1] > 10 * mis.val_loss[0]
    leak = runs["leak between splits"]
    assert leak.overlap > 0.9 and leak.val_loss[-1] < 2 * leak.train_loss[-1]
    assert leak.fresh_loss[-1] > 50 * leak.val_loss[-1]  # what the leaky validation hides
    assert runs["healthy"].overlap == 0 and runs["healthy"].shift < 0.5


def test_the_sections_attribution(runs):
    """'Train falls, validation diverges' comes from overfitting and mismatch, not from a leak."""
    symptom = {name: run.symptom for name, run in runs.items()}
    assert symptom == {"healthy": False, "numerical blow-up": False, "overfitting": True,
                       "preprocessing mismatch": True, "leak between splits": False}


def test_curves_alone_cannot_see_the_leak(runs):
    leak = runs["leak between splits"]
    assert dbg.diagnose_curves(leak.train_loss, leak.val_loss).verdict == "healthy"
    mis = runs["preprocessing mismatch"]
    assert dbg.diagnose_curves(mis.train_loss, mis.val_loss).verdict == "preprocessing mismatch"


def test_pathology_run_in_float64_tells_the_same_story():
    run = dbg.pathology_run("overfitting", dtype="fp64", steps=60)
    ref = dbg.pathology_run("overfitting", steps=60)
    assert run.diagnosis.verdict == ref.diagnosis.verdict == "overfitting"
    assert np.allclose(run.train_loss, ref.train_loss, rtol=1e-3)


def test_pathology_run_is_deterministic():
    a = dbg.pathology_run("overfitting", steps=30)
    b = dbg.pathology_run("overfitting", steps=30)
    assert np.array_equal(a.val_loss, b.val_loss) and np.array_equal(a.grad_norm, b.grad_norm)


def test_diagnose_curves_on_synthetic_curves():
    t = np.linspace(1, 0.1, 10)
    assert dbg.diagnose_curves(t, t + 0.05).verdict == "healthy"
    assert dbg.diagnose_curves(t, np.r_[t[:9], np.nan]).verdict == "numerical blow-up"
    assert dbg.diagnose_curves(np.r_[t[:5], 20, 30, 40, 50, 60], t).verdict == "numerical blow-up"
    assert dbg.diagnose_curves(t, t, [1.0] * 9 + [np.inf]).verdict == "numerical blow-up"
    u = np.r_[1.0, 0.6, 0.5, 0.55, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
    diag = dbg.diagnose_curves(t, u)
    assert diag.verdict == "overfitting" and diag.signals["val_best_eval"] == 2
    assert dbg.diagnose_curves(t, np.linspace(1, 5, 10)).verdict == "preprocessing mismatch"
    assert dbg.diagnose_curves(t, t, shift=3.0).verdict == "preprocessing mismatch"
    assert dbg.diagnose_curves(t, t, overlap=0.5).verdict == "leak between splits"
    assert dbg.falls_while_val_rises(t, u) and not dbg.falls_while_val_rises(t, t)
    assert not dbg.falls_while_val_rises(np.r_[t[:9], np.nan], u)


def test_split_overlap_and_input_shift():
    a = torch.randn(50, 3)
    assert dbg.split_overlap(a, a) == 1.0
    assert dbg.split_overlap(a, torch.cat([a[:5], a[:5] + 1.0])) == 0.5
    assert dbg.input_shift(a, a) == 0.0
    shifted = a + 2 * a.double().std(0).float()
    assert dbg.input_shift(a, shifted) == pytest.approx(2.0, rel=1e-5)


# --- bad input ------------------------------------------------------------------------------
def test_bad_input():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="model"):
        dbg.GradNormLogger("net")
    with pytest.raises(ValueError, match="every"):
        dbg.GradNormLogger(model, every=0)
    with pytest.raises(TypeError, match="every"):
        dbg.GradNormLogger(model, every=1.5)
    with pytest.raises(ValueError, match="requires_grad"):
        dbg.GradNormLogger(nn.ReLU())
    with pytest.raises(TypeError, match="model"), dbg.trace_nonfinite(None):
        pass
    with pytest.raises(TypeError, match="raise_on_first"), dbg.trace_nonfinite(model, raise_on_first=1):
        pass
    with pytest.raises(ValueError, match="max_events"), dbg.trace_nonfinite(model, max_events=0):
        pass
    guard = dbg.NanGuard()
    with pytest.raises(TypeError, match="loss"):
        guard("0.3")
    with pytest.raises(TypeError, match="loss"):
        guard(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="step"):
        guard(0.3, step=-1)
    with pytest.raises(TypeError, match="fn"):
        dbg.anomaly_report(3)
    with pytest.raises(ValueError, match="case"):
        dbg.anomaly_demo("log")
    with pytest.raises(ValueError, match="frames"):
        dbg.anomaly_report(lambda: None).trimmed(frames=0)
    with pytest.raises(ValueError, match="repeats"):
        dbg.anomaly_overhead(repeats=0)
    with pytest.raises(ValueError, match="pathology"):
        dbg.pathology_run("underfitting")
    with pytest.raises(ValueError, match="steps"):
        dbg.pathology_run("healthy", steps=2)
    with pytest.raises(ValueError, match="dtype"):
        dbg.pathology_run("healthy", dtype="int8x")
    with pytest.raises(ValueError, match="device"):
        dbg.pathology_run("healthy", device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        dbg.pathology_run("healthy", dtype="fp8_e4m3fn")
    with pytest.raises(ValueError, match="seed"):
        dbg.forward_nan_model(seed=-1)
    with pytest.raises(ValueError, match="steps"):
        dbg.misinit_run(steps=0)
    with pytest.raises(ValueError, match="same length"):
        dbg.falls_while_val_rises([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="bad_layer"):
        dbg.misinit_mlp(bad_layer=4)
    with pytest.raises(ValueError, match="scale"):
        dbg.misinit_mlp(scale=0.0)
    with pytest.raises(ValueError, match="bad_batch"):
        dbg.nanguard_run(bad_batch=5, batches=5)
    with pytest.raises(ValueError, match="same length"):
        dbg.diagnose_curves([1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="at least 2"):
        dbg.diagnose_curves([1], [1])
    with pytest.raises(ValueError, match="overlap"):
        dbg.diagnose_curves([1, 2, 3], [1, 2, 3], overlap=-0.1)
    with pytest.raises(ValueError, match="columns"):
        dbg.split_overlap(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="rows"):
        dbg.input_shift(torch.zeros(1, 2), torch.zeros(3, 2))


def test_pathology_tables_are_narrow_and_rediagnose_from_curves_alone():
    runs = {p: dbg.pathology_run(p) for p in ("healthy", "leak between splits")}
    text = dbg.pathology_tables(runs)
    assert max(map(len, text.splitlines())) < 80
    leak = next(line for line in text.splitlines() if line.startswith("leak between splits"))
    assert leak.split()[3:] == ["leak", "between", "splits", "healthy"]  # curves alone miss it
    with pytest.raises(TypeError, match="runs"):
        dbg.pathology_tables([1, 2])


def test_pathology_tables_report_the_last_evaluation_where_every_loss_is_finite():
    # The blow-up run's validation loss can overflow one evaluation before its training loss
    # does: the numbers row must come from an evaluation where all three are finite.
    run = dbg.pathology_run("numerical blow-up")
    run.val_loss[-2] = float("nan")  # the case seen on one machine, forced here
    row = dbg.pathology_tables({"numerical blow-up": run}).splitlines()[-1].split()
    train, val, fresh = map(float, row[3:6])
    assert all(math.isfinite(v) for v in (train, val, fresh))
    finite = np.isfinite(run.train_loss) & np.isfinite(run.val_loss) & np.isfinite(run.fresh_loss)
    last = np.flatnonzero(finite)[-1]
    assert train == pytest.approx(run.train_loss[last], rel=1e-2)
