"""Exhaustive sweeps over all 2^32 float32 bit patterns (chunks of 2^26).

(a) ``quantize(x, fmt, 'rne')`` equals the reference cast bit for bit on every
    input: ml_dtypes' ``astype`` for bf16 (``ml_dtypes.bfloat16``), fp8_e4m3
    (``ml_dtypes.float8_e4m3fn``) and fp8_e5m2 (``ml_dtypes.float8_e5m2``); for
    fp16 the host's hardware IEEE conversion (F16C) on every input and
    ``np.float16`` itself on the 2 × 30 binades [2^-14, 2^16) in full plus every
    251st other input (numpy's cast is ~14× slower outside fp16's range; see
    the comment above ``_f32_to_f16_bits``).  NaN: both are NaN *and* have the
    same sign.  flashbits emits the canonical NaN with the input's sign;
    ml_dtypes keeps the sign for bf16 and fp8 (its codes are the same canonical
    ones); numpy's float16 cast (and F16C) keeps the sign and the top payload
    bits (e.g. 0x7FBFFFFF → 0x7DFF in numpy), so for fp16 only the payload may
    differ — which this test deliberately does not compare.  The reference codes
    are decoded by ml_dtypes / numpy themselves (``astype(float32)`` of every
    code), so nothing here comes from flashbits.

(b) The directed modes, on every input, for every format of at most 16 bits:
    ``rz`` never grows the magnitude and keeps the sign; ``ru >= x``; ``rd <= x``;
    ``rz`` equals ``rd`` (bitwise) for x with sign bit 0 and ``ru`` for sign bit 1;
    all three results are values of the format; ``ru`` and ``rd`` equal x when x is
    representable, otherwise they are *adjacent* values of the format (the
    adjacency is decided with an independent table of every value in total order,
    −0 just below +0 and ±inf at the ends, built by tests/reference_rounding.py).
    Together these pin ``ru``/``rd`` down completely (the least value >= x, the
    greatest <= x, zero signs included).  Overflow: for e4m3 (no inf) ``ru`` of
    x > 448 and ``rd`` of x < −448 are NaN of x's sign and the other side is
    ±448; ±inf inputs give ±inf (IEEE formats) or NaN of the same sign (e4m3);
    NaN gives NaN of the same sign.

(c) The fast float32 path (``emulator.rounding._FAST_ENTRY[mode]``, what
    ``quantize`` calls for float32 inputs) equals the generic integer path
    (``emulator.rounding._round_array``, what it calls for float64 inputs) for
    every target (fp32, bf16, fp16, fp8_e4m3, fp8_e5m2), every mode (rne, rna,
    rz, ru, rd, sr with rand_bits 32 and 7, seed 0x5EED_F00D_CAFE, an offset that
    crosses 2^32), saturate off and on.  Time does not allow all 2^32 inputs for
    all 70 combinations (the generic path costs ~7 ns/element/core, sr ~18), so
    (c) uses a stratified subset of 2^24 + ~350k inputs per combination: for each
    of the 512 (sign, exponent field) strata, 2^15 uniformly random mantissas
    plus ~700 structured ones — for each bit position p (0..22) the bits above p
    set to 0, all ones, 0101…, 1010… or random, and the bits at and below p set
    to 0, 1000…, 0111…, 1000…01 or 1111… (exact ties, near ties, carries into
    the next binade, odd and even kept LSB, at every possible rounding cut).
    rne, rz, ru and rd of the fast path are already exhaustively pinned by (a)
    and (b), and the generic path by tests/test_quantize_reference.py; in
    addition, fast == generic is checked on all 2^32 inputs for rna (fp16).

Runtime: 4 min 6 s for the whole file on 2 cores (x86-64, numba 0.68; user 6 min 20 s),
about 35 s of it per format in (b).  The fp16 sweep needs a host whose LLVM can
lower float -> half (x86-64 F16C, aarch64 FCVT).
"""

from __future__ import annotations

import functools

import ml_dtypes
import numba as nb
import numpy as np
import pytest
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

import reference_rounding as ref
from flashbits.emulator import quantize
from flashbits.emulator import rounding as R
from flashbits.emulator.formats import FORMATS

