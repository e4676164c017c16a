"""Exercises of notebooks/03_stable_softmax.ipynb; each answer is computed by numlab."""
import torch
import torch.nn.functional as F

from numlab.check import Exercise
from numlab.softmax import breakpoints


def _tied_top_overflow_fp16() -> float:
    """Every positive fp16 value s tried: the first at which exp of (s, s, -s) sums to inf."""
    s = torch.arange(1, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16)
    z = torch.stack([s, s, -s], dim=-1)
    return float(s[torch.isinf(torch.exp(z).sum(-1))].min())


def _probabilities_fed_as_logits() -> float:
    z = torch.tensor([[2.0, 0.0, -2.0]])
    return F.cross_entropy(torch.softmax(z, -1), torch.tensor([0])).item()


EXERCISES = {
    "03.1": Exercise(
        prompt="Two classes tied at the top: logits (s, s, -s), everything in fp16. The smallest "
               "s at which the naive softmax breaks (its sum overflows).",
        expected=_tied_top_overflow_fp16,
        rtol=1e-12,
        hints=(
            "With two logits at the top, the sum has two large terms instead of one.",
            "The sum is now about 2 exp(s): it overflows when exp(s) passes max / 2. fp16 "
            "numbers between 8 and 16 are 1/128 apart.",
        ),
    ),
    "03.2": Exercise(
        prompt="Logits z = [2, 0, -2], true class 0. Someone passes softmax(z) instead of z to "
               "F.cross_entropy (fp32). Which loss comes back?",
        expected=_probabilities_fed_as_logits,
        rtol=1e-4,  # four significant digits, as the page prints them
        hints=(
            "F.cross_entropy expects logits; what happens to probabilities between 0 and 1 when "
            "they are treated as logits?",
            "F.cross_entropy applies its own log-softmax to whatever it gets: compute "
            "logsumexp(p) - p[0] for p = softmax(z).",
        ),
    ),
    "03.3": Exercise(
        prompt="Ten classes with logits s * linspace(1, -1, 10) in fp16, the true class is the "
               "lowest one: the smallest s at which the naive gradient (autograd through "
               "log(softmax)) has a NaN.",
        expected=lambda: breakpoints("fp16", 10, "low").grad,
        rtol=1e-6,
        hints=(
            "The NaN comes from the backward pass, not the forward one: which intermediate "
            "overflows first?",
            "The gradient of -log p is -1/p; p is about exp(-2s), and 1/p overflows before p "
            "itself underflows. More classes make p a little smaller at the same s.",
        ),
    ),
}
