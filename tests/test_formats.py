import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numlab import formats
from numlab.formats import FORMATS, decompose, info, neighbors, resolve_dtype, round_to, ulp

TORCH_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64,
                torch.float8_e4m3fn, torch.float8_e5m2]
NUMPY = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64}


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_facts_match_torch_finfo(dtype):
    f, fi = info(dtype), torch.finfo(dtype)
    assert f.bits == fi.bits
    assert f.eps == fi.eps
    assert f.max == fi.max
    assert f.tiny == fi.tiny
    assert f.smallest_subnormal == fi.smallest_normal * fi.eps
    assert f.exponent_bits + f.mantissa_bits + 1 == f.bits


@pytest.mark.parametrize("name", ["fp16", "fp32", "fp64"])
def test_facts_match_numpy(name):
    f, fi = info(name), np.finfo(NUMPY[name])
    assert (f.eps, f.max, f.tiny) == (float(fi.eps), float(fi.max), float(fi.smallest_normal))
    assert f.smallest_subnormal == float(fi.smallest_subnormal)
    assert (f.exponent_bits, f.mantissa_bits) == (fi.nexp, fi.nmant)


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp32", "fp64"])
def test_exp_overflow_is_the_last_finite_exp(name):
    f = info(name)
    x = torch.tensor(f.exp_overflow, dtype=f.dtype)
    assert torch.isfinite(torch.exp(x))
    up = torch.nextafter(x.double(), torch.tensor(math.inf, dtype=torch.float64))
    nxt = torch.tensor(round_to(up.item() * (1 + f.eps / 2), f.dtype), dtype=f.dtype)
    assert nxt > x and torch.isinf(torch.exp(nxt))


def test_exp_overflow_values_known_from_the_formats():
    # ln(max) rounded down to the format's grid, checked independently with mpmath.
    for name in ("fp16", "bf16", "fp32", "fp64"):
        f = info(name)
        assert f.exp_overflow <= float(mpmath.log(f.max)) + f.eps * 8
    assert info("fp16").exp_overflow == 11.0859375
    assert info("bf16").exp_overflow == 88.5


def test_formats_table_keys_and_aliases():
    assert set(FORMATS) == {"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"}
    pairs = [("half", torch.float16), ("bf16", torch.bfloat16), ("float", torch.float32),
             ("double", torch.float64), ("torch.float16", torch.float16), ("E5M2", torch.float8_e5m2)]
    for alias, dtype in pairs:
        assert resolve_dtype(alias) is dtype
    assert info("fp16") is info(torch.float16)


@pytest.mark.parametrize("bad", ["int8", "float128", torch.int32, torch.complex64, 3, None])
def test_unknown_dtype_lists_accepted_names(bad):
    with pytest.raises(ValueError, match="bf16"):
        info(bad)


@pytest.mark.parametrize("name", ["fp16", "fp32"])
@settings(max_examples=300, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False, min_value=-6e4, max_value=6e4))
def test_round_to_agrees_with_numpy(name, x):
    # numpy rounds float64 -> float16/float32 directly and correctly.
    assert round_to(x, name) == float(NUMPY[name](x))


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3", "e5m2"])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_round_to_is_the_nearest_representable(name, data):
    f = info(name)
    x = data.draw(st.floats(min_value=-f.max, max_value=f.max))
    v = round_to(x, name)
    below, above = neighbors(x, name)
    if math.isnan(above):  # v is e4m3fn's max: that format has nothing above it
        assert v == info(name).max and below < v
        above = math.inf
    if math.isnan(below):  # ... nor below -max
        assert v == -info(name).max and v < above
        below = -math.inf
    assert below < v < above or (v == 0 and below < 0 < above)
    assert abs(x - v) <= abs(x - below) and abs(x - v) <= abs(x - above)