pytestmark = pytest.mark.slow

CHUNK = 1 << 26
TOTAL = 1 << 32
SMALL = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")
ML_TYPE = {
    "bf16": ml_dtypes.bfloat16,
    "fp16": np.float16,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
}
CODE_TYPE = {"bf16": np.uint16, "fp16": np.uint16, "fp8_e4m3": np.uint8, "fp8_e5m2": np.uint8}


def chunks():
    """Yield (start, uint32 bits of the chunk) for all 2^32 patterns; one buffer reused."""
    base = np.arange(CHUNK, dtype=np.uint32)
    buf = np.empty(CHUNK, dtype=np.uint32)
    for start in range(0, TOTAL, CHUNK):
        np.add(base, np.uint32(start), out=buf)
        yield start, buf


@nb.njit(inline="always")
def _isnan_u32(v):
    return (v & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)


def _isnan_bits(v):
    return (v & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)


# ---------------------------------------------------------------------------
# (a) rne == ml_dtypes
# ---------------------------------------------------------------------------
@nb.njit(parallel=True, cache=True)
def _count_rne_mismatch(q, codes, table):
    """Elements where q (float32 bits) differs from table[codes] (float32 bits of
    the ml_dtypes result): raw bits, or for a NaN, NaN-ness and sign."""
    bad = 0
    for i in nb.prange(q.size):
        m = table[codes[i]]
        g = q[i]
        if _isnan_u32(m):
            ok = _isnan_u32(g) and (m >> np.uint32(31)) == (g >> np.uint32(31))
        else:
            ok = g == m
        if not ok:
            bad += 1
    return bad


def _ml_decode_table(fmt):
    """float32 bits of every code of ``fmt`` as ml_dtypes / numpy decode it."""
    ct = CODE_TYPE[fmt]
    codes = np.arange(1 << (8 * np.dtype(ct).itemsize), dtype=np.int64).astype(ct)
    return codes.view(ML_TYPE[fmt]).astype(np.float32).view(np.uint32)


def test_rne_comparator_catches_errors():
    """The comparator of (a) is itself tested: correct answers pass; a wrong value,
    a lost zero sign, a NaN of the wrong sign, a NaN for a number and a number
    for a NaN are each counted."""
    table = _ml_decode_table("fp8_e4m3")
    codes = np.array([0x38, 0x80, 0xFF, 0x7F, 0x01], np.uint8)  # 1.0, -0, -NaN, +NaN, 2^-9
    good = np.array([0x3F800000, 0x80000000, 0xFFC00000, 0x7FC00000, 0x3B000000], np.uint32)
    assert _count_rne_mismatch(good, codes, table) == 0
    for i, wrong in [(0, 0x3F900000), (1, 0x00000000), (2, 0x7FC00000), (4, 0x7FC00000), (3, 0x43E00000)]:
        q = good.copy()
        q[i] = wrong
        assert _count_rne_mismatch(q, codes, table) == 1, i


def _report(bits, q, codes, table, limit=4):
    m = table[codes]
    idx = np.flatnonzero(np.where(_isnan_bits(m), ~_isnan_bits(q) | ((m >> 31) != (q >> 31)), q != m))
    return [f"x=0x{int(bits[i]):08x} flashbits=0x{int(q[i]):08x} reference=0x{int(m[i]):08x}"
            for i in idx[:limit]]


@pytest.mark.parametrize("fmt", ("bf16", "fp8_e4m3", "fp8_e5m2"))
def test_rne_equals_ml_dtypes_all_float32(fmt):
    table = _ml_decode_table(fmt)
    assert _isnan_bits(table).any()  # the table does contain NaN codes: the NaN rule is exercised
    total_bad = 0
    report = []
    for start, bits in chunks():
        x = bits.view(np.float32)
        q = quantize(x, fmt, "rne").view(np.uint32)
        with np.errstate(invalid="ignore", over="ignore"):
            codes = x.astype(ML_TYPE[fmt]).view(CODE_TYPE[fmt])
        bad = _count_rne_mismatch(q, codes, table)
        if bad:
            report += _report(bits, q, codes, table)
        total_bad += bad
    assert total_bad == 0, f"{total_bad} mismatches; first: " + "; ".join(report[:8])


