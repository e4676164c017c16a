"""Hand-written layers to check: each backward written out, once right and once subtly wrong.

Every layer is a ``torch.autograd.Function`` in the functorch style (``forward`` without
``ctx``, ``setup_context``, ``generate_vmap_rule = True``) so ``torch.func.vmap`` can batch
it. The wrong versions hold mistakes people really make:

- ``softplus_wrong_sign``: ``d/dx log(1 + e^x)`` written as ``sigmoid(-x)``; right at x = 0.
- ``layer_norm_forgot_mean``: the backward drops the ``-mean(g)`` term that comes from the
  mean in the forward; off by ``mean(g) / sigma``, small for wide layers.
- ``tanh_small_x``: ``1 - x**2`` (input) instead of ``1 - tanh(x)**2`` (output); right to
  O(x**4) near 0, so a check at tiny inputs passes.
- ``dense_tanh_forgot_activation``: ``tanh(x @ w)`` whose backward skips the tanh factor.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

LN_EPS = 1e-5


class _Softplus(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        # torch's fused kernel computes the stable max(x, 0) + log1p(e^-|x|) (no overflow);
        # only the backward is written by hand here.
        return torch.nn.functional.softplus(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)


class _SoftplusWrongSign(_Softplus):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(-x)  # bug: e^x / (1 + e^x) is sigmoid(+x)


class _LayerNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + LN_EPS) over the last dimension (no affine part)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        var, mu = torch.var_mean(x, -1, keepdim=True, correction=0)
        return (x - mu) / torch.sqrt(var + LN_EPS)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        sigma = _sigma(x)
        # dx = (g - mean(g) - y * mean(g * y)) / sigma
        return (g - g.mean(-1, keepdim=True) - y * (g * y).mean(-1, keepdim=True)) / sigma


def _sigma(x):
    # Recomputed in backward (cheap) rather than saved, so the forward stays one fused pass.
    return torch.sqrt(torch.var(x, -1, keepdim=True, correction=0) + LN_EPS)


class _LayerNormForgotMean(_LayerNorm):
    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return (g - y * (g * y).mean(-1, keepdim=True)) / _sigma(x)  # bug: no - mean(g)


class _Tanh(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, g):
        _, y = ctx.saved_tensors
        return g * (1 - y * y)


class _TanhSmallX(_Tanh):
    @staticmethod
    def backward(ctx, g):
        x, _ = ctx.saved_tensors
        return g * (1 - x * x)  # bug: the input, not the output; tanh(x) ~ x only near 0


class _DenseTanh(torch.autograd.Function):
    """y = tanh(x @ w); gradients for both x and w."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return torch.tanh(x @ w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)

    @staticmethod
    def backward(ctx, g):
        x, w, y = ctx.saved_tensors
        gz = g * (1 - y * y)
        return gz @ w.mT, _weight_grad(x, gz)


def _weight_grad(x, gz):
    # x: (..., n), gz: (..., m) -> sum over leading dims of the outer products.
    return x.reshape(-1, x.shape[-1]).mT @ gz.reshape(-1, gz.shape[-1])


class _DenseTanhForgotActivation(_DenseTanh):
    @staticmethod
    def backward(ctx, g):
        x, w, _ = ctx.saved_tensors
        return g @ w.mT, _weight_grad(x, g)  # bug: chain rule skips tanh' = 1 - y**2


def softplus(x):
    return _Softplus.apply(x)


def softplus_wrong_sign(x):
    return _SoftplusWrongSign.apply(x)


def layer_norm(x):
    return _LayerNorm.apply(x)


def layer_norm_forgot_mean(x):
    return _LayerNormForgotMean.apply(x)


def tanh(x):
    return _Tanh.apply(x)


def tanh_small_x(x):
    return _TanhSmallX.apply(x)


def dense_tanh(x, w):
    return _DenseTanh.apply(x, w)


def dense_tanh_forgot_activation(x, w):
    return _DenseTanhForgotActivation.apply(x, w)


