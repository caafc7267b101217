"""Compiled building blocks of the attention recipes: stage roundings, the ledger, hardware units.

Numerical contract.  Every value is carried as a float64 that holds it
exactly.  Every rounding of a recipe *stage* goes through :mod:`emulator.exact`
(the operation computed exactly, then rounded once) with the stage's target
format, rounding mode and random word taken from the stage *plan* (one int64
row per stage, columns ``PLAN_*`` below), and is recorded in the rounding
ledger (:mod:`.ledger`) when the context's ``record`` is set.  The hardware
units (wgmma tensor-core model, MUFU.EX2 table model, the wgmma lane-tree row
sum) reproduce the GPU bit for bit; with ``hw`` False each unit is its float64
IEEE counterpart (the "every stage in float64" mode), and a stage's ``exact``
plan flag (ablation) replaces the unit by the exact operation rounded once.

:class:`StageContext` groups what every stage rounding needs: the plan, the ledger
chunk this row writes into, and whether to record.  The per-element helpers here
(round_*, the units) take its three fields as plain arguments, and take the
tensor-core operands and MUFU tables as plain arrays: numba increfs and decrefs
every array it reads out of a tuple, and in helpers called per element that
costs several per cent of the run time.  A per-block step unpacks the groups once
and passes the fields down.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba as nb
import numpy as np

from ..exact import f64_to_bits, rnd, rnd_add, rnd_div, rnd_fma, rnd_mul, two_sum
from ..hw.sfu import ex2_approx
from ..hw.tensor_core import tc_dot_ij
from ..philox import randint_word
from ..rounding import (FLAG_AWAY, FLAG_INEXACT, FLAG_NEAR_TIE, FLAG_OVERFLOW, FLAG_SPECIAL, FLAG_TIE, RoundMode,
                        round_bits_ledger)
from .ledger import (F_AWAY, F_INEXACT, F_N, F_NEAR, F_NEAR_AWAY, F_OPS, F_OVER, F_SPEC, F_SUM, F_SUM2, F_TIES,
                     F_TIES_AWAY)

__all__ = ["StageContext", "PLAN_COLUMNS", "FIX_NONE", "FIX_PAPER", "FIX_OFFSET", "FIX_UNBIASED", "LOG2E_F32"]

# columns of a plan row: the target format (rounding.target's five fields), the rounding
# mode, the random bits of sr, saturation, the Philox key, the ``exact`` ablation flag,
# and compensated (Kahan–Neumaier) accumulation of a running-accumulator cast
PLAN_COLUMNS = ("mant", "emin", "emax", "max_sig", "has_inf", "mode", "rand_bits", "saturate", "seed", "exact",
                "compensated")
(PLAN_MANT, PLAN_EMIN, PLAN_EMAX, PLAN_MAX_SIG, PLAN_HAS_INF, PLAN_MODE, PLAN_RAND_BITS, PLAN_SATURATE, PLAN_SEED,
 PLAN_EXACT, PLAN_COMPENSATED) = range(len(PLAN_COLUMNS))

# the fix a kernel applies to each block max (Scalars.fix_kind)
FIX_NONE, FIX_PAPER, FIX_OFFSET, FIX_UNBIASED = 0, 1, 2, 3
FIX_KINDS = {None: FIX_NONE, "paper": FIX_PAPER, "offset": FIX_OFFSET, "unbiased": FIX_UNBIASED}

MODE_SR = int(RoundMode.sr)   # numba freezes module globals: a constant in the compiled code
MODE_RNE = int(RoundMode.rne)

LOG2E_F32 = float(np.float32(1.4426950408889634))  # 0x3FB8AA3B, what tl.exp multiplies by

StageContext = namedtuple("StageContext", "plan ledger record")
StageContext.__doc__ = """Stage plan (int64, stages × PLAN_COLUMNS), the ledger chunk
(float64, stages × ledger.NF) and whether roundings are recorded in it."""


# --------------------------------------------------------------------------
# the ledger
# --------------------------------------------------------------------------
@nb.njit(cache=True, error_model="numpy")
def record_rounding(ledger, stage, err, flags):
    """Count one rounding of ``stage`` (its signed error in ulps and flags) in the ledger."""
    ledger[stage, F_OPS] += 1.0
    if flags & FLAG_SPECIAL:
        ledger[stage, F_SPEC] += 1.0
        return
    if flags & FLAG_OVERFLOW:
        ledger[stage, F_OVER] += 1.0
        return
    if flags & FLAG_INEXACT:
        ledger[stage, F_INEXACT] += 1.0
        away = (flags & FLAG_AWAY) != 0
        if away:
            ledger[stage, F_AWAY] += 1.0
        if flags & FLAG_TIE:
            ledger[stage, F_TIES] += 1.0
            if away:
                ledger[stage, F_TIES_AWAY] += 1.0
        elif flags & FLAG_NEAR_TIE:
            ledger[stage, F_NEAR] += 1.0
            if away:
                ledger[stage, F_NEAR_AWAY] += 1.0
    ledger[stage, F_SUM] += err
    ledger[stage, F_SUM2] += err * err
    ledger[stage, F_N] += 1.0


@nb.njit(cache=True, error_model="numpy")
def record_error(ledger, stage, res, ex_hi, ex_lo):
    """Record a non-rounding result (hardware approximation / tensor core) against its exact
    value ex_hi + ex_lo, in fp32 ulps at the exact value's binade."""
    ledger[stage, F_OPS] += 1.0
    if not (math.isfinite(res) and math.isfinite(ex_hi)):
        ledger[stage, F_SPEC] += 1.0
        return
    if (res == 0.0) != (ex_hi == 0.0):
        ledger[stage, F_OVER] += 1.0  # flushed to zero (FTZ) or the like: out of range, no ulp error
        return
    ax = abs(ex_hi)
    e = -126 if ax < 2.0 ** -126 else max(int(math.floor(math.log2(ax))), -126)
    # log2 may be off by one at binade edges: correct it exactly
    if ax >= 2.0 ** -126:
        if 2.0 ** e > ax:
            e -= 1
        elif 2.0 ** (e + 1) <= ax:
            e += 1
    ulp = 2.0 ** (e - 23)
    err = ((res - ex_hi) - ex_lo) / ulp
    if err != 0.0:
        ledger[stage, F_INEXACT] += 1.0
        if abs(res) > abs(ex_hi + ex_lo):
            ledger[stage, F_AWAY] += 1.0
    ledger[stage, F_SUM] += err
    ledger[stage, F_SUM2] += err * err
    ledger[stage, F_N] += 1.0