# fp16: numpy's float32 -> float16 cast raises an FP flag per overflowing or
# underflowing element and then runs at ~110 ns/element (vs ~8 ns in range):
# all 2^32 would take ~6 minutes on one core.  So the fp16 sweep compares with
# the host's hardware IEEE conversion (LLVM fptrunc float -> half: F16C
# vcvtps2ph, round to nearest even) on every input, and with np.float16 itself
# on every input whose float32 exponent field is 113..142 (|x| in [2^-14, 2^16):
# all of fp16's normal range and its overflow threshold, 1/8.5 of all inputs)
# plus every 251st input elsewhere (~15 M).
@intrinsic
def _f32_to_f16_bits(typingctx, x):
    """IEEE float32 -> binary16 conversion by the host (LLVM fptrunc), as raw bits."""
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


@nb.njit(parallel=True, cache=True)
def _hw_to_f16(x, out):
    for i in nb.prange(x.size):
        out[i] = _f32_to_f16_bits(x[i])


def test_hardware_f16_conversion_is_ieee():
    """The hardware conversion used as fp16 authority: hand-checked cases
    (max 65504 = 0x7BFF; 65520 is the overflow tie, to inf; 2^-25 is the tie
    between 0 and the smallest subnormal 2^-24, to 0; 1.5·2^-24 ties to the even
    2·2^-24; NaN stays NaN with its
    sign) and equality with np.float16 on 2^20 random float32 of every kind."""
    x = np.array([65504, 65519.996, 65520, -65520, 2.0 ** -25, 2.0 ** -25 * (1 + 2 ** -23),
                  3 * 2.0 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, -0.0, np.inf, -np.nan], np.float32)
    want = [0x7BFF, 0x7BFF, 0x7C00, 0xFC00, 0x0000, 0x0001, 0x0002, 0x3C00, 0x3C02, 0x8000, 0x7C00]
    out = np.empty(x.size, np.uint16)
    _hw_to_f16(x, out)
    assert out[:-1].tolist() == want
    assert (out[-1] & 0x7FFF) > 0x7C00 and out[-1] >> 15 == 1
    rng = np.random.default_rng(3)
    r = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    hw = np.empty(r.size, np.uint16)
    _hw_to_f16(r, hw)
    with np.errstate(invalid="ignore", over="ignore"):
        npc = r.astype(np.float16).view(np.uint16)
    table = _ml_decode_table("fp16")
    assert _count_rne_mismatch(table[hw], npc, table) == 0


def test_rne_equals_fp16_cast_all_float32():
    table = _ml_decode_table("fp16")  # numpy's own decoding of every float16 code
    total_bad = 0
    n_numpy = 0
    report = []
    hw = np.empty(CHUNK, np.uint16)
    for start, bits in chunks():
        x = bits.view(np.float32)
        q = quantize(x, "fp16", "rne").view(np.uint32)
        _hw_to_f16(x, hw)
        bad = _count_rne_mismatch(q, hw, table)
        if bad:
            report += _report(bits, q, hw, table)
        # np.float16 on the exponent fields 113..142 of this chunk (a contiguous run) ...
        f0 = (start >> 23) & 0xFF
        lo = min(max(113 - f0, 0), 8) << 23
        hi = min(max(143 - f0, 0), 8) << 23
        # ... and on every 251st element of the rest
        rest = np.concatenate([np.arange(0, lo, 251), np.arange(hi, CHUNK, 251)])
        for xs, qs, bs in ((x[lo:hi], q[lo:hi], bits[lo:hi]), (x[rest], q[rest], bits[rest])):
            with np.errstate(invalid="ignore", over="ignore"):
                npc = xs.astype(np.float16).view(np.uint16)
            b = _count_rne_mismatch(np.ascontiguousarray(qs), npc, table)
            if b:
                report += _report(bs, qs, npc, table)
            bad += b
            n_numpy += xs.size
        total_bad += bad
    assert n_numpy > 2 * 30 * (1 << 23)  # both signs of the 30 binades, plus the sample
    assert total_bad == 0, f"{total_bad} mismatches; first: " + "; ".join(report[:8])