# name -> (correct, wrong)
LAYERS: dict[str, tuple[Callable, Callable]] = {
    "softplus": (softplus, softplus_wrong_sign),
    "layer_norm": (layer_norm, layer_norm_forgot_mean),
    "tanh": (tanh, tanh_small_x),
    "dense_tanh": (dense_tanh, dense_tanh_forgot_activation),
}
DENSE_OUT = 16


def problem(name: str, n: int = 16, *, wrong: bool = False, dtype=torch.float64, device="cpu",
            seed: int = 0, scale: float = 1.0) -> tuple[Callable, tuple]:
    """``(fn, inputs)`` ready for a gradient check: ``n`` standard-normal inputs times ``scale``.

    Only ``x`` requires grad; ``dense_tanh`` also takes a fixed ``(n, 16)`` weight scaled by
    ``1/sqrt(n)``, so its outputs stay in tanh's curved range at any ``n``.
    """
    from numlab._checks import flag, positive_number
    from numlab._checks import seed as check_seed
    from numlab.device import pick
    from numlab.formats import COMPUTE_DTYPES, resolve_dtype

    if name not in LAYERS:
        raise ValueError(f"name must be one of {sorted(LAYERS)}, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (layer norm needs two entries), got {n!r}")
    scale = positive_number("scale", scale)
    flag("wrong", wrong)
    dtype, device = resolve_dtype(dtype, COMPUTE_DTYPES), pick(device)
    gen = torch.Generator().manual_seed(check_seed(seed))
    x = (scale * torch.randn(n, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)
    x.requires_grad_(True)
    fn = LAYERS[name][1 if wrong else 0]
    if name == "dense_tanh":
        w = torch.randn(n, DENSE_OUT, generator=gen, dtype=torch.float64) / n**0.5
        return fn, (x, w.to(dtype=dtype, device=device))
    return fn, (x,)


@dataclass(frozen=True)
class LayerVerdict:
    """numlab's and torch's gradient check of one layer, in fp64 and (numlab only) in fp32."""

    layer: str
    passed_fp64: bool
    torch_fp64: bool  # torch.autograd.gradcheck on the same inputs: the verdict to agree with
    norm_rel_fp64: float
    max_rel_fp64: float
    passed_fp32: bool
    norm_rel_fp32: float
    max_rel_fp32: float


def check_all(n: int = 16) -> list[LayerVerdict]:
    """Every layer of :data:`LAYERS`, right and wrong, through numlab's gradcheck in fp64 and
    fp32 and through ``torch.autograd.gradcheck`` in fp64 (fp32's "not float64" warning is
    what this comparison is about, so it is not repeated here)."""
    from numlab.gradcheck import gradcheck

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, pair in LAYERS.items():
            for wrong, fn in enumerate(pair):
                _, inputs = problem(name, n, wrong=bool(wrong))
                r64 = gradcheck(fn, inputs)
                t64 = torch.autograd.gradcheck(fn, inputs, raise_exception=False)
                r32 = gradcheck(fn, problem(name, n, wrong=bool(wrong), dtype="fp32")[1])
                out.append(LayerVerdict(fn.__name__, r64.passed, bool(t64), r64.norm_rel_error,
                                        r64.max_rel_error, r32.passed, r32.norm_rel_error,
                                        r32.max_rel_error))
    return out


def verdict_table(verdicts: list[LayerVerdict]) -> str:
    """:func:`check_all`'s verdicts as one fixed-width table, a row per layer."""
    if not isinstance(verdicts, list) or not all(isinstance(v, LayerVerdict) for v in verdicts):
        raise TypeError("verdicts must be the list that check_all returns")
    lines = [f"{'layer':<30}{'numlab':>8}{'torch':>7}{'norm rel 64':>13}{'max rel 64':>12}"
             f"{'fp32 verdict':>13}{'norm rel 32':>13}{'max rel 32':>12}"]
    for v in verdicts:
        lines.append(f"{v.layer:<30}{str(v.passed_fp64):>8}{str(v.torch_fp64):>7}"
                     f"{v.norm_rel_fp64:>13.0e}{v.max_rel_fp64:>12.0e}{str(v.passed_fp32):>13}"
                     f"{v.norm_rel_fp32:>13.0e}{v.max_rel_fp32:>12.0e}")
    return "\n".join(lines)
