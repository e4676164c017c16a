"""Exercises of notebooks/01_gradient_checking.ipynb; each answer is computed by numlab."""
import warnings

import torch

from numlab.check import Exercise
from numlab.finite_diff import gradcheck, sweep_h
from numlab.layers import problem


def _largest_passing_scale(atol: float = 1e-12, rtol: float = 1e-9) -> float:
    """The largest input scale 10**-k (k = 0..6) at which the check passes tanh_small_x."""
    for k in range(7):
        if gradcheck(*problem("tanh", 16, wrong=True, scale=10.0**-k), atol=atol, rtol=rtol).passed:
            return 10.0**-k
    return 0.0


def _torch_fp32_verdict(eps: float = 4.9e-3) -> bool:
    fn, inputs = problem("tanh", 16, dtype="fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about float32 inputs; that is the point
        return torch.autograd.gradcheck(fn, inputs, eps=eps, raise_exception=False)


EXERCISES = {
    "01.1": Exercise(
        prompt="The rule-of-thumb central-difference step cbrt(eps) for bfloat16.",
        expected=lambda: torch.finfo(torch.bfloat16).eps ** (1 / 3),
        rtol=1e-3,
        hints=(
            "The rule of thumb needs bf16's machine epsilon; how many mantissa bits does bf16 "
            "store?",
            "eps = 2**-(stored mantissa bits); the step is its cube root.",
        ),
    ),
    "01.2": Exercise(
        prompt="With numlab's default grid of steps, which h gives the smallest central-difference "
               "error for exp at x = 1 in float32?",
        expected=lambda: sweep_h("exp", 1.0, "fp32").best_central_h,
        rtol=1e-6,
        hints=(
            "Too large a step and truncation dominates, too small and rounding does: the best h "
            "sits where the two meet.",
            "The best step balances truncation (falls with h) against rounding (grows as h "
            "shrinks); the grid has ten steps per decade.",
        ),
    ),
    "01.3": Exercise(
        prompt="The fitted slope of log(error) against log(h) for the forward difference of tanh "
               "at x = 0.5 in float64 (truncation-dominated range).",
        expected=lambda: sweep_h("tanh", 0.5, "fp64").slope("forward"),
        rtol=0.05,
        hints=(
            "Log-log slope p means the error scales like h**p; which power of h does the forward "
            "difference's leading error term carry?",
            "Taylor: (f(x+h) - f(x))/h = f'(x) + h f''(x)/2 + ...",
        ),
    ),
    "01.4": Exercise(
        prompt="Predict, then check: how many of the 10 x 10 Jacobian entries of "
               "layer_norm_forgot_mean (problem('layer_norm', 10, wrong=True)) fail "
               "|a - n| <= 1e-5 + 1e-3 |n|?",
        expected=lambda: gradcheck(*problem("layer_norm", 10, wrong=True)).n_failed,
        rtol=0,
        hints=(
            "Forgetting the mean is not a local mistake: think about which inputs the mean depends "
            "on.",
            "The missing term mean(g)/sigma touches every entry, not only the diagonal.",
        ),
    ),
    "01.5": Exercise(
        prompt="Scaling the inputs by 10**-k (k = 0, 1, 2, ...), what is the largest scale at "
               "which the float64 check passes tanh_small_x (problem('tanh', 16, wrong=True, "
               "scale=...)) with far tighter tolerances, atol=1e-12 and rtol=1e-9? (The correct tanh "
               "layer still passes at every scale.)",
        expected=_largest_passing_scale,
        rtol=1e-9,
        hints=(
            "For tiny inputs tanh(x) is almost x, so the wrong layer's error shrinks as the inputs "
            "do. When does it drop below the tolerances?",
            "tanh(x)**2 and x**2 differ by about 2 x**4 / 3, while the derivative itself is "
            "about 1; compare that with the new tolerances.",
        ),
    ),
    "01.6": Exercise(
        prompt="Predict, then check: does torch.autograd.gradcheck pass the correct tanh layer "
               "(problem('tanh', 16, dtype='fp32')) in float32 when you give it eps=4.9e-3, "
               "cbrt of fp32's eps, instead of its default? (True or False)",
        expected=_torch_fp32_verdict,
        hints=(
            "gradcheck's default step is tuned for float64; the question is whether a step fit for "
            "float32 fixes that.",
            "Add the two errors at this step: rounding about eps_mach / eps, truncation about "
            "eps**2 / 6 times the third derivative; compare the sum with rtol = 1e-3.",
        ),
    ),
}
