"""Family ``paper``: the paper's pure-PyTorch bf16 reference (docs/recipes.md, "paper").

Every tensor bf16: each block's einsum output (fp32 accumulate) cast to bf16,
bf16 running output and row sums updated per block, natural-log domain
(exp = ex2.approx of x·fl32(log2 e), as ``tl.exp``).  GPU kernel:
``flashbits.gpu.kernels.paper``.

This module holds the family's stage table, its per-key-block step and row finish for
the shared row driver (:func:`..rows.drive_rows`) and its cached top-level kernel.
Every fp32 operation result that the reference casts to bf16 is two stage roundings
(the op's, then the cast's, with the cast's random word at the element's flat index);
stage indices come from the table (``STAGE.x``).

The paper-code mode (``Recipe.paper_code``, ``job.tiling.paper_code``; the recipe
``paper_code``) is the paper's published code where our reconstruction differs
from it (docs/recipes.md, "paper_code"): every key block is visited (the driver);
a causally masked key *exists*, with the score NEG_MAX = −max(bf16) (the code's
``masked_fill``), so it counts for the fix's n and goes through every op (exp
gives 0; these lanes are computed but not recorded in the ledger), while keys ≥ Nk
do not exist (the code splits its last block short); the block max and the running
max propagate NaN (torch.amax, torch.maximum), the running max starts at NEG_MAX;
each block's row sum is clamped to at least EPSILON in the row sum's format (in
hardware precision only: the float64 mode keeps exact math).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import Family
from .paper_backward import BACKWARD
from ..rows import (Running, block_operand, make_job, make_row_driver, row_operand, set_p_operand,
                    valid_key)
from ..stages import CASTS, ROUNDINGS, StageSpec, stage_indices, stage_table
from ...exact import rnd
from ...formats import FORMATS
from ..units import (FIX_OFFSET, FIX_PAPER, LOG2E_F32, MODE_RNE, PLAN_COMPENSATED, arith_add, arith_mul,
                     ex2_unit, maxnum, round_add, round_mul, round_stage, row_tree_sum, stage_target, tc_stage)

PAPER_STAGES = stage_table(
    StageSpec("S", "S = Q·Kᵀ on tensor cores (fp32 accumulator from +0)", "tensor_core"),
    StageSpec("S_cast", "einsum output → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("s", "s = fl32(S · scale)"),
    StageSpec("s_cast", "s → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("thr", "fix threshold bm − ε (fp32, then bf16)", format="bf16", formats=CASTS),
    StageSpec("d", "d = s − m_new (fp32)"),
    StageSpec("d_cast", "d → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("e_arg", "d · log2e (fp32; tl.exp's multiply)"),
    StageSpec("P", "P̄ = ex2.approx.f32(d · log2e) (non-FTZ)", "approx"),
    StageSpec("P_cast", "P̄ → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("l_blk", "rowsum(P̄) in fp32, lane-tree order", "sum"),
    StageSpec("l_blk_cast", "rowsum → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("a_arg", "m_old − m_new (fp32)"),
    StageSpec("a_arg_cast", "→ bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("a_e_arg", "· log2e (fp32)"),
    StageSpec("alpha", "α = ex2.approx.f32 (non-FTZ)", "approx"),
    StageSpec("alpha_cast", "α → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("l_mul", "α · l (fp32)"),
    StageSpec("l_mul_cast", "→ bf16 (running row sum)", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("l_add", "α·l + l_blk (fp32)"),
    StageSpec("l_add_cast", "→ bf16 (running row sum)", format="bf16", formats=CASTS, roundings=ROUNDINGS,
              accumulations=("plain", "compensated")),
    StageSpec("PV", "P̄·V on tensor cores (fp32 accumulator from +0)", "tensor_core"),
    StageSpec("PV_cast", "einsum output Ō_blk → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("O_mul", "α · O (fp32)"),
    StageSpec("O_mul_cast", "→ bf16 (running output)", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("O_add", "α·O + Ō_blk (fp32)"),
    StageSpec("O_add_cast", "→ bf16 (running output)", format="bf16", formats=CASTS, roundings=ROUNDINGS,
              accumulations=("plain", "compensated")),
    StageSpec("comp", "compensation terms of compensated accumulation (fp32, then the accumulator's format)",
              format="same_as_acc"),
    StageSpec("div", "O / l (div.rn.f32)"),
    StageSpec("O_cast", "O → output format", format="bf16", formats=CASTS, roundings=ROUNDINGS),
)

STAGE = stage_indices(PAPER_STAGES)   # a global namedtuple: numba freezes STAGE.x to a constant
# the four stages of each running bf16 accumulator: α·x, its cast, + y, its cast
L_ACCUMULATOR = (STAGE.l_mul, STAGE.l_mul_cast, STAGE.l_add, STAGE.l_add_cast)
O_ACCUMULATOR = (STAGE.O_mul, STAGE.O_mul_cast, STAGE.O_add, STAGE.O_add_cast)

# the paper code's constants (paper-code mode): max_neg_value = −torch.finfo(q.dtype).max
# for bf16 inputs, the score of a masked key and the running max before the first block;
# EPSILON = 1e-10, the floor of a block's row sum, which torch converts as c10 converts a
# Python scalar to a tensor's dtype: to fp32, then to the row sum's format
# (bf16(fl32(1e-10)) = bf16(1e-10) = 0x2EDC = 1.000444171950221e-10)
NEG_MAX = -FORMATS["bf16"].max_finite
EPSILON_F32 = float(np.float32(1e-10))


@nb.njit(cache=True, error_model="numpy")
def cast_pair(plan, ledger, record, st_op, st_cast, hi, lo, offset):
    """An fp32 operation result (exact hi + lo) rounded by ``st_op``, then cast by ``st_cast``."""
    v = round_stage(plan, ledger, record, st_op, hi, lo, 0)
    return round_stage(plan, ledger, record, st_cast, v, 0.0, offset)


@nb.njit(cache=True, error_model="numpy")
def acc_update(plan, ledger, record, accumulator, compensated, alpha, x, y, comp, offset):
    """The running bf16 accumulator update x ← cast(cast(α·x) + y), optionally compensated.

    ``accumulator``: its stages (L_ACCUMULATOR or O_ACCUMULATOR); ``compensated``: the
    add-cast stage's plan flag, read once per block.  Returns (new x, new compensation).  Compensated
    (Kahan–Neumaier): the rounding error e of the add is computed in fp32 and gathered
    in a compensation term of the accumulator's format, itself scaled by α.
    """
    st_mul, st_mul_cast, st_add, st_add_cast = accumulator
    xm = cast_pair(plan, ledger, record, st_mul, st_mul_cast, alpha * x, 0.0, offset)
    xa = round_add(plan, ledger, record, st_add, xm, y, 0)
    xn = round_stage(plan, ledger, record, st_add_cast, xa, 0.0, offset)
    if not compensated:
        return xn, comp
    if abs(xm) >= abs(y):
        e = round_add(plan, ledger, record, STAGE.comp, round_add(plan, ledger, record, STAGE.comp, xm, -xn, 0), y, 0)
    else:
        e = round_add(plan, ledger, record, STAGE.comp, round_add(plan, ledger, record, STAGE.comp, y, -xn, 0), xm, 0)
    cm = round_mul(plan, ledger, record, STAGE.comp, alpha, comp, 0)
    c_new = round_stage(plan, ledger, record, st_add_cast, round_add(plan, ledger, record, STAGE.comp, cm, e, 0), 0.0,
                        offset)
    return xn, c_new


@nb.njit(cache=True, error_model="numpy")
def scores(job, stages, work, bh, i, j0):
    """work.scores = s = bf16(fl32(bf16(Q·Kᵀ) · scale)) of row i on key block j0..
    (masked lanes −inf, not computed); returns the block max (NaN scores ignored)."""
    # groups unpacked once: numba increfs/decrefs each array it reads out of a tuple,
    # so the per-element helpers take plain arrays (units module docstring)
    plan, ledger, record = stages
    block_scores = work.scores
    q_values, q_sig, q_exp, q_spec = row_operand(job.operands.q, bh)
    kT_values, kT_sig, kT_exp, kT_spec = row_operand(job.operands.kT, bh)
    depth = q_values.shape[1]
    hw = job.units.hw
    tc_qk = job.units.tc_qk
    qk_scale = job.scalars.qk_scale
    Nk, causal, _, block_n, _ = job.tiling
    row = bh * q_values.shape[0] + i
    block_max = -np.inf
    for jj in range(block_n):
        j = j0 + jj
        if valid_key(i, j, Nk, causal):
            s = tc_stage(plan, ledger, record, STAGE.S, hw, q_values, q_sig, q_exp, q_spec, i,
                         kT_values, kT_sig, kT_exp, kT_spec, j, depth, 0.0, tc_qk)
            off = row * Nk + j
            s = round_stage(plan, ledger, record, STAGE.S_cast, s, 0.0, off)
            s = cast_pair(plan, ledger, record, STAGE.s, STAGE.s_cast, s * qk_scale, 0.0, off)
            block_scores[jj] = s
            block_max = maxnum(block_max, s)
        else:
            block_scores[jj] = -np.inf
    return block_max


@nb.njit(cache=True, error_model="numpy")
def fixed_block_max(job, stages, work, i, j0, bm):
    """The block max with the fix (natural-log domain); its bf16 casts are the s_cast
    stage's format but not ledger operations (recorded as False)."""
    plan, ledger, record = stages
    block_scores = work.scores
    sc = job.scalars
    arith = job.units.arith
    if sc.fix_kind == FIX_OFFSET and bm == bm:
        # bf16(fl32(bm + δ))
        bm = round_stage(plan, ledger, False, STAGE.s_cast, arith_add(bm, sc.delta, arith), 0.0, 0)
    if sc.fix_kind == FIX_PAPER and bm == bm:
        thr = round_stage(plan, ledger, record, STAGE.thr, arith_add(bm, -sc.eps, arith), 0.0, 0)
        n = 0
        # the valid keys count; in the paper code every key that exists (masked: NEG_MAX)
        counted_causal = job.tiling.causal and not job.tiling.paper_code
        for jj in range(job.tiling.block_n):
            if valid_key(i, j0 + jj, job.tiling.Nk, counted_causal) and block_scores[jj] >= thr:
                n += 1
        if n > 1:
            if bm > 0.0:
                bm = round_stage(plan, ledger, False, STAGE.s_cast, arith_mul(bm, sc.beta, arith), 0.0, 0)
            elif bm < 0.0:
                bm = 0.0
    return bm


