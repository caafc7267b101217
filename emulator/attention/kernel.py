"""Compiled per-row kernels of the attention recipes (numba, parallel over rows).

Every value is carried as a float64 that holds it exactly; every rounding
goes through :mod:`emulator.exact` (exact op, one rounding) with the stage's
target format, mode and random word from the *plan*, and is recorded in the
ledger when ``rec`` is set.  ``hw`` selects the hardware units (tensor-core
model, MUFU.EX2 tables); with ``hw`` False every unit is its float64 IEEE
counterpart (the "every stage in float64" mode).

The op sequences are those of docs/recipes.md; stage indices are the order
of the recipe's stages (``recipes.FA2_STAGES`` / ``recipes.PAPER_STAGES``).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..exact import f64_to_bits, rnd, rnd_add, rnd_div, rnd_fma, rnd_mul, two_sum
from ..hw.sfu import ex2_approx
from ..hw.tensor_core import tc_dot_ij
from ..philox import randint_word
from ..rounding import (FLAG_AWAY, FLAG_INEXACT, FLAG_NEAR_TIE, FLAG_OVERFLOW, FLAG_SPECIAL, FLAG_TIE,
                         round_bits_ledger)
from .ledger import (F_AWAY, F_INEXACT, F_N, F_NEAR, F_NEAR_AWAY, F_OPS, F_OVER, F_SPEC, F_SUM, F_SUM2,
                     F_TIES, F_TIES_AWAY)
from .families.fa2 import FA2_STAGES
from .families.paper import PAPER_STAGES

# stage indices (the ledger's rows), checked against the recipe tables below
(FA2_S, FA2_M_SCALE, FA2_X, FA2_P, FA2_L_BLK, FA2_ALPHA_ARG, FA2_ALPHA, FA2_L, FA2_ACC_SCALE, FA2_P_CAST,
 FA2_V_CAST, FA2_PV, FA2_DIV, FA2_O_CAST) = range(14)
assert list(FA2_STAGES) == ["S", "m_scale", "x", "P", "l_blk", "alpha_arg", "alpha", "l", "acc_scale",
                            "P_cast", "V_cast", "PV", "div", "O_cast"]
(PP_S, PP_S_CAST, PP_SS, PP_SS_CAST, PP_THR, PP_D, PP_D_CAST, PP_E_ARG, PP_P, PP_P_CAST, PP_L_BLK,
 PP_L_BLK_CAST, PP_A_ARG, PP_A_ARG_CAST, PP_A_E_ARG, PP_ALPHA, PP_ALPHA_CAST, PP_L_MUL, PP_L_MUL_CAST,
 PP_L_ADD, PP_L_ADD_CAST, PP_PV, PP_PV_CAST, PP_O_MUL, PP_O_MUL_CAST, PP_O_ADD, PP_O_ADD_CAST, PP_COMP,
 PP_DIV, PP_O_CAST) = range(30)
assert list(PAPER_STAGES) == ["S", "S_cast", "s", "s_cast", "thr", "d", "d_cast", "e_arg", "P", "P_cast",
                              "l_blk", "l_blk_cast", "a_arg", "a_arg_cast", "a_e_arg", "alpha", "alpha_cast",
                              "l_mul", "l_mul_cast", "l_add", "l_add_cast", "PV", "PV_cast", "O_mul",
                              "O_mul_cast", "O_add", "O_add_cast", "comp", "div", "O_cast"]

# plan columns
P_MANT, P_EMIN, P_EMAX, P_MAXSIG, P_HASINF, P_MODE, P_RBITS, P_SAT, P_SEED, P_EXACT = range(10)
PLAN_COLS = 10

# fix kinds
FIX_NONE, FIX_PAPER, FIX_OFFSET = 0, 1, 2

LOG2E_F32 = float(np.float32(1.4426950408889634))  # 0x3FB8AA3B, what tl.exp multiplies by


# --------------------------------------------------------------------------
# ledger and plan helpers
# --------------------------------------------------------------------------
@nb.njit(cache=True, error_model="numpy")
def led(L, st, err, flags):
    L[st, F_OPS] += 1.0
    if flags & FLAG_SPECIAL:
        L[st, F_SPEC] += 1.0
        return
    if flags & FLAG_OVERFLOW:
        L[st, F_OVER] += 1.0
        return
    if flags & FLAG_INEXACT:
        L[st, F_INEXACT] += 1.0
        away = (flags & FLAG_AWAY) != 0
        if away:
            L[st, F_AWAY] += 1.0
        if flags & FLAG_TIE:
            L[st, F_TIES] += 1.0
            if away:
                L[st, F_TIES_AWAY] += 1.0
        elif flags & FLAG_NEAR_TIE:
            L[st, F_NEAR] += 1.0
            if away:
                L[st, F_NEAR_AWAY] += 1.0
    L[st, F_SUM] += err
    L[st, F_SUM2] += err * err
    L[st, F_N] += 1.0


@nb.njit(cache=True, error_model="numpy")
def led_err(L, st, res, ex_hi, ex_lo):
    """Record a non-rounding result (hardware approximation / tensor core) vs its exact value."""
    L[st, F_OPS] += 1.0
    if not (math.isfinite(res) and math.isfinite(ex_hi)):
        L[st, F_SPEC] += 1.0
        return
    if (res == 0.0) != (ex_hi == 0.0):
        L[st, F_OVER] += 1.0  # flushed to zero (FTZ) or the like: out of range, no ulp error
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
        L[st, F_INEXACT] += 1.0
        if abs(res) > abs(ex_hi + ex_lo):
            L[st, F_AWAY] += 1.0
    L[st, F_SUM] += err
    L[st, F_SUM2] += err * err
    L[st, F_N] += 1.0


@nb.njit(inline="always", error_model="numpy")
def tgt_of(plan, st):
    return (plan[st, P_MANT], plan[st, P_EMIN], plan[st, P_EMAX], plan[st, P_MAXSIG], plan[st, P_HASINF])


@nb.njit(inline="always", error_model="numpy")
def stage_word(plan, st, offset):
    """The random word of stage ``st``'s rounding: Philox at ``offset`` for sr (mode 5), else 0."""
    if plan[st, P_MODE] == 5:
        return randint_word(np.uint64(plan[st, P_SEED]), offset)
    return np.uint64(0)


