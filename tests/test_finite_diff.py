"""finite_diff against exact answers (polynomials, mpmath) and torch.autograd.gradcheck."""
import math
import warnings

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numlab import device as numlab_device
from numlab import finite_diff, formats
from numlab.finite_diff import (
    FUNCTIONS,
    central_difference,
    default_steps,
    error_models,
    forward_difference,
    gradcheck,
    sweep_h,
)
from numlab.layers import LAYERS, problem

coef = st.floats(-10, 10, allow_nan=False)
point = st.floats(-3, 3, allow_nan=False)
step = st.floats(1e-3, 1.0)


# --- the formulas on polynomials, where the exact answer is known -----------------------------
@settings(max_examples=60, deadline=None)
@given(a=coef, b=coef, c=coef, x=point, h=step)
def test_central_difference_is_exact_on_quadratics(a, b, c, x, h):
    est = central_difference(lambda t: a * t * t + b * t + c, x, [h])
    scale = abs(a) * (abs(x) + h) ** 2 + abs(b) * (abs(x) + h) + abs(c) + 1
    assert abs(float(est[0]) - (2 * a * x + b)) <= 1e-12 * scale / h


@settings(max_examples=60, deadline=None)
@given(a=coef, b=coef, x=point, h=step)
def test_forward_difference_on_quadratics_is_off_by_a_h(a, b, x, h):
    est = forward_difference(lambda t: a * t * t + b * t, x, [h])
    scale = abs(a) * (abs(x) + h) ** 2 + abs(b) * (abs(x) + h) + 1
    assert abs(float(est[0]) - (2 * a * x + b + a * h)) <= 1e-12 * scale / h


@settings(max_examples=60, deadline=None)
@given(a=coef, x=point, h=step)
def test_central_difference_on_cubics_is_off_by_a_h_squared(a, x, h):
    est = central_difference(lambda t: a * t**3, x, [h])
    scale = abs(a) * (abs(x) + h) ** 3 + 1
    assert abs(float(est[0]) - (3 * a * x * x + a * h * h)) <= 1e-12 * scale / h


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_formulas_compute_in_the_dtype_of_x(dtype):
    x = torch.tensor(0.75, dtype=dtype)
    hs = torch.tensor([0.25, 0.125])
    assert forward_difference(torch.exp, x, hs).dtype == dtype
    # x + h, f and the quotient all rounded in dtype, exactly as written by hand:
    h = hs.to(dtype)
    by_hand = (torch.exp(x + h) - torch.exp(x - h)) / (2 * h)
    assert torch.equal(central_difference(torch.exp, x, hs), by_hand)


def test_rounding_error_stays_within_the_model():
    # Exact difference quotients from mpmath (50 digits) at the same float64 steps.
    mpmath.mp.dps = 50
    x = 1.0
    hs = default_steps("fp64")[::4]
    fwd = forward_difference(torch.exp, x, hs)
    cen = central_difference(torch.exp, x, hs)
    fm, cm = error_models(torch.exp, x, "fp64")
    for h, f_est, c_est in zip(hs.tolist(), fwd.tolist(), cen.tolist(), strict=True):
        hh = mpmath.mpf(h)
        exact_f = (mpmath.exp(1 + hh) - mpmath.e) / hh
        exact_c = (mpmath.exp(1 + hh) - mpmath.exp(1 - hh)) / (2 * hh)
        assert abs(f_est - exact_f) <= 2 * fm.rounding / h
        assert abs(c_est - exact_c) <= 2 * cm.rounding / h


# --- sweeps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["exp", "sin", "tanh", "layer"])
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_sweep_slopes_are_one_and_two(name, dtype):
    r = sweep_h(name, 0.5, dtype)
    assert r.slope("forward") == pytest.approx(1.0, abs=0.1)
    assert r.slope("central") == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("name", ["exp", "sin", "tanh", "x**3", "layer"])
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_measured_optimum_is_near_the_model(name, dtype):
    r = sweep_h(name, 0.3, dtype)
    # The model bounds the rounding, so the best measured error is below its prediction ...
    assert r.best_central_err < r.central_model.error_opt / abs(r.true)
    assert r.best_forward_err < r.forward_model.error_opt / abs(r.true)
    # ... and the measured optimum sits near (a lucky rounding can pull it lower) its h*.
    assert 0.01 < r.best_central_h / r.central_model.h_opt < 3
    assert 0.01 < r.best_forward_h / r.forward_model.h_opt < 3
    # Going 100-1000x below the optimum makes things worse: cancellation.
    below = sweep_h(name, 0.3, dtype, hs=r.best_central_h / torch.logspace(2, 3, 11), df=r.true)
    assert float(below.central_err.median()) > 10 * r.best_central_err


