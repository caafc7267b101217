"""Rounding of float32/float64 values into any :class:`FloatFormat`, on bit patterns.

The numerical contract of :func:`quantize`:

* input: a float32 or float64 array (any shape, any values incl. ±0, ±inf, NaN,
  subnormals); every input is read exactly from its bits.
* output: the value of ``fmt`` chosen by the rounding mode, returned in float32
  (formats up to 32 bits) or float64 (fp64) — always exactly representable in
  both ``fmt`` and the returned dtype.
* rounding modes (:class:`RoundMode`): ``rne`` nearest, ties to even; ``rna``
  nearest, ties away from zero; ``rz`` toward zero; ``ru`` toward +inf; ``rd``
  toward −inf; ``sr`` stochastic: R random bits (``rand_bits``, default 32) are
  added just below the kept least significant bit of the magnitude, then the
  result is truncated.  So P(round away from zero) = ⌊f·2^R⌋ / 2^R for the
  discarded fraction f ∈ [0, 1) of an ulp: exact when R ≥ the number of
  discarded bits, otherwise low by less than 2^-R.  The random words are
  Philox4x32-10 (:mod:`emulator.philox`), word ``offset + i`` for flat element
  ``i``, key = ``seed``: the same words ``tl.randint(seed, offset + i)`` gives
  on a GPU, so the Triton kernels reproduce every draw.
* subnormals of ``fmt`` are produced with gradual underflow (no flush).
* overflow (a result beyond ±max finite): IEEE 754 rules per mode — rne, rna
  and sr give ±inf; rz gives ±max; ru gives +inf / −max; rd gives +max / −inf.
  A format without inf (fp8_e4m3) gives NaN where IEEE would give inf, as
  ml_dtypes does.  ``saturate=True`` replaces every overflow result *and* ±inf
  inputs by ±max finite (NaN stays NaN): what a Hopper GPU's
  ``cvt.rn.satfinite`` fp8 conversion does.
* NaN maps to the format's canonical quiet NaN with the input's sign
  (:mod:`emulator.formats`).

All arithmetic is on integers in numba-compiled loops; the host FPU's rounding
mode and denormal flags play no part.
"""

from __future__ import annotations

import enum
import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

from .formats import FORMATS, FloatFormat, get_format
from .philox import randint_word, seed_to_u64

__all__ = ["RoundMode", "quantize", "NEAR_TIE_WINDOW_LOG2"]


class RoundMode(enum.IntEnum):
    """Rounding modes; the integer values are what the compiled kernels see."""

    rne = 0
    rna = 1
    rz = 2
    ru = 3
    rd = 4
    sr = 5

    @classmethod
    def parse(cls, mode) -> "RoundMode":
        if isinstance(mode, RoundMode):
            return mode
        if isinstance(mode, str):
            try:
                return cls[mode]
            except KeyError:
                pass
        raise ValueError(
            f"unknown rounding {mode!r}; accepted: {', '.join(m.name for m in cls)}"
        )


# A rounding whose discarded fraction f (in ulps of the result) is within
# 2^-4 of one half, but not exactly one half, is counted as a "tie decided by
# sticky bits": an exact tie (say V_a + V_b, whose last bit sits at the half
# ulp) pushed just over or under half by small terms far below it.  In the
# tied-maxima regime of docs/paper.md those terms are 0.001..0.03 ulp at 12..15
# nats; uniformly spread fractions land in the window 1/8 of the time, half of
# them away from zero, so the signature of the mechanism is the share rounded
# away (ledger: sticky_ties_away / sticky_ties) far from one half.
NEAR_TIE_WINDOW_LOG2 = 4

# Flag bits returned by round_bits().
FLAG_INEXACT = 1
FLAG_TIE = 2  # exactly half an ulp discarded
FLAG_NEAR_TIE = 4  # within 2^-NEAR_TIE_WINDOW_LOG2 ulp of a tie, not a tie
FLAG_OVERFLOW = 8  # result replaced by inf / max / NaN per the overflow rule
FLAG_SPECIAL = 16  # input was inf or NaN (no error recorded)
FLAG_AWAY = 32  # rounded away from zero (magnitude increased)


