"""Exercises of notebooks/04_mixed_precision.ipynb; each answer is computed by numlab."""
from numlab.check import Exercise
from numlab.formats import info
from numlab.mixed_precision import gradient_magnitudes, train


def _smallest_safe_exponent(threshold: float = 0.01, loss_scale: float = 1e-5) -> int:
    """Smallest k with fewer than ``threshold`` of the demo's fp16 gradients flushed at 2**k."""
    for k in range(31):
        if gradient_magnitudes(loss_scale=loss_scale, scale=2.0**k).zero_fp16_scaled < threshold:
            return k
    raise RuntimeError("no scale up to 2**30 keeps the gradients")  # not reached for the demo


EXERCISES = {
    "04.1": Exercise(
        prompt="The page used loss_scale=1e-5. With a loss ten times larger (loss_scale=1e-4), "
        "which fraction (0..1) of the demo's gradient entries does fp16 autocast, without any "
        "loss scaling, return as exactly 0 at step 0?",
        expected=lambda: gradient_magnitudes(loss_scale=1e-4).zero_fp16,
        rtol=1e-2,
        hints=(
            "A larger loss means larger gradients: more of them now clear fp16's smallest "
            "subnormal.",
            "Every gradient gets ten times larger: compare the magnitudes with fp16's smallest "
            "subnormal (2**-24) again. Then remember that the backward pass itself runs in fp16.",
        ),
    ),
    "04.2": Exercise(
        prompt="A GradScaler starts at 2**10 with growth_interval=4 (growth x2, backoff x0.5). "
        "Steps 6 and 7 overflow. Which scale does step 19 use?",
        expected=lambda: train("fp16", scaler=True, steps=20, init_scale=2.0**10,
                               growth_interval=4, overflow_at=(6, 7)).scale[19],
        rtol=0,
        hints=(
            "Follow the scaler step by step: what does an overflow do to the scale, and what do "
            "calm steps do?",
            "An overflow halves the scale and restarts the count of calm steps; four calm "
            "steps in a row double it.",
        ),
    ),
    "04.3": Exercise(
        prompt="The smallest whole k such that multiplying the loss by 2**k before backward "
        "leaves fewer than 1% of the demo's fp16 gradient entries at 0 (loss_scale=1e-5).",
        expected=_smallest_safe_exponent,
        rtol=0,
        hints=(
            "Each factor of 2 moves every gradient up by one binade; how many binades must the "
            "smallest ones climb?",
            "Each doubling of the scale lifts every gradient by one binade; count how many "
            "binades the smallest ones sit below fp16's subnormals, then try a few k around that.",
        ),
    ),
    "04.4": Exercise(
        prompt="bf16 keeps fp32's range; what does it give up? Give its unit roundoff: the "
        "largest relative error of rounding a number to bf16 (half of its eps).",
        expected=lambda: info("bf16").eps / 2,
        rtol=1e-9,
        hints=(
            "bf16 trades mantissa bits for exponent bits: its eps is that of a format with few "
            "mantissa bits.",
            "bf16 has 7 stored mantissa bits (8 significant); see notebook 00.",
        ),
    ),
}