@nb.njit(inline="always", error_model="numpy")
def kept(L, rec, st, v, err, fl):
    """v, after recording its rounding (err, flags) in ledger row ``st`` when ``rec``."""
    if rec:
        led(L, st, err, fl)
    return v


@nb.njit(cache=True, error_model="numpy")
def R(L, rec, plan, st, hi, lo, offset):
    """hi + lo (exact) rounded once by stage ``st``'s format/mode, in the ledger if ``rec``."""
    v, err, fl = rnd(hi, lo, tgt_of(plan, st), plan[st, P_MODE], stage_word(plan, st, offset),
                     plan[st, P_RBITS], plan[st, P_SAT] != 0)
    return kept(L, rec, st, v, err, fl)


@nb.njit(cache=True, error_model="numpy")
def R_add(L, rec, plan, st, a, b, offset):
    """a + b computed exactly, rounded once by stage ``st``'s format/mode, in the ledger if ``rec``."""
    v, err, fl = rnd_add(a, b, tgt_of(plan, st), plan[st, P_MODE], stage_word(plan, st, offset),
                         plan[st, P_RBITS], plan[st, P_SAT] != 0)
    return kept(L, rec, st, v, err, fl)


@nb.njit(cache=True, error_model="numpy")
def R_mul(L, rec, plan, st, a, b, offset):
    """a · b computed exactly, rounded once by stage ``st``'s format/mode, in the ledger if ``rec``."""
    v, err, fl = rnd_mul(a, b, tgt_of(plan, st), plan[st, P_MODE], stage_word(plan, st, offset),
                         plan[st, P_RBITS], plan[st, P_SAT] != 0)
    return kept(L, rec, st, v, err, fl)


@nb.njit(cache=True, error_model="numpy")
def R_fma(L, rec, plan, st, a, b, c, offset):
    """a·b + c exact (a, b ≤ 26 bits), rounded once by stage ``st``'s format/mode, in the ledger if ``rec``."""
    v, err, fl = rnd_fma(a, b, c, tgt_of(plan, st), plan[st, P_MODE], stage_word(plan, st, offset),
                         plan[st, P_RBITS], plan[st, P_SAT] != 0)
    return kept(L, rec, st, v, err, fl)