@intrinsic
def _ctlz64(typingctx, x):
    """LLVM ctlz on a uint64 (64 for 0): one instruction, no loop."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        (v,) = args
        r = builder.ctlz(v, ir.Constant(ir.IntType(1), 0))
        return r

    return sig, codegen


@nb.njit(inline="always", error_model="numpy")
def _bit_length(v):
    """Number of significant bits of a uint64 (0 for 0)."""
    return 64 - _ctlz64(np.uint64(v))


def layout(fmt: FloatFormat) -> tuple:
    """The encoding layout tuple the compiled kernels take: (mant, exp_bits, bias, fn)."""
    return (fmt.mant_bits, fmt.exp_bits, fmt.bias, 1 if fmt.convention == "fn" else 0)


def target(fmt: FloatFormat) -> tuple:
    """The value-set tuple the compiled kernels take: (mant, emin, emax, maxsig, has_inf)."""
    return (fmt.mant_bits, fmt.emin, fmt.emax, fmt.max_significand, 1 if fmt.has_inf else 0)


@nb.njit(inline="always", error_model="numpy")
def encode_value(neg, q, qexp, lay):
    """Encoding (uint64) of exactly (−1)^neg · q · 2^qexp in layout ``lay``.

    The caller guarantees the value is finite and representable there.
    """
    o_mant, o_ebits, o_bias, _ = lay
    sign = (np.uint64(1) << np.uint64(o_mant + o_ebits)) if neg else np.uint64(0)
    if q == 0:
        return sign
    n = _bit_length(q) - 1  # q = 1.xxx · 2^n
    e = qexp + n
    o_emin = 1 - o_bias
    if e >= o_emin:
        mant = (q << np.uint64(o_mant - n)) & ((np.uint64(1) << np.uint64(o_mant)) - np.uint64(1))
        return sign | (np.uint64(e + o_bias) << np.uint64(o_mant)) | mant
    return sign | (q << np.uint64(qexp - (o_emin - o_mant)))


@nb.njit(inline="always", error_model="numpy")
def special_code(neg, kind, lay):
    """Encoding of NaN (kind 0) or inf (kind 1) with sign ``neg`` in layout ``lay``."""
    o_mant, o_ebits, _, o_fn = lay
    top = np.uint64((1 << o_ebits) - 1) << np.uint64(o_mant)
    sign = (np.uint64(1) << np.uint64(o_mant + o_ebits)) if neg else np.uint64(0)
    if kind == 1:
        return sign | top
    if o_fn:
        return sign | top | ((np.uint64(1) << np.uint64(o_mant)) - np.uint64(1))
    return sign | top | (np.uint64(1) << np.uint64(o_mant - 1))


@nb.njit(inline="always", error_model="numpy")
def decode_bits(bits, lay):
    """Split an encoding: (neg, kind, sig, e0) with kind 0 finite, 1 inf, 2 NaN.

    A finite value is (−1)^neg · sig · 2^(e0 − mant).
    """
    s_mant, s_ebits, s_bias, s_fn = lay
    one = np.uint64(1)
    neg = (bits >> np.uint64(s_mant + s_ebits)) & one
    e_field = np.int64((bits >> np.uint64(s_mant)) & np.uint64((1 << s_ebits) - 1))
    m_field = bits & ((one << np.uint64(s_mant)) - one)
    if e_field == (1 << s_ebits) - 1:
        if s_fn:
            if m_field == (one << np.uint64(s_mant)) - one:
                return neg, 2, np.uint64(0), 0
        elif m_field != 0:
            return neg, 2, np.uint64(0), 0
        else:
            return neg, 1, np.uint64(0), 0
    if e_field == 0:
        return neg, 0, m_field, 1 - s_bias
    return neg, 0, m_field | (one << np.uint64(s_mant)), e_field - s_bias


@nb.njit(inline="always", error_model="numpy")
def round_parts(bits, src, tgt, mode, rword, rbits):
    """Decide one rounding of the value encoded by ``bits`` (layout ``src``) into ``tgt``.

    Returns (neg, kind, q, qexp, rem, shift, up, over):
    kind 0 finite, 1 inf, 2 NaN; the rest as :func:`round_sig`.
    """
    neg, kind, sig, e0 = decode_bits(bits, src)
    if kind != 0:
        return neg, kind, np.uint64(0), 0, np.uint64(0), 0, np.uint64(0), False
    q, qexp, rem, shift, up, over = round_sig(neg, sig, e0 - src[0], tgt, mode, rword, rbits)
    return neg, kind, q, qexp, rem, shift, up, over


@nb.njit(inline="always", error_model="numpy")
def round_sig(neg, sig, unit_exp, tgt, mode, rword, rbits):
    """Decide the rounding of (−1)^neg · sig · 2^unit_exp (sig a uint64) into ``tgt``.

    Returns (q, qexp, rem, shift, up, over): the rounded magnitude is
    q · 2^qexp (carry renormalised), ``rem`` the discarded bits out of 2^shift
    (rem = 0 when exact), ``up`` 1 if the magnitude was rounded away from
    zero (else 0), ``over`` whether the result overflows the target.
    """
    one = np.uint64(1)
    zero = np.uint64(0)
    t_mant, t_emin, t_emax, t_maxsig, t_has_inf = tgt
    if sig == zero:
        return zero, 0, zero, 0, zero, False
    E = unit_exp + _bit_length(sig) - 1  # floor(log2 |x|)
    qexp = (E if E > t_emin else t_emin) - t_mant  # target quantum exponent
    shift = qexp - unit_exp
    up = zero
    if shift <= 0:
        q = sig << np.uint64(-shift)
        rem = zero
    else:
        if shift > 63:
            # every bit is discarded and f = sig / 2^shift < 2^-9 (sig < 2^54)
            q = zero
            rem = sig
            half = np.uint64(0xFFFFFFFFFFFFFFFF)  # rem is below half
        else:
            ushift = np.uint64(shift)
            q = sig >> ushift
            rem = sig & ((one << ushift) - one)
            half = one << np.uint64(shift - 1)
        # Branch-free decisions: the direction is data-dependent and would
        # mispredict half the time.
        inexact = np.uint64(rem != zero)
        if mode == 0:  # rne
            up = np.uint64(rem > half) | (np.uint64(rem == half) & q & one)
        elif mode == 1:  # rna
            up = np.uint64(rem >= half)
        elif mode == 3:  # ru
            up = inexact & (neg ^ one)
        elif mode == 4:  # rd
            up = inexact & neg
        elif mode == 5:  # sr: add rbits random bits below the kept LSB, truncate
            if shift >= rbits:
                drop = shift - rbits
                top = rem >> np.uint64(drop) if drop < 64 else zero
            else:
                top = rem << np.uint64(rbits - shift)
            r = np.uint64(rword) >> np.uint64(32 - rbits)
            up = np.uint64((top + r) >= (one << np.uint64(rbits)))
        q += up
        # a carry out of the significand moves the value to the next binade
        carry = q >> np.uint64(t_mant + 1)
        q >>= carry
        qexp += np.int64(carry)
    top_qexp = t_emax - t_mant
    over = E > t_emax or qexp > top_qexp or (qexp == top_qexp and q > np.uint64(t_maxsig))
    return q, qexp, rem, shift, up, over


@nb.njit(inline="always", error_model="numpy")
def encode_rounded(neg, kind, q, qexp, over, tgt, out, mode, saturate):
    """Encoding in layout ``out`` of a decision from :func:`round_parts`,
    applying the NaN / inf / overflow / saturation rules."""
    t_mant, t_emin, t_emax, t_maxsig, t_has_inf = tgt
    if kind == 2:
        return special_code(neg, 0, out)
    if kind == 1 or over:
        if saturate or (over and (mode == 2 or (mode == 3 and neg == 1) or (mode == 4 and neg == 0))):
            return encode_value(neg, np.uint64(t_maxsig), t_emax - t_mant, out)
        return special_code(neg, 1 if t_has_inf else 0, out)
    return encode_value(neg, q, qexp, out)


@nb.njit(inline="always", error_model="numpy")
def round_bits(bits, src, tgt, out, mode, rword, rbits, saturate):
    """Round one value (encoding ``bits``, layout ``src``) to ``tgt``; encoding in ``out``."""
    neg, kind, q, qexp, rem, shift, up, over = round_parts(bits, src, tgt, mode, rword, rbits)
    return encode_rounded(neg, kind, q, qexp, over, tgt, out, mode, saturate)


@nb.njit(inline="always", error_model="numpy")
def round_value(neg, sig, unit_exp, tgt, out, mode, rword, rbits, saturate):
    """Encoding in layout ``out`` of (−1)^neg · sig · 2^unit_exp rounded into ``tgt``.

    The primitive every exact-then-round hardware model uses: compute the exact
    result as an integer significand and a power of two, then round once.
    """
    q, qexp, rem, shift, up, over = round_sig(neg, sig, unit_exp, tgt, mode, rword, rbits)
    return encode_rounded(neg, 0, q, qexp, over, tgt, out, mode, saturate)


@nb.njit(inline="always", error_model="numpy")
def rounding_error(neg, rem, shift, up):
    """Signed rounding error (rounded − exact) in ulps of the target quantum
    at the input's binade, from a :func:`round_parts` decision: in [−1, 1]."""
    if rem == 0:
        return 0.0
    frac = math.ldexp(np.float64(rem), -shift)  # exact: rem < 2^54
    err = (1.0 - frac) if up != 0 else -frac
    return -err if neg else err