@nb.njit(cache=True, error_model="numpy")
def ledger_cast_f32(bits, tgt, sat, ledger, stage):
    """Record the RNE cast of float32 values (bits) into ``tgt`` in ledger row ``stage``."""
    f32_layout = (23, 8, 127, 0)
    for i in range(bits.size):
        _, err, fl = round_bits_ledger(np.uint64(bits[i]), f32_layout, tgt, f32_layout, MODE_RNE, np.uint64(0), 32,
                                       sat != 0)
        record_rounding(ledger, stage, err, fl)


# --------------------------------------------------------------------------
# stage roundings: one exact operation, rounded once as the stage's plan row says
# --------------------------------------------------------------------------
@nb.njit(inline="always", error_model="numpy")
def stage_target(plan, stage):
    """The rounding target tuple (rounding.target) of ``stage``'s format."""
    return (plan[stage, PLAN_MANT], plan[stage, PLAN_EMIN], plan[stage, PLAN_EMAX], plan[stage, PLAN_MAX_SIG],
            plan[stage, PLAN_HAS_INF])


@nb.njit(inline="always", error_model="numpy")
def stage_word(plan, stage, offset):
    """The random word of ``stage``'s rounding: Philox at ``offset`` for sr, else 0.
    ``offset`` is the element's flat index, as the Triton kernel numbers it."""
    if plan[stage, PLAN_MODE] == MODE_SR:
        return randint_word(np.uint64(plan[stage, PLAN_SEED]), offset)
    return np.uint64(0)


# the Weyl step of the unbiased fix's shared words: round(2^32 / golden ratio), odd
WEYL_STEP = 0x9E3779B9


@nb.njit(inline="always", error_model="numpy")
def shared_word(plan, stage, row, block):
    """The unbiased fix's P_cast word of one (row, key block): w = (u_row + block · WEYL_STEP)
    mod 2^32, u_row = Philox at the row's flat index (``tl.randint(seed, row)``); every
    score of the row's block takes its sr offset from w, so each is rounded without bias
    (w is uniform for each block) for one random word per row.  0 unless the stage is sr."""
    if plan[stage, PLAN_MODE] != MODE_SR:
        return np.uint64(0)
    u = randint_word(np.uint64(plan[stage, PLAN_SEED]), row)
    return (u + np.uint64(block) * np.uint64(WEYL_STEP)) & np.uint64(0xFFFFFFFF)


