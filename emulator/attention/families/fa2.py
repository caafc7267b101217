"""Family ``fa2``: FlashAttention-2 / Triton-tutorial forward (docs/recipes.md, "fa2").

fp32 S on tensor cores, the scale folded into exp2 (log2 domain), fp32 m and l,
P̄ cast to bf16 for P̄·V, an fp32 running output rescaled by α = exp2(m_old −
m_new), one final division and cast.  GPU kernel: ``flashbits.gpu.kernels.fa2``.

This module holds the family's stage table, its per-key-block step for the shared
row driver (:func:`..rows.drive_rows`) and its cached top-level kernel.  The op
sequence is docs/recipes.md's, one stage rounding per table row; stage indices
come from the table (``STAGE.x``), never numbered by hand.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import Family
from .fa2_backward import BACKWARD
from ..rows import (Running, block_operand, make_job, make_row_driver, row_operand, set_p_operand,
                    valid_key)
from ..stages import CASTS, ROUNDINGS, StageSpec, stage_indices, stage_table
from ..units import (FIX_OFFSET, FIX_PAPER, FIX_UNBIASED, arith_fma, arith_mul, ex2_unit, maxnum, round_add,
                     round_fma, round_mul, round_stage, round_stage_word, row_tree_sum, shared_word, tc_stage)

FA2_STAGES = stage_table(
    StageSpec("S", "S = Q·Kᵀ on tensor cores (wgmma chain, fp32 accumulator from +0)", "tensor_core"),
    StageSpec("m_scale", "t = fl32(rowmax(S) · c), c = fl32(scale·log2 e)"),
    StageSpec("x", "x = fma(S, c, −m_new): the exp2 argument (one fp32 rounding)"),
    StageSpec("P", "P̄ = ex2.approx.ftz(x) (MUFU.EX2)", "approx"),
    StageSpec("l_blk", "l_blk = rowsum(P̄) (the unbiased fix: rowsum(P̃), P̃ the P_cast values): fp32 "
              "additions in the wgmma lane-tree order", "sum"),
    StageSpec("alpha_arg", "m_old − m_new (fp32)"),
    StageSpec("alpha", "α = ex2.approx.ftz(m_old − m_new)", "approx"),
    StageSpec("l", "l = fma(l, α, l_blk)"),
    StageSpec("acc_scale", "acc = fl32(acc · α)"),
    # no fp32 here: P̄·V runs on tensor cores, whose operands are 16- or 8-bit
    StageSpec("P_cast", "P̄ → the P̄V operand format (bf16; fp8 as FlashAttention-3)",
              format="bf16", formats=("bf16", "fp16", "fp8_e4m3", "fp8_e5m2"), roundings=ROUNDINGS),
    StageSpec("V_cast", "V → fp8 (only when P_cast is fp8: satfinite RNE, as cvt.rn.satfinite)",
              format="same_as_P", roundings=()),
    StageSpec("PV", "acc = P̄·V + acc on tensor cores (wgmma chain)", "tensor_core"),
    StageSpec("div", "O = acc / l (div.rn.f32, IEEE)"),
    StageSpec("O_cast", "O → output format", format="bf16", formats=CASTS, roundings=ROUNDINGS),
)

STAGE = stage_indices(FA2_STAGES)   # a global namedtuple: numba freezes STAGE.x to a constant


@nb.njit(cache=True, error_model="numpy")
def scores(job, stages, work, bh, i, j0):
    """work.scores = S = Q·Kᵀ of row i on key block j0.. (masked lanes −inf, not computed);
    returns the block's raw max (PTX max: NaN scores ignored)."""
    # groups unpacked once: numba increfs/decrefs each array it reads out of a tuple,
    # so the per-element helpers take plain arrays (units module docstring)
    plan, ledger, record = stages
    block_scores = work.scores
    q_values, q_sig, q_exp, q_spec = row_operand(job.operands.q, bh)
    kT_values, kT_sig, kT_exp, kT_spec = row_operand(job.operands.kT, bh)
    depth = q_values.shape[1]
    hw = job.units.hw
    tc_qk = job.units.tc_qk
    Nk, causal, _, block_n, _ = job.tiling
    block_max = -np.inf
    for jj in range(block_n):
        j = j0 + jj
        if valid_key(i, j, Nk, causal):
            s = tc_stage(plan, ledger, record, STAGE.S, hw, q_values, q_sig, q_exp, q_spec, i,
                         kT_values, kT_sig, kT_exp, kT_spec, j, depth, 0.0, tc_qk)
            block_scores[jj] = s
            block_max = maxnum(block_max, s)
        else:
            block_scores[jj] = -np.inf
    return block_max


@nb.njit(cache=True, error_model="numpy")
def fixed_block_max(job, stages, work, i, j0, raw_max):
    """The block max in the log2 domain, raw_max·c (c = fl32(scale·log2 e)), with the fix."""
    plan, ledger, record = stages
    block_scores = work.scores
    sc = job.scalars
    arith = job.units.arith
    c = sc.qk_scale
    if raw_max != raw_max:
        t = raw_max
    elif sc.fix_kind == FIX_OFFSET:
        # bm·c + δ' (a kernel would contract it into one fma, as it does thr)
        t = round_fma(plan, ledger, record, STAGE.m_scale, raw_max, c, sc.delta, 0)
    else:
        t = round_mul(plan, ledger, record, STAGE.m_scale, raw_max, c, 0)
    if sc.fix_kind == FIX_PAPER and t == t:
        # the compiled kernel contracts (max·c) − ε' into one fma; the comparisons are
        # un-staged fp32 arithmetic (not ledger operations)
        thr = arith_fma(raw_max, c, -sc.eps, arith)
        n = 0
        for jj in range(job.tiling.block_n):
            if valid_key(i, j0 + jj, job.tiling.Nk, job.tiling.causal):
                if arith_mul(block_scores[jj], c, arith) >= thr:
                    n += 1
        if n > 1:
            if t > 0.0:
                t = arith_mul(t, sc.beta, arith)
            elif t < 0.0:
                t = 0.0
    return t