def test_model_optimum_minimises_the_model():
    fm, cm = error_models("exp", 1.0, "fp32")
    hs = torch.logspace(-8, 0, 4001, dtype=torch.float64)
    for model in (fm, cm):
        best = float(hs[model.predict(hs).argmin()])
        assert best == pytest.approx(model.h_opt, rel=0.01)
        assert model.error_opt == pytest.approx(float(model.predict(hs).min()), rel=1e-4)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32", "fp64"])
def test_sweep_works_in_every_format(dtype):
    r = sweep_h("exp", 1.0, dtype)
    assert r.true == pytest.approx(math.e, rel=1e-15)
    assert torch.isfinite(r.central).all() and torch.isfinite(r.forward).all()
    # Large steps: truncation dominates, and matches the model within a factor of two.
    big = r.hs > 30 * r.central_model.h_opt
    if big.any():
        ratio = r.central_err[big] / r.model_err("central")[big]
        assert ((ratio > 0.5) & (ratio < 2)).all()
    # Tiny steps lose everything where they exist: x + h == x gives a forward estimate of 0.
    lost = r.hs < torch.finfo(r.dtype).eps / 4
    if lost.any():
        assert (r.forward[lost] == 0).all()
    # Worse precision, worse best error.
    assert r.best_central_err > 1e-3 * torch.finfo(r.dtype).eps


def test_best_error_grows_with_eps():
    best = [sweep_h("sin", 0.3, d).best_central_err for d in ("fp64", "fp32", "bf16")]
    assert best[0] < best[1] < best[2]


def test_true_derivative_defaults_to_autograd_and_df_overrides():
    r = sweep_h(torch.sin, 0.4)
    assert r.true == pytest.approx(math.cos(0.4), rel=1e-15)
    r2 = sweep_h(torch.sin, 0.4, hs=[1e-5], df=1.0)
    assert r2.true == 1.0
    assert float(r2.central_err[0]) == pytest.approx(1 - math.cos(0.4), rel=1e-6)


def test_zero_derivative_gives_absolute_errors():
    r = sweep_h("x**3", 0.0, hs=[1e-2])
    assert not r.relative
    assert float(r.central_err[0]) == pytest.approx(1e-4, rel=1e-6)
    assert "abs err" in repr(r)


def test_sweep_repr_is_short_and_names_the_optima():
    text = repr(sweep_h("exp", 1.0, "fp32"))
    assert "fp32" in text and "best central h" in text and len(text) < 300


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("h", [0.0, -1e-3, [1e-3, 0.0], float("nan"), float("inf"), []])
def test_bad_steps_are_refused(h):
    with pytest.raises(ValueError, match="h"):
        central_difference(torch.exp, 1.0, h)


def test_steps_lost_in_the_dtype_are_refused():
    with pytest.raises(ValueError, match="fp16"):
        sweep_h("exp", 1.0, "fp16", hs=[1e-10])
    with pytest.raises(TypeError, match="h must"):
        forward_difference(torch.exp, 1.0, "small")


def test_bad_points_are_refused():
    with pytest.raises(TypeError, match="x must"):
        forward_difference(torch.exp, torch.tensor(1), [1e-3])
    with pytest.raises(TypeError, match="x must"):
        sweep_h("exp", "one")
    with pytest.raises(ValueError, match="x must be finite"):
        sweep_h("exp", float("nan"))
    with pytest.raises(ValueError, match="single point"):
        sweep_h("exp", torch.ones(2))


def test_bad_functions_and_dtypes_are_refused():
    with pytest.raises(ValueError, match="f must be a callable or one of"):
        sweep_h("cosh", 1.0)
    with pytest.raises(TypeError, match="f must be a callable"):
        sweep_h(3, 1.0)
    with pytest.raises(TypeError, match="f must return a tensor"):
        forward_difference(lambda t: 1.0, 1.0, [1e-3])
    with pytest.raises(ValueError, match="elementwise"):
        forward_difference(lambda t: t.sum(), 1.0, [1e-3, 1e-2])
    with pytest.raises(ValueError, match="dtype"):
        sweep_h("exp", 1.0, "fp128")
    with pytest.raises(ValueError, match="dtype must be one of fp16"):
        sweep_h("exp", 1.0, torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="df must be finite"):
        sweep_h("exp", 1.0, df=float("inf"))
    r = sweep_h("exp", 1.0, "fp16")
    with pytest.raises(ValueError, match="formula"):
        r.slope("backward")
    with pytest.raises(ValueError, match="fewer than 3 steps"):
        r.slope("central")