@nb.njit(cache=True, error_model="numpy")
def round_stage_word(plan, ledger, record, stage, hi, lo, word):
    """hi + lo (exact) rounded once by ``stage``'s format/mode with the given random word
    (sr), recorded: :func:`round_stage` for a caller that draws its own words."""
    v, err, fl = rnd(hi, lo, stage_target(plan, stage), plan[stage, PLAN_MODE], word,
                     plan[stage, PLAN_RAND_BITS], plan[stage, PLAN_SATURATE] != 0)
    return recorded(ledger, record, stage, v, err, fl)


@nb.njit(inline="always", error_model="numpy")
def recorded(ledger, record, stage, v, err, flags):
    """v, after recording its rounding (err, flags) in ledger row ``stage`` when recording."""
    if record:
        record_rounding(ledger, stage, err, flags)
    return v


@nb.njit(cache=True, error_model="numpy")
def round_stage(plan, ledger, record, stage, hi, lo, offset):
    """hi + lo (exact) rounded once by ``stage``'s format/mode, recorded."""
    v, err, fl = rnd(hi, lo, stage_target(plan, stage), plan[stage, PLAN_MODE], stage_word(plan, stage, offset),
                     plan[stage, PLAN_RAND_BITS], plan[stage, PLAN_SATURATE] != 0)
    return recorded(ledger, record, stage, v, err, fl)


@nb.njit(cache=True, error_model="numpy")
def round_add(plan, ledger, record, stage, a, b, offset):
    """a + b computed exactly, rounded once by ``stage``'s format/mode, recorded."""
    v, err, fl = rnd_add(a, b, stage_target(plan, stage), plan[stage, PLAN_MODE], stage_word(plan, stage, offset),
                         plan[stage, PLAN_RAND_BITS], plan[stage, PLAN_SATURATE] != 0)
    return recorded(ledger, record, stage, v, err, fl)


@nb.njit(cache=True, error_model="numpy")
def round_mul(plan, ledger, record, stage, a, b, offset):
    """a · b computed exactly, rounded once by ``stage``'s format/mode, recorded."""
    v, err, fl = rnd_mul(a, b, stage_target(plan, stage), plan[stage, PLAN_MODE], stage_word(plan, stage, offset),
                         plan[stage, PLAN_RAND_BITS], plan[stage, PLAN_SATURATE] != 0)
    return recorded(ledger, record, stage, v, err, fl)


@nb.njit(cache=True, error_model="numpy")
def round_fma(plan, ledger, record, stage, a, b, c, offset):
    """a·b + c exact (a, b ≤ 26 bits), rounded once by ``stage``'s format/mode, recorded."""
    v, err, fl = rnd_fma(a, b, c, stage_target(plan, stage), plan[stage, PLAN_MODE], stage_word(plan, stage, offset),
                         plan[stage, PLAN_RAND_BITS], plan[stage, PLAN_SATURATE] != 0)
    return recorded(ledger, record, stage, v, err, fl)


@nb.njit(cache=True, error_model="numpy")
def round_div(plan, ledger, record, stage, a, b, offset):
    """a / b computed exactly, rounded once by ``stage``'s format/mode, recorded."""
    v, err, fl = rnd_div(a, b, stage_target(plan, stage), plan[stage, PLAN_MODE], stage_word(plan, stage, offset),
                         plan[stage, PLAN_RAND_BITS], plan[stage, PLAN_SATURATE] != 0)
    return recorded(ledger, record, stage, v, err, fl)


# un-staged arithmetic (the fix's comparisons): RNE into ``arith`` (a rounding.target), never
# recorded
@nb.njit(inline="always", error_model="numpy")
def arith_add(a, b, arith):
    v, _, _ = rnd_add(a, b, arith, MODE_RNE, np.uint64(0), 32, False)
    return v


@nb.njit(inline="always", error_model="numpy")
def arith_mul(a, b, arith):
    v, _, _ = rnd_mul(a, b, arith, MODE_RNE, np.uint64(0), 32, False)
    return v


