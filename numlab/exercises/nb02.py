"""Exercises of notebooks/02_exploding_gradients.ipynb; each answer is computed by numlab."""
import torch

from numlab.check import Exercise
from numlab.clipping import clip_comparison, gradient_norms_by_depth, threshold_sweep, train_rnn


def _first_fp16_overflow_depth(gain: float = 1.5, width: int = 64) -> int:
    """The smallest depth at which a linear gain-``gain`` stack's gradient overflows fp16."""
    for depth in range(1, 80):
        if gradient_norms_by_depth(depth, width, gain, "linear", dtype="fp16").overflowed:
            return depth
    return 0


def _first_step_above(threshold: float = 1e12) -> int:
    run = train_rnn(None)
    return int(torch.nonzero(run.grad_norms >= threshold).flatten()[0])


EXERCISES = {
    "02.1": Exercise(
        prompt="A linear stack of depth 30 whose layers all have spectral norm (gain) 1.2, with "
               "a gradient of norm 1 at the output: the gradient norm at the input.",
        expected=lambda: gradient_norms_by_depth(30, 64, 1.2, "linear").input_norm,
        rtol=1e-3,
        hints=(
            "The backward pass multiplies by each layer's transpose once; what does one such layer "
            "do to the norm?",
            "Each orthogonal layer scaled by the gain multiplies the norm by exactly the gain.",
        ),
    ),
    "02.2": Exercise(
        prompt="The gradient (3, 4, 12) clipped by value at 1: its cosine to the original.",
        expected=lambda: clip_comparison(torch.tensor([3.0, 4.0, 12.0]), 1.0).cos_by_value,
        rtol=1e-4,
        hints=(
            "Clipping by value changes each entry separately, so the direction changes too; how "
            "much?",
            "Every entry becomes 1; the cosine is g.c / (|g| |c|).",
        ),
    ),
    "02.3": Exercise(
        prompt="The smallest depth at which a linear stack with gain 1.5 (width 64) produces a "
               "non-finite gradient in fp16.",
        expected=_first_fp16_overflow_depth,
        rtol=0,
        hints=(
            "A non-finite gradient appears as soon as a single number passes fp16's largest finite "
            "value.",
            "fp16 overflows when one entry passes 65504; the norm of a 64-entry vector can "
            "exceed that while every entry is finite. Try depths from 27 upwards.",
        ),
    ),
    "02.4": Exercise(
        prompt="In the unclipped toy RNN run (train_rnn(None)), the first step whose gradient "
               "norm is 1e12 or more.",
        expected=_first_step_above,
        rtol=0,
        hints=(
            "Without clipping the norm grows by about the same factor every step; find when it "
            "crosses 1e12.",
            "The run records one gradient norm per step, counted from 0; the first one past "
            "1e12 is the answer.",
        ),
    ),
    "02.5": Exercise(
        prompt="Among the thresholds 0.1, 0.25, 1.0 and 5.0 (clip by norm, 150 steps), the one "
               "with the lowest final loss on the toy RNN.",
        expected=lambda: threshold_sweep((0.1, 0.25, 1.0, 5.0), steps=150).best,
        rtol=1e-9,
        hints=(
            "Clipping trades step length for stability; on this RNN, which matters more over 150 "
            "steps?",
            "Train once per threshold for 150 steps and compare the final losses; a smaller "
            "threshold means shorter steps.",
        ),
    ),
}
