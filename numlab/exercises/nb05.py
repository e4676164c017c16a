"""Exercises of notebooks/05_distributed.ipynb; each answer is computed by numlab."""
import torch

from numlab.check import Exercise
from numlab.distributed import critical_lr, reduction_order, stale_sweep


def _largest_three_sample_batchnorm() -> float:
    """The largest |output| BatchNorm (no affine, eps -> 0) gives over a batch of three: the
    extreme batch (two equal samples, one apart), with random batches beside it."""
    g = torch.Generator().manual_seed(5)
    batches = torch.cat([torch.randn(2000, 3, generator=g, dtype=torch.float64),
                         torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    y = torch.nn.functional.batch_norm(batches.T, None, None, training=True, eps=1e-300)
    return float(y.abs().max())


def _measured_boundary(k: int = 3) -> float:
    """The demo's largest non-divergent lr at staleness ``k`` on a fine grid (200 steps)."""
    lrs = torch.linspace(0.2, 0.8, 601, dtype=torch.float64).numpy()
    return float(stale_sweep(lrs, [k], steps=200).boundary()[0])


EXERCISES = {
    "05.1": Exercise(
        prompt="Gradient descent whose gradients are 3 steps stale, on a least-squares problem "
        "whose largest curvature is 4 (not 1 as on the page): up to which learning rate does it "
        "still converge? (Two significant digits are enough.)",
        expected=lambda: critical_lr(3, curvature=4.0),
        rtol=0.1,
        hints=(
            "Staleness limits the step lr times curvature, not lr alone: four times the curvature, "
            "and the limit moves.",
            "The step that matters is lr times the curvature: what limit does the page give "
            "for curvature 1?",
        ),
    ),
    "05.2": Exercise(
        prompt="With two samples per device every normalised entry is +-1. With three (no "
        "affine, eps -> 0), how large can the absolute value of a normalised entry get?",
        expected=_largest_three_sample_batchnorm,
        rtol=1e-9,
        hints=(
            "Normalised entries have mean 0 and variance 1 over three samples; how uneven can three "
            "such numbers be?",
            "Put two of the three samples at the same value and the third elsewhere; the "
            "variance is the biased one (divided by 3).",
        ),
    ),
    "05.3": Exercise(
        prompt="DDP divides each worker's gradient by N before summing. With N = 3 workers in "
        "fp32, what fraction (0..1) of 100000 random gradient entries come out different "
        "from dividing the sum by N (seed 0)?",
        expected=lambda: reduction_order(3, n=100_000, dtype="fp32", seed=0).differ,
        rtol=1e-6,
        hints=(
            "Dividing each gradient before the sum rounds three times instead of once.",
            "Each g/3 is rounded before the sum; (g_1 + g_2 + g_3)/3 rounds once at the end. "
            "3 is not a power of two.",
        ),
    ),
    "05.4": Exercise(
        prompt="On a fine grid of learning rates (0.2 to 0.8, 601 points, 200 steps), what is "
        "the largest learning rate at which the 3-stale run still does not diverge?",
        expected=_measured_boundary,
        rtol=2e-3,
        hints=(
            "Watch where the 3-stale runs start to diverge as the learning rate grows.",
            "Sweep the learning rates at staleness 3 and find where divergence starts; then "
            "think about why a 200-step run looks a little more stable than the theory.",
        ),
    ),
}