@nb.njit(inline="always", error_model="numpy")
def arith_fma(a, b, c, arith):
    v, _, _ = rnd_fma(a, b, c, arith, MODE_RNE, np.uint64(0), 32, False)
    return v


# --------------------------------------------------------------------------
# fp32 bit patterns
# --------------------------------------------------------------------------
@nb.njit(cache=True, error_model="numpy")
def f32_value(b):
    """The float64 value of the float32 bit pattern ``b`` (uint32)."""
    ef = np.int64((b >> np.uint32(23)) & np.uint32(0xFF))
    m = np.int64(b & np.uint32(0x7FFFFF))
    neg = (b >> np.uint32(31)) != 0
    if ef == 255:
        if m != 0:
            return np.nan
        return -np.inf if neg else np.inf
    if ef == 0:
        v = m * 2.0 ** -149
    else:
        v = (m + 8388608) * 2.0 ** (ef - 150)
    return -v if neg else v


@nb.njit(cache=True, error_model="numpy")
def bits_of_f32value(v):
    """float32 bits of a float64 that holds a float32 value exactly.

    Other values occur only in fp64-format ablations, where a stage hands the
    MUFU model a value no fp32 register could hold: the significand is truncated
    to float32's, and magnitudes of 2^128 and more read as ±inf (the unit's
    input is fp32)."""
    b = f64_to_bits(v)
    sign = np.uint32((b >> np.uint64(63)) << np.uint64(31))
    if v != v:
        return np.uint32(0x7FFFFFFF)
    if v == 0.0:
        return sign
    a = abs(v)
    if a == np.inf:
        return sign | np.uint32(0x7F800000)
    e = np.int64((b >> np.uint64(52)) & np.uint64(0x7FF)) - 1023
    m = b & np.uint64((1 << 52) - 1)
    if e > 127:
        return sign | np.uint32(0x7F800000)
    if e >= -126:
        return sign | np.uint32(((e + 127) << 23) | np.int64(m >> np.uint64(29)))
    # float32 subnormal: value = (2^52 + m) · 2^(e − 52) = q · 2^-149
    q = ((np.uint64(1) << np.uint64(52)) | m) >> np.uint64(52 - (e + 149))
    return sign | np.uint32(q)


@nb.njit(cache=True, error_model="numpy")
def decode_as(v, mant, emin):
    """(sig, unit exponent, special) of a value of a format with ``mant`` bits and ``emin``:
    the tensor-core model's operand decoding (special: 0 finite, 1 +inf, 2 −inf, 3 NaN)."""
    if v != v:
        return np.int64(0), np.int64(0), np.int8(3)
    if v == np.inf:
        return np.int64(0), np.int64(0), np.int8(1)
    if v == -np.inf:
        return np.int64(0), np.int64(0), np.int8(2)
    if v == 0.0:
        return np.int64(0), np.int64(emin - mant), np.int8(0)
    b = f64_to_bits(abs(v))
    e = np.int64((b >> np.uint64(52)) & np.uint64(0x7FF)) - 1023
    e0 = e if e > emin else emin
    unit = e0 - mant
    # |v| / 2^unit is an integer < 2^(mant+1)
    s = np.int64(abs(v) * 2.0 ** (-unit))
    return (-s if v < 0 else s), unit, np.int8(0)


# --------------------------------------------------------------------------
# hardware units
# --------------------------------------------------------------------------
@nb.njit(cache=True, error_model="numpy")
def mufu(x, ex2_pos, ex2_neg, ftz, ex2_params):
    """ex2.approx.ftz.f32 (ftz: MUFU.EX2) or ex2.approx.f32 of the float32 value x, by the
    :mod:`emulator.hw.sfu` table model; ``ex2_params`` = (F, round_key, twos, nan_code)."""
    F, round_key, twos, nan_code = ex2_params
    return f32_value(ex2_approx(bits_of_f32value(x), ex2_pos, ex2_neg, F, round_key, twos, nan_code, ftz))