@nb.njit(inline="always", error_model="numpy")
def rounding_flags(kind, rem, shift, up, over):
    """FLAG_* bits describing a :func:`round_parts` decision."""
    if kind != 0:
        return FLAG_SPECIAL
    flags = 0
    if over:
        flags |= FLAG_OVERFLOW
    if rem != 0:
        flags |= FLAG_INEXACT
        if up != 0:
            flags |= FLAG_AWAY
        if shift <= 63 and rem == (np.uint64(1) << np.uint64(shift - 1)):
            flags |= FLAG_TIE
        elif abs(math.ldexp(np.float64(rem), -shift) - 0.5) < 2.0 ** -NEAR_TIE_WINDOW_LOG2:
            flags |= FLAG_NEAR_TIE
    return flags


@nb.njit(inline="always", error_model="numpy")
def round_bits_ledger(bits, src, tgt, out, mode, rword, rbits, saturate):
    """:func:`round_bits` plus (signed error in ulps, FLAG_* bits) for the ledger."""
    neg, kind, q, qexp, rem, shift, up, over = round_parts(bits, src, tgt, mode, rword, rbits)
    code = encode_rounded(neg, kind, q, qexp, over, tgt, out, mode, saturate)
    return code, rounding_error(neg, rem, shift, up), rounding_flags(kind, rem, shift, up, over)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _round_array(src_bits, out_bits, src, tgt, out, mode, seed_u64, offset, rbits, saturate):
    n = src_bits.size
    for i in nb.prange(n):
        w = np.uint64(0)
        if mode == 5:
            w = randint_word(seed_u64, offset + i)
        out_bits[i] = round_bits(np.uint64(src_bits[i]), src, tgt, out, mode, w, rbits, saturate)