def test_round_to_breaks_ties_to_even_and_overflows_like_ieee():
    one, eps = 1.0, info("fp16").eps
    assert round_to(one + eps / 2, "fp16") == 1.0  # tie: 1.0 has the even pattern
    assert round_to(one + 1.5 * eps, "fp16") == 1.0 + 2 * eps
    assert round_to(65519.99, "fp16") == 65504.0
    assert round_to(65520.0, "fp16") == math.inf  # max + ulp/2 rounds away
    assert round_to(-1e6, "fp16") == -math.inf
    assert math.isnan(round_to(500.0, "e4m3"))  # no inf in e4m3fn
    assert round_to(2.0**-25, "fp16") == 0.0 and round_to(2.0**-25 * 1.01, "fp16") == 2.0**-24


def test_round_to_on_tensors_matches_scalars():
    xs = torch.tensor([0.1, -3.3, 1e-8, 7e4, 1 / 3], dtype=torch.float64)
    out = round_to(xs, "bf16")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    assert out.tolist() == [round_to(x, "bf16") for x in xs.tolist()]


@pytest.mark.parametrize("name", ["fp16", "fp32", "fp64"])
@pytest.mark.parametrize("x", [1.0, 0.1, 3e-6, 1e-40, 1000.0, -2.5])
def test_ulp_matches_numpy_spacing(name, x):
    nx = NUMPY[name](x)
    if nx == 0:
        pytest.skip("underflows in this format")
    assert ulp(x, name) == abs(float(np.spacing(abs(nx))))


def test_ulp_is_eps_at_one_and_the_top_binades_step_at_max():
    for name in ("fp16", "bf16", "fp32", "fp64", "e4m3", "e5m2"):
        f = info(name)
        assert ulp(1.0, name) == f.eps
        top_binade_step = math.ldexp(f.eps, math.frexp(f.max)[1] - 1)
        assert ulp(f.max, name) == f.max - neighbors(f.max, name)[0] == top_binade_step
    assert ulp(65519, "fp16") == 32.0  # stored as max: the spacing there, not inf
    assert math.isnan(ulp(1e6, "fp16"))  # past max


def test_decompose_point_one_in_fp16():
    d = decompose(0.1, "fp16")
    assert d.bitstring == "0 01011 1001100110"
    assert d.exponent == -4 and d.kind == "normal"
    assert d.stored == float(np.float16(0.1))
    assert d.abs_error == pytest.approx(abs(d.stored - 0.1), rel=0, abs=0)
    assert 0 < d.rel_error < info("fp16").eps / 2


@pytest.mark.parametrize("x,kind", [(0.0, "zero"), (1e-6, "subnormal"), (1.0, "normal"),
                                    (1e5, "inf"), (math.nan, "nan"), (1e-9, "zero")])
def test_decompose_classes(x, kind):
    assert decompose(x, "fp16").kind == kind


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp32", "fp64"])
@settings(max_examples=100, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_decompose_bits_rebuild_the_stored_value(name, x):
    d = decompose(x, name)
    if d.kind in ("inf", "nan"):
        return
    f = info(name)
    m = int(d.mantissa_bits, 2) / 2**f.mantissa_bits
    lead = 0.0 if d.kind in ("zero", "subnormal") else 1.0
    exponent = d.exponent if d.exponent is not None else 0
    assert (-1) ** d.sign * (lead + m) * 2.0**exponent == d.stored


@pytest.mark.parametrize("fn", [round_to, ulp, decompose, neighbors])
def test_bad_inputs_name_the_argument(fn):
    with pytest.raises(ValueError, match="dtype"):
        fn(1.0, "fp12")
    with pytest.raises(TypeError, match="x must be a real number"):
        fn("0.1", "fp16")


def test_ulp_rejects_multi_element_tensors():
    with pytest.raises(ValueError, match="x must be a single number"):
        ulp(torch.ones(3), "fp16")


def test_table_prints_every_format_computed():
    text = formats.table()
    assert "11.0859375" in text and "88.5" in text and "2.22e-16" in text


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp32", "fp64"])
def test_negative_numbers_have_sign_bit_one(name):
    d = decompose(-2.5, name)
    assert d.sign == 1 and d.stored == -2.5 and d.kind == "normal" and d.exponent == 1


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp32", "fp64"])
def test_eps_by_halving_finds_the_gap_above_one(name):
    assert formats.eps_by_halving(name) == torch.finfo(resolve_dtype(name)).eps