@nb.njit(cache=True, error_model="numpy")
def ex2_unit(plan, ledger, record, stage, x, hw, ex2_pos, ex2_neg, ex2_params, ftz):
    """The recipe's exp2 unit on x: the MUFU model (``hw``; tables and parameters as
    rows.Units holds them; recorded against the exact exp2) or float64 exp2.  With the
    stage's ``exact`` flag (ablation): exp2 in float64, rounded once by the stage."""
    if not hw:
        return math.exp2(x)
    if plan[stage, PLAN_EXACT]:
        return round_stage(plan, ledger, record, stage, math.exp2(x) if x == x else np.nan, 0.0, 0)
    r = mufu(x, ex2_pos, ex2_neg, ftz, ex2_params)
    if record:
        record_error(ledger, stage, r, math.exp2(x) if x == x else np.nan, 0.0)
    return r


@nb.njit(cache=True, error_model="numpy")
def row_tree_sum(plan, ledger, record, stage, vals, n):
    """Sum of vals[0:n] in the wgmma lane-tree order (n a multiple of 8):
    lane q folds columns 8g + 2q, 8g + 2q + 1 (g ascending) left to right,
    then (t0 + t2) + (t1 + t3).  With the stage's ``exact`` flag (ablation):
    the exact sum, rounded once."""
    if plan[stage, PLAN_EXACT]:
        hi = 0.0
        lo = 0.0
        for j in range(n):
            hi, e = two_sum(hi, vals[j])
            lo += e
        return round_stage(plan, ledger, record, stage, hi, lo, 0)
    t0 = 0.0
    t1 = 0.0
    t2 = 0.0
    t3 = 0.0
    for q in range(4):
        t = vals[2 * q]
        t = round_add(plan, ledger, record, stage, t, vals[2 * q + 1], 0)
        for g in range(1, n // 8):
            t = round_add(plan, ledger, record, stage, t, vals[8 * g + 2 * q], 0)
            t = round_add(plan, ledger, record, stage, t, vals[8 * g + 2 * q + 1], 0)
        if q == 0:
            t0 = t
        elif q == 1:
            t1 = t
        elif q == 2:
            t2 = t
        else:
            t3 = t
    s0 = round_add(plan, ledger, record, stage, t0, t2, 0)
    s1 = round_add(plan, ledger, record, stage, t1, t3, 0)
    return round_add(plan, ledger, record, stage, s0, s1, 0)


@nb.njit(inline="always", error_model="numpy")
def maxnum(a, b):
    """PTX max.f32: NaN operands are ignored (NaN only if both are NaN)."""
    if a != a:
        return b
    if b != b:
        return a
    return a if a > b else b


@nb.njit(cache=True, error_model="numpy")
def exact_dot(av, i, bv, j, depth, c):
    """(hi, lo) of c + sum_k a[i, k]·b[k, j] nearly exactly (TwoSum of exact products)."""
    hi = c
    lo = 0.0
    for k in range(depth):
        p = av[i, k] * bv[k, j]
        if not (math.isfinite(p) and math.isfinite(hi)):
            hi = hi + p  # inf/NaN: IEEE semantics; TwoSum's error term would be NaN
            continue
        hi, e = two_sum(hi, p)
        lo += e
    if not math.isfinite(hi):
        lo = 0.0
    return hi, lo


@nb.njit(cache=True, error_model="numpy")
def tc_stage(plan, ledger, record, stage, hw, a_values, a_sig, a_exp, a_spec, i, b_values, b_sig, b_exp, b_spec, j,
             depth, c, model):
    """One tensor-core result c + sum_k a[i, k]·b[k, j] (k < depth) for ``stage``: the wgmma
    model (``hw``; recorded against the exact sum), the exact sum rounded once to fp32 (the
    stage's ``exact`` ablation), or the float64 sum (not ``hw``).  ``a_*``, ``b_*``: the
    fields of two 2-D operands (rows.Operand); ``model``: (k_step, frac_bits,
    sum_frac_bits, mant_bits)."""
    if hw and plan[stage, PLAN_EXACT]:
        hi, lo = exact_dot(a_values, i, b_values, j, depth, c)
        return round_stage(plan, ledger, record, stage, hi, lo, 0)
    if hw:
        v = f32_value(tc_dot_ij(a_sig, a_exp, a_spec, i, b_sig, b_exp, b_spec, j, bits_of_f32value(c),
                                model[0], model[1], model[2], model[3]))
        if record:
            hi, lo = exact_dot(a_values, i, b_values, j, depth, c)
            record_error(ledger, stage, v, hi, lo)
        return v
    hi, lo = exact_dot(a_values, i, b_values, j, depth, c)
    return hi + lo
