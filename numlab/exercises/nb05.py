"""Exercises of notebooks/05_distributed.ipynb; each answer is computed by numlab."""
import torch

from numlab.check import Exercise
from numlab.distributed import critical_lr, reduction_order, stale_sweep


def _two_sample_batchnorm() -> float:
    """|output| of BatchNorm (no affine, eps=0) over a batch of two samples, averaged."""
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = torch.nn.functional.batch_norm(3 * x + 7, None, None, training=True, eps=1e-300)
    return float(y.abs().mean())


def _measured_boundary(k: int = 3) -> float:
    """The demo's largest non-divergent lr at staleness ``k`` on a fine grid (200 steps)."""
    lrs = torch.linspace(0.2, 0.8, 601, dtype=torch.float64).numpy()
    return float(stale_sweep(lrs, [k], steps=200).boundary()[0])


EXERCISES = {
    "05.1": Exercise(
        prompt="Gradient descent whose gradients are 3 steps stale, on the notebook's "
        "least-squares problem (largest curvature 1): up to which learning rate does it still "
        "converge? (Two significant digits are enough.)",
        expected=lambda: critical_lr(3),
        rtol=0.1,
        hint="Sweep lr at staleness 3 with numlab.distributed.stale_sweep and read "
        ".boundary(), or find where the roots of z**4 - z**3 + lr leave the unit circle.",
    ),
    "05.2": Exercise(
        prompt="Local BatchNorm with a per-device batch of 2 (no affine, eps -> 0): every "
        "normalised entry has the same absolute value, whatever the two inputs are. Which?",
        expected=_two_sample_batchnorm,
        rtol=1e-9,
        hint="Two numbers a and b: the mean is their midpoint, the biased variance "
        "((a - b) / 2)**2.",
    ),
    "05.3": Exercise(
        prompt="DDP divides each worker's gradient by N before summing. With N = 3 workers in "
        "fp32, what fraction (0..1) of 100000 random gradient entries come out different "
        "from dividing the sum by N (seed 0)?",
        expected=lambda: reduction_order(3, n=100_000, dtype="fp32", seed=0).differ,
        rtol=1e-6,
        hint="numlab.distributed.reduction_order(world_size, n, dtype, seed).differ",
    ),
    "05.4": Exercise(
        prompt="On a fine grid of learning rates (0.2 to 0.8, 601 points, 200 steps), what is "
        "the largest learning rate at which the 3-stale run still does not diverge?",
        expected=_measured_boundary,
        rtol=2e-3,
        hint="stale_sweep(np.linspace(0.2, 0.8, 601), [3], steps=200).boundary()[0]; compare "
        "it with critical_lr(3) and think about why a 200-step run looks a little too stable.",
    ),
}
