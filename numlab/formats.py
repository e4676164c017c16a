"""Floating-point formats: their facts, their bits, their rounding.

Every figure here is computed from the format itself, by reading bit patterns through
``Tensor.view`` and by doing arithmetic in that format, never typed in. The tests compare
the results with ``torch.finfo`` and ``numpy.finfo``.

A binary floating-point number with ``e`` exponent bits and ``m`` mantissa bits stores
``(-1)**s * 1.f * 2**(E - bias)`` with ``bias = 2**(e-1) - 1`` (normal numbers) or
``(-1)**s * 0.f * 2**(1 - bias)`` when the exponent field ``E`` is zero (subnormals).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

# Every accepted spelling -> torch dtype. Canonical names are torch's own.
_ALIASES: dict[str, torch.dtype] = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "single": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    "float8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn": torch.float8_e4m3fn,
    "e4m3": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2, "fp8_e5m2": torch.float8_e5m2, "e5m2": torch.float8_e5m2,
}
# Short labels used in tables and widgets.
SHORT = {
    torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
    torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2",
}
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# The formats torch can compute in on every device (fp8 has storage and casts only).
COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_dtype(dtype: torch.dtype | str, allowed=None, name: str = "dtype") -> torch.dtype:
    """A torch floating dtype from a dtype or any accepted name ("fp16", "half", "bf16", ...).

    ``allowed`` (a sequence of dtypes) narrows what the caller can use; the error then
    names ``name`` and the formats it accepts. This is numlab's one dtype check.
    """
    key = dtype.lower().removeprefix("torch.") if isinstance(dtype, str) else None
    if key in _ALIASES:
        dt = _ALIASES[key]
    elif isinstance(dtype, torch.dtype) and dtype in SHORT:
        dt = dtype
    else:
        raise ValueError(
            f"{name} must be a floating torch dtype or one of {sorted(_ALIASES)}, got {dtype!r}"
        )
    if allowed is not None and dt not in allowed:
        why = (" (torch has no arithmetic for fp8 on the CPU; numlab.formats shows fp8's "
               "facts and rounding)") if dt.itemsize == 1 else ""
        raise ValueError(f"{name} must be one of {', '.join(SHORT[d] for d in allowed)} here, "
                         f"got {dtype!r}{why}")
    return dt


def short_name(dtype: torch.dtype | str) -> str:
    """``"fp16"``, ``"bf16"``, ``"fp32"``, ... for any accepted dtype or name."""
    return SHORT[resolve_dtype(dtype)]


# --- bit patterns ------------------------------------------------------------------------
def _bits(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() * 8


def _patterns_to_values(patterns: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unsigned bit patterns (int64 tensor) -> their values in ``dtype``, as float64."""
    bits = _bits(dtype)
    int_type = _INT_OF_SIZE[bits // 8]
    signed = patterns.to(torch.int64)
    if int_type is not torch.uint8 and bits < 64:
        # Two's complement: patterns with the top bit set are negative in the signed view.
        signed = torch.where(signed >= 1 << (bits - 1), signed - (1 << bits), signed)
    return signed.to(int_type).view(dtype).to(torch.float64)


def _values_to_patterns(values: torch.Tensor) -> torch.Tensor:
    """Values already in a float dtype -> their unsigned bit patterns (int64)."""
    bits = _bits(values.dtype)
    raw = values.contiguous().view(_INT_OF_SIZE[bits // 8]).to(torch.int64)
    if bits < 64:
        raw = raw & ((1 << bits) - 1)
    return raw


def _value(pattern: int, dtype: torch.dtype) -> float:
    if pattern >= 1 << 63:  # float64 sign bit: express it in int64's two's complement
        pattern -= 1 << 64
    return _patterns_to_values(torch.tensor([pattern]), dtype).item()


def _pattern(value: float, dtype: torch.dtype) -> int:
    """Unsigned bit pattern of a value that is exactly representable in ``dtype``."""
    raw = int(_values_to_patterns(torch.tensor([value], dtype=torch.float64).to(dtype)).item())
    return raw & ((1 << _bits(dtype)) - 1)  # float64's int64 view is signed: unsign it


def _last_true(lo: int, hi: int, predicate) -> int:
    """Largest n in [lo, hi] with predicate(n), for a predicate true up to some point then false."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if predicate(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _exp_in_format(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """exp computed in ``dtype`` where torch has the kernel; otherwise exp in float64 rounded once."""
    try:
        return torch.exp(x.to(dtype)).to(torch.float64)
    except (RuntimeError, NotImplementedError):  # float8 formats have no exp kernel
        return round_to(torch.exp(x.to(torch.float64)), dtype)


# --- facts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FloatFormat:
    """The facts of one binary floating-point format, each computed in that format."""

    name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    eps: float
    max: float
    tiny: float
    smallest_subnormal: float
    exp_overflow: float
    has_inf: bool

    @property
    def dtype(self) -> torch.dtype:
        return _ALIASES[self.name]

    @property
    def short(self) -> str:
        return SHORT[self.dtype]

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def decimal_digits(self) -> float:
        """About how many significant decimal digits the mantissa holds: -log10(eps)."""
        return -math.log10(self.eps)

    def __repr__(self):
        return (
            f"FloatFormat({self.short}: {self.bits} bits = 1 sign + {self.exponent_bits} exponent"
            f" + {self.mantissa_bits} mantissa; eps={self.eps:.3g}, max={self.max:.4g}, "
            f"tiny={self.tiny:.3g}, smallest_subnormal={self.smallest_subnormal:.3g}, "
            f"exp_overflow={self.exp_overflow:.10g})"
        )


@functools.cache
def _limits(dtype: torch.dtype) -> tuple[int, int, float, bool]:
    """(mantissa bits, pattern of max, max, has_inf), read off the bit patterns."""
    bits = _bits(dtype)
    eps = _value(_pattern(1.0, dtype) + 1, dtype) - 1.0  # gap from 1 to the next number
    max_pattern = _last_true(1, (1 << (bits - 1)) - 1, lambda p: math.isfinite(_value(p, dtype)))
    after_max = _value(max_pattern + 1, dtype) if max_pattern + 1 < 1 << (bits - 1) else math.nan
    return round(-math.log2(eps)), max_pattern, _value(max_pattern, dtype), math.isinf(after_max)


def _exp_overflow(dtype: torch.dtype, max_pattern: int, largest: float) -> float:
    """Largest x of ``dtype`` such that exp, computed in ``dtype``, is finite at x and at
    every representable value below it.

    8- and 16-bit formats: exp of every non-negative value, all at once, so nothing is
    assumed about where finiteness switches. fp32/fp64 (too many values to try): start
    from log(max) rounded to the format and walk to the last finite neighbour, which
    assumes only that the exp kernel is monotone near log(max).
    """
    def finite(values: torch.Tensor) -> torch.Tensor:
        y = _exp_in_format(values, dtype)
        return torch.isfinite(y) & (y <= largest)

    if _bits(dtype) <= 16:
        values = _patterns_to_values(torch.arange(max_pattern + 1), dtype)
        ok = finite(values)
        return values[-1].item() if bool(ok.all()) else values[int(torch.argmin(ok.int())) - 1].item()
    p = _pattern(round_to(math.log(largest), dtype), dtype)
    while bool(finite(torch.tensor([_value(p + 1, dtype)], dtype=torch.float64))):
        p += 1
    while not bool(finite(torch.tensor([_value(p, dtype)], dtype=torch.float64))):
        p -= 1
    return _value(p, dtype)


@functools.cache
def _info(dtype: torch.dtype) -> FloatFormat:
    bits = _bits(dtype)
    mantissa_bits, max_pattern, largest, has_inf = _limits(dtype)

    return FloatFormat(
        name=str(dtype).removeprefix("torch."),
        bits=bits,
        exponent_bits=bits - 1 - mantissa_bits,
        mantissa_bits=mantissa_bits,
        eps=2.0**-mantissa_bits,
        max=largest,
        tiny=_value(1 << mantissa_bits, dtype),  # exponent field 1, mantissa 0
        smallest_subnormal=_value(1, dtype),  # the last bit alone
        exp_overflow=_exp_overflow(dtype, max_pattern, largest),
        has_inf=has_inf,
    )


def info(dtype: torch.dtype | str) -> FloatFormat:
    """Facts of a format, from a torch dtype or a name such as "fp16", "bf16", "double"."""
    return _info(resolve_dtype(dtype))




# --- rounding ----------------------------------------------------------------------------
def round_to(x, dtype: torch.dtype | str):
    """The representable value of ``dtype`` nearest to ``x`` (ties to even), as float64.

    Accepts a Python number or a tensor (returns the same kind). Overflow follows IEEE 754:
    magnitudes from ``max + ulp(max)/2`` up become inf (NaN in formats without inf, such as
    float8_e4m3fn, where torch's ``.to()`` saturates to max instead). The rounding is done
    here rather than trusted to a cast, because a float64 -> float16 cast through float32
    can round twice.
    """
    dtype = resolve_dtype(dtype)
    scalar = not isinstance(x, torch.Tensor)
    if isinstance(x, bool) or not isinstance(x, int | float | torch.Tensor) or (
        not scalar and (x.is_complex() or x.dtype == torch.bool)
    ):
        raise TypeError(f"x must be a real number or a real tensor, got {type(x).__name__}")
    x64 = torch.as_tensor(x, dtype=torch.float64) if scalar else x.to(torch.float64)
    if dtype == torch.float64:
        return float(x64) if scalar else x64.clone()
    _, max_pattern, largest, has_inf = _limits(dtype)
    mag = x64.abs()
    # A cast gets within one step of the answer; the neighbours settle it exactly.
    first_guess = torch.where(torch.isfinite(mag), mag.clamp(max=largest), mag).to(dtype)
    p = _values_to_patterns(first_guess).clamp(max=max_pattern)
    pats = torch.stack([(p - 1).clamp(min=0), p, p + 1])
    cands = _patterns_to_values(pats.clamp(max=max_pattern), dtype)
    # Past max stands "the next number if the exponent went on": max + ulp(max).
    cands[2] = torch.where(p >= max_pattern, 2 * largest - _value(max_pattern - 1, dtype), cands[2])
    # Beyond 2 * max the float64 distances to max and to max + ulp(max) round to the same
    # number (a false tie that went to max); every such value overflows anyway, so it is
    # measured from 2 * max instead, where both distances are exact (Sterbenz).
    dist = (cands - mag.clamp(max=2 * largest)).abs()
    nearest = dist == dist.min(0).values
    # Nearest wins; of two equally near (neighbours, so one is even), the even pattern wins.
    best = torch.argmin(torch.where(nearest, (pats % 2).to(torch.float64), 2.0), 0)
    out = cands.gather(0, best.unsqueeze(0)).squeeze(0)
    too_big = ((best == 2) & (p >= max_pattern)) | torch.isinf(mag)
    out = torch.where(too_big, math.inf if has_inf else math.nan, out)
    out = torch.where(torch.isnan(mag), math.nan, out)
    out = torch.copysign(out, x64)
    return float(out) if scalar else out


def neighbors(x: float, dtype: torch.dtype | str) -> tuple[float, float]:
    """The representable values just below and just above ``round_to(x, dtype)``.

    Above ``max`` stands inf in formats that have it and NaN ("no such number") in those
    that do not (float8_e4m3fn).
    """
    fmt = info(dtype)
    x = _finite_number(x, "x")
    stored = round_to(x, fmt.dtype)
    past = math.inf if fmt.has_inf else math.nan  # what lies beyond max
    if not math.isfinite(stored):  # x rounded past max (or was inf/NaN)
        pair = (fmt.max, past)
        return pair if math.copysign(1, x) > 0 else (-pair[1], -pair[0])
    p = _pattern(abs(stored), fmt.dtype)
    down = _value(p - 1, fmt.dtype) if p > 0 else -_value(1, fmt.dtype)
    up = _value(p + 1, fmt.dtype) if abs(stored) < fmt.max else past
    if stored < 0 or (stored == 0 and math.copysign(1, stored) < 0):
        return -up, -down
    return down, up


def ulp(x: float, dtype: torch.dtype | str) -> float:
    """The spacing of the format's numbers at ``|round_to(x)|``: the gap to the next larger
    magnitude, and at ``max`` (where there is none) the gap to the one below, which is the
    same spacing (numpy.spacing says inf there; the grid's step is what a reader wants).
    NaN where x rounds past max."""
    fmt = info(dtype)
    stored = abs(round_to(_finite_number(x, "x"), fmt.dtype))
    if not math.isfinite(stored):
        return math.nan
    p = _pattern(stored, fmt.dtype)
    if stored == fmt.max:
        return stored - _value(p - 1, fmt.dtype)
    return _value(p + 1, fmt.dtype) - stored


def _finite_number(x, name: str) -> float:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(x.shape)}")
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x)


# --- one number, bit by bit --------------------------------------------------------------
@dataclass(frozen=True)
class Decomposition:
    """How one number is stored in one format."""

    x: float
    format: str
    sign: int
    exponent_bits: str
    exponent: int | None
    mantissa_bits: str
    stored: float
    abs_error: float
    rel_error: float
    kind: str

    @property
    def bitstring(self) -> str:
        return f"{self.sign} {self.exponent_bits} {self.mantissa_bits}"

    def __repr__(self):
        exp = "-" if self.exponent is None else f"2^{self.exponent}"
        return (
            f"Decomposition({self.x!r} in {self.format}: bits {self.bitstring}, {self.kind}, "
            f"exponent {exp}, stored {self.stored!r}, rel. error {self.rel_error:.3g})"
        )


def decompose(x: float, dtype: torch.dtype | str) -> Decomposition:
    """Sign, exponent and mantissa bits of ``x`` stored in ``dtype``, and the rounding error."""
    fmt = info(dtype)
    x = _finite_or_special(x)
    stored = round_to(x, fmt.dtype)
    pattern = _pattern(stored, fmt.dtype) if not math.isnan(stored) else _nan_pattern(fmt)
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    sign = pattern >> (fmt.bits - 1)
    field = (pattern >> m) & ((1 << e) - 1)
    mantissa = pattern & ((1 << m) - 1)
    if math.isnan(stored):
        kind, exponent = "nan", None
    elif math.isinf(stored):
        kind, exponent = "inf", None
    elif field == 0:
        kind = "zero" if mantissa == 0 else "subnormal"
        exponent = None if mantissa == 0 else 1 - fmt.bias  # subnormals share 2**(1-bias)
    else:
        kind, exponent = "normal", field - fmt.bias
    abs_error = abs(stored - x) if math.isfinite(stored) else math.inf
    if math.isnan(x):
        abs_error = math.nan
    rel_error = abs_error / abs(x) if x not in (0.0,) and math.isfinite(x) else (
        0.0 if x == 0.0 else math.nan)
    return Decomposition(
        x=x, format=fmt.short, sign=sign,
        exponent_bits=format(field, f"0{e}b"), exponent=exponent,
        mantissa_bits=format(mantissa, f"0{m}b") if m else "",
        stored=stored, abs_error=abs_error, rel_error=rel_error, kind=kind,
    )


def _finite_or_special(x) -> float:
    if isinstance(x, str):
        raise TypeError(f"x must be a real number, got the string {x!r}; use float({x!r})")
    return _finite_number(x, "x")


def _nan_pattern(fmt: FloatFormat) -> int:
    return _pattern(math.nan, fmt.dtype) & ((1 << (fmt.bits - 1)) - 1)


def add_in_format(a: float, b: float, dtype: torch.dtype | str) -> float:
    """a + b rounded once to ``dtype``, as that format's hardware addition computes it.

    torch's own kernel where it has one; the 8-bit formats have none on the CPU, so there
    the sum is formed in float64 (exact for two fp8 values: their bits span fewer than 53
    places) and rounded once by ``round_to``, which is the correctly rounded fp8 sum.
    """
    dtype = resolve_dtype(dtype)
    a, b = round_to(_finite_number(a, "a"), dtype), round_to(_finite_number(b, "b"), dtype)
    if _bits(dtype) > 8:
        return (torch.tensor(a, dtype=dtype) + torch.tensor(b, dtype=dtype)).item()
    return round_to(a + b, dtype)


def eps_by_halving(dtype: torch.dtype | str) -> float:
    """Machine epsilon found the experimental way: halve a candidate until adding half of it
    to 1, with the addition done in ``dtype`` itself, no longer changes 1."""
    dtype = resolve_dtype(dtype)
    eps = 1.0
    while add_in_format(1.0, eps / 2, dtype) != 1.0:  # rounding in `dtype`, not in float64
        eps /= 2
    return eps


def table(dtypes=("fp16", "bf16", "fp32", "fp64")) -> str:
    """A plain-text table of the formats' facts, for printing in a notebook."""
    if isinstance(dtypes, str | torch.dtype) or not isinstance(dtypes, tuple | list):
        raise TypeError(f"dtypes must be a list or tuple of formats, e.g. ['fp16'], got {dtypes!r}")
    rows = [("format", "bits", "e/m", "eps", "max", "tiny (normal)", "subnormal", "exp overflow")]
    for f in map(info, dtypes):
        rows.append((
            f.short, str(f.bits), f"{f.exponent_bits}/{f.mantissa_bits}", f"{f.eps:.3g}",
            f"{f.max:.4g}", f"{f.tiny:.3g}", f"{f.smallest_subnormal:.3g}", f"{f.exp_overflow:.10g}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


# Canonical (torch) name -> facts, for every format numlab knows.
FORMATS: dict[str, FloatFormat] = {
    f.name: f for f in map(info, ("fp16", "bf16", "fp32", "fp64", "e4m3", "e5m2"))
}