@nb.njit(inline="always", error_model="numpy")
def _round_f32_fast_loop(src_bits, out_bits, tgt, mode, seed_u64, offset, rbits, saturate):
    """Fast twin of :func:`round_bits` for float32 sources and targets of at
    most 32 bits, output in float32 layout: branch-free 32-bit integer code,
    specialised per rounding mode (one compiled entry point per mode, in
    :data:`_FAST_ENTRY`, so ``mode`` is a compile-time constant), so it vectorises.

    For |x| at or above the target's smallest subnormal, rounding to the
    target's quantum is integer rounding of the float32 *encoding* to a
    multiple of 2^d (d dropped bits, d <= 23): within a binade the encoding is
    linear in the value, and a carry out of the mantissa lands exactly on the
    next binade's first encoding.  Smaller |x| round to 0 or the smallest
    subnormal.  Tested bit-equal to :func:`round_bits` on all 2^32 inputs.
    """
    t_mant, t_emin, t_emax, t_maxsig, t_has_inf = tgt
    d0 = np.int32(23 - t_mant)
    tmin_field = np.int32(t_emin + 127)
    # float32 encodings of the target's max finite and smallest subnormal
    max_enc = np.uint32(((t_emax + 127) << 23) | ((t_maxsig << (23 - t_mant)) & 0x7FFFFF))
    minsub_exp = t_emin - t_mant  # smallest subnormal = 2^minsub_exp
    if minsub_exp >= -126:
        minsub_enc = np.uint32((minsub_exp + 127) << 23)
    else:
        minsub_enc = np.uint32(1 << (minsub_exp + 149))
    over_enc = np.uint32(0x7F800000) if t_has_inf else np.uint32(0x7FC00000)
    if saturate:
        over_enc = max_enc
    r_bits = np.uint32(rbits)
    # Targets whose subnormals reach no lower than float32's (bf16) never take
    # the |x| < smallest-subnormal path: a loop without it vectorises better.
    # Targets whose normal range reaches down as far as float32's (bf16: emin = −126)
    # drop the same d0 bits from every finite input: a loop-invariant shift, which
    # vectorises best of all (the same results: deficit <= 0 for every element there).
    n = src_bits.size
    if tmin_field <= 1:
        for i in nb.prange(n):
            out_bits[i] = _round_f32_fast_elem(src_bits[i], i, False, True, d0, tmin_field, max_enc,
                                               minsub_enc, over_enc, t_has_inf, mode, seed_u64, offset,
                                               r_bits, rbits, saturate)
    elif d0 + tmin_field - 1 > 23:
        for i in nb.prange(n):
            out_bits[i] = _round_f32_fast_elem(src_bits[i], i, True, False, d0, tmin_field, max_enc,
                                               minsub_enc, over_enc, t_has_inf, mode, seed_u64, offset,
                                               r_bits, rbits, saturate)
    else:
        for i in nb.prange(n):
            out_bits[i] = _round_f32_fast_elem(src_bits[i], i, False, False, d0, tmin_field, max_enc,
                                               minsub_enc, over_enc, t_has_inf, mode, seed_u64, offset,
                                               r_bits, rbits, saturate)