# ---------------------------------------------------------------------------
# (b) directed-mode invariants
# ---------------------------------------------------------------------------
def _key(bits):
    """Total-order key of float32 bits (−0 just below +0), as uint32."""
    bits = np.asarray(bits, dtype=np.uint32)
    return np.where(bits >> 31 == 0, bits ^ np.uint32(0x80000000), ~bits).astype(np.uint32)


@functools.lru_cache(maxsize=None)
def rank_table(fmt):
    """(slots, shift): every non-NaN value of ``fmt`` (±inf too) in total order
    (−0 just below +0); the value with float32 bits v sits in slot key(v) >> shift
    as the int64 ``v << 32 | rank`` (wrapping; empty slots: −1, rank field all ones).  shift = 23 − M: a value
    of the format has its low 23 − M float32 mantissa bits zero, so distinct
    values get distinct slots."""
    _, val = ref.decode_all(fmt)
    val = val[~np.isnan(val)]
    vb = val.astype(np.float32).view(np.uint32)
    order = np.argsort(_key(vb), kind="stable")
    vb = vb[order]
    keys = _key(vb)
    assert np.all(np.diff(keys.astype(np.int64)) > 0)
    shift = 23 - ref.PARAMS[fmt][1]
    idx = keys >> np.uint32(shift)
    assert np.unique(idx).size == idx.size
    slots = np.full(1 << (32 - shift), -1, dtype=np.int64)
    slots[idx] = ((vb.astype(np.uint64) << np.uint64(32)) | np.arange(vb.size, dtype=np.uint64)).view(np.int64)
    return slots, shift


@nb.njit(inline="always")
def _rank(v, slots, shift):
    """Rank of the value with float32 bits v (an int64) in the format, or −1 if v
    is not one of its values.  All integer work is int64: numba would route a
    uint64/int64 mix through float64."""
    k = (v + 0x80000000) if v < 0x80000000 else (0xFFFFFFFF - v)
    e = slots[k >> shift]
    r = e & 0xFFFFFFFF
    ok = (r != 0xFFFFFFFF) & (((e >> 32) & 0xFFFFFFFF) == v)
    return r if ok else -1


@nb.njit(inline="always")
def _nan64(v):
    return (v & 0x7FFFFFFF) > 0x7F800000


@nb.njit(cache=True)
def _directed_check(b, z, u, d, x_, zf, uf, df, slots, shift, vmax_bits, vmax, has_inf):
    """Bit k of the result set: invariant k (as INVARIANTS) violated for this element."""
    sgn = b >> 31
    nx = _nan64(b)
    ix = (b & 0x7FFFFFFF) == 0x7F800000
    nz = _nan64(z)
    nu = _nan64(u)
    nd = _nan64(d)
    all_nan_same_sign = nz & nu & nd & ((z >> 31) == sgn) & ((u >> 31) == sgn) & ((d >> 31) == sgn)
    if nx:
        return 0 if all_nan_same_sign else 1
    if ix:
        exact_inf = (z == b) & (u == b) & (d == b)
        return 0 if (exact_inf if has_inf else all_nan_same_sign) else 1
    u_nan = (not has_inf) and x_ > vmax  # e4m3: ru overflows to NaN
    d_nan = (not has_inf) and x_ < -vmax
    if nz or nu != u_nan or nd != d_nan or (u_nan and (u >> 31) != 0) or (d_nan and (d >> 31) != 1):
        return 1
    bad = 0
    if not ((abs(zf) <= abs(x_)) and (z >> 31) == sgn):
        bad |= 2
    if not (u_nan or uf >= x_):
        bad |= 4
    if not (d_nan or df <= x_):
        bad |= 8
    if z != (u if sgn else d):
        bad |= 16
    rz_r = _rank(z, slots, shift)
    ru_r = _rank(u, slots, shift)
    rd_r = _rank(d, slots, shift)
    if rz_r < 0 or (not u_nan and ru_r < 0) or (not d_nan and rd_r < 0):
        return bad | 32
    rx = _rank(b, slots, shift)
    if rx >= 0:
        ok = u == b and d == b
    elif u_nan:
        ok = d == vmax_bits
    elif d_nan:
        ok = u == (vmax_bits | 0x80000000)
    else:
        ok = ru_r == rd_r + 1
    return bad if ok else bad | 64


