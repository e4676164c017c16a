"""numlab.softmax against torch's fused functions (every dtype) and mpmath (float64)."""
import math

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from numlab import formats
from numlab import softmax as sm
from numlab.formats import info, neighbors
from numlab.softmax import breaks

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}
mpmath.mp.prec = 200

# --- strategies --------------------------------------------------------------------------
big = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def logits_and_targets(draw, max_rows=4, max_classes=8):
    rows = draw(st.integers(1, max_rows))
    n = draw(st.integers(2, max_classes))
    values = draw(st.lists(big, min_size=rows * n, max_size=rows * n))
    target = draw(st.lists(st.integers(0, n - 1), min_size=rows, max_size=rows))
    return torch.tensor(values, dtype=torch.float64).reshape(rows, n), torch.tensor(target)


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def tol(dtype, *magnitudes):
    """A few roundings of dtype at the scale of the largest number involved."""
    return 4 * info(dtype).eps * (1 + sum(float(m) for m in magnitudes))


# --- stable forms vs torch's fused functions, in every dtype -----------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=NAMES.get)
@settings(max_examples=25, deadline=None)
@given(data=logits_and_targets())
def test_stable_forms_match_torch_fused(dtype, data):
    x64, y = data
    x = x64.to(dtype)
    zmax = x.abs().max().double()
    lse, ref_lse = sm.logsumexp_stable(x), torch.logsumexp(x, -1)
    assert lse.dtype == dtype  # computed in the input's dtype
    assert torch.isfinite(lse).all()
    assert (lse.double() - ref_lse.double()).abs().max() <= tol(dtype, zmax)
    ce, ref_ce = sm.cross_entropy_stable(x, y, "none"), F.cross_entropy(x, y, reduction="none")
    assert ce.dtype == dtype and torch.isfinite(ce).all()
    assert ((ce.double() - ref_ce.double()).abs() <= tol(dtype, zmax, ref_ce.double().abs().max())).all()
    p, ref_p = sm.softmax_stable(x), torch.softmax(x, -1)
    assert p.dtype == dtype
    assert (p.double() - ref_p.double()).abs().max() <= 4 * info(dtype).eps
    mean = sm.cross_entropy_stable(x, y)  # the default reduction is the mean, like torch
    ref_mean = F.cross_entropy(x, y).double()
    assert abs(mean.double() - ref_mean) <= tol(dtype, zmax, ref_ce.double().abs().max())


@pytest.mark.parametrize("dtype", DTYPES, ids=NAMES.get)
@settings(max_examples=30, deadline=None)
@given(values=st.lists(big, min_size=1, max_size=16), t=st.floats(0, 1))
def test_binary_stable_forms_match_torch_fused(dtype, values, t):
    z = torch.tensor(values, dtype=torch.float64).to(dtype)
    target = torch.full_like(z, t)
    sp = sm.softplus_stable(z)
    assert sp.dtype == dtype and torch.isfinite(sp).all()
    # F.softplus returns z itself above its threshold 20 (error <= e^-20 in absolute terms)
    ref_sp = F.softplus(z).double()
    atol = info(dtype).tiny + (math.exp(-20) if dtype == torch.float64 else 0.0)
    assert ((sp.double() - ref_sp).abs() <= 4 * info(dtype).eps * ref_sp.abs() + atol).all()
    bce = sm.bce_stable(z, target, "none")
    ref = F.binary_cross_entropy_with_logits(z, target, reduction="none").double()
    assert bce.dtype == dtype and torch.isfinite(bce).all()
    assert ((bce.double() - ref).abs() <= tol(dtype, z.abs().double().max(), ref.abs().max())).all()


def test_stable_gradients_match_torch_autograd():
    torch.manual_seed(0)
    x = (torch.randn(5, 7, dtype=torch.float64) * 30).requires_grad_(True)
    y = torch.tensor([0, 3, 6, 2, 2])
    (mine,) = torch.autograd.grad(sm.cross_entropy_stable(x, y), x)
    (ref,) = torch.autograd.grad(F.cross_entropy(x, y), x)
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-15)
    z = (torch.randn(20, dtype=torch.float64) * 30).requires_grad_(True)
    t = torch.rand(20, dtype=torch.float64)
    (mine,) = torch.autograd.grad(sm.bce_stable(z, t), z)
    (ref,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(z, t), z)
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-15)


