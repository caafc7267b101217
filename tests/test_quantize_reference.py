"""emulator.quantize against the independent reference (tests/reference_rounding.py).

For every target format (bf16, fp16, fp8_e4m3, fp8_e5m2, fp32), every
deterministic mode (rne, rna, rz, ru, rd), saturate off and on, and both input
dtypes (float64 → the generic integer path; float32 → the fast float32 path),
at least 2^20 inputs are compared bit for bit (NaN: NaN of the same sign).

The inputs of a small target (at most 16 bits) contain, in both signs:
every finite value of the format; every midpoint of two neighbouring values
(an exact tie, including the tie between max finite and the first overflowing
value, and the tie between 0 and the smallest subnormal); each midpoint and
each value ± one ulp *of the input type* (near-ties and near-exact values);
random values with random mantissas over every binade from below the
smallest subnormal to beyond overflow; for float32 inputs the 2^16 consecutive
float32 values from max finite upward; input-type subnormals; ±0, ±inf, and
NaNs with assorted payloads.  For fp32 from float64 the same structure is
built around random float32 values of every binade (subnormals included) and
the overflow and underflow boundaries; fp32 from float32 is the identity except
for NaN payloads.  The fp64 target is checked to be the identity (NaN: same
sign; saturate: ±inf → ±max).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import reference_rounding as ref
from flashbits.emulator import quantize

FORMATS = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp32")
DTYPES = (np.float64, np.float32)
N_MIN = 1 << 20

_UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def _specials(dtype) -> np.ndarray:
    """±0, ±inf, NaNs (quiet, signalling, payloads, both signs), the input type's
    extremes (max, smallest normal and subnormal)."""
    fi = np.finfo(dtype)
    if dtype == np.float32:
        nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF,
                         0x7FA00000, 0x7FC00001, 0x7FBFFFFF], np.uint32).view(np.float32)
    else:
        nans = np.array([0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001,
                         0xFFF0000000000001, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF,
                         0x7FF4000000000000, 0x7FF8000000000001, 0x7FF7FFFFFFFFFFFF],
                        np.uint64).view(np.float64)
    pos = np.array([0.0, np.inf, fi.max, fi.smallest_normal, fi.smallest_subnormal,
                    3 * fi.smallest_subnormal, fi.smallest_normal - fi.smallest_subnormal], dtype)
    return np.concatenate([pos, -pos, nans]).astype(dtype)


def _random_binades(rng, n, dtype, e_lo, e_hi) -> np.ndarray:
    """n random values, sign random, unbiased exponent uniform in [e_lo, e_hi],
    every mantissa bit random (values below the input type's normal range come
    out as its subnormals, via ldexp)."""
    nm = np.finfo(dtype).nmant
    mant = rng.integers(0, 1 << nm, n, dtype=np.uint64).astype(np.float64)
    sig = 1.0 + np.ldexp(mant, -nm)  # exact: nm <= 52
    e = rng.integers(e_lo, e_hi + 1, n)
    with np.errstate(over="ignore"):
        v = np.ldexp(sig, e).astype(dtype)  # float32 rounding only where below its normal range
    return np.where(rng.integers(0, 2, n) == 1, -v, v).astype(dtype)


def _random_bits(rng, n, dtype) -> np.ndarray:
    u = _UINT[np.dtype(dtype)]
    hi = 1 << (8 * np.dtype(dtype).itemsize)
    if u is np.uint64:
        return rng.integers(0, hi, n, dtype=np.uint64, endpoint=False).view(np.float64)
    return rng.integers(0, hi, n, dtype=np.uint64).astype(np.uint32).view(np.float32)


def _both_signs(v):
    return np.concatenate([v, -v])


def _near(v, dtype):
    """v ± one ulp of the input type."""
    v = v.astype(dtype)
    return np.concatenate([np.nextafter(v, dtype(np.inf)), np.nextafter(v, dtype(-np.inf))])


@functools.lru_cache(maxsize=None)
def inputs(fmt: str, dtype) -> np.ndarray:
    """The >= 2^20 test inputs of one (target, input dtype); see the module docstring."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf / NaN are wanted here
        return _inputs(fmt, dtype)