@nb.njit(parallel=True, cache=True)
def _directed_kernel(xb, zb, ub, db, xf, zf, uf, df, slots, shift, vmax_bits, vmax, has_inf):
    """Counts of violated invariants (indexed as INVARIANTS).

    Per block, a branch-free pass tests every element with finite x (overflow
    included); only a block where some element fails it (NaN or inf inputs, or a
    real violation) is re-run through the element-wise classifier.  The fast test
    needs no rank of x: with rd <= x <= ru both values of the format, "both equal
    x, or neither does and they are adjacent" already excludes every wrong pair
    (a representable x strictly between adjacent rd < ru is impossible)."""
    nblk = 256
    counts = np.zeros((nblk, 7), np.int64)
    step = (xb.size + nblk - 1) // nblk
    neg_vmax_bits = vmax_bits | 0x80000000
    for k in nb.prange(nblk):
        lo = k * step
        hi = min(xb.size, (k + 1) * step)
        need = 0
        for i in range(lo, hi):
            b = np.int64(xb[i])
            z = np.int64(zb[i])
            u = np.int64(ub[i])
            d = np.int64(db[i])
            x_ = xf[i]
            sgn = b >> 31
            u_nan = (not has_inf) & (x_ > vmax)  # e4m3: ru of x > max is NaN
            d_nan = (not has_inf) & (x_ < -vmax)
            ru_r = _rank(u, slots, shift)
            rd_r = _rank(d, slots, shift)
            ok = (((b & 0x7F800000) != 0x7F800000)  # x finite
                  & (not _nan64(z)) & (_nan64(u) == u_nan) & (_nan64(d) == d_nan)
                  & ((not u_nan) | ((u >> 31) == 0)) & ((not d_nan) | ((d >> 31) == 1))
                  & (u_nan | (uf[i] >= x_)) & (d_nan | (df[i] <= x_))
                  & (z == (u if sgn else d)) & ((z >> 31) == sgn) & (abs(zf[i]) <= abs(x_))
                  & (u_nan | (ru_r >= 0)) & (d_nan | (rd_r >= 0))
                  & ((u_nan & (d == vmax_bits))
                     | (d_nan & (u == neg_vmax_bits))
                     | ((not u_nan) & (not d_nan)
                        & (((u == b) & (d == b)) | ((u != b) & (d != b) & (ru_r == rd_r + 1))))))
            need += not ok
        if need:
            for i in range(lo, hi):
                bad = _directed_check(np.int64(xb[i]), np.int64(zb[i]), np.int64(ub[i]),
                                      np.int64(db[i]), xf[i], zf[i], uf[i], df[i], slots, shift,
                                      vmax_bits, vmax, has_inf)
                for j in range(7):
                    if bad & (1 << j):
                        counts[k, j] += 1
    return counts.sum(axis=0)


@nb.njit(cache=True)
def _directed_first(xb, zb, ub, db, xf, zf, uf, df, slots, shift, vmax_bits, vmax, has_inf):
    """Index of the first violation of each invariant (−1: none)."""
    first = np.full(7, -1, np.int64)
    for i in range(xb.size):
        bad = _directed_check(np.int64(xb[i]), np.int64(zb[i]), np.int64(ub[i]), np.int64(db[i]),
                              xf[i], zf[i], uf[i], df[i], slots, shift, vmax_bits, vmax, has_inf)
        for j in range(7):
            if bad & (1 << j) and first[j] < 0:
                first[j] = i
    return first


def _directed_args(xb, zb, ub, db, slots, shift, vmax_bits, has_inf):
    f = np.float32
    return (xb, zb, ub, db, xb.view(f), zb.view(f), ub.view(f), db.view(f), slots, int(shift),
            int(vmax_bits), np.uint32(vmax_bits).view(f), bool(has_inf))


