"""An independent, exact reference for rounding into flashbits' formats.

Written from the format definitions and IEEE 754, without calling or copying
``emulator.rounding`` (or ``emulator.formats``): the tests compare the
emulator against this module, so nothing here may depend on it.

How it decides
--------------
* Targets of at most 16 bits (bf16, fp16, fp8_e4m3, fp8_e5m2): every code's
  value is built in float64 from its sign / exponent / mantissa fields
  (:func:`decode_all`).  The non-negative finite values, in code order, are the
  ascending "grid"; one *virtual* point is appended: the value the next code
  would have with an unbounded exponent range (``max + ulp(max)``; 2^(emax+1)
  for IEEE formats, 480 for e4m3).  An input magnitude ``a`` (converted to
  float64 exactly) is bracketed by ``np.searchsorted``: ``grid[i] <= a <
  grid[i+1]``.  The midpoint of two neighbours needs at most 12 significant
  bits, so it is exact in float64 and every tie decision is an exact
  comparison.  Ties to even look at the code's last bit (= the significand's
  last bit).  A result that is the virtual point, or any ``a`` at or beyond
  it, is an overflow, resolved by the rules below.
* Target fp32 from float64 inputs: numpy's own float64 → float32 cast (the
  host's IEEE round-to-nearest-even; :func:`_check_host_rounding` verifies it
  at import, subnormals included) gives the nearest value ``y``; ``np.nextafter``
  in float32 gives the neighbour on the other side of ``x``, so ``rd``/``ru``
  are the bracketing pair; ``rna`` differs from ``rne`` only at an exact
  midpoint (exact in float64).  Target fp32 from float32 inputs is the identity.

Overflow (IEEE 754 per mode): rne and rna give ±inf; rz gives ±max; ru gives
+inf / −max; rd gives +max / −inf.  A format without inf (fp8_e4m3) gives NaN
wherever IEEE gives inf (NaN with the sign the inf would have had, as
ml_dtypes does).  ``saturate=True`` turns every overflow result and every ±inf
input into ±max finite.  ±inf inputs are exact (±inf, or NaN without inf).
NaN inputs give NaN with the input's sign.  Zero results keep the input's sign
(a negative input that rounds to zero gives −0).

Results are float64 arrays (every value of these formats is exact in float32,
so ``.astype(np.float32)`` is exact); NaN results carry the expected sign bit.
"""

from __future__ import annotations

import functools

import numpy as np

MODES = ("rne", "rna", "rz", "ru", "rd")

# name: (exponent bits, stored mantissa bits, bias, has inf)
# IEEE 754 binary16 / binary32; bfloat16 = binary32's exponent with 7 fraction
# bits; OCP 8-bit formats: E4M3 (bias 7, no inf, only S.1111.111 is NaN,
# max (1 + 6/8)·2^8 = 448) and E5M2 (IEEE-like, bias 15, max 1.75·2^15 = 57344).
PARAMS = {
    "bf16": (8, 7, 127, True),
    "fp16": (5, 10, 15, True),
    "fp8_e4m3": (4, 3, 7, False),
    "fp8_e5m2": (5, 2, 15, True),
    "fp32": (8, 23, 127, True),
}
SMALL = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")
# Every finite value of the small formats, written as a float32, has its low
# 23 - M mantissa bits zero (subnormals of the target included).


@functools.lru_cache(maxsize=None)
def decode_all(fmt: str):
    """(codes int64, float64 value of every code) of a format of at most 16 bits.

    Built from the fields: (−1)^s · (e > 0 ? 1 + m/2^M : m/2^M) · 2^(max(e,1) − bias);
    the all-ones exponent is inf (m = 0) / NaN (m ≠ 0) for IEEE formats, and only
    all-ones exponent *and* mantissa is NaN (sign kept) for e4m3.
    """
    E, M, bias, has_inf = PARAMS[fmt]
    if 1 + E + M > 16:
        raise ValueError(f"decode_all enumerates formats of at most 16 bits, not {fmt}")
    codes = np.arange(1 << (1 + E + M), dtype=np.int64)
    s = codes >> (E + M)
    e = (codes >> M) & ((1 << E) - 1)
    m = codes & ((1 << M) - 1)
    sig = np.where(e > 0, m + (1 << M), m).astype(np.float64)
    mag = np.ldexp(sig, (np.maximum(e, 1) - bias - M).astype(np.int32))
    top = e == (1 << E) - 1
    if has_inf:
        mag = np.where(top & (m == 0), np.inf, mag)
        mag = np.where(top & (m != 0), np.nan, mag)
    else:
        mag = np.where(top & (m == (1 << M) - 1), np.nan, mag)
    val = np.copysign(mag, np.where(s == 1, -1.0, 1.0))  # -0.0 and -NaN for sign 1
    return codes, val


