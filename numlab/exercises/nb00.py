"""Exercises of notebooks/00_floating_point.ipynb; each answer is computed by numlab."""
import torch

from numlab.check import Exercise
from numlab.formats import info, round_to


def _last_nonzero_exp_fp16() -> float:
    """Every non-negative fp16 value x tried: the largest whose exp(-x) in fp16 is not 0."""
    x = torch.arange(0, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16)
    nonzero = torch.exp(-x) > 0
    return float(x[nonzero].max())

EXERCISES = {
    "00.1": Exercise(
        prompt="Which number does bf16 actually store when you write 0.3? (as a float)",
        expected=lambda: round_to(0.3, "bf16"),
        rtol=1e-12,
        hints=(
            "bf16 cannot hold 0.3 exactly: it keeps the nearest number it has. How far apart are "
            "bf16's numbers near 0.3?",
            "bf16 keeps 8 significant bits: between 0.25 and 0.5 its numbers are 2**-9 apart. "
            "Which multiple of that step is nearest to 0.3?",
        ),
    ),
    "00.2": Exercise(
        prompt="The smallest positive integer n for which n + 1 == n in fp32.",
        expected=lambda: 2 ** (info("fp32").mantissa_bits + 1),
        rtol=0,
        hints=(
            "Adding 1 changes nothing once the gap between neighbouring fp32 numbers is larger than "
            "2 (a tie at 2 rounds to even).",
            "Past 2**p the gap between fp32 numbers is 2; p is the mantissa bits plus one.",
        ),
    ),
    "00.3": Exercise(
        prompt="The other end: the largest x stored in fp16 for which exp(-x), computed in fp16, "
               "is not rounded to 0.",
        expected=_last_nonzero_exp_fp16,
        rtol=1e-12,
        hints=(
            "exp(-x) shrinks as x grows; the question is where it falls below the smallest number "
            "fp16 can hold at all.",
            "fp16's smallest subnormal is 2**-24; a result below half of it rounds to 0. "
            "Then step through fp16's values near that x.",
        ),
    ),
}