def _directed_violations(*args):
    """Counts of violated invariants, in the order of INVARIANTS (bits are uint32
    arrays; arguments as _directed_args)."""
    return _directed_kernel(*_directed_args(*args))


INVARIANTS = ("NaN/inf/overflow rules", "|rz| <= |x|, sign kept", "ru >= x", "rd <= x",
              "rz == rd (x>=0) / ru (x<0)", "results are values of the format",
              "ru, rd == x if representable, else adjacent")


@pytest.mark.parametrize("fmt", SMALL)
def test_directed_modes_invariants_all_float32(fmt):
    slots, shift = rank_table(fmt)
    vmax_bits = np.uint32(np.float32(ref.max_finite(fmt)).view(np.uint32))
    has_inf = ref.PARAMS[fmt][3]
    counts = np.zeros(len(INVARIANTS), dtype=np.int64)
    first = {}
    for start, bits in chunks():
        x = bits.view(np.float32)
        rz = quantize(x, fmt, "rz").view(np.uint32)
        ru = quantize(x, fmt, "ru").view(np.uint32)
        rd = quantize(x, fmt, "rd").view(np.uint32)
        c = _directed_violations(bits, rz, ru, rd, slots, shift, vmax_bits, has_inf)
        if c.any():
            fi = _directed_first(*_directed_args(bits, rz, ru, rd, slots, shift, vmax_bits, has_inf))
            for k in np.flatnonzero(c):
                i = fi[k]
                first.setdefault(k, f"e.g. x=0x{int(bits[i]):08x}: rz=0x{int(rz[i]):08x} "
                                    f"ru=0x{int(ru[i]):08x} rd=0x{int(rd[i]):08x}")
        counts += c
    assert not counts.any(), "; ".join(
        f"{INVARIANTS[k]}: {counts[k]} violations ({first.get(k, '')})" for k in np.flatnonzero(counts))


def test_directed_invariant_checker_catches_errors():
    """The checker of (b) is itself tested: feed it results with one planted
    error of each kind and require the matching counter to fire."""
    fmt = "fp8_e4m3"
    slots, shift = rank_table(fmt)
    vmax_bits = np.uint32(np.float32(448.0).view(np.uint32))
    x = np.array([1.1, -1.1, 0.3, 500.0, -500.0, 1e-9, -1e-9, 1.0], np.float32)
    rz = np.array([1.0, -1.0, 0.28125, 448.0, -448.0, 0.0, -0.0, 1.0], np.float32)
    ru = np.array([1.125, -1.0, 0.3125, np.nan, -448.0, 2.0 ** -9, -0.0, 1.0], np.float32)
    rd = np.array([1.0, -1.125, 0.28125, 448.0, np.nan, 0.0, -(2.0 ** -9), 1.0], np.float32)
    rd[4] = np.uint32(0xFFC00000).view(np.float32)  # NaN with x's sign
    xb, zb, ub, db = (a.view(np.uint32).copy() for a in (x, rz, ru, rd))

    def run(z, u, d):
        return _directed_violations(xb, z, u, d, slots, shift, vmax_bits, False)

    assert not run(zb, ub, db).any()  # the hand-made correct answers pass
    planted = [
        (0, lambda z, u, d: u.__setitem__(3, np.float32(448.0).view(np.uint32))),  # no NaN
        (1, lambda z, u, d: z.__setitem__(0, np.float32(1.125).view(np.uint32))),  # |rz| > |x|
        (4, lambda z, u, d: z.__setitem__(6, np.float32(0.0).view(np.uint32))),  # -0 -> +0
        (6, lambda z, u, d: u.__setitem__(0, np.float32(1.25).view(np.uint32))),  # not adjacent
        (5, lambda z, u, d: d.__setitem__(2, np.float32(0.29).view(np.uint32))),  # not a value
        (6, lambda z, u, d: u.__setitem__(7, np.float32(1.125).view(np.uint32))),  # exact moved
        (3, lambda z, u, d: d.__setitem__(1, np.float32(-1.0).view(np.uint32))),  # rd > x
    ]
    for k, plant in planted:
        z, u, d = zb.copy(), ub.copy(), db.copy()
        plant(z, u, d)
        assert run(z, u, d)[k] >= 1, INVARIANTS[k]