@nb.njit(inline="always", error_model="numpy")
def _round_f32_fast_elem(b, i, tiny_path, uniform, d0, tmin_field, max_enc, minsub_enc, over_enc,
                         t_has_inf, mode, seed_u64, offset, r_bits, rbits, saturate):
    """One element of :func:`_round_f32_fast_loop`; returns the float32 encoding.
    ``uniform``: the caller knows d = d0 for every element (tmin_field <= 1)."""
    u1 = np.uint32(1)
    u0 = np.uint32(0)
    b = np.uint32(b)
    sign = b & np.uint32(0x80000000)
    neg = sign >> np.uint32(31)
    pos = neg ^ u1
    mag = b & np.uint32(0x7FFFFFFF)
    ef = np.int32(mag >> np.uint32(23))
    if uniform:
        d = d0
    else:
        deficit = tmin_field - max(ef, np.int32(1))
        d = d0 + max(deficit, np.int32(0))
    r = u0
    if mode == 5:
        r = np.uint32(randint_word(seed_u64, offset + i)) >> (np.uint32(32) - r_bits)
    # --- |x| >= smallest subnormal: round the encoding (d <= 23) ---------
    dd = np.uint32(min(d, np.int32(23)))
    unit = u1 << dd
    half = unit >> u1
    nz = np.uint32(dd != u0)
    if mode == 0:  # rne
        # parity of the kept significand: its lowest kept mantissa bit, or the
        # implicit bit when every mantissa bit is dropped (d = 23)
        odd = ((mag >> dd) & u1) if dd < np.uint32(23) else u1
        add = half - nz + (odd & nz)
    elif mode == 1:  # rna
        add = half
    elif mode == 3:  # ru
        add = (unit - u1) * pos
    elif mode == 4:  # rd
        add = (unit - u1) * neg
    elif mode == 5:  # sr
        add = (r << (dd - r_bits)) if dd >= r_bits else (r >> (r_bits - dd))
    else:  # rz
        add = u0
    big = ((mag + add) >> dd) << dd
    # --- |x| < smallest subnormal (d > 23): q in {0, 1} --------------------
    sig = (mag & np.uint32(0x7FFFFF)) | (np.uint32(ef > 0) << np.uint32(23))
    at_half = np.uint32(d == 24)  # only then can sig reach half the quantum
    if mode == 0:
        q = at_half & np.uint32(sig > np.uint32(0x800000))
    elif mode == 1:
        q = at_half & np.uint32(sig >= np.uint32(0x800000))
    elif mode == 3:
        q = np.uint32(sig != u0) & pos
    elif mode == 4:
        q = np.uint32(sig != u0) & neg
    elif mode == 5:
        # round up iff floor(sig / 2^(d - R)) + r >= 2^R; sig < 2^24 <= 2^d
        sh = np.uint32(min(d - np.int32(rbits), np.int32(31)))
        top = sig >> sh if d >= np.int32(rbits) else sig << np.uint32(np.int32(rbits) - d)
        q = np.uint32((np.uint64(top) + np.uint64(r)) >> np.uint64(rbits))
    else:
        q = u0
    rmag = big if (not tiny_path or d <= 23) else q * minsub_enc
    res = over_enc if rmag > max_enc else rmag
    if mode == 2 or mode == 3 or mode == 4:  # directed overflow may stop at max
        dir_max = (mode == 2) or (mode == 3 and neg == u1) or (mode == 4 and neg == u0)
        res = max_enc if (rmag > max_enc and dir_max) else res
    if ef == 255:
        nan = (mag & np.uint32(0x7FFFFF)) != u0
        res = np.uint32(0x7FC00000) if nan else (max_enc if saturate else np.uint32(0x7F800000) if t_has_inf else np.uint32(0x7FC00000))
    return res | sign