def test_stable_forms_handle_infinite_logits_like_torch():
    x = torch.tensor([[-math.inf, -math.inf], [0.0, -math.inf]])
    torch.testing.assert_close(sm.logsumexp_stable(x), torch.logsumexp(x, -1))
    torch.testing.assert_close(sm.softmax_stable(x[1:]), torch.softmax(x[1:], -1))


# --- float64 against mpmath, in ulps -----------------------------------------------------
def ulps(value: float, exact, scale: float) -> float:
    """|value - exact| in units of the float64 spacing at ``scale``."""
    return float(abs(mpmath.mpf(value) - exact)) / np.spacing(abs(scale))


finite64 = st.floats(-700, 700, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(finite64, min_size=2, max_size=8), data=st.data())
def test_float64_matches_mpmath_within_a_few_ulp(values, data):
    x = torch.tensor(values, dtype=torch.float64)
    y = data.draw(st.integers(0, len(values) - 1))
    exact_lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in values))
    lse = sm.logsumexp_stable(x).item()
    # the result is m + log(sum): a few roundings at the scale of the larger of the two
    scale = max(abs(lse), max(abs(v) for v in values), math.log(len(values)), 1e-300)
    assert ulps(lse, exact_lse, scale) <= 4
    ce = sm.cross_entropy_stable(x.unsqueeze(0), torch.tensor([y])).item()
    assert ulps(ce, exact_lse - mpmath.mpf(values[y]), max(scale, abs(ce))) <= 4
    p = sm.softmax_stable(x)
    for j, v in enumerate(values):
        exact_p = mpmath.exp(mpmath.mpf(v) - exact_lse)
        assert ulps(p[j].item(), exact_p, 1.0) <= 4


@settings(max_examples=80, deadline=None)
@given(z=finite64, t=st.floats(0, 1))
def test_binary_float64_matches_mpmath_within_a_few_ulp(z, t):
    exact_sp = mpmath.log1p(mpmath.exp(mpmath.mpf(z)))
    sp = sm.softplus_stable(torch.tensor([z], dtype=torch.float64)).item()
    # no cancellation in softplus: a few ulps of the result itself, even when it is tiny
    assert ulps(sp, exact_sp, sp) <= 4
    exact_bce = exact_sp - mpmath.mpf(t) * mpmath.mpf(z)
    bce = sm.bce_stable(torch.tensor([z], dtype=torch.float64), torch.tensor([t], dtype=torch.float64))
    assert ulps(bce.item(), exact_bce, max(abs(z), abs(bce.item()), 1e-300)) <= 4


def test_naive_softplus_loses_what_the_stable_form_keeps():
    z = torch.tensor([-20.0, -40.0])  # fp32: 1 + e^z rounds to exactly 1
    assert (sm.softplus_naive(z) == 0).all()
    exact = [float(mpmath.log1p(mpmath.exp(v))) for v in (-20, -40)]
    stable = sm.softplus_stable(z).double().tolist()
    assert all(abs(s - e) <= 2 * info("fp32").eps * e for s, e in zip(stable, exact, strict=True))


# --- where the naive forms break ---------------------------------------------------------
STACK_NOTES = {"fp16": 11.0859375, "bf16": 88.5, "fp32": 88.72283, "fp64": 709.782712893384}


@pytest.mark.parametrize("name", list(STACK_NOTES))
def test_two_class_threshold_sits_just_past_exp_overflow(name):
    threshold = sm.overflow_threshold(name, 2)
    last_safe, _ = neighbors(threshold, name)
    assert last_safe == info(name).exp_overflow
    assert last_safe == pytest.approx(STACK_NOTES[name], rel=1e-7)
    dtype = info(name).dtype
    assert torch.isinf(torch.exp(torch.tensor(threshold, dtype=dtype)))
    assert torch.isfinite(torch.exp(torch.tensor(last_safe, dtype=dtype)))


@pytest.mark.parametrize("name", list(STACK_NOTES))
@pytest.mark.parametrize("n", [2, 10, 100])
def test_naive_softmax_breaks_at_the_threshold_and_not_before(name, n):
    dtype = info(name).dtype
    threshold = sm.overflow_threshold(name, n)
    below, _ = neighbors(threshold, name)
    # more classes add to the sum: never later than two classes, at most log(n) earlier
    assert threshold <= sm.overflow_threshold(name, 2)
    assert below >= info(name).exp_overflow - math.log(n) - 1
    safe = sm.logit_pattern(torch.tensor([below, below / 2, 1.0], dtype=torch.float64), n, dtype)
    assert torch.isfinite(sm.logsumexp_naive(safe)).all()
    p = sm.softmax_naive(safe)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.double().sum(-1), torch.ones(3, dtype=torch.float64),
                               rtol=0, atol=n * info(name).eps)
    broken = sm.logit_pattern(torch.tensor([threshold, 2 * threshold], dtype=torch.float64), n, dtype)
    assert torch.isinf(sm.logsumexp_naive(broken)).all()
    p = sm.softmax_naive(broken)  # NaN (inf/inf) or every probability 0 (x/inf)
    assert (torch.isnan(p).any(-1) | (p == 0).all(-1)).all()
    # the stable forms do not care
    assert torch.isfinite(sm.logsumexp_stable(broken)).all()
    assert torch.isfinite(sm.softmax_stable(broken)).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=NAMES.get)