@nb.njit(cache=True, error_model="numpy")
def R_div(L, rec, plan, st, a, b, offset):
    """a / b computed exactly, rounded once by stage ``st``'s format/mode, in the ledger if ``rec``."""
    v, err, fl = rnd_div(a, b, tgt_of(plan, st), plan[st, P_MODE], stage_word(plan, st, offset),
                         plan[st, P_RBITS], plan[st, P_SAT] != 0)
    return kept(L, rec, st, v, err, fl)


# --------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------
@nb.njit(cache=True, error_model="numpy")
def _f32v(b):
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
def mufu(x, tpos, tneg, ftz, ex2p):
    """ex2.approx.ftz.f32 (ftz: MUFU.EX2) or ex2.approx.f32 of the float32 value x, by the
    :mod:`emulator.hw.sfu` table model; ``ex2p`` = (F, round_key, twos, nan_code)."""
    F, round_key, twos, nan_code = ex2p
    return _f32v(ex2_approx(bits_of_f32value(x), tpos, tneg, F, round_key, twos, nan_code, ftz))


@nb.njit(cache=True, error_model="numpy")
def ex2_unit(L, rec, plan, st, x, tpos, tneg, ftz, hw, ex2p):
    """The recipe's exp2 unit on x: hardware model (hw) or float64 exp2; recorded.
    With the stage's ``exact`` flag (ablation): exp2 in float64, rounded once to fp32."""
    if not hw:
        return math.exp2(x)
    if plan[st, P_EXACT]:
        return R(L, rec, plan, st, math.exp2(x) if x == x else np.nan, 0.0, 0)
    r = mufu(x, tpos, tneg, ftz, ex2p)
    if rec:
        led_err(L, st, r, math.exp2(x) if x == x else np.nan, 0.0)
    return r


@nb.njit(cache=True, error_model="numpy")
def decode_as(v, mant, emin):
    """(sig, unit exponent, special) of a value of a format with ``mant`` bits and ``emin``."""
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