# One entry point per mode: the constant mode folds every mode branch away.
@nb.njit(cache=True, parallel=True, error_model="numpy")
def _fast_rne(s, o, tgt, seed, off, rb, sat):
    _round_f32_fast_loop(s, o, tgt, 0, seed, off, rb, sat)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _fast_rna(s, o, tgt, seed, off, rb, sat):
    _round_f32_fast_loop(s, o, tgt, 1, seed, off, rb, sat)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _fast_rz(s, o, tgt, seed, off, rb, sat):
    _round_f32_fast_loop(s, o, tgt, 2, seed, off, rb, sat)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _fast_ru(s, o, tgt, seed, off, rb, sat):
    _round_f32_fast_loop(s, o, tgt, 3, seed, off, rb, sat)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _fast_rd(s, o, tgt, seed, off, rb, sat):
    _round_f32_fast_loop(s, o, tgt, 4, seed, off, rb, sat)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _fast_sr(s, o, tgt, seed, off, rb, sat):
    _round_f32_fast_loop(s, o, tgt, 5, seed, off, rb, sat)


_FAST_ENTRY = (_fast_rne, _fast_rna, _fast_rz, _fast_ru, _fast_rd, _fast_sr)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def _inexact_count(src_bits, src, tgt, out):
    n = src_bits.size
    bad = 0
    for i in nb.prange(n):
        _, _, f = round_bits_ledger(np.uint64(src_bits[i]), src, tgt, out, 2, np.uint64(0), 32, False)
        if f & (FLAG_INEXACT | FLAG_OVERFLOW):
            bad += 1
    return bad


# --------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------
_FLOAT_LAYOUT = {np.dtype(np.float32): FORMATS["fp32"], np.dtype(np.float64): FORMATS["fp64"]}


def _narrow_float_dtypes() -> dict:
    """numpy float16 and every ml_dtypes float format whose values all convert exactly
    to float32 (at most 23 fraction bits, exponents within float32's, subnormals
    included), by dtype; each is widened to float32 on the way in."""
    import ml_dtypes

    out = {np.dtype(np.float16): "float16"}
    for name in sorted(dir(ml_dtypes)):
        if not name.startswith(("float", "bfloat")):
            continue
        try:
            dt = np.dtype(getattr(ml_dtypes, name))
            fi = ml_dtypes.finfo(dt)
        except (TypeError, ValueError, AttributeError):
            continue
        lowest = int(fi.minexp) - int(fi.nmant)  # exponent of the smallest subnormal
        if dt.itemsize < 4 and fi.nmant <= 23 and fi.maxexp <= 128 and lowest >= -149:
            out[dt] = name
    return out


NARROW_FLOAT_DTYPES = _narrow_float_dtypes()

DTYPE_POLICY = (
    "float32 or float64 arrays, or numpy float16 / ml_dtypes narrow-float arrays "
    "(bfloat16, float8_*, float6_*, float4_*: every value converts exactly to float32, "
    "so they are widened to float32 first)")