# --- gradcheck against torch.autograd.gradcheck -------------------------------------------------
def torch_verdict(fn, inputs, **kw):
    return torch.autograd.gradcheck(fn, inputs, raise_exception=False, **kw)


@pytest.mark.parametrize("wrong", [False, True])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_verdict_agrees_with_torch_on_every_layer(name, wrong):
    fn, inputs = problem(name, 12, wrong=wrong, seed=1)
    report = gradcheck(fn, inputs)
    assert report.passed is torch_verdict(fn, inputs)
    assert report.passed is (not wrong)
    assert report.batched
    assert bool(report) is report.passed


@pytest.mark.parametrize(("eps", "atol", "rtol"), [(1e-6, 1e-5, 1e-3), (1e-3, 1e-5, 1e-3),
                                                  (1e-4, 1e-9, 0.0), (1e-2, 1e-3, 1e-2),
                                                  (1e-6, 0.0, 1e-3), (1e-6, 0.0, 0.0)])
@pytest.mark.parametrize("scale", [0.05, 0.2])
def test_verdict_agrees_on_borderline_settings(eps, atol, rtol, scale):
    # tanh_small_x is wrong by about x**4: small inputs put it near the acceptance line.
    for name in ("tanh", "softplus"):
        fn, inputs = problem(name, 8, wrong=True, scale=scale, seed=2)
        report = gradcheck(fn, inputs, eps=eps, atol=atol, rtol=rtol)
        assert report.passed is torch_verdict(fn, inputs, eps=eps, atol=atol, rtol=rtol)


def test_borderline_settings_really_flip_the_verdict():
    fn, inputs = problem("tanh", 8, wrong=True, scale=0.05, seed=2)
    assert gradcheck(fn, inputs).passed and not gradcheck(fn, inputs, atol=1e-9, rtol=0).passed