@functools.lru_cache(maxsize=None)
def grid(fmt: str):
    """(ascending non-negative finite values + the virtual point, max finite).

    Index j of the grid is the positive code j, so ``j & 1`` is the parity of
    the significand (the virtual point's index is the code after max).
    """
    _, val = decode_all(fmt)
    half = val[: val.size // 2]
    finite = half[np.isfinite(half)]
    assert np.all(np.diff(finite) > 0) and finite[0] == 0.0
    n = finite.size
    assert np.array_equal(np.flatnonzero(np.isfinite(half)), np.arange(n))  # finite codes first
    vmax = finite[-1]
    virtual = vmax + (vmax - finite[-2])  # max and its predecessor share the top binade
    return np.append(finite, virtual), float(vmax)


def max_finite(fmt: str) -> float:
    if fmt == "fp32":
        return float(np.finfo(np.float32).max)
    return grid(fmt)[1]


def _overflow_magnitude(mode: str, neg, saturate: bool, vmax: float, has_inf: bool):
    """Magnitude an overflow gives under ``mode`` (NaN for inf without inf)."""
    if mode in ("rne", "rna", "sr"):
        to_inf = np.ones_like(neg, dtype=bool)
    elif mode == "rz":
        to_inf = np.zeros_like(neg, dtype=bool)
    elif mode == "ru":
        to_inf = ~neg
    elif mode == "rd":
        to_inf = neg.copy()
    else:
        raise ValueError(mode)
    if saturate:
        to_inf[:] = False
    return np.where(to_inf, np.inf if has_inf else np.nan, vmax)


def _round_small(x64: np.ndarray, fmt: str, mode: str, saturate: bool) -> np.ndarray:
    E, M, bias, has_inf = PARAMS[fmt]
    g, vmax = grid(fmt)
    G = g.size - 1  # index of the virtual point
    neg = np.signbit(x64)
    a = np.abs(x64)
    isnan = np.isnan(a)
    isinf = np.isinf(a)
    a_f = np.where(isnan | isinf, 0.0, a)
    i = np.searchsorted(g, a_f, side="right") - 1  # g[i] <= a < g[i+1] (i = G: a >= virtual)
    ip1 = np.minimum(i + 1, G)
    lo = g[i]
    hi = g[ip1]
    exact = lo == a_f
    mid = (lo + hi) * 0.5  # exact: at most 12 significant bits, far from float64's limits
    if mode == "rz":
        j = i
    elif mode == "ru":
        j = np.where(~neg & ~exact, i + 1, i)
    elif mode == "rd":
        j = np.where(neg & ~exact, i + 1, i)
    elif mode == "rne":
        even_lo = (i & 1) == 0
        j = np.where(a_f < mid, i, np.where(a_f > mid, i + 1, np.where(even_lo, i, i + 1)))
        j = np.where(exact, i, j)
    elif mode == "rna":
        j = np.where(~exact & (a_f >= mid), i + 1, i)
    else:
        raise ValueError(f"reference mode must be one of {MODES}, got {mode!r}")
    over = (j >= G) | (i >= G)
    mag = g[np.minimum(j, G - 1)]
    mag = np.where(over, _overflow_magnitude(mode, neg, saturate, vmax, has_inf), mag)
    inf_mag = vmax if saturate else (np.inf if has_inf else np.nan)
    mag = np.where(isinf, inf_mag, mag)
    mag = np.where(isnan, np.nan, mag)
    return np.copysign(mag, np.where(neg, -1.0, 1.0))


def _check_host_rounding():
    """The fp32 reference trusts numpy's float64 → float32 cast: make sure it is
    IEEE round-to-nearest-even with gradual underflow on this host (no FTZ/DAZ)."""
    t = 2.0 ** -149
    probes = np.array([1.5 * t, 2.5 * t, 0.5 * t, 0.5 * t * (1 + 2 ** -40), 1 + 2 ** -24,
                       1 + 3 * 2 ** -24, -(1 + 2 ** -24) * 2 ** -126, 2.0 ** -150, -(2.0 ** -151)])
    want = np.array([2 * t, 2 * t, 0.0, t, 1.0, 1 + 2 ** -22, -(2.0 ** -126), 0.0, -0.0])
    got = probes.astype(np.float32).astype(np.float64)
    assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want)), \
        "host float64->float32 cast is not IEEE RNE with subnormals"
    f = np.float32
    assert np.nextafter(f(t), f(-np.inf)) == 0 and not np.signbit(np.nextafter(f(t), f(-np.inf)))
    assert np.signbit(np.nextafter(f(-t), f(np.inf)))  # -minsub up is -0