def _inputs(fmt: str, dtype) -> np.ndarray:
    dtype = np.dtype(dtype).type
    rng = np.random.default_rng([7, FORMATS.index(fmt), np.dtype(dtype).itemsize])
    parts = [_specials(dtype)]
    if fmt != "fp32":
        g, vmax = ref.grid(fmt)
        E, M, bias, _ = ref.PARAMS[fmt]
        values = g  # every finite value and the first overflowing one
        mids = (g[1:] + g[:-1]) * 0.5  # every exact tie, incl. (max, overflow) and (0, min subnormal)
        assert np.array_equal(mids.astype(dtype).astype(np.float64), mids)  # exact in the input type
        parts += [_both_signs(values.astype(dtype)), _both_signs(mids.astype(dtype)),
                  _both_signs(_near(mids, dtype)), _both_signs(_near(values, dtype)),
                  _both_signs(np.array([2 * g[-1], 1e30, 1e-30, 2.0 ** -150, 2.0 ** -151], dtype))]
        if dtype == np.float32:
            # every float32 from max finite up 2^16 codes (capped at float32's max): the
            # overflow boundary densely (for bf16 this is almost all finite overflow there is)
            b0 = int(np.float32(vmax).view(np.uint32))
            band = np.arange(b0, min(b0 + (1 << 16), 0x7F800000), dtype=np.uint32).view(np.float32)
            parts.append(_both_signs(band))
        e_lo, e_hi = (1 - bias) - M - 4, (2 ** E - 1 - bias) + 4
    else:
        # float32 values of every binade (subnormals too), their float64 midpoints
        fb = rng.integers(0, 0x7F800000, 1 << 16, dtype=np.uint64).astype(np.uint32)
        fb = np.concatenate([fb, np.arange(0, 64, dtype=np.uint32), np.arange(0x7F7FFFC0, 0x7F800000,
                                                                              dtype=np.uint32)])
        f = fb.view(np.float32).astype(np.float64)
        nxt = np.nextafter(fb.view(np.float32), np.float32(np.inf)).astype(np.float64)  # may be inf
        with np.errstate(invalid="ignore", over="ignore"):
            mids = np.where(np.isinf(nxt), f + (f - np.nextafter(fb.view(np.float32),
                                                                    np.float32(0)).astype(np.float64)) * 0.5,
                            (f + nxt) * 0.5)  # last one: the tie between max and 2^128
        if dtype == np.float64:
            parts += [_both_signs(f), _both_signs(mids), _both_signs(_near(mids, np.float64)),
                      _both_signs(_near(f, np.float64))]
        else:
            parts += [_both_signs(fb.view(np.float32)), _both_signs(_near(f, np.float32))]
        e_lo, e_hi = -160, 135
    parts.append(_random_bits(rng, 1 << 15, dtype))  # anything, incl. NaN payloads and huge/tiny
    have = sum(p.size for p in parts)
    parts.append(_random_binades(rng, max(N_MIN - have, 1 << 18), dtype, e_lo, e_hi))
    x = np.concatenate(parts).astype(dtype)
    assert x.size >= N_MIN and x.dtype == dtype
    return x


