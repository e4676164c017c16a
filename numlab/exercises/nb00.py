"""Exercises of notebooks/00_floating_point.ipynb; each answer is computed by numlab."""
from numlab.check import Exercise
from numlab.formats import info, round_to

EXERCISES = {
    "00.1": Exercise(
        prompt="Which number does fp16 actually store when you write 0.1? (as a float)",
        expected=lambda: round_to(0.1, "fp16"),
        rtol=1e-12,
        hint="fp16 keeps 10 mantissa bits; try numlab.formats.decompose(0.1, 'fp16').",
    ),
    "00.2": Exercise(
        prompt="The smallest positive integer n for which n + 1 == n in fp32.",
        expected=lambda: 2 ** (info("fp32").mantissa_bits + 1),
        rtol=0,
        hint="Past 2**p the gap between fp32 numbers is 2; p is the mantissa bits plus one.",
    ),
    "00.3": Exercise(
        prompt="The largest x stored in bf16 for which exp(x), computed in bf16, is still finite.",
        expected=lambda: info("bf16").exp_overflow,
        rtol=1e-12,
        hint="bf16 has fp32's exponent range but only 8 significant bits; ln(max) rounded down.",
    ),
}