@nb.njit(inline="always", error_model="numpy")
def key_prob(plan, ledger, record, s, m_new, log2e, hw, ex2_pos, ex2_neg, ex2_params, off):
    """P̃ = bf16(exp(bf16(fl32(s − m_new)))) of one key (stages d, d_cast, e_arg, P, P_cast; the
    casts' random words at the score's flat index ``off``)."""
    d = round_stage(plan, ledger, record, STAGE.d_cast, round_add(plan, ledger, record, STAGE.d, s, -m_new, 0), 0.0,
                    off)
    e_arg = round_mul(plan, ledger, record, STAGE.e_arg, d, log2e, 0)
    p = ex2_unit(plan, ledger, record, STAGE.P, e_arg, hw, ex2_pos, ex2_neg, ex2_params, False)
    return round_stage(plan, ledger, record, STAGE.P_cast, p, 0.0, off)


@nb.njit(inline="always", error_model="numpy")
def max_nan(a, b):
    """torch.maximum (and torch.amax, pairwise): NaN if either operand is NaN."""
    if a != a or b != b:
        return np.nan
    return a if a > b else b


@nb.njit(inline="always", error_model="numpy")
def in_stage_format(plan, stage, x):
    """x in ``stage``'s format, rounded to nearest even, not recorded: a Python scalar as torch
    converts it to a tensor's dtype."""
    v, _, _ = rnd(x, 0.0, stage_target(plan, stage), MODE_RNE, np.uint64(0), 32, False)
    return v


