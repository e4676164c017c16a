"""Exercises of notebooks/03_stable_softmax.ipynb; each answer is computed by numlab."""
import torch
import torch.nn.functional as F

from numlab.check import Exercise
from numlab.softmax import breakpoints, overflow_threshold


def _probabilities_fed_as_logits() -> float:
    z = torch.tensor([[2.0, 0.0, -2.0]])
    return F.cross_entropy(torch.softmax(z, -1), torch.tensor([0])).item()


EXERCISES = {
    "03.1": Exercise(
        prompt="Two classes with logits (s, -s), everything in fp16: the smallest s at which the "
               "naive softmax breaks (its sum exp(s) + exp(-s) overflows).",
        expected=lambda: overflow_threshold("fp16", 2),
        rtol=1e-12,
        hint="exp(s) passes fp16's max 65504 just above ln(65504); fp16 numbers near 11 are "
             "1/128 apart.",
    ),
    "03.2": Exercise(
        prompt="Logits z = [2, 0, -2], true class 0. Someone passes softmax(z) instead of z to "
               "F.cross_entropy (fp32). Which loss comes back?",
        expected=_probabilities_fed_as_logits,
        rtol=1e-5,
        hint="F.cross_entropy applies its own log-softmax to whatever it gets: compute "
             "logsumexp(p) - p[0] for p = softmax(z).",
    ),
    "03.3": Exercise(
        prompt="Two classes with logits (s, -s) in fp32, the true class is the low one: the "
               "smallest s at which the naive gradient (autograd through log(softmax)) has a NaN.",
        expected=lambda: breakpoints("fp32", 2, "low").grad,
        rtol=1e-6,
        hint="The gradient of -log p is -1/p; p is about exp(-2s), and 1/p overflows fp32 "
             "before p itself underflows.",
    ),
}