@nb.njit(cache=True, error_model="numpy")
def row_tree_sum(L, rec, plan, st, vals, n):
    """Sum of vals[0:n] in the wgmma lane-tree order (n a multiple of 8):
    lane q folds columns 8g + 2q, 8g + 2q + 1 (g ascending) left to right,
    then (t0 + t2) + (t1 + t3).  With the stage's ``exact`` flag (ablation):
    the exact sum, rounded once."""
    if plan[st, P_EXACT]:
        hi = 0.0
        lo = 0.0
        for j in range(n):
            hi, e = two_sum(hi, vals[j])
            lo += e
        return R(L, rec, plan, st, hi, lo, 0)
    t0 = 0.0
    t1 = 0.0
    t2 = 0.0
    t3 = 0.0
    for q in range(4):
        t = vals[2 * q]
        t = R_add(L, rec, plan, st, t, vals[2 * q + 1], 0)
        for g in range(1, n // 8):
            t = R_add(L, rec, plan, st, t, vals[8 * g + 2 * q], 0)
            t = R_add(L, rec, plan, st, t, vals[8 * g + 2 * q + 1], 0)
        if q == 0:
            t0 = t
        elif q == 1:
            t1 = t
        elif q == 2:
            t2 = t
        else:
            t3 = t
    s0 = R_add(L, rec, plan, st, t0, t2, 0)
    s1 = R_add(L, rec, plan, st, t1, t3, 0)
    return R_add(L, rec, plan, st, s0, s1, 0)


@nb.njit(inline="always", error_model="numpy")
def maxnum(a, b):
    """PTX max.f32: NaN operands are ignored (NaN only if both are NaN)."""
    if a != a:
        return b
    if b != b:
        return a
    return a if a > b else b


@nb.njit(cache=True, error_model="numpy")
def exact_dot(av, i, bv, j, K, c):
    """(hi, lo) of c + sum_k a[i, k]·b[k, j] nearly exactly (TwoSum of exact products)."""
    hi = c
    lo = 0.0
    for k in range(K):
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
def tc_stage(L, rec, plan, st, hw, a_s, a_e, a_p, a_v, i, b_s, b_e, b_p, b_v, j, K, c, tc):
    """One tensor-core result c + sum_k a[i, k]·b[k, j] for stage ``st``: the wgmma
    model (``hw``; recorded against the exact sum), the exact sum rounded once to
    fp32 (the stage's ``exact`` ablation), or the float64 sum (not ``hw``)."""
    if hw and plan[st, P_EXACT]:
        hi, lo = exact_dot(a_v, i, b_v, j, K, c)
        return R(L, rec, plan, st, hi, lo, 0)
    if hw:
        v = _f32v(tc_dot_ij(a_s, a_e, a_p, i, b_s, b_e, b_p, j, bits_of_f32value(c), tc[0], tc[1], tc[2], tc[3]))
        if rec:
            hi, lo = exact_dot(a_v, i, b_v, j, K, c)
            led_err(L, st, v, hi, lo)
        return v
    hi, lo = exact_dot(a_v, i, b_v, j, K, c)
    return hi + lo


@nb.njit(inline="always", error_model="numpy")
def n_visited_blocks(i, Nk, causal, block_m, block_n):
    """Key blocks the kernel's program for row i visits (ascending from 0)."""
    if causal:
        hi = min(Nk, (i // block_m + 1) * block_m)
    else:
        hi = Nk
    return (hi + block_n - 1) // block_n


@nb.njit(inline="always", error_model="numpy")
def valid_key(i, j, Nk, causal):
    return j < Nk and (not causal or j <= i)


# --------------------------------------------------------------------------
# fa2
# --------------------------------------------------------------------------
@nb.njit(cache=True, parallel=True, error_model="numpy")
def fa2_rows(q_v, q_s, q_e, q_p, kT_v, kT_s, kT_e, kT_p, v_v, v_s, v_e, v_p,
             Nk, causal, block_m, block_n, c_scale, fix_kind, eps2, beta, delta2,
             plan, tcq, tcv, p_mant, p_emin, tpos, tneg, ex2p, hw, rec, dump, arith,
             out, m_out, l_out, acc_out, mblk, lblk, ledgers):
    """The fa2 recipe (docs/recipes.md) for every row of every (batch·head).

    ``arith``: the target tuple of the recipe's un-staged arithmetic (the fix's
    comparisons): fp32 with ``hw``, fp64 without.  ``tpos``, ``tneg``, ``ex2p``:
    the MUFU.EX2 tables and model parameters (F, round_key, twos, nan_code) of
    :func:`emulator.hw.sfu.load_exp2_tables`.
    """
    BH, Nq, D = q_v.shape
    R_total = BH * Nq
    nch = ledgers.shape[0]
    for ch in nb.prange(nch):
        L = ledgers[ch]
        S = np.empty(block_n)
        P = np.empty(block_n)
        Ps = np.zeros((1, block_n), np.int64)
        Pe = np.zeros((1, block_n), np.int64)
        Pp = np.zeros((1, block_n), np.int8)
        Pv = np.zeros((1, block_n))
        acc = np.empty(D)
        r0 = ch * R_total // nch
        r1 = (ch + 1) * R_total // nch
        for r in range(r0, r1):
            bh = r // Nq
            i = r % Nq
            m = -np.inf
            l = 0.0
            for d in range(D):
                acc[d] = 0.0
            nblk = n_visited_blocks(i, Nk, causal, block_m, block_n)
            for jb in range(nblk):
                j0 = jb * block_n
                # S = Q·Kᵀ (masked lanes: −inf, not computed)
                bm_raw = -np.inf
                for jj in range(block_n):
                    j = j0 + jj
                    if valid_key(i, j, Nk, causal):
                        sv = tc_stage(L, rec, plan, FA2_S, hw, q_s[bh], q_e[bh], q_p[bh], q_v[bh], i,
                                      kT_s[bh], kT_e[bh], kT_p[bh], kT_v[bh], j, D, 0.0, tcq)
                        S[jj] = sv
                        bm_raw = maxnum(bm_raw, sv)
                    else:
                        S[jj] = -np.inf
                # block max in the log2 domain, and the fix
                if bm_raw != bm_raw:
                    t = bm_raw
                elif fix_kind == FIX_OFFSET:
                    # bm·c + δ' (a kernel would contract it into one fma, as it does thr)
                    t = R_fma(L, rec, plan, FA2_M_SCALE, bm_raw, c_scale, delta2, 0)
                else:
                    t = R_mul(L, rec, plan, FA2_M_SCALE, bm_raw, c_scale, 0)
                if fix_kind == FIX_PAPER and t == t:
                    # the compiled kernel contracts (max·c) − ε' into one fma
                    thr, _, _ = rnd_fma(bm_raw, c_scale, -eps2, arith, 0, np.uint64(0), 32, False)
                    n = 0
                    for jj in range(block_n):
                        if valid_key(i, j0 + jj, Nk, causal):
                            xs, _, _ = rnd_mul(S[jj], c_scale, arith, 0, np.uint64(0), 32, False)
                            if xs >= thr:
                                n += 1
                    if n > 1:
                        if t > 0.0:
                            t, _, _ = rnd_mul(t, beta, arith, 0, np.uint64(0), 32, False)
                        elif t < 0.0:
                            t = 0.0
                m_new = maxnum(m, t)
                # P̄ = exp2(fma(S, c, −m_new)); masked lanes are 0
                for jj in range(block_n):
                    if valid_key(i, j0 + jj, Nk, causal):
                        x = R_fma(L, rec, plan, FA2_X, S[jj], c_scale, -m_new, 0)
                        P[jj] = ex2_unit(L, rec, plan, FA2_P, x, tpos, tneg, True, hw, ex2p)
                    else:
                        P[jj] = 0.0
                l_blk = row_tree_sum(L, rec, plan, FA2_L_BLK, P, block_n)
                a_arg = R_add(L, rec, plan, FA2_ALPHA_ARG, m, -m_new, 0)
                alpha = ex2_unit(L, rec, plan, FA2_ALPHA, a_arg, tpos, tneg, True, hw, ex2p)
                l = R_fma(L, rec, plan, FA2_L, l, alpha, l_blk, 0)
                for d in range(D):
                    acc[d] = R_mul(L, rec, plan, FA2_ACC_SCALE, acc[d], alpha, 0)
                # P̄ → operand format, then P̄·V + acc on tensor cores
                for jj in range(block_n):
                    j = j0 + jj
                    if valid_key(i, j, Nk, causal):
                        pc = R(L, rec, plan, FA2_P_CAST, P[jj], 0.0, (bh * Nq + i) * Nk + j)
                    else:
                        pc = 0.0
                    Pv[0, jj] = pc
                    s_, e_, p_ = decode_as(pc, p_mant, p_emin)
                    Ps[0, jj] = s_
                    Pe[0, jj] = e_
                    Pp[0, jj] = p_
                for d in range(D):
                    acc[d] = tc_stage(L, rec, plan, FA2_PV, hw, Ps, Pe, Pp, Pv, 0, v_s[bh, j0:j0 + block_n],
                                      v_e[bh, j0:j0 + block_n], v_p[bh, j0:j0 + block_n],
                                      v_v[bh, j0:j0 + block_n], d, block_n, acc[d], tcv)
                m = m_new
                if dump:
                    mblk[bh, i, jb] = m
                    lblk[bh, i, jb] = l
            for d in range(D):
                if dump:
                    acc_out[bh, i, d] = acc[d]
                o = R_div(L, rec, plan, FA2_DIV, acc[d], l, 0)
                out[bh, i, d] = R(L, rec, plan, FA2_O_CAST, o, 0.0, (bh * Nq + i) * D + d)
            m_out[bh, i] = m
            l_out[bh, i] = l


# --------------------------------------------------------------------------
# paper
# --------------------------------------------------------------------------
@nb.njit(cache=True, error_model="numpy")
def cast_pair(L, rec, plan, st_op, st_cast, hi, lo, offset):
    """An fp32 operation result (exact hi + lo) rounded by ``st_op``, then cast by ``st_cast``."""
    v = R(L, rec, plan, st_op, hi, lo, 0)
    return R(L, rec, plan, st_cast, v, 0.0, offset)


@nb.njit(cache=True, error_model="numpy")
def acc_update(L, rec, plan, st_mul, st_mul_cast, st_add, st_add_cast, alpha, x, y, comp, compensated, offset):
    """The running bf16 accumulator update x ← cast(cast(α·x) + y), optionally compensated.

    Returns (new x, new compensation).  Compensated (Kahan–Neumaier): the
    rounding error e of the add is computed in fp32 and gathered in a
    compensation term of the accumulator's format, itself scaled by α.
    """
    xm = cast_pair(L, rec, plan, st_mul, st_mul_cast, alpha * x, 0.0, offset)
    xa = R_add(L, rec, plan, st_add, xm, y, 0)
    xn = R(L, rec, plan, st_add_cast, xa, 0.0, offset)
    if not compensated:
        return xn, comp
    if abs(xm) >= abs(y):
        e = R_add(L, rec, plan, PP_COMP, R_add(L, rec, plan, PP_COMP, xm, -xn, 0), y, 0)
    else:
        e = R_add(L, rec, plan, PP_COMP, R_add(L, rec, plan, PP_COMP, y, -xn, 0), xm, 0)
    cm = R_mul(L, rec, plan, PP_COMP, alpha, comp, 0)
    c_new = R(L, rec, plan, st_add_cast, R_add(L, rec, plan, PP_COMP, cm, e, 0), 0.0, offset)
    return xn, c_new


@nb.njit(cache=True, parallel=True, error_model="numpy")
def paper_rows(q_v, q_s, q_e, q_p, kT_v, kT_s, kT_e, kT_p, v_v, v_s, v_e, v_p,
               Nk, causal, block_m, block_n, scale32, fix_kind, eps32, beta, delta32,
               plan, tcq, tcv, p_mant, p_emin, tpos, tneg, ex2p, hw, rec, dump, arith, comp_l, comp_o,
               out, m_out, l_out, acc_out, mblk, lblk, ledgers):
    """The paper recipe (docs/recipes.md): every tensor bf16, natural-log domain."""
    BH, Nq, D = q_v.shape
    R_total = BH * Nq
    nch = ledgers.shape[0]
    nblk_max = (Nk + block_n - 1) // block_n
    log2e = LOG2E_F32 if hw else 1.4426950408889634
    for ch in nb.prange(nch):
        L = ledgers[ch]
        S = np.empty(block_n)
        P = np.empty(block_n)
        Ps = np.zeros((1, block_n), np.int64)
        Pe = np.zeros((1, block_n), np.int64)
        Pp = np.zeros((1, block_n), np.int8)
        Pv = np.zeros((1, block_n))
        O = np.empty(D)
        Oc = np.empty(D)
        r0 = ch * R_total // nch
        r1 = (ch + 1) * R_total // nch
        for r in range(r0, r1):
            bh = r // Nq
            i = r % Nq
            row = bh * Nq + i
            m = -np.inf
            l = 0.0
            lc = 0.0
            for d in range(D):
                O[d] = 0.0
                Oc[d] = 0.0
            nblk = n_visited_blocks(i, Nk, causal, block_m, block_n)
            for jb in range(nblk):
                j0 = jb * block_n
                bm = -np.inf
                for jj in range(block_n):
                    j = j0 + jj
                    if valid_key(i, j, Nk, causal):
                        sv = tc_stage(L, rec, plan, PP_S, hw, q_s[bh], q_e[bh], q_p[bh], q_v[bh], i,
                                      kT_s[bh], kT_e[bh], kT_p[bh], kT_v[bh], j, D, 0.0, tcq)
                        off = row * Nk + j
                        sc = R(L, rec, plan, PP_S_CAST, sv, 0.0, off)
                        s_ = cast_pair(L, rec, plan, PP_SS, PP_SS_CAST, sc * scale32, 0.0, off)
                        S[jj] = s_
                        bm = maxnum(bm, s_)
                    else:
                        S[jj] = -np.inf
                if fix_kind == FIX_OFFSET and bm == bm:
                    bv, _, _ = rnd_add(bm, delta32, arith, 0, np.uint64(0), 32, False)
                    bm = R(L, False, plan, PP_SS_CAST, bv, 0.0, 0)  # bf16(fl32(bm + δ)); not a ledger op
                if fix_kind == FIX_PAPER and bm == bm:
                    tv, _, _ = rnd_add(bm, -eps32, arith, 0, np.uint64(0), 32, False)
                    thr = R(L, rec, plan, PP_THR, tv, 0.0, 0)
                    n = 0
                    for jj in range(block_n):
                        if valid_key(i, j0 + jj, Nk, causal) and S[jj] >= thr:
                            n += 1
                    if n > 1:
                        if bm > 0.0:
                            bv, _, _ = rnd_mul(bm, beta, arith, 0, np.uint64(0), 32, False)
                            bm = R(L, False, plan, PP_SS_CAST, bv, 0.0, 0)  # not a ledger op
                        elif bm < 0.0:
                            bm = 0.0
                m_new = maxnum(m, bm)
                for jj in range(block_n):
                    j = j0 + jj
                    if valid_key(i, j, Nk, causal):
                        off = row * Nk + j
                        dd = R(L, rec, plan, PP_D_CAST, R_add(L, rec, plan, PP_D, S[jj], -m_new, 0), 0.0, off)
                        ea = R_mul(L, rec, plan, PP_E_ARG, dd, log2e, 0)
                        pv = ex2_unit(L, rec, plan, PP_P, ea, tpos, tneg, False, hw, ex2p)
                        P[jj] = R(L, rec, plan, PP_P_CAST, pv, 0.0, off)
                    else:
                        P[jj] = 0.0
                roff = row * nblk_max + jb
                lb = R(L, rec, plan, PP_L_BLK_CAST, row_tree_sum(L, rec, plan, PP_L_BLK, P, block_n), 0.0, roff)
                aa = R(L, rec, plan, PP_A_ARG_CAST, R_add(L, rec, plan, PP_A_ARG, m, -m_new, 0), 0.0, roff)
                ae = R_mul(L, rec, plan, PP_A_E_ARG, aa, log2e, 0)
                alpha = R(L, rec, plan, PP_ALPHA_CAST, ex2_unit(L, rec, plan, PP_ALPHA, ae, tpos, tneg, False, hw, ex2p),
                          0.0, roff)
                l, lc = acc_update(L, rec, plan, PP_L_MUL, PP_L_MUL_CAST, PP_L_ADD, PP_L_ADD_CAST,
                                   alpha, l, lb, lc, comp_l, roff)
                for jj in range(block_n):
                    Pv[0, jj] = P[jj]
                    s_, e_, p_ = decode_as(P[jj], p_mant, p_emin)
                    Ps[0, jj] = s_
                    Pe[0, jj] = e_
                    Pp[0, jj] = p_
                for d in range(D):
                    doff = roff * D + d
                    pvv = tc_stage(L, rec, plan, PP_PV, hw, Ps, Pe, Pp, Pv, 0, v_s[bh, j0:j0 + block_n],
                                   v_e[bh, j0:j0 + block_n], v_p[bh, j0:j0 + block_n],
                                   v_v[bh, j0:j0 + block_n], d, block_n, 0.0, tcv)
                    pvc = R(L, rec, plan, PP_PV_CAST, pvv, 0.0, doff)
                    O[d], Oc[d] = acc_update(L, rec, plan, PP_O_MUL, PP_O_MUL_CAST, PP_O_ADD, PP_O_ADD_CAST,
                                             alpha, O[d], pvc, Oc[d], comp_o, doff)
                m = m_new
                if dump:
                    mblk[bh, i, jb] = m
                    lblk[bh, i, jb] = l
            if comp_l:
                l = R(L, rec, plan, PP_L_ADD_CAST, R_add(L, rec, plan, PP_COMP, l, lc, 0), 0.0, 0)
            for d in range(D):
                if comp_o:
                    O[d] = R(L, rec, plan, PP_O_ADD_CAST, R_add(L, rec, plan, PP_COMP, O[d], Oc[d], 0), 0.0, 0)
                if dump:
                    acc_out[bh, i, d] = O[d]
                o = R_div(L, rec, plan, PP_DIV, O[d], l, 0)
                out[bh, i, d] = R(L, rec, plan, PP_O_CAST, o, 0.0, row * D + d)
            m_out[bh, i] = m
            l_out[bh, i] = l


@nb.njit(cache=True, error_model="numpy")
def ledger_cast_f32(bits, tgt, sat, L, st):
    """Record the RNE cast of float32 values (bits) into ``tgt`` in ledger row ``st``."""
    f32l = (23, 8, 127, 0)
    for i in range(bits.size):
        _, err, fl = round_bits_ledger(np.uint64(bits[i]), f32l, tgt, f32l, 0, np.uint64(0), 32, sat != 0)
        led(L, st, err, fl)
