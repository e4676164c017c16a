"""numlab.formats against casts nobody here wrote: ml_dtypes (bfloat16, fp8) and numpy (fp16,
fp32), over every value of the 8- and 16-bit formats and the whole exponent range of fp32."""
import math

import ml_dtypes
import numpy as np
import pytest
import torch

from numlab import formats
from numlab.formats import info, neighbors, round_to, ulp

ORACLE = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16,
          "e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
UINT = {1: np.uint8, 2: np.uint16}


def _all_values(name) -> np.ndarray:
    """Every bit pattern of the format, decoded by the oracle, as float64 (NaNs dropped)."""
    dt = np.dtype(ORACLE[name])
    v = np.arange(1 << (8 * dt.itemsize), dtype=np.uint64).astype(UINT[dt.itemsize]).view(dt)
    with np.errstate(invalid="ignore"):
        v = v.astype(np.float64)
    return np.unique(v[~np.isnan(v)])


def _probes(name) -> np.ndarray:
    """Each value, each midpoint between neighbours and the float64 numbers just around
    it, and values far past the maximum: where rounding is hardest."""
    v = _all_values(name)
    finite = v[np.isfinite(v)]
    mid = (finite[:-1] + finite[1:]) / 2
    fmax = finite.max()
    top = fmax + (fmax - finite[finite < fmax].max()) / 2  # max + ulp(max)/2
    edges = np.array([top, fmax * 1.5, 2 * fmax, 4 * fmax, 1e20, 1e38, 1e100, 1e300, 1.7e308])
    edges = np.concatenate([edges, -edges])
    pts = np.concatenate([finite, mid, edges])
    return np.concatenate([pts, np.nextafter(pts, np.inf), np.nextafter(pts, -np.inf)])


@pytest.mark.parametrize("name", list(ORACLE))
def test_round_to_matches_the_cast_everywhere(name):
    x = _probes(name)
    with np.errstate(over="ignore"):
        want = x.astype(ORACLE[name]).astype(np.float64)
    got = round_to(torch.from_numpy(x), name).numpy()
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{(~same).sum()} of {x.size} differ, e.g. x={x[~same][:3]} " \
                       f"got {got[~same][:3]} want {want[~same][:3]}"


def test_round_to_overflows_far_past_the_maximum():
    # Before the fix these came back finite: the float64 distances to max and to
    # max + ulp(max) tied and the tie went to max.
    assert round_to(1e20, "fp16") == math.inf
    assert round_to(1e100, "fp32") == math.inf
    assert math.isnan(round_to(1e20, "e4m3"))
    assert round_to(-1e300, "bf16") == -math.inf


@pytest.mark.parametrize("name", list(ORACLE))
def test_bit_decoding_matches_the_oracle_for_every_pattern(name):
    dt = np.dtype(ORACLE[name])
    pats = np.arange(1 << (8 * dt.itemsize), dtype=np.int64)
    with np.errstate(invalid="ignore"):
        want = pats.astype(UINT[dt.itemsize]).view(dt).astype(np.float64)
    got = formats._patterns_to_values(torch.from_numpy(pats), info(name).dtype).numpy()
    assert ((got == want) | (np.isnan(got) & np.isnan(want))).all()


@pytest.mark.parametrize("name", list(ORACLE))
def test_neighbors_and_ulp_match_the_oracle_grid(name):
    v = _all_values(name)
    finite = v[np.isfinite(v) & (v > 0)]
    fmt = info(name)
    rng = np.random.default_rng(0)
    for x in rng.choice(finite[:-1], size=64, replace=False):
        i = np.searchsorted(finite, x)
        below = finite[i - 1] if i else 0.0
        assert neighbors(float(x), name) == (below, finite[i + 1])
        assert ulp(float(x), name) == finite[i + 1] - x
    assert ulp(fmt.max, name) == fmt.max - finite[-2]
    above = neighbors(fmt.max, name)[1]
    assert above == math.inf if fmt.has_inf else math.isnan(above)  # e4m3fn has no inf


def test_round_to_fp32_matches_numpy_over_the_whole_exponent_range():
    rng = np.random.default_rng(1)
    mant = rng.uniform(1, 2, 20000) * rng.choice([-1, 1], 20000)
    x = np.ldexp(mant, rng.integers(-160, 140, 20000))  # subnormals to far past max
    with np.errstate(over="ignore"):
        x = np.concatenate([x, np.float64(np.float32(x[:5000])) * (1 + 2.0**-24)])  # near ties
    with np.errstate(over="ignore"):
        want = x.astype(np.float32).astype(np.float64)
    got = round_to(torch.from_numpy(x), "fp32").numpy()
    assert np.array_equal(got, want)
    assert np.array_equal(round_to(torch.from_numpy(x), "fp64").numpy(), x)


@pytest.mark.parametrize("name", list(ORACLE))
def test_exp_overflow_is_the_last_value_whose_exp_is_finite(name):
    # The oracle: exp of every non-negative value of the format, in float64, cast by the
    # oracle. (torch's fp16/bf16 kernels compute in fp32 and round once: the same answer.)
    v = _all_values(name)
    v = v[np.isfinite(v) & (v >= 0)]
    with np.errstate(over="ignore"):
        e = np.exp(v).astype(ORACLE[name]).astype(np.float64)
    want = v[np.argmin(np.isfinite(e)) - 1]
    assert info(name).exp_overflow == want


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp32", "fp64", "e4m3", "e5m2"])
def test_eps_by_halving_works_for_every_format(name):
    assert formats.eps_by_halving(name) == info(name).eps
