"""Stochastic rounding (``rounding='sr'``) and its Philox random words.

Contract under test (emulator.rounding's docstring): element i draws the word
w = Philox4x32-10(key = seed, counter = offset + i) (= Triton's
``tl.randint(seed, offset + i)``); with R = rand_bits, x rounds away from zero
iff ⌊f·2^R⌋ + (w >> (32 − R)) ≥ 2^R, where f ∈ [0, 1) is the discarded part of
|x| in ulps of the result.  So P(away) = ⌊f·2^R⌋/2^R.

* exactness: every element, for any format / input dtype / R / seed / offset,
  equals that rule computed here from ``philox_words`` and the independent
  neighbours of tests/reference_rounding.py;
* reproducibility: same seed and offset → same bits; a different seed (also one
  differing only in the high 32 key bits) → different bits somewhere; the offset
  shifts the stream (x[k:] at offset o + k equals elements k: at offset o);
  shapes and strides do not change the draw of an element (flat C order);
* unbiasedness: x repeated n = 2^16 times; with p = ⌊f·2^R⌋/2^R the number k of
  elements rounded away is Binomial(n, p), and the test demands
  |k − n·p| ≤ t, t = L/3 + sqrt(L²/9 + 2·L·n·p(1 − p)), L = ln(2/10^-9) —
  Bernstein's inequality at failure probability 10^-9 per example (for
  n·p(1−p) ≫ 1 this is ≈ 6.5 standard errors, and it stays valid for tiny p,
  where a plain 6-SE bound does not).  Hence the mean of the n results is within
  (t/n + 2^-R)·ulp of x: the 2^-R is the truncation bias f − p ∈ [0, 2^-R),
  asserted as well (p = f exactly when R ≥ the number of discarded bits).
  Values: every binade of every format, its subnormals, and the last ulp below
  max finite.
* Philox: Random123's known answers, and the H200 golden words of
  ``tl.randint`` in tests/data/hw/casts_golden.npz.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_rounding as ref
from flashbits.emulator import quantize
from flashbits.emulator.philox import philox4x32_block, philox_words

HERE = os.path.dirname(os.path.abspath(__file__))
CASTS = os.path.join(HERE, "data", "hw", "casts_golden.npz")
FORMATS = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp32")
SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.one_of(st.integers(0, 2 ** 64 - 1), st.integers(-(2 ** 63), -1), st.sampled_from([0, 1, 2 ** 32]))
offsets = st.one_of(st.integers(0, 2 ** 40), st.sampled_from([0, 2 ** 32 - 5, 2 ** 63 - 10 ** 6]))


# ---------------------------------------------------------------------------
# exact neighbours of x (independent of the emulator)
# ---------------------------------------------------------------------------
def lo_hi(x, fmt):
    """(toward-zero, away-from-zero) neighbour magnitudes of |x| (float64); equal
    when x is representable; the away one may lie beyond max finite (overflow)."""
    if fmt != "fp32":
        return ref.neighbours(x, fmt)
    a = np.abs(np.asarray(x, dtype=np.float64))
    lo = np.abs(ref.round_ref(a, "fp32", "rz"))
    lo32 = lo.astype(np.float32)
    with np.errstate(over="ignore"):
        nxt = np.nextafter(lo32, np.float32(np.inf)).astype(np.float64)
    nxt = np.where(np.isinf(nxt), 2.0 ** 128, nxt)  # the first value past max finite
    hi = np.where(lo == a, lo, nxt)
    big = a >= 2.0 ** 128  # beyond the last interval: every rounding overflows
    return np.where(big, 2.0 ** 128, lo), np.where(big, 2.0 ** 128, hi)


def sr_expected(x, fmt, seed, offset, r, saturate=False):
    """The float64 result of sr with R = r random bits, element by element."""
    x = np.asarray(x)
    with np.errstate(invalid="ignore"):
        x64 = x.astype(np.float64).reshape(-1)
    finite = np.isfinite(x64)
    xs = np.where(finite, x64, 0.0)
    lo, hi = lo_hi(xs, fmt)
    ulp = hi - lo
    f = np.where(ulp > 0, (np.abs(xs) - lo) / np.where(ulp > 0, ulp, 1.0), 0.0)  # exact
    assert np.all((f >= 0) & (f < 1))
    top = np.floor(f * 2.0 ** r).astype(np.int64)  # exact: f has few bits, scaling by 2^r
    w = philox_words(seed, x64.size, offset).astype(np.int64)
    away = top + (w >> (32 - r)) >= (1 << r)
    mag = np.where(away, hi, lo)
    vmax = ref.max_finite(fmt)
    has_inf = ref.PARAMS[fmt][3]
    over_mag = vmax if saturate else (np.inf if has_inf else np.nan)
    mag = np.where(mag > vmax, over_mag, mag)
    inf_mag = vmax if saturate else (np.inf if has_inf else np.nan)
    mag = np.where(np.isinf(x64), inf_mag, mag)
    mag = np.where(np.isnan(x64), np.nan, mag)
    return np.copysign(mag, np.where(np.signbit(x64), -1.0, 1.0))


def sample_values(rng, fmt, dtype, n):
    """Values across the whole range of fmt (subnormals, every binade, overflow
    region, exact values, ties), representable in ``dtype``."""
    if fmt == "fp32":
        e = rng.integers(-152, 129, n)
        m = rng.integers(0, 1 << 52, n, dtype=np.uint64).astype(np.float64)
        v = np.ldexp(1.0 + np.ldexp(m, -52), e)
        if dtype == np.float32:
            with np.errstate(over="ignore"):
                v = v.astype(np.float32)
    else:
        g, vmax = ref.grid(fmt)
        j = rng.integers(0, g.size - 1, n)  # up to the (max, overflow) interval
        nbits = 23 - ref.PARAMS[fmt][1] if dtype == np.float32 else 40
        frac = rng.integers(0, 1 << nbits, n, dtype=np.int64) * 2.0 ** -nbits
        frac[: n // 8] = 0.5  # exact ties
        frac[n // 8: n // 4] = 0.0  # exact values
        v = g[j] + frac * (g[j + 1] - g[j])
    v = v.astype(dtype)
    v[:4] = np.array([np.nan, np.inf, -np.inf, 0.0], dtype)
    return np.where(rng.integers(0, 2, n) == 1, -v, v).astype(dtype)


# ---------------------------------------------------------------------------
# exact r-bit rule
# ---------------------------------------------------------------------------
@settings(max_examples=120, **SETTINGS)
@given(fmt=st.sampled_from(FORMATS), dtype=st.sampled_from([np.float32, np.float64]),
       r=st.integers(1, 32), seed=seeds, offset=offsets, data_seed=st.integers(0, 2 ** 32 - 1),
       saturate=st.booleans())
def test_sr_is_exactly_r_bit_rule(fmt, dtype, r, seed, offset, data_seed, saturate):
    x = sample_values(np.random.default_rng(data_seed), fmt, dtype, 4096)
    got = quantize(x, fmt, "sr", seed=seed, rand_bits=r, offset=offset, saturate=saturate)
    want = sr_expected(x, fmt, seed, offset, r, saturate)
    bad = ref.mismatches(got, want)
    assert bad.size == 0, ref.describe(x, got, want, bad)


def test_sr_default_rand_bits_is_32():
    x = sample_values(np.random.default_rng(3), "bf16", np.float64, 1 << 14)
    a = quantize(x, "bf16", "sr", seed=99)
    b = quantize(x, "bf16", "sr", seed=99, rand_bits=32)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    bad = ref.mismatches(a, sr_expected(x, "bf16", 99, 0, 32))
    assert bad.size == 0


# ---------------------------------------------------------------------------
# reproducibility
# ---------------------------------------------------------------------------
def _inexact_values(fmt, n, rng):
    """n values strictly between two neighbours of fmt (never representable)."""
    g, _ = ref.grid(fmt) if fmt != "fp32" else (None, None)
    if fmt == "fp32":
        v = 1.0 + (rng.integers(1, 1 << 29, n) * 2.0 ** -52)  # between float32 neighbours
        return v * np.ldexp(1.0, rng.integers(-100, 100, n))
    j = rng.integers(1, g.size - 2, n)
    return g[j] + (g[j + 1] - g[j]) * rng.uniform(0.25, 0.75, n)


@settings(max_examples=40, **SETTINGS)
@given(fmt=st.sampled_from(FORMATS), seed=seeds, offset=offsets, r=st.integers(1, 32),
       k=st.integers(1, 1000))
def test_sr_reproducible(fmt, seed, offset, r, k):
    x = _inexact_values(fmt, 4096, np.random.default_rng(5))
    a = quantize(x, fmt, "sr", seed=seed, offset=offset, rand_bits=r)
    b = quantize(x, fmt, "sr", seed=seed, offset=offset, rand_bits=r)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    # a different seed, also one that differs only in the upper key word
    for other in {(seed + 1) % 2 ** 64, (seed + 2 ** 32) % 2 ** 64}:
        c = quantize(x, fmt, "sr", seed=other, offset=offset, rand_bits=r)
        assert not np.array_equal(a.view(np.uint32), c.view(np.uint32))
    # the offset shifts the stream: element i uses counter offset + i
    d = quantize(x[k:], fmt, "sr", seed=seed, offset=offset + k, rand_bits=r)
    assert np.array_equal(d.view(np.uint32), a[k:].view(np.uint32))
    # the flat C-order index is what counts, whatever the shape or strides
    e = quantize(x.reshape(64, 64), fmt, "sr", seed=seed, offset=offset, rand_bits=r)
    assert np.array_equal(e.reshape(-1).view(np.uint32), a.view(np.uint32))
    s = x.reshape(64, 64)[:, ::2]
    f_ = quantize(s, fmt, "sr", seed=seed, offset=offset, rand_bits=r)
    g_ = quantize(np.ascontiguousarray(s), fmt, "sr", seed=seed, offset=offset, rand_bits=r)
    assert np.array_equal(f_.view(np.uint32), g_.view(np.uint32))


def test_negative_seed_is_twos_complement():
    x = _inexact_values("bf16", 4096, np.random.default_rng(6))
    a = quantize(x, "bf16", "sr", seed=-1)
    b = quantize(x, "bf16", "sr", seed=2 ** 64 - 1)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert np.array_equal(philox_words(-5, 100, 7), philox_words(2 ** 64 - 5, 100, 7))


# ---------------------------------------------------------------------------
# unbiasedness
# ---------------------------------------------------------------------------
N_DRAWS = 1 << 16
L_BERNSTEIN = math.log(2 / 1e-9)


def bernstein_t(n, p):
    return L_BERNSTEIN / 3 + math.sqrt(L_BERNSTEIN ** 2 / 9 + 2 * L_BERNSTEIN * n * p * (1 - p))


@st.composite
def sr_point(draw):
    """(fmt, dtype, lo, hi, f): x = lo + f·(hi − lo) with lo, hi neighbours of the
    format below max finite, f = k/2^K exact in the input dtype."""
    fmt = draw(st.sampled_from(FORMATS))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    where = draw(st.sampled_from(["subnormal", "normal", "top"]))
    if fmt == "fp32":
        if where == "subnormal":
            lo_bits = draw(st.integers(0, 0x7FFFFE))
        elif where == "top":
            lo_bits = 0x7F7FFFFE  # the last interval below max finite
        else:
            lo_bits = draw(st.integers(0x00800000, 0x7F7FFFFD))
        lo = float(np.uint32(lo_bits).view(np.float32))
        hi = float(np.nextafter(np.float32(lo), np.float32(np.inf)))
        K = 29
        dtype = np.float64  # float32 inputs are already fp32 values
    else:
        g, _ = ref.grid(fmt)
        M = ref.PARAMS[fmt][1]
        n_sub = 1 << M  # grid indices 0 .. 2^M - 1 are zero and the subnormals
        j = {"subnormal": draw(st.integers(0, n_sub - 1)),
             "normal": draw(st.integers(n_sub, g.size - 4)),
             "top": g.size - 3}[where]  # top: (predecessor of max, max)
        lo, hi = float(g[j]), float(g[j + 1])
        K = 23 - M if dtype == np.float32 else 40
    k = draw(st.integers(0, (1 << K) - 1))
    f = k / 2.0 ** K
    return fmt, dtype, lo, hi, f


@settings(max_examples=150, **SETTINGS)
@given(pt=sr_point(), r=st.one_of(st.just(32), st.integers(1, 32)), seed=seeds,
       negative=st.booleans())
def test_sr_unbiased(pt, r, seed, negative):
    fmt, dtype, lo, hi, f = pt
    ulp = hi - lo
    x = lo + f * ulp  # exact
    assert float(dtype(x)) == x
    sgn = -1.0 if negative else 1.0
    res = quantize(np.full(N_DRAWS, sgn * x, dtype), fmt, "sr", seed=seed, rand_bits=r)
    mag = np.abs(res.astype(np.float64))
    assert np.all(np.signbit(res) == negative)  # the sign never changes (zero included)
    assert np.all((mag == lo) | (mag == hi))  # only the two neighbours
    k = int((mag == hi).sum()) if hi != lo else 0
    p = math.floor(f * 2 ** r) / 2 ** r  # P(away) for r random bits, exact
    assert 0 <= f - p < 2.0 ** -r
    if p == 0:
        assert k == 0  # f < 2^-r: can never round away
    t = bernstein_t(N_DRAWS, p)
    assert abs(k - N_DRAWS * p) <= t, (k, N_DRAWS * p, t)
    mean_err_ulps = k / N_DRAWS - f  # (mean of |results| - |x|) / ulp, exact
    assert abs(mean_err_ulps) <= t / N_DRAWS + 2.0 ** -r


def test_sr_is_biased_without_enough_bits():
    """The bound above is tight enough to see the documented truncation bias:
    f = 0.75 - 2^-12 with R = 1 gives P(away) = 1/2 instead of ~0.75."""
    x = np.full(N_DRAWS, 1.0 + (0.75 - 2 ** -12) * 2 ** -7, np.float64)  # bf16 ulp at 1 is 2^-7
    k = int((quantize(x, "bf16", "sr", seed=1, rand_bits=1) > 1).sum())
    assert abs(k - N_DRAWS / 2) <= bernstein_t(N_DRAWS, 0.5)
    k32 = int((quantize(x, "bf16", "sr", seed=1) > 1).sum())
    p = 0.75 - 2 ** -12
    assert abs(k32 - N_DRAWS * p) <= bernstein_t(N_DRAWS, p)


# ---------------------------------------------------------------------------
# Philox
# ---------------------------------------------------------------------------
# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2 words)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,want", KAT)
def test_philox_known_answers(counter, key, want):
    assert philox4x32_block(counter, key) == want


def test_philox_words_is_first_word_of_block():
    """philox_words(seed, n, offset)[i] = word 0 of the block with counter
    (offset+i mod 2^32, (offset+i) >> 32, 0, 0) and key (seed lo, seed hi)."""
    seed = 0x0123456789ABCDEF
    off = 2 ** 32 - 3
    w = philox_words(seed, 6, off)
    for i in range(6):
        c = off + i
        blk = philox4x32_block((c & 0xFFFFFFFF, c >> 32, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
        assert int(w[i]) == blk[0]


def test_philox_matches_gpu_golden():
    d = np.load(CASTS)
    seeds_, offs, words = d["philox_seeds"], d["philox_offsets"], d["philox_words"]
    assert words.shape == (seeds_.size, offs.size) and words.dtype == np.uint32
    assert offs.size > 1000 and seeds_.size >= 2
    for si, s in enumerate(seeds_):
        got = np.array([philox_words(int(s), 1, int(o))[0] for o in offs], np.uint32)
        bad = np.flatnonzero(got != words[si])
        assert bad.size == 0, f"seed {int(s)}: {bad.size} words differ, first offset {int(offs[bad[0]])}"