@settings(max_examples=15, deadline=None)
@given(frac=st.floats(0, 1), n=st.sampled_from([2, 3, 10, 100]))
def test_naive_sum_is_finite_anywhere_below_the_threshold(dtype, frac, n):
    threshold = sm.overflow_threshold(dtype, n)
    below, _ = neighbors(threshold, dtype)
    s = torch.tensor([frac * below], dtype=torch.float64).to(dtype)
    assert torch.isfinite(sm.logsumexp_naive(sm.logit_pattern(s.double(), n, dtype))).all()
    above = torch.tensor([threshold + frac * (1e4 if dtype == torch.float16 else 1e30)], dtype=torch.float64)
    assert torch.isinf(sm.logsumexp_naive(sm.logit_pattern(above, n, dtype))).all()


@pytest.mark.parametrize("name", list(STACK_NOTES))
@pytest.mark.parametrize("target", ["high", "low"])
def test_loss_and_gradient_breakpoints_are_exact(name, target):
    dtype = info(name).dtype
    bp = sm.breakpoints(name, 3, target)
    for s, index in ((bp.loss, 2), (bp.grad, 3)):
        below, _ = neighbors(s, name)
        at = breaks._naive_all(sm.logit_pattern(f64(s, 2 * s), 3, dtype), bp.target)[index]
        ok = breaks._naive_all(sm.logit_pattern(f64(below, below / 3), 3, dtype), bp.target)[index]
        assert not torch.isfinite(at).all(-1).any()
        assert torch.isfinite(ok).all()
    assert bp.grad <= bp.loss <= bp.softmax == sm.overflow_threshold(name, 3)
    if target == "low":  # the bottom class's probability underflows before anything overflows
        assert bp.loss < bp.softmax