def loop_jacobians(fn, inputs, eps):
    """Independent reference: analytical by torch.autograd.functional, numerical by a loop."""
    x = inputs[0]
    rest = inputs[1:]
    ana = torch.autograd.functional.jacobian(lambda t: fn(t, *rest), x).reshape(-1, x.numel())
    num = torch.empty_like(ana)
    with torch.no_grad():
        for j in range(x.numel()):
            plus, minus = x.detach().clone(), x.detach().clone()
            plus.view(-1)[j] += eps
            minus.view(-1)[j] -= eps
            num[:, j] = ((fn(plus, *rest) - fn(minus, *rest)) / (2 * eps)).reshape(-1)
    return ana, num


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_jacobians_and_worst_entry_match_a_plain_loop(name):
    fn, inputs = problem(name, 10, wrong=True, seed=3)
    report = gradcheck(fn, inputs, top=4)
    ana, num = loop_jacobians(fn, inputs, 1e-6)
    torch.testing.assert_close(report.analytical, ana, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(report.numerical, num, rtol=1e-6, atol=1e-8)
    score = (ana - num).abs() / (1e-5 + 1e-3 * num.abs())
    worst = report.worst[0]
    assert score[worst.out_index[0], worst.in_index[0]] == pytest.approx(float(score.max()))
    assert worst.score == pytest.approx(float(score.max()))
    assert [e.score for e in report.worst] == sorted((e.score for e in report.worst), reverse=True)
    assert worst.analytical == pytest.approx(float(ana[worst.out_index[0], worst.in_index[0]]))
    rel = abs(worst.analytical - worst.numerical) / max(abs(worst.analytical), abs(worst.numerical))
    assert worst.rel_error == pytest.approx(rel)
    assert report.n_failed == int((score > 1).sum())
    assert report.max_abs_error == pytest.approx(float((ana - num).abs().max()), rel=1e-6)


def test_several_inputs_and_outputs_are_indexed():
    def two(a, b):
        return a * b, (a + b).sum()

    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    report = gradcheck(two, (a, b), top=100)
    assert report.passed and report.analytical.shape == (7, 9)
    # d(a*b)[1,2] / d b[1,2] = a[2]
    entry = next(e for e in report.worst if e.output == 0 and e.out_index == (1, 2)
                 and e.input == 1 and e.in_index == (1, 2))
    assert entry.analytical == pytest.approx(float(a.detach()[2]))
    assert len(report.worst) == 63


def test_only_inputs_requiring_grad_are_checked():
    fn, (x, w) = problem("dense_tanh", 6)
    report = gradcheck(fn, (x, w))
    assert report.analytical.shape == (16, 6)
    w.requires_grad_(True)
    both = gradcheck(fn, (x, w))
    assert both.analytical.shape == (16, 6 + 6 * 16)
    assert both.passed is torch_verdict(fn, (x, w))
    fn_bad, (x2, w2) = problem("dense_tanh", 6, wrong=True)
    w2.requires_grad_(True)
    assert gradcheck(fn_bad, (x2, w2)).passed is torch_verdict(fn_bad, (x2, w2)) is False


class _OldStyleSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x * g  # wrong on purpose


def test_unbatchable_functions_fall_back_with_one_warning():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = gradcheck(_OldStyleSquare.apply, (x,))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "fell back" in messages[0]
    assert not report.batched
    assert report.passed is torch_verdict(_OldStyleSquare.apply, (x,)) is False
    assert report.worst[0].analytical == pytest.approx(1.5 * report.worst[0].numerical)


def test_non_float64_inputs_warn_and_explain():
    fn, inputs = problem("softplus", 6, dtype="fp32")
    with pytest.warns(UserWarning, match="not float64") as record:
        report = gradcheck(fn, inputs)
    assert "rounding" in str(record[0].message)
    assert report.eps == pytest.approx(torch.finfo(torch.float32).eps ** (1 / 3))
    assert report.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradcheck(*problem("softplus", 6))  # float64: no warning


def test_report_repr_is_a_readable_table():
    fn, inputs = problem("layer_norm", 6, wrong=True)
    text = repr(gradcheck(fn, inputs, top=3))
    lines = text.splitlines()
    assert lines[0].startswith("GradcheckReport: FAILED") and "fp64" in lines[0]
    assert "analytical" in lines[2] and len(lines) == 6
    assert "passed" in repr(gradcheck(*problem("layer_norm", 6)))


def test_relative_error_levels_of_a_correct_layer():
    fn, inputs = problem("dense_tanh", 32)
    assert gradcheck(fn, inputs).norm_rel_error < 1e-7
    fn32, inputs32 = problem("dense_tanh", 32, dtype="fp32")
    with pytest.warns(UserWarning):
        r32 = gradcheck(fn32, inputs32)
    assert 1e-7 < r32.norm_rel_error < 1e-3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": 0.0}, ValueError, "eps"),
        ({"eps": float("nan")}, ValueError, "eps"),
        ({"atol": -1.0}, ValueError, "atol"),
        ({"rtol": float("inf")}, ValueError, "rtol"),
        ({"top": -1}, ValueError, "top"),
    ],
)
def test_gradcheck_refuses_bad_settings(kwargs, error, match):
    fn, inputs = problem("tanh", 4)
    with pytest.raises(error, match=match):
        gradcheck(fn, inputs, **kwargs)