_check_host_rounding()


def _round_fp32(x: np.ndarray, mode: str, saturate: bool) -> np.ndarray:
    f32 = np.float32
    vmax = float(np.finfo(f32).max)
    if x.dtype == np.float32:
        y = x.astype(np.float64)
    else:
        x64 = x.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            y32 = x64.astype(f32)  # IEEE RNE, overflow to ±inf
        y64 = y32.astype(np.float64)
        exact = (y64 == x64) | np.isnan(x64)
        up = np.nextafter(y32, f32(np.inf)).astype(np.float64)
        dn = np.nextafter(y32, f32(-np.inf)).astype(np.float64)
        ru = np.where(exact | (y64 > x64), y64, up)
        rd = np.where(exact | (y64 < x64), y64, dn)
        neg = np.signbit(x64)
        if mode == "rne":
            y = y64
        elif mode == "ru":
            y = ru
        elif mode == "rd":
            y = rd
        elif mode == "rz":
            y = np.where(neg, ru, rd)
        elif mode == "rna":
            with np.errstate(invalid="ignore", over="ignore"):
                tie = ~exact & (x64 == (rd + ru) * 0.5)
            y = np.where(tie, np.where(neg, rd, ru), y64)
        else:
            raise ValueError(f"reference mode must be one of {MODES}, got {mode!r}")
        y = np.where(np.isnan(x64), np.nan, y)
    if saturate:
        y = np.where(np.isinf(y), vmax, y)
    return np.copysign(y, np.where(np.signbit(x), -1.0, 1.0))


def round_ref(x, fmt: str, mode: str, saturate: bool = False) -> np.ndarray:
    """The exact result of rounding the float32/float64 array ``x`` into ``fmt``
    by ``mode`` (``rne``, ``rna``, ``rz``, ``ru``, ``rd``), as float64."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError("reference takes float32 or float64 arrays")
    if mode not in MODES:
        raise ValueError(f"reference mode must be one of {MODES}, got {mode!r}")
    if fmt != "fp32" and fmt not in SMALL:
        raise ValueError(f"reference covers {SMALL + ('fp32',)}, not {fmt!r}")
    # signalling NaNs raise 'invalid' when widened; nextafter(max) overflows to inf on purpose
    with np.errstate(invalid="ignore", over="ignore"):
        if fmt == "fp32":
            return _round_fp32(x.reshape(-1), mode, saturate).reshape(x.shape)
        return _round_small(x.reshape(-1).astype(np.float64), fmt, mode, saturate).reshape(x.shape)


def neighbours(x, fmt: str):
    """(toward-zero neighbour, away-from-zero neighbour) magnitudes of |x| in a
    small format, as float64; the away neighbour may be the virtual point
    (meaning: overflow).  For exact values both are |x|."""
    g, _ = grid(fmt)
    a = np.abs(np.asarray(x, dtype=np.float64))
    i = np.searchsorted(g, a, side="right") - 1
    lo = g[i]
    hi = np.where(lo == a, lo, g[np.minimum(i + 1, g.size - 1)])
    return lo, hi


def mismatches(got, ref) -> np.ndarray:
    """Indices where the float32 result ``got`` differs from the float64 reference:
    raw bits unequal, or (for a NaN reference) not a NaN of the same sign."""
    got = np.asarray(got).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    assert got.dtype == np.float32, got.dtype
    refnan = np.isnan(ref)
    ref32 = np.where(refnan, 0.0, ref).astype(np.float32)
    bits_ok = got.view(np.uint32) == ref32.view(np.uint32)
    nan_ok = np.isnan(got) & (np.signbit(got) == np.signbit(ref))
    return np.flatnonzero(~np.where(refnan, nan_ok, bits_ok))


def describe(x, got, ref, idx, limit: int = 8) -> str:
    """Human-readable listing of the first mismatches (input, result, reference bits)."""
    x = np.asarray(x).reshape(-1)
    got = np.asarray(got).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    lines = [f"{idx.size} mismatches of {x.size}:"]
    xb = x.view(np.uint64 if x.dtype == np.float64 else np.uint32)
    for k in idx[:limit]:
        lines.append(f"  x={x[k]!r} (0x{int(xb[k]):x}) got={got[k]!r} (0x{int(got.view(np.uint32)[k]):08x})"
                     f" want={ref[k]!r} (sign {int(np.signbit(ref[k]))})")
    return "\n".join(lines)