def test_fp16_naive_gradient_is_nan_where_the_fused_one_is_fine():
    bp = sm.breakpoints("fp16", 2, "low")
    assert bp.grad == pytest.approx(5.546875)  # 1/p overflows fp16 once p < 1/65504
    z = sm.logit_pattern(torch.tensor([6.0]), 2, torch.float16).requires_grad_(True)
    loss = sm.cross_entropy_naive(z, torch.tensor([1]))
    (g_naive,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isnan(g_naive).all()
    z2 = z.detach().clone().requires_grad_(True)
    (g_fused,) = torch.autograd.grad(F.cross_entropy(z2, torch.tensor([1])), z2)
    assert torch.isfinite(g_fused).all()
    torch.testing.assert_close(g_fused.double(), torch.tensor([[1.0, -1.0]], dtype=torch.float64),
                               atol=2e-3, rtol=0)


def test_sweep_logits_records_where_each_quantity_breaks():
    scales = np.logspace(-2, 4, 121)
    sw = sm.sweep_logits(scales, "fp16", n_classes=5, target="low")
    bp = sm.breakpoints("fp16", 5, "low")
    for key, exact in (("naive sum", bp.softmax), ("naive loss", bp.loss), ("naive grad", bp.grad)):
        first = sw.first_bad[key]
        assert first >= exact and (sw.scales[sw.scales < first] < exact).all()
    assert sw.first_bad["stable loss"] is None and sw.first_bad["stable grad"] is None
    assert (sw.shifted_sum >= 1).all() and (sw.shifted_sum <= 5).all()  # the shifted sum in [1, n]
    assert np.isinf(sw.naive_sum[-1]) and sw.naive_sum[0] == pytest.approx(5, rel=0.05)
    logits = torch.from_numpy(sw.logits)
    ref = F.cross_entropy(logits, torch.full((121,), 4), reduction="none").numpy()
    np.testing.assert_allclose(sw.loss_stable, ref, rtol=4e-3, atol=4e-3 * 1e4)
    onehot = np.eye(5)[4]
    np.testing.assert_allclose(sw.grad_stable, torch.softmax(logits, -1).numpy() - onehot, atol=4e-3)
    assert "fp16" in repr(sw) and "naive grad breaks at" in repr(sw)


def test_sweep_logits_is_exact_before_any_breakdown():
    sw = sm.sweep_logits([0.5, 1.0, 2.0], "fp64", n_classes=4, target="high")
    np.testing.assert_allclose(sw.loss_naive, sw.loss_stable, rtol=1e-14)
    np.testing.assert_allclose(sw.grad_naive, sw.grad_stable, atol=1e-15)
    np.testing.assert_allclose(sw.probs_naive, sw.probs_stable, rtol=1e-14)
    assert all(v is None for v in sw.first_bad.values())


@pytest.mark.parametrize("name", list(STACK_NOTES))
def test_sweep_bce_breaks_where_exp_overflows(name):
    threshold = sm.overflow_threshold(name, 2)
    below, _ = neighbors(threshold, name)
    sw = sm.sweep_bce([-3.0, 1.0, below, threshold, 2 * threshold], name, target=0.0)
    assert sw.first_bad["softplus_naive"] == threshold
    assert np.isfinite(sw.softplus_naive[:3]).all()
    assert sw.first_bad["bce_stable"] is None and sw.first_bad["grad_stable"] is None
    np.testing.assert_allclose(sw.softplus_stable, sw.softplus_exact, rtol=4 * info(name).eps)


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp32", "fp64"])
def test_softplus_accuracy_summary_against_mpmath(name):
    zs = np.concatenate([-np.logspace(3, -2, 201), np.logspace(-2, 3, 201)])
    sw = sm.sweep_bce(zs, name)
    eps, tiny = info(name).eps, info(name).tiny
    # oracle: log(1 + e^z) in 60 digits, rounded once to the format
    mpmath.mp.dps = 60
    exact = np.array([float(mpmath.log1p(mpmath.exp(mpmath.mpf(float(z))))) for z in sw.z])
    best = torch.from_numpy(exact).to(formats.resolve_dtype(name)).double().numpy()
    normal = np.abs(exact) >= tiny
    err = np.abs(sw.softplus_stable - best)[normal] / np.abs(best[normal])
    assert sw.stable_within(4) == bool((err <= 4 * eps).all())
    assert sw.stable_within(4)  # the stable form keeps its promise in every format
    naive_err = np.abs(sw.softplus_naive - best) / np.where(best == 0, 1.0, np.abs(best))
    off = sw.z[(sw.z < 0) & (naive_err > 0.01)]
    assert sw.naive_off_below(0.01) == pytest.approx(off.max())
    # log(fl(1 + x)) carries an absolute error up to eps/2, so its relative error is about
    # (eps/2) / x: over 1% once x = e^z falls below about 50 eps (the model, within 2x)
    assert 0.2 < math.exp(sw.naive_off_below(0.01)) / (50 * eps) < 2
    table = sm.softplus_table(zs, [name]).splitlines()
    assert table[1].split()[0] == name and table[1].split()[-1] == "True"
    assert float(table[1].split()[1]) == sm.softplus_breakpoint(name)


def test_sweep_bce_shows_nan_from_a_saturated_sigmoid():
    sw = sm.sweep_bce(np.linspace(-30, 30, 61), "fp32", target=1.0)
    # t = 1, z large: sigmoid(z) rounds to exactly 1, and (1 - t) * log(1 - 1) = 0 * -inf = NaN
    first = sw.first_bad["bce_naive"]
    assert first is not None and 15 < first <= 18
    assert np.isnan(sw.bce_naive[sw.z == first]).all() and np.isfinite(sw.bce_stable).all()
    assert (sw.rel_error("bce_stable") <= 4 * info("fp32").eps).all()
    assert np.nanmax(sw.rel_error("softplus_naive")) >= 0.99  # 1 + e^z rounds to 1
    assert "fp32" in repr(sw)


def test_softmax_stable_sum_lies_between_one_and_n():
    torch.manual_seed(0)
    x = torch.randn(50, 9, dtype=torch.float64) * 1e3
    s = sm.shifted_sum(x)
    assert (s >= 1).all() and (s <= 9).all()
    assert torch.isinf(torch.exp(x).sum(-1)).any()  # while the unshifted sum overflows


def test_breakpoints_repr_is_short():
    r = repr(sm.breakpoints("fp16", 2, "low"))
    assert r.startswith("Breakpoints(fp16") and "grad 5.546875" in r and len(r) < 120


# --- bad input ---------------------------------------------------------------------------
ONE_ARG = [sm.softmax_naive, sm.softmax_stable, sm.logsumexp_naive, sm.logsumexp_stable,
           sm.softplus_naive, sm.softplus_stable, sm.shifted_sum]


@pytest.mark.parametrize("fn", ONE_ARG, ids=lambda f: f.__name__)
def test_integer_list_and_scalar_inputs_are_refused(fn):
    with pytest.raises(TypeError, match="floating tensor"):
        fn(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fn([1.0, 2.0])
    with pytest.raises(ValueError, match="at least one dimension"):
        fn(torch.tensor(1.0))


@pytest.mark.parametrize("fn", [sm.cross_entropy_naive, sm.cross_entropy_stable])
def test_cross_entropy_bad_input(fn):
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="logits must be a floating"):
        fn(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        fn(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        fn(x, [0, 1])
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        fn(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        fn(x, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="target must have shape"):
        fn(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fn(x, torch.tensor([0, 1]), reduction="avg")


@pytest.mark.parametrize("fn", [sm.bce_naive, sm.bce_stable])
def test_bce_bad_input(fn):
    z = torch.zeros(3)
    with pytest.raises(TypeError, match="z must be a floating"):
        fn(torch.zeros(3, dtype=torch.int32), torch.zeros(3))
    with pytest.raises(ValueError, match="shape of z"):
        fn(z, torch.zeros(4))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fn(z, torch.tensor([0.0, 1.5, 0.0]))
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        fn(z, 1.0)


def test_threshold_and_sweep_bad_input():
    with pytest.raises(ValueError, match="dtype must be"):
        sm.overflow_threshold("fp17")
    for n in (1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="n_classes must be an integer >= 2"):
            sm.overflow_threshold("fp16", n)
    with pytest.raises(ValueError, match="target must be 'high', 'low'"):
        sm.breakpoints("fp16", 3, "middle")
    with pytest.raises(ValueError, match="target must be 'high', 'low'"):
        sm.sweep_logits([1.0], "fp16", 3, target=3)
    with pytest.raises(ValueError, match="scales must be > 0"):
        sm.sweep_logits([1.0, -2.0], "fp16")
    with pytest.raises(ValueError, match="scales must be finite"):
        sm.sweep_logits([1.0, math.nan], "fp16")
    with pytest.raises(ValueError, match="scales must not be empty"):
        sm.sweep_logits([], "fp16")
    with pytest.raises(TypeError, match="scales must be a number or a sequence"):
        sm.sweep_logits(["a"], "fp16")
    with pytest.raises(ValueError, match=r"target must be a number in \[0, 1\]"):
        sm.sweep_bce([1.0], "fp32", target=2.0)
    with pytest.raises(ValueError, match="zs must be finite"):
        sm.sweep_bce([math.inf], "fp32")
    with pytest.raises(ValueError, match="which must be"):
        sm.sweep_bce([1.0], "fp32").rel_error("bce")
    with pytest.raises(ValueError, match="device must be one of"):
        sm.sweep_logits([1.0], "fp32", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available here"):
            sm.sweep_bce([1.0], "fp32", device="cuda")


def test_the_naive_gradient_goes_wrong_before_it_goes_nan():
    # fp16, s = 5, four classes: every value finite, the gradient already 4.5 % off
    sw = sm.sweep_logits([5.0], "fp16", n_classes=4, target="low")
    assert all(v is None for v in sw.first_bad.values())
    assert sw.grad_error[0] > sm.wrong_limit("fp16") == sm.WRONG and sw.first_wrong == 5.0
    for name in ("fp16", "bf16", "fp32", "fp64"):
        bp = sm.breakpoints(name, 2, "low")
        assert bp.grad_wrong < bp.grad  # wrong first, non-finite later
        at = sm.sweep_logits([bp.grad_wrong], name, 2, "low")
        assert at.grad_error[0] > sm.wrong_limit(name)
        if name in ("fp16", "bf16"):  # every value below was tried: none was wrong
            below = formats.neighbors(bp.grad_wrong, name)[0]
            grid = torch.arange(1, int(torch.tensor(below, dtype=formats.resolve_dtype(name))
                                        .view(torch.int16)) + 1).to(torch.int16)
            values = grid.view(formats.resolve_dtype(name)).double().tolist()
            assert (sm.sweep_logits(values, name, 2, "low").grad_error <= sm.wrong_limit(name)).all()