def as_float_array(x, what: str = "x") -> np.ndarray:
    """The one dtype policy of every public function that takes float arrays
    (quantize, to_bits, tensor_core_dot, sfu_exp2, flash_attention, reference_attention):
    ``x`` as a float32 or float64 ndarray.  float32 and float64 pass unchanged; numpy
    float16 and the ml_dtypes float formats (:data:`NARROW_FLOAT_DTYPES`: bfloat16,
    float8_e4m3fn, float8_e5m2, ...) are converted to float32, which is exact for every
    value of them (NaN and ±inf included).  Anything else — integers, booleans, complex,
    longdouble, ml_dtypes int4, objects — is a TypeError saying what is accepted."""
    arr = np.asarray(x)
    if arr.dtype in _FLOAT_LAYOUT:
        return arr
    if arr.dtype in NARROW_FLOAT_DTYPES:
        return arr.astype(np.float32)
    kind = {"i": "integer", "u": "unsigned integer", "c": "complex", "b": "boolean",
            "f": "floating point wider than float64"}.get(arr.dtype.kind, str(arr.dtype))
    raise TypeError(
        f"{what} must be a float array: {DTYPE_POLICY}; got dtype {arr.dtype} ({kind}); "
        f"convert it first, e.g. np.asarray({what}, dtype=np.float64)"
        + (" (complex values have no single rounding: quantize .real and .imag separately)"
           if arr.dtype.kind == "c" else ""))


def check_rand_bits(rand_bits) -> int:
    if rand_bits is None:
        return 32
    if isinstance(rand_bits, (bool, np.bool_)) or not isinstance(rand_bits, (int, np.integer)):
        raise TypeError(f"rand_bits must be an integer in 1..32, got {rand_bits!r}")
    if not 1 <= int(rand_bits) <= 32:
        raise ValueError(
            f"rand_bits must be in 1..32 (one 32-bit Philox word per element), got {rand_bits}")
    return int(rand_bits)


def quantize(x, fmt, rounding="rne", *, saturate=False, seed=None, rand_bits=None, offset=0):
    """Round every element of ``x`` to the nearest-by-``rounding`` value of ``fmt``.

    Parameters
    ----------
    x : float array-like, any shape: float32 or float64, or numpy float16 / ml_dtypes
        bfloat16, float8_* ... (widened exactly to float32 first; :func:`as_float_array`).
    fmt : format name (``emulator.FORMATS``) or :class:`FloatFormat`.
    rounding : ``rne`` | ``rna`` | ``rz`` | ``ru`` | ``rd`` | ``sr``.
    saturate : clamp overflow and ±inf to ±max finite (NaN stays NaN).
    seed : integer Philox key; required for ``sr`` (flashbits never draws
        hidden randomness, so every stochastic result can be reproduced).
    rand_bits : number R of random bits ``sr`` adds (1..32, default 32).
    offset : Philox counter of the first element (element i uses offset + i).

    Returns a float32 array (float64 for fp64) of ``x``'s shape whose values are
    exactly representable in ``fmt``.  See the module docstring for the full
    contract (overflow, NaN, subnormals).
    """
    f = get_format(fmt)
    mode = RoundMode.parse(rounding)
    arr = as_float_array(x)
    rbits = check_rand_bits(rand_bits)
    if rand_bits is not None and mode != RoundMode.sr:
        raise ValueError(f"rand_bits only applies to rounding='sr', got rounding={mode.name!r}")
    if mode == RoundMode.sr:
        if seed is None:
            raise ValueError(
                "rounding='sr' needs seed=<int>: it is the Philox key of the random bits, "
                "so the same seed gives the same result here and on the GPU (e.g. seed=0)")
        seed_u64 = seed_to_u64(seed)
    else:
        if seed is not None:
            raise ValueError(f"seed only applies to rounding='sr', got rounding={mode.name!r}")
        seed_u64 = np.uint64(0)
    src_fmt = _FLOAT_LAYOUT[arr.dtype]
    out_fmt = FORMATS[f.value_dtype.replace("float", "fp")]
    src_bits = np.ascontiguousarray(arr).view(src_fmt.storage_dtype).reshape(-1)
    out = np.empty(src_bits.size, dtype=out_fmt.storage_dtype)
    if src_fmt.name == "fp32" and out_fmt.name == "fp32":
        _FAST_ENTRY[mode](src_bits, out, target(f), seed_u64, np.int64(offset), rbits,
                          bool(saturate))
        return out.view(np.float32).reshape(arr.shape)
    _round_array(src_bits, out, layout(src_fmt), target(f), layout(out_fmt), int(mode),
                 seed_u64, np.int64(offset), rbits, bool(saturate))
    return out.view(f.value_dtype).reshape(arr.shape)
