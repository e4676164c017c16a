"""numlab.clipping against torch's own functions and closed forms."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numlab import clipping
from numlab.clipping import (
    adding_problem,
    clip_comparison,
    clip_grad_norm_checked_,
    gradient_norms_by_depth,
    orthogonal_stack,
    threshold_sweep,
    train_rnn,
)


# --- growth with depth -----------------------------------------------------------------------
def test_a_deeper_stack_extends_a_shallower_one():
    torch.testing.assert_close(orthogonal_stack(7, 16, seed=3), orthogonal_stack(40, 16, seed=3)[:7])
    a = gradient_norms_by_depth(5, 16, 1.1, "tanh", dtype=torch.float64)
    assert a.norms.shape == (6,) and a.depth == 5


def test_orthogonal_stack_has_every_singular_value_equal_to_gain():
    ws = orthogonal_stack(5, 16, 1.3, seed=2)
    assert ws.shape == (5, 16, 16) and ws.dtype == torch.float64
    torch.testing.assert_close(torch.linalg.svdvals(ws), torch.full((5, 16), 1.3, dtype=ws.dtype))


@pytest.mark.parametrize("gain", [0.8, 1.0, 1.25])
def test_linear_stack_grows_exactly_at_the_gain(gain):
    r = gradient_norms_by_depth(40, 32, gain, "linear", dtype=torch.float64)
    assert r.fitted_rate == pytest.approx(gain, rel=1e-9)
    assert r.predicted_rate == gain and r.rate_kind == "exact"
    torch.testing.assert_close(r.norms, gain ** (40 - r.layers.double()), rtol=1e-10, atol=0)
    assert r.norms[-1] == pytest.approx(1.0)


@settings(max_examples=25, deadline=None)
@given(depth=st.integers(1, 30), gain=st.floats(0.5, 1.5), seed=st.integers(0, 1000))
def test_linear_norms_follow_the_prediction_for_any_depth_and_gain(depth, gain, seed):
    r = gradient_norms_by_depth(depth, 8, gain, "linear", seed=seed, dtype=torch.float64)
    torch.testing.assert_close(r.norms, r.predicted, rtol=1e-9, atol=0)
    assert r.input_norm == pytest.approx(gain**depth, rel=1e-9)


def test_input_gradient_matches_the_explicit_product_of_transposed_weights():
    # Independent of autograd: dL/dx = W_1^T W_2^T ... W_L^T v for a linear stack.
    depth, width = 12, 10
    r = gradient_norms_by_depth(depth, width, 1.1, "linear", batch=3, seed=5, dtype=torch.float64)
    ws = orthogonal_stack(depth, width, 1.1, seed=5)
    gen = torch.Generator().manual_seed(6)
    torch.randn(3, width, generator=gen, dtype=torch.float64)  # x (unused for a linear stack)
    v = torch.randn(3, width, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    g = v
    for w in reversed(ws):
        g = g @ w
    assert r.input_norm == pytest.approx(float(g.norm(dim=1).pow(2).mean().sqrt()), rel=1e-12)


def test_tanh_rate_is_bounded_by_the_gain_and_saturation_slows_it():
    r = gradient_norms_by_depth(50, 64, 1.3, "tanh", dtype=torch.float64)
    assert r.rate_kind == "upper bound"
    assert torch.all(r.norms[:-1] / r.norms[1:] <= 1.3 + 1e-12)  # each layer's factor
    assert r.fitted_rate < 1.2  # tanh' < 1 where it saturates: well below the bound


def test_relu_rate_is_about_gain_over_root_two():
    r = gradient_norms_by_depth(60, 64, 1.0, "relu", batch=16, dtype=torch.float64)
    assert r.predicted_rate == pytest.approx(1 / math.sqrt(2))
    assert r.fitted_rate == pytest.approx(1 / math.sqrt(2), rel=0.05)
    he = gradient_norms_by_depth(60, 64, math.sqrt(2), "relu", batch=16, dtype=torch.float64)
    assert he.fitted_rate == pytest.approx(1.0, rel=0.05)


def test_low_precision_overflows_where_float32_does_not():
    half = gradient_norms_by_depth(30, 16, 2.0, "linear", dtype="fp16")
    single = gradient_norms_by_depth(30, 16, 2.0, "linear", dtype=torch.float32)
    assert half.overflowed and not single.overflowed
    assert single.input_norm == pytest.approx(2.0**30, rel=1e-5)
    assert half.dtype == torch.float16
    assert math.isfinite(half.fitted_rate)  # fitted on the finite layers only


def test_depth_profile_repr_names_the_numbers():
    text = repr(gradient_norms_by_depth(10, 8, 1.5, "linear"))
    assert "depth=10" in text and "1.5" in text and "exact" in text and "57.7" in text


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"depth": 0}, ValueError, "depth"),
    ({"depth": -3}, ValueError, "depth"),
    ({"depth": 2.5}, TypeError, "depth"),
    ({"depth": True}, TypeError, "depth"),
    ({"width": 0}, ValueError, "width"),
    ({"gain": 0.0}, ValueError, "gain"),
    ({"gain": -1.0}, ValueError, "gain"),
    ({"gain": float("nan")}, ValueError, "gain"),
    ({"nonlinearity": "sigmoid"}, ValueError, "nonlinearity"),
    ({"dtype": "int8"}, ValueError, "dtype"),
    ({"dtype": torch.int32}, ValueError, "dtype"),
    ({"dtype": "fp8_e4m3fn"}, ValueError, "dtype"),
    ({"device": "tpu"}, ValueError, "device"),
])
def test_gradient_norms_by_depth_rejects_bad_input(kwargs, exc, word):
    args = {"depth": 5, **kwargs}
    with pytest.raises(exc, match=word):
        gradient_norms_by_depth(**args)


def test_fit_rate_needs_two_finite_points():
    assert math.isnan(clipping.fit_rate(torch.arange(3.0), torch.tensor([1.0, math.inf, 0.0])))
    assert clipping.fit_rate(torch.arange(4.0), 3.0 ** torch.arange(4.0)) == pytest.approx(3.0)


# --- clip by norm vs by value ------------------------------------------------------------------
def test_norm_clip_lands_on_the_threshold_and_keeps_the_direction():
    g = torch.tensor([3.0, -4.0, 12.0], dtype=torch.float64)  # |g| = 13
    r = clip_comparison(g, max_norm=1.0, clip_value=2.0)
    assert r.norm == pytest.approx(13.0) and r.clipped
    assert r.norm_by_norm == pytest.approx(1.0, rel=1e-6)  # torch divides by |g| + 1e-6
    assert r.cos_by_norm == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(r.by_norm, g / (13.0 + 1e-6))
    torch.testing.assert_close(r.by_value, torch.tensor([2.0, -2.0, 2.0], dtype=torch.float64))
    assert r.cos_by_value == pytest.approx((6 + 8 + 24) / (13 * math.sqrt(12)))
    assert r.cos_by_value < 0.85


def test_small_gradient_is_left_alone_by_the_norm_clip():
    g = torch.tensor([0.3, 0.4])
    r = clip_comparison(g, max_norm=1.0)
    assert not r.clipped and r.clip_value == 1.0
    torch.testing.assert_close(r.by_norm, g)
    torch.testing.assert_close(r.by_value, g)


def test_list_of_tensors_is_clipped_jointly_like_a_model():
    grads = [torch.tensor([[3.0, 0.0]]), torch.tensor([4.0])]  # joint norm 5
    r = clip_comparison(grads, max_norm=2.5)
    assert r.norm == pytest.approx(5.0)
    torch.testing.assert_close(r.by_norm, torch.tensor([3.0, 0.0, 4.0]) * 2.5 / (5 + 1e-6))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=12), st.floats(0.01, 100.0))
def test_clip_identities(values, max_norm):
    g = torch.tensor(values, dtype=torch.float64)
    if float(g.norm()) < 1e-3:
        return
    r = clip_comparison(g, max_norm=max_norm)
    assert r.norm_by_norm <= max_norm * (1 + 1e-9) or not r.clipped
    # torch's rule, eps included: scale by min(1, max_norm / (|g| + 1e-6))
    expected = r.norm * min(1.0, max_norm / (r.norm + 1e-6))
    assert r.norm_by_norm == pytest.approx(expected, rel=1e-9)
    assert r.cos_by_norm == pytest.approx(1.0, abs=1e-9)
    assert float(r.by_value.abs().max()) <= max_norm
    assert r.norm_by_value <= r.norm * (1 + 1e-12)


def test_non_finite_gradient_is_flagged_or_refused():
    g = torch.tensor([1.0, float("nan")])
    flagged = clip_comparison(g, max_norm=1.0)
    assert not flagged.finite and "NON-FINITE" in repr(flagged)
    assert clip_comparison(torch.tensor([1.0, 2.0]), 1.0).finite
    with pytest.raises(ValueError, match="non-finite"):
        clip_comparison(torch.tensor([1.0, float("inf")]), 1.0, error_if_nonfinite=True)


def test_torch_flips_signs_for_a_negative_max_norm_and_numlab_refuses_it():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    torch.nn.utils.clip_grad_norm_([p], max_norm=-1.0)  # what torch does: no error ...
    assert torch.all(p.grad < 0)  # ... and the gradient now points the other way
    for bad in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_norm"):
            clip_comparison(torch.tensor([3.0, 4.0]), max_norm=bad)
        with pytest.raises(ValueError, match="max_norm"):
            clip_grad_norm_checked_([p], bad)
    with pytest.raises(TypeError, match="max_norm"):
        clip_comparison(torch.tensor([3.0, 4.0]), max_norm="1")
    with pytest.raises(ValueError, match="clip_value"):
        clip_comparison(torch.tensor([3.0, 4.0]), 1.0, clip_value=-0.5)


@pytest.mark.parametrize("grad", [[], "abc", 3.0, torch.tensor([1, 2]), [torch.ones(2), 5]])
def test_clip_comparison_rejects_what_is_not_a_gradient(grad):
    with pytest.raises(TypeError, match="grad"):
        clip_comparison(grad, 1.0)


def test_checked_clip_matches_torch_and_refuses_nan():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([6.0, 8.0, 0.0])
    b.grad = a.grad.clone()
    assert float(clip_grad_norm_checked_([a], 2.0)) == pytest.approx(10.0)
    torch.nn.utils.clip_grad_norm_([b], 2.0)
    torch.testing.assert_close(a.grad, b.grad)
    a.grad = torch.tensor([float("nan"), 1.0, 0.0])
    with pytest.raises(ValueError, match="non-finite"):
        clip_grad_norm_checked_([a], 1.0)


# --- the recurrent net -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs():
    return {
        "none": train_rnn(None),
        "norm1": train_rnn("norm", 1.0),
        "norm025": train_rnn("norm", 0.25),
    }


def test_unclipped_run_explodes_and_turns_non_finite(runs):
    r = runs["none"]
    assert r.diverged and r.nonfinite_step is not None and r.nonfinite_step < 60
    assert r.max_grad_norm >= 1e6  # the chapter's "1e6 or more" from one batch
    assert r.loss_spike >= 1e6  # loss up by orders of magnitude first
    assert len(r.spike_steps) > 0
    assert torch.isnan(r.losses[r.nonfinite_step + 1:]).all()
    assert len(r.clipped_steps) == 0


@pytest.mark.parametrize("key, threshold", [("norm1", 1.0), ("norm025", 0.25)])
def test_norm_clipped_run_survives_and_beats_predicting_the_mean(runs, key, threshold):
    r = runs[key]
    assert not r.diverged and torch.isfinite(r.losses).all()
    assert r.final_loss < 1 / 6
    assert len(r.spike_steps) == 0
    clipped = r.grad_norms > threshold
    torch.testing.assert_close(r.clipped_steps, torch.nonzero(clipped).flatten())
    assert 0 < len(r.clipped_steps) < len(r.losses) + 1


def test_clipping_after_step_is_too_late(runs):
    late = train_rnn("norm", 1.0, order="backward-step-clip", steps=60)
    assert late.diverged
    torch.testing.assert_close(late.losses[:late.nonfinite_step],
                               runs["none"].losses[:late.nonfinite_step])


def test_value_clipping_does_not_bound_the_step_length():
    r = train_rnn("value", 1.0, steps=120)
    assert not r.diverged
    assert r.final_loss > 1.0  # stays finite but far above the 1/6 of predicting the mean


def test_runs_are_deterministic_and_leave_global_state_alone():
    rng = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    a = train_rnn("norm", 0.5, steps=25, seed=3)
    b = train_rnn("norm", 0.5, steps=40, seed=3)
    torch.testing.assert_close(a.losses, b.losses[:25])  # same batches, same start
    assert torch.equal(rng, torch.random.get_rng_state())
    assert torch.get_num_threads() == threads


def test_runs_are_memoised_unless_a_progress_callback_is_given():
    a = train_rnn("norm", 0.7, steps=30, seed=4)
    assert train_rnn("norm", 0.7, steps=30, seed=4) is a
    b = train_rnn("norm", 0.7, steps=30, seed=4, progress=lambda *_: None)
    assert b is not a
    torch.testing.assert_close(a.losses, b.losses, rtol=0, atol=0)
    assert train_rnn("norm", 0.7, steps=30, seed=5) is not a


def test_progress_callback_reaches_the_end():
    seen = []
    train_rnn("norm", 1.0, steps=21, progress=lambda s, n: seen.append((s, n)))
    assert seen[0] == (0, 21) and seen[-1] == (21, 21) and (20, 21) in seen


def test_training_run_repr():
    r = train_rnn(None, steps=40)
    assert "no clipping" in repr(r) and f"step {r.nonfinite_step}" in repr(r)
    assert math.isnan(r.final_loss)


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"clip": "both"}, ValueError, "clip"),
    ({"clip": "norm", "max_norm": -1.0}, ValueError, "max_norm"),
    ({"clip": "norm", "max_norm": 0.0}, ValueError, "max_norm"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"steps": 0}, ValueError, "steps"),
    ({"hidden": 0}, ValueError, "hidden"),
    ({"seq_len": 1}, ValueError, "seq_len"),
    ({"batch": 0}, ValueError, "batch"),
    ({"gain": -1.0}, ValueError, "gain"),
    ({"order": "step-backward-clip"}, ValueError, "order"),
    ({"dtype": "int8"}, ValueError, "dtype"),
    ({"seed": 1.5}, TypeError, "seed"),
])
def test_train_rnn_rejects_bad_input(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        train_rnn(**{"steps": 5, **kwargs})


def test_adding_problem_targets_are_the_sum_of_the_two_marked_values():
    x, y = adding_problem(64, 12, generator=torch.Generator().manual_seed(1))
    assert x.shape == (64, 12, 2) and y.shape == (64, 1)
    marks = x[..., 1]
    assert torch.all(marks.sum(dim=1) == 2)
    assert torch.all(marks[:, :6].sum(dim=1) == 1) and torch.all(marks[:, 6:].sum(dim=1) == 1)
    torch.testing.assert_close(y[:, 0], (x[..., 0] * marks).sum(dim=1))
    assert 0.0 <= float(x[..., 0].min()) and float(x[..., 0].max()) < 1.0


def test_threshold_sweep_runs_every_threshold_on_the_same_task():
    s = threshold_sweep((0.25, 1.0, 50.0), steps=60)
    assert s.thresholds.tolist() == [0.25, 1.0, 50.0]
    assert s.unclipped.diverged and not s.diverged[:2].any()
    fresh = train_rnn("norm", 1.0, steps=60, progress=lambda *_: None)  # not memoised
    assert s.final_loss[1] == pytest.approx(fresh.final_loss)
    assert s.fraction_clipped[0] >= s.fraction_clipped[1]
    finite = torch.where(torch.isnan(s.final_loss), torch.inf, s.final_loss)
    assert s.best == s.thresholds[int(torch.argmin(finite))]
    table = s.table()
    assert table.count("\n") == 5 and "| none |" in table and "| 0.25 |" in table
    assert "lowest final loss" in repr(s)


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"thresholds": ()}, ValueError, "thresholds"),
    ({"thresholds": (1.0, -0.25)}, ValueError, "thresholds"),
    ({"thresholds": (1.0, "2")}, TypeError, "thresholds"),
    ({"clip": None}, ValueError, "clip"),
])
def test_threshold_sweep_rejects_bad_input(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        threshold_sweep(**kwargs, steps=5)