@nb.njit(cache=True, error_model="numpy")
def code_probs(job, stages, work, bh, i, j0, m_old, log2e):
    """The paper code's key block j0.. of row i up to P̄ (paper-code mode): the scores of
    :func:`scores`, a causally masked key holding NEG_MAX; the block max over the keys
    that exist (< Nk), NaN propagating (torch.amax); the fix, every existing key counting;
    m_new = torch.maximum(m_old, bm); work.probs = P̄ of every existing key as the valid ones
    (masked keys computed the same way, not recorded in the ledger), 0 for keys ≥ Nk.
    Returns m_new."""
    plan, ledger, record = stages
    block_scores = work.scores
    block_probs = work.probs
    Nk, causal, _, block_n, _ = job.tiling
    hw, _, _, _, _, _, ex2_pos, ex2_neg, ex2_params = job.units
    scores(job, stages, work, bh, i, j0)
    n_keys = min(block_n, Nk - j0)   # the keys of this block that exist
    bm = -np.inf
    for jj in range(n_keys):
        if not valid_key(i, j0 + jj, Nk, causal):
            block_scores[jj] = NEG_MAX   # masked_fill(causal_mask, max_neg_value)
        bm = max_nan(bm, block_scores[jj])
    m_new = max_nan(m_old, fixed_block_max(job, stages, work, i, j0, bm))
    row = bh * job.operands.q.values.shape[1] + i
    for jj in range(block_n):
        j = j0 + jj
        if jj < n_keys:
            block_probs[jj] = key_prob(plan, ledger, record and valid_key(i, j, Nk, causal), block_scores[jj], m_new,
                                       log2e, hw, ex2_pos, ex2_neg, ex2_params, row * Nk + j)
        else:
            block_probs[jj] = 0.0
    return m_new