@pytest.mark.parametrize("saturate", [False, True], ids=["nosat", "sat"])
@pytest.mark.parametrize("mode", ref.MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize_matches_reference(fmt, dtype, mode, saturate):
    x = inputs(fmt, dtype)
    got = quantize(x, fmt, mode, saturate=saturate)
    assert got.dtype == np.float32 and got.shape == x.shape
    want = ref.round_ref(x, fmt, mode, saturate)
    bad = ref.mismatches(got, want)
    assert bad.size == 0, ref.describe(x, got, want, bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_inputs_cover_the_cases(fmt):
    """The input sets really contain what the module docstring promises (in
    both dtypes): exact ties of the target in both signs, subnormal-range and
    overflowing values, and the specials."""
    for dtype in DTYPES:
        x = inputs(fmt, dtype)
        with np.errstate(invalid="ignore"):  # signalling NaNs raise 'invalid' when widened
            x64 = x.astype(np.float64)
        vmax = ref.max_finite(fmt)
        fin = np.isfinite(x64)
        assert np.isnan(x64).sum() >= 9 and np.isposinf(x64).any() and np.isneginf(x64).any()
        assert (x64 == 0).sum() >= 2 and np.signbit(x64[x64 == 0]).any()
        if not (fmt == "fp32" and dtype == np.float32):  # no finite float32 exceeds fp32's max
            assert (fin & (np.abs(x64) > vmax)).sum() > 1000
        if fmt != "fp32":
            g, _ = ref.grid(fmt)
            mids = (g[1:] + g[:-1]) * 0.5
            for s in (1.0, -1.0):
                assert np.isin(s * mids, x64).all()
            sub = fin & (x64 != 0) & (np.abs(x64) < g[1 << ref.PARAMS[fmt][1]])
            assert sub.sum() > 1000  # below the target's smallest normal
        else:
            assert ((x64 != 0) & (np.abs(x64) < np.finfo(np.float32).smallest_normal)).sum() > 1000


def test_ties_really_are_ties():
    """A check of the reference on hand-computed cases (bf16 has 8 significant bits):
    1 + 2^-8 is the midpoint of 1 and 1 + 2^-7; 1 + 3·2^-8 of 1 + 2^-7 and 1 + 2^-6."""
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -8 + 2 ** -30], np.float64)
    want = {
        "rne": [1.0, 1 + 2 ** -6, -1.0, 1 + 2 ** -7],
        "rna": [1 + 2 ** -7, 1 + 2 ** -6, -(1 + 2 ** -7), 1 + 2 ** -7],
        "rz": [1.0, 1 + 2 ** -7, -1.0, 1.0],
        "ru": [1 + 2 ** -7, 1 + 2 ** -6, -1.0, 1 + 2 ** -7],
        "rd": [1.0, 1 + 2 ** -7, -(1 + 2 ** -7), 1.0],
    }
    for mode, w in want.items():
        assert np.array_equal(ref.round_ref(x, "bf16", mode), w), mode
        assert np.array_equal(quantize(x, "bf16", mode), np.array(w, np.float32)), mode


@pytest.mark.parametrize("mode", ref.MODES)
def test_fp64_target_is_exact(mode):
    """Every float32/float64 value is an fp64 value: quantize to fp64 returns it
    unchanged (float64), NaN as a NaN of the same sign, ±inf as ±inf (±max with
    saturate)."""
    rng = np.random.default_rng(9)
    b = np.concatenate([rng.integers(0, 1 << 64, 1 << 18, dtype=np.uint64, endpoint=False),
                        np.array([0, 1 << 63, 0x7FF0000000000000, 0xFFF0000000000000,
                                  0x7FF0000000000001, 0xFFF8000000000000, 1], np.uint64)])
    x = b.view(np.float64)
    x32 = _random_bits(rng, 1 << 18, np.float32)
    for xs in (x, x32):
        with np.errstate(invalid="ignore"):
            x64 = xs.astype(np.float64)
        nan = np.isnan(x64)
        for sat in (False, True):
            q = quantize(xs, "fp64", mode, saturate=sat)
            assert q.dtype == np.float64
            want = np.where(np.isinf(x64), np.copysign(np.finfo(np.float64).max, x64), x64) if sat else x64
            assert np.array_equal(q[~nan].view(np.uint64), want[~nan].view(np.uint64))
            assert np.isnan(q[nan]).all() and np.array_equal(np.signbit(q[nan]), np.signbit(x64[nan]))