# ---------------------------------------------------------------------------
# (c) fast float32 path == generic integer path
# ---------------------------------------------------------------------------
SEED = 0x5EED_F00D_CAFE
OFFSET = (1 << 32) - 12345  # element offsets cross the 32-bit counter word
MODES_C = [("rne", None), ("rna", None), ("rz", None), ("ru", None), ("rd", None), ("sr", 32), ("sr", 7)]
F32 = FORMATS["fp32"]


def _run_both(bits, fmt, mode, rbits, saturate):
    """(fast, generic) float32 bits, each called exactly as quantize() calls it."""
    f = FORMATS[fmt]
    m = R.RoundMode.parse(mode)
    seed_u64 = np.uint64(SEED) if m == R.RoundMode.sr else np.uint64(0)
    rb = 32 if rbits is None else rbits
    fast = np.empty(bits.size, np.uint32)
    gen = np.empty(bits.size, np.uint32)
    R._FAST_ENTRY[m](bits, fast, R.target(f), seed_u64, np.int64(OFFSET), rb, bool(saturate))
    R._round_array(bits, gen, R.layout(F32), R.target(f), R.layout(F32), int(m), seed_u64,
                   np.int64(OFFSET), rb, bool(saturate))
    return fast, gen


@functools.lru_cache(maxsize=1)
def stratified_inputs() -> np.ndarray:
    rng = np.random.default_rng(20260)
    ones = (1 << 23) - 1
    highs = [0, ones, 0x555555, 0x2AAAAA, int(rng.integers(0, 1 << 23)), int(rng.integers(0, 1 << 23))]
    structured = []
    for p in range(23):
        above = ones & ~((2 << p) - 1)
        for h in highs:
            for low in (0, 1 << p, (1 << p) - 1, (1 << p) + 1, (2 << p) - 1):
                structured.append((h & above) | (low & ones))
    structured = np.unique(np.array(structured + [0, 1, ones], dtype=np.uint32))
    se = np.arange(512, dtype=np.uint32) << np.uint32(23)  # sign and exponent field
    rand = rng.integers(0, 1 << 23, (512, 1 << 15), dtype=np.uint32)
    bits = np.concatenate([(se[:, None] | structured[None, :]).ravel(), (se[:, None] | rand).ravel()])
    return bits


@pytest.mark.parametrize("saturate", [False, True], ids=["nosat", "sat"])
@pytest.mark.parametrize("mode,rbits", MODES_C, ids=[m if r is None else f"sr{r}" for m, r in MODES_C])
@pytest.mark.parametrize("fmt", ("fp32",) + SMALL)
def test_fast_path_equals_generic_stratified(fmt, mode, rbits, saturate):
    bits = stratified_inputs()
    assert bits.size >= (1 << 24)
    fast, gen = _run_both(bits, fmt, mode, rbits, saturate)
    bad = np.flatnonzero(fast != gen)
    assert bad.size == 0, f"{bad.size} differ; first: " + ", ".join(
        f"x=0x{int(bits[i]):08x} fast=0x{int(fast[i]):08x} generic=0x{int(gen[i]):08x}" for i in bad[:6])


@pytest.mark.parametrize("fmt,mode,rbits,saturate", [("fp16", "rna", None, False)])
def test_fast_path_equals_generic_all_float32(fmt, mode, rbits, saturate):
    total_bad = 0
    first = []
    for start, bits in chunks():
        fast, gen = _run_both(bits, fmt, mode, rbits, saturate)
        if not np.array_equal(fast, gen):
            bad = np.flatnonzero(fast != gen)
            total_bad += bad.size
            first += [f"x=0x{int(bits[i]):08x} fast=0x{int(fast[i]):08x} generic=0x{int(gen[i]):08x}"
                      for i in bad[:3]]
    assert total_bad == 0, f"{total_bad} differ; first: " + ", ".join(first[:6])