@nb.njit(cache=True, error_model="numpy")
def block_step(job, stages, work, bh, i, jb, running):
    """Key block jb of row i: s, m_new, P̄ = bf16(exp(bf16(s − m_new))), the bf16 running
    l and O updated by α = bf16(exp(bf16(m − m_new))), each einsum output cast to bf16."""
    # groups unpacked once: numba increfs/decrefs each array it reads out of a tuple,
    # so the per-element helpers take plain arrays (units module docstring)
    plan, ledger, record = stages
    block_scores = work.scores
    block_probs = work.probs
    p_operand = work.p_operand
    p_values, p_sig, p_exp, p_spec = p_operand
    acc = work.acc
    acc_comp = work.acc_comp
    Nk, causal, _, block_n, paper_code = job.tiling
    hw, _, _, tc_pv, p_mant, p_emin, ex2_pos, ex2_neg, ex2_params = job.units
    row = bh * job.operands.q.values.shape[1] + i
    j0 = jb * block_n
    # exp(x) = ex2.approx(x · fl32(log2 e)), as tl.exp
    log2e = LOG2E_F32 if hw else 1.4426950408889634
    if paper_code:
        m_new = code_probs(job, stages, work, bh, i, j0, running.m, log2e)
    else:
        m_new = maxnum(running.m, fixed_block_max(job, stages, work, i, j0, scores(job, stages, work, bh, i, j0)))
        for jj in range(block_n):
            j = j0 + jj
            if valid_key(i, j, Nk, causal):
                block_probs[jj] = key_prob(plan, ledger, record, block_scores[jj], m_new, log2e, hw, ex2_pos, ex2_neg,
                                           ex2_params, row * Nk + j)
            else:
                block_probs[jj] = 0.0
    # per-(row, block) stages draw their sr words at the (row, block) flat index
    block_off = row * ((Nk + block_n - 1) // block_n) + jb
    l_blk = round_stage(plan, ledger, record, STAGE.l_blk_cast,
                        row_tree_sum(plan, ledger, record, STAGE.l_blk, block_probs, block_n), 0.0, block_off)
    if paper_code and hw:
        # the paper code's clamp(min=EPSILON) of the block's row sum (NaN stays NaN); not in
        # the float64 mode, where it would change exact math
        l_min = in_stage_format(plan, STAGE.l_blk_cast, EPSILON_F32)
        if l_blk < l_min:
            l_blk = l_min
    a_arg = round_stage(plan, ledger, record, STAGE.a_arg_cast,
                        round_add(plan, ledger, record, STAGE.a_arg, running.m, -m_new, 0), 0.0, block_off)
    a_e_arg = round_mul(plan, ledger, record, STAGE.a_e_arg, a_arg, log2e, 0)
    alpha = round_stage(plan, ledger, record, STAGE.alpha_cast,
                        ex2_unit(plan, ledger, record, STAGE.alpha, a_e_arg, hw, ex2_pos, ex2_neg, ex2_params, False),
                        0.0, block_off)
    l_compensated = plan[STAGE.l_add_cast, PLAN_COMPENSATED] != 0
    l, l_comp = acc_update(plan, ledger, record, L_ACCUMULATOR, l_compensated, alpha, running.l, l_blk, running.l_comp,
                           block_off)
    for jj in range(block_n):
        set_p_operand(p_operand, jj, block_probs[jj], p_mant, p_emin)
    v_values, v_sig, v_exp, v_spec = block_operand(job.operands.v, bh, j0, j0 + block_n)
    D = acc.size
    o_compensated = plan[STAGE.O_add_cast, PLAN_COMPENSATED] != 0
    for d in range(D):
        off = block_off * D + d
        pv = tc_stage(plan, ledger, record, STAGE.PV, hw, p_values, p_sig, p_exp, p_spec, 0,
                      v_values, v_sig, v_exp, v_spec, d, block_n, 0.0, tc_pv)
        pv = round_stage(plan, ledger, record, STAGE.PV_cast, pv, 0.0, off)
        acc[d], acc_comp[d] = acc_update(plan, ledger, record, O_ACCUMULATOR, o_compensated, alpha, acc[d], pv,
                                         acc_comp[d], off)
    return Running(m_new, l, l_comp)


@nb.njit(cache=True, error_model="numpy")
def finish_row(job, stages, work, running):
    """Compensated accumulators fold their compensation terms in once, at the end."""
    plan, ledger, record = stages
    acc = work.acc
    acc_comp = work.acc_comp
    l = running.l
    if plan[STAGE.l_add_cast, PLAN_COMPENSATED]:
        l = round_stage(plan, ledger, record, STAGE.l_add_cast,
                        round_add(plan, ledger, record, STAGE.comp, l, running.l_comp, 0), 0.0, 0)
    if plan[STAGE.O_add_cast, PLAN_COMPENSATED]:
        for d in range(acc.size):
            acc[d] = round_stage(plan, ledger, record, STAGE.O_add_cast,
                                 round_add(plan, ledger, record, STAGE.comp, acc[d], acc_comp[d], 0), 0.0, 0)
    return l


@nb.njit(inline="always", error_model="numpy")
def start_max(job):
    """The running max before a row's first block: −inf; the paper code's NEG_MAX."""
    return NEG_MAX if job.tiling.paper_code else -np.inf


drive_rows = make_row_driver(block_step, finish_row, STAGE.div, STAGE.O_cast, start_max)


# one cached kernel per family module: numba caches a top-level function only when
# its callees are fixed (drive_rows here), not passed in (rows' docstring)
@nb.njit(cache=True, parallel=True, error_model="numpy")
def kernel(q, kT, v, scalars, units, plan, tiling, outputs):
    """The paper recipe for every row of every (batch·head) (rows.kernel_args), ledger chunks
    in parallel."""
    n_chunks = outputs.ledgers.shape[0]
    for ch in nb.prange(n_chunks):
        drive_rows(make_job(q, kT, v, scalars, units, plan, tiling, outputs), ch, n_chunks)


FAMILY = Family(name="paper", doc="the paper's reference: every tensor bf16, block outputs cast to bf16, "
                "bf16 running output and row sums, natural-log domain",
                domain="ln", stages=PAPER_STAGES, block_m=64, block_n=64, num_warps=4, kernel=kernel,
                gpu_module="flashbits.gpu.kernels.paper", lse_format="bf16", backward=BACKWARD,
                modes=("paper_code",),
                # the paper's model calls its attention with 512×512 buckets
                recipes={"paper_code": dict(block_m=512, block_n=512, paper_code=True)})