def test_gradcheck_refuses_bad_functions_and_inputs():
    x = torch.randn(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(torch.tanh, (x,))
    x.requires_grad_(True)
    with pytest.raises(TypeError, match="fn must be callable"):
        gradcheck("tanh", (x,))
    with pytest.raises(TypeError, match="fn must return a tensor"):
        gradcheck(lambda t: [float(v) for v in t.detach()], (x,))
    with pytest.raises(TypeError, match="floating-point"):
        gradcheck(lambda t: (t > 0).long(), (x,))


def test_named_functions_are_elementwise():
    t = torch.linspace(-1, 1, 5, dtype=torch.float64)
    for f in FUNCTIONS.values():
        out = f(t)
        assert out.shape == t.shape
        assert torch.equal(out[2:3], f(t[2:3]))


def test_ties_across_the_cut_are_settled_by_the_absolute_error():
    # Elementwise layer: 6 diagonal entries with rounding noise, 30 off-diagonal exact zeros.
    fn, inputs = problem("tanh", 6, seed=4)
    report = gradcheck(fn, inputs, top=8)
    diagonal = report.worst[:6]
    assert all(e.out_index == e.in_index for e in diagonal)
    assert [e.score for e in report.worst] == sorted((e.score for e in report.worst), reverse=True)
    assert all(e.score == 0 and e.abs_error == 0 for e in report.worst[6:])
    assert len(report.worst) == 8


def test_non_finite_jacobians_fail_like_torch():
    # sqrt at 0: the analytical derivative is inf (and 0 * inf = NaN off the diagonal of
    # column 0), the numerical one NaN (sqrt(-eps)).
    x = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    report = gradcheck(torch.sqrt, (x,), top=3)
    assert report.passed is torch_verdict(torch.sqrt, (x,)) is False
    assert all(e.in_index == (0,) and e.score == math.inf for e in report.worst)
    assert report.n_failed == 3


def test_devices_go_through_numlab_device():
    assert sweep_h("exp", 1.0, "fp32", hs=[1e-2], device="cpu").hs.numel() == 1
    missing = next((d for d in ("cuda", "mps") if d not in numlab_device.available()), None)
    if missing is None:
        pytest.skip("every device kind is present here")
    with pytest.raises(ValueError, match="not available"):
        sweep_h("exp", 1.0, device=missing)
    with pytest.raises(ValueError, match="device must be one of"):
        central_difference(torch.exp, 1.0, [1e-3], device="tpu")
    with pytest.raises(ValueError, match="not available"):
        problem("tanh", 4, device=missing)


# --- the order of the worst entries ----------------------------------------------------------
def brute_top(score, a, n, k):
    flat = score.reshape(-1).tolist()
    err = (a - n).abs().tolist()
    return sorted(range(len(flat)), key=lambda i: (-flat[i], -err[i], -i))[:k]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), k=st.integers(1, 10),
       levels=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_worst_entries_match_a_full_sort_with_ties(rows, cols, k, levels, seed):
    from numlab.gradcheck import _worst

    gen = torch.Generator().manual_seed(seed)
    # Few distinct scores (many ties, also across the cut); |a - n| distinct so the
    # tie-break has one right answer.
    score = torch.randint(0, levels, (rows, cols), generator=gen).double()
    a = torch.randn(rows * cols, generator=gen, dtype=torch.float64)
    n = torch.randn(rows * cols, generator=gen, dtype=torch.float64)
    k = min(k, rows * cols)
    assert _worst(score, (a - n).abs(), k) == brute_top(score, a, n, k)


def test_a_gradcheck_inside_fn_does_not_disturb_the_outer_one():
    inner, calls = [], []

    def fn(x):
        calls.append(1)
        if float(x[0]) > 1e9:  # .item(): not batchable, so the outer check loops over rows
            return x
        if len(calls) == 12:  # in that loop: an inner check of the same size
            inner.append(gradcheck(*problem("tanh", 30, seed=10)))
        return torch.tanh(x) * 2

    x = torch.randn(30, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gradcheck(fn, (x,))
    assert inner and inner[0].passed and not report.batched
    ana, num = loop_jacobians(fn, (x,), 1e-6)
    torch.testing.assert_close(report.numerical, num, rtol=1e-6, atol=1e-8)
    assert report.passed


def test_speed_vs_torch_times_both_checks():
    from numlab import finite_diff, layers

    fn, inputs = layers.problem("dense_tanh", 16)
    before = torch.get_num_threads()
    result = finite_diff.speed_vs_torch(fn, inputs, repeat=1)
    assert result.numlab_s > 0 and result.torch_s > 0
    assert result.ratio == result.torch_s / result.numlab_s and "torch full check" in repr(result)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="repeat must be an int >= 1"):
        finite_diff.speed_vs_torch(fn, inputs, repeat=0)


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp32", "fp64"])
def test_usable_step_is_the_smallest_normal_from_below(name):
    tiny = torch.finfo(formats.resolve_dtype(name)).smallest_normal
    assert finite_diff.usable_step(tiny / 8, name) == tiny  # a subnormal step: raised to tiny
    assert finite_diff.usable_step(1e-3, name) == 1e-3       # a normal one: unchanged
    # the raised step is the first one default_steps would not have dropped
    assert float(finite_diff.default_steps(name)[0]) >= tiny
    with pytest.raises(ValueError, match="h must be"):
        finite_diff.usable_step(0.0, name)
