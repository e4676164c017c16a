"""Hand-written layers: the correct ones match torch's own autograd, the wrong ones do not."""
import pytest
import torch
import torch.nn.functional as F

from numlab import layers
from numlab.layers import (
    LAYERS,
    LN_EPS,
    dense_tanh,
    dense_tanh_forgot_activation,
    layer_norm,
    layer_norm_forgot_mean,
    problem,
    softplus,
    softplus_wrong_sign,
    tanh,
    tanh_small_x,
)

gen = torch.Generator().manual_seed(7)
X = torch.randn(3, 10, generator=gen, dtype=torch.float64)
W = torch.randn(10, 4, generator=gen, dtype=torch.float64)
G = torch.randn(3, 10, generator=gen, dtype=torch.float64)


def reference(name):
    return {
        "softplus": F.softplus,
        "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:], eps=LN_EPS),
        "tanh": torch.tanh,
        "dense_tanh": lambda x, w: torch.tanh(x @ w),
    }[name]


def grads(fn, *args, g):
    args = [a.clone().requires_grad_(True) for a in args]
    out = fn(*args)
    return out, torch.autograd.grad(out, args, g)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_correct_layers_match_torch_and_wrong_ones_do_not(name):
    correct, wrong = LAYERS[name]
    args = (X, W) if name == "dense_tanh" else (X,)
    g = torch.randn(3, 4, generator=gen, dtype=torch.float64) if name == "dense_tanh" else G
    ref_out, ref_grads = grads(reference(name), *args, g=g)
    out, got = grads(correct, *args, g=g)
    bad_out, bad = grads(wrong, *args, g=g)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(bad_out, ref_out)  # the bug is in backward only
    for r, c in zip(ref_grads, got, strict=True):
        torch.testing.assert_close(c, r)
    assert not torch.allclose(bad[0], ref_grads[0], rtol=1e-3, atol=1e-5)


def test_wrong_layers_are_right_where_a_careless_check_looks():
    zero = torch.zeros(4, dtype=torch.float64)
    _, (good,) = grads(softplus, zero, g=torch.ones(4, dtype=torch.float64))
    _, (bad,) = grads(softplus_wrong_sign, zero, g=torch.ones(4, dtype=torch.float64))
    assert torch.equal(good, bad)
    tiny = torch.full((4,), 1e-3, dtype=torch.float64)
    _, (good,) = grads(tanh, tiny, g=torch.ones(4, dtype=torch.float64))
    _, (bad,) = grads(tanh_small_x, tiny, g=torch.ones(4, dtype=torch.float64))
    assert (bad - good).abs().max() < 1e-11 and not torch.equal(bad, good)


def test_layer_norm_bug_is_the_mean_of_the_upstream_gradient():
    _, (good,) = grads(layer_norm, X, g=G)
    _, (bad,) = grads(layer_norm_forgot_mean, X, g=G)
    sigma = torch.sqrt(X.var(-1, unbiased=False, keepdim=True) + LN_EPS)
    torch.testing.assert_close(bad - good, (G.mean(-1, keepdim=True) / sigma).expand_as(G))


def test_dense_bug_skips_the_tanh_derivative_for_both_inputs():
    g = torch.ones(3, 4, dtype=torch.float64)
    _, (gx, gw) = grads(dense_tanh_forgot_activation, X, W, g=g)
    torch.testing.assert_close(gx, g @ W.T)
    torch.testing.assert_close(gw, X.T @ g)
    _, (gx_ok, _) = grads(dense_tanh, X, W, g=g)
    assert not torch.allclose(gx, gx_ok)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_run_under_vmap(name):
    correct, wrong = LAYERS[name]
    for fn in (correct, wrong):
        if name == "dense_tanh":
            batched = torch.func.vmap(fn, in_dims=(0, None))(X, W)
            torch.testing.assert_close(batched, fn(X, W))
        else:
            torch.testing.assert_close(torch.func.vmap(fn)(X), fn(X))


def test_problem_builds_inputs():
    fn, (x, w) = problem("dense_tanh", 5, seed=3)
    assert fn is dense_tanh and x.requires_grad and not w.requires_grad
    assert x.shape == (5,) and w.shape == (5, 16) and x.dtype == torch.float64
    fn, (x,) = problem("tanh", 6, wrong=True, dtype="fp32", scale=1e-3)
    assert fn is tanh_small_x and x.dtype == torch.float32 and x.abs().max() < 1e-2
    again = problem("tanh", 6, wrong=True, dtype="fp32", scale=1e-3)[1][0]
    assert torch.equal(x, again)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"name": "relu"}, "name must be one of"), ({"n": 1}, "n must be"), ({"n": 2.5}, "n must be"),
     ({"scale": 0}, "scale must"), ({"dtype": "fp7"}, "dtype")],
)
def test_problem_refuses_bad_input(kwargs, match):
    args = {"name": "tanh", **kwargs}
    with pytest.raises(ValueError, match=match):
        problem(**args)


def test_check_all_agrees_with_torch_and_fails_every_wrong_layer():
    verdicts = layers.check_all(16)
    assert [v.layer for v in verdicts] == [f.__name__ for pair in layers.LAYERS.values() for f in pair]
    for v in verdicts:
        assert v.passed_fp64 == v.torch_fp64, v  # torch's own gradcheck is the oracle
        wrong = v.layer not in {pair[0].__name__ for pair in layers.LAYERS.values()}
        assert v.passed_fp64 != wrong and (not wrong or not v.passed_fp32)
        if not wrong:
            assert v.norm_rel_fp64 < 1e-7 < v.norm_rel_fp32 < 1e-3  # fp64 digits vs fp32's
    table = layers.verdict_table(verdicts).splitlines()
    assert len(table) == 1 + len(verdicts) and table[1].split()[:3] == ["softplus", "True", "True"]
    with pytest.raises(TypeError, match="verdicts"):
        layers.verdict_table("softplus")