@nb.njit(cache=True, error_model="numpy")
def block_step(job, stages, work, bh, i, jb, running):
    """Key block jb of row i: S, m_new, P̄ = exp2(fma(S, c, −m_new)), l and acc rescaled by
    α = exp2(m − m_new), then acc += bf16(P̄)·V on tensor cores."""
    # groups unpacked once: numba increfs/decrefs each array it reads out of a tuple,
    # so the per-element helpers take plain arrays (units module docstring)
    plan, ledger, record = stages
    block_scores = work.scores
    block_probs = work.probs
    p_operand = work.p_operand
    p_values, p_sig, p_exp, p_spec = p_operand
    acc = work.acc
    Nk, causal, _, block_n, _ = job.tiling
    hw, _, _, tc_pv, p_mant, p_emin, ex2_pos, ex2_neg, ex2_params = job.units
    c = job.scalars.qk_scale
    Nq = job.operands.q.values.shape[1]
    j0 = jb * block_n
    raw_max = scores(job, stages, work, bh, i, j0)
    m_new = maxnum(running.m, fixed_block_max(job, stages, work, i, j0, raw_max))
    # P̄ = exp2(fma(S, c, −m_new)); masked lanes are 0
    for jj in range(block_n):
        if valid_key(i, j0 + jj, Nk, causal):
            x = round_fma(plan, ledger, record, STAGE.x, block_scores[jj], c, -m_new, 0)
            block_probs[jj] = ex2_unit(plan, ledger, record, STAGE.P, x, hw, ex2_pos, ex2_neg, ex2_params, True)
        else:
            block_probs[jj] = 0.0
    alpha_arg = round_add(plan, ledger, record, STAGE.alpha_arg, running.m, -m_new, 0)
    alpha = ex2_unit(plan, ledger, record, STAGE.alpha, alpha_arg, hw, ex2_pos, ex2_neg, ex2_params, True)
    for d in range(acc.size):
        acc[d] = round_mul(plan, ledger, record, STAGE.acc_scale, acc[d], alpha, 0)
    # P̄ → operand format: sr word at the score's flat index, or (the unbiased fix) the
    # row's shared word of this block
    unbiased = job.scalars.fix_kind == FIX_UNBIASED
    word = shared_word(plan, STAGE.P_cast, bh * Nq + i, jb) if unbiased else np.uint64(0)
    for jj in range(block_n):
        j = j0 + jj
        if not valid_key(i, j, Nk, causal):
            p = 0.0
        elif unbiased:
            p = round_stage_word(plan, ledger, record, STAGE.P_cast, block_probs[jj], 0.0, word)
        else:
            p = round_stage(plan, ledger, record, STAGE.P_cast, block_probs[jj], 0.0, (bh * Nq + i) * Nk + j)
        set_p_operand(p_operand, jj, p, p_mant, p_emin)
    # the row sum: of P̄, or (the unbiased fix) of the rounded weights P̃ that multiply V,
    # so that O = Σ P̃·V / Σ P̃ is a weighted mean whatever way P̄ rounds
    summed = p_values[0] if unbiased else block_probs
    l_blk = row_tree_sum(plan, ledger, record, STAGE.l_blk, summed, block_n)
    l = round_fma(plan, ledger, record, STAGE.l, running.l, alpha, l_blk, 0)
    # P̃·V + acc on tensor cores
    v_values, v_sig, v_exp, v_spec = block_operand(job.operands.v, bh, j0, j0 + block_n)
    for d in range(acc.size):
        acc[d] = tc_stage(plan, ledger, record, STAGE.PV, hw, p_values, p_sig, p_exp, p_spec, 0,
                          v_values, v_sig, v_exp, v_spec, d, block_n, acc[d], tc_pv)
    return Running(m_new, l, running.l_comp)


@nb.njit(cache=True, error_model="numpy")
def finish_row(job, stages, work, running):
    """fa2 divides the fp32 accumulator by l as it is."""
    return running.l


drive_rows = make_row_driver(block_step, finish_row, STAGE.div, STAGE.O_cast)


# one cached kernel per family module: numba caches a top-level function only when
# its callees are fixed (drive_rows here), not passed in (rows' docstring)
@nb.njit(cache=True, parallel=True, error_model="numpy")
def kernel(q, kT, v, scalars, units, plan, tiling, outputs):
    """The fa2 recipe for every row of every (batch·head) (rows.kernel_args), ledger chunks
    in parallel."""
    n_chunks = outputs.ledgers.shape[0]
    for ch in nb.prange(n_chunks):
        drive_rows(make_job(q, kT, v, scalars, units, plan, tiling, outputs), ch, n_chunks)


FAMILY = Family(name="fa2", doc="FlashAttention-2 / Triton tutorial: fp32 S, m, l and running output, "
                "exp2 with the scale folded in, P̄ cast to bf16 for P̄·V",
                domain="log2", stages=FA2_STAGES, block_m=128, block_n=64, num_warps=8, kernel=kernel,
                gpu_module="flashbits.gpu.kernels.fa2", backward=BACKWARD,
                fixes=("paper", "offset", "unbiased"))
