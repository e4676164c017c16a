"""What a reader's kernel keeps: numlab's demos leave torch's global RNG where it was, and
still give the same numbers for the same seed."""
import pytest
import torch

from numlab import debugging as dbg
from numlab import mixed_precision as mp

DEMOS = {
    "misinit_mlp": lambda: dbg.misinit_mlp(seed=3),
    "misinit_run": lambda: dbg.misinit_run(steps=2, every=1, seed=3),
    "forward_nan_model": lambda: dbg.forward_nan_model(seed=3),
    "nanguard_run": lambda: dbg.nanguard_run(bad_batch=2, batches=3, seed=3),
    "anomaly_demo": lambda: dbg.anomaly_demo(measure=False, seed=3),
    "anomaly_overhead": lambda: dbg.anomaly_overhead(depth=2, width=4, repeats=1, seed=3),
    "pathology_run": lambda: dbg.pathology_run("healthy", steps=3, every=1, seed=3),
    "demo_problem": lambda: mp.demo_problem(seed=3, width=4, batch=8),
    "train": lambda: mp.train(steps=2, seed=3, device="cpu"),
}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", list(DEMOS))
def test_demo_leaves_the_global_rng_alone(name):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    DEMOS[name]()
    assert torch.equal(torch.rand(3), expected), f"{name} moved torch's global RNG"


def test_seeded_models_are_still_reproducible():
    a, b = dbg.misinit_mlp(seed=5), dbg.misinit_mlp(seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(dbg.misinit_mlp(seed=6).parameters()), next(a.parameters()))
