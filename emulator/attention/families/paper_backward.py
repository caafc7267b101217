"""Family ``paper``, backward pass (docs/recipes.md, "paper backward").

The paper's ``FlashAttentionFunction.backward``: every tensor bf16, every elementwise
op computed in fp32 and rounded to bf16 once (two stages: the op's, then the cast's),
each einsum a tensor-core chain over its block from +0 cast to bf16, dQ, dK and dV
bf16 running sums updated once per block.  Blocks are the forward recipe's
(``block_m`` query rows × ``block_n`` keys); every block is visited, fully masked
ones too, as the paper's loops do.  Emulator only (no GPU kernel yet).

The paper loops over query blocks outside and key blocks inside; each gradient
element's updates keep that order here in two passes: dK, dV per (batch·head, key
block) over the query blocks ascending, dQ per query row over the key blocks
ascending (from the dS̃ the first pass kept).  The exp is the forward recipe's
``tl.exp`` model, ex2.approx.f32(fl32(x · fl32(log2 e))), for the same reason.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import Backward
from ...rounding import quantize
from ..rows import (BF16_EMIN, BF16_MANT, BackwardOperands, block_operand, row_operand, set_operand, unit_tuples,
                    zeros_operand)
from ..stages import CASTS, ROUNDINGS, StageSpec, stage_indices, stage_table
from ..units import LOG2E_F32, StageContext, ex2_unit, round_add, round_mul, round_stage, tc_stage


def _cast_pair(name, what):
    """An fp32 op's stage and its bf16 cast's stage (which must follow it: ``mul_cast`` and
    ``add_cast`` round by ``st_op``, then cast by ``st_op + 1``)."""
    return (StageSpec(name, f"{what} (fp32)"),
            StageSpec(name + "_cast", f"{name} → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS))


PAPER_BACKWARD_STAGES = stage_table(
    StageSpec("S", "S = Q·Kᵀ on tensor cores (fp32 from +0)", "tensor_core"),
    StageSpec("S_cast", "einsum output → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    *_cast_pair("s", "s = S · scale"),
    *_cast_pair("x", "x = s − lse (lse as bf16)"),
    StageSpec("e_arg", "x · log2e (fp32; tl.exp's multiply)"),
    StageSpec("P", "P = ex2.approx.f32(x · log2e) (non-FTZ)", "approx"),
    StageSpec("P_cast", "P → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("dP", "dP = dO·Vᵀ on tensor cores (fp32 from +0)", "tensor_core"),
    StageSpec("dP_cast", "einsum output → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    *_cast_pair("delta_mul", "dO · O"),
    StageSpec("delta_sum", "Σ_d (dO·O)_d: fp32 additions, d ascending"),
    StageSpec("delta_cast", "δ → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    *_cast_pair("Ps", "P · scale"),
    *_cast_pair("dP_sub", "dP − δ"),
    *_cast_pair("dS", "(P·scale) · (dP − δ)"),
    StageSpec("dV_blk", "P_blkᵀ·dO_blk on tensor cores (fp32 from +0)", "tensor_core"),
    StageSpec("dV_blk_cast", "→ bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    *_cast_pair("dV_add", "dV + dV_blk"),
    StageSpec("dK_blk", "dS_blkᵀ·Q_blk on tensor cores (fp32 from +0)", "tensor_core"),
    StageSpec("dK_blk_cast", "→ bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    *_cast_pair("dK_add", "dK + dK_blk"),
    StageSpec("dQ_blk", "dS_blk·K_blk on tensor cores (fp32 from +0)", "tensor_core"),
    StageSpec("dQ_blk_cast", "→ bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    *_cast_pair("dQ_add", "dQ + dQ_blk"),
)
ROUNDING_STAGES = ("P_cast", "dS_cast", "dQ_add_cast", "dK_add_cast", "dV_add_cast")

STAGE = stage_indices(PAPER_BACKWARD_STAGES)   # a global namedtuple: numba freezes STAGE.x to a constant


@nb.njit(cache=True, error_model="numpy")
def mul_cast(plan, ledger, record, st_op, a, b, offset):
    """bf16(fl32(a·b)): rounded by ``st_op``, then cast by the stage after it."""
    v = round_mul(plan, ledger, record, st_op, a, b, 0)
    return round_stage(plan, ledger, record, st_op + 1, v, 0.0, offset)


@nb.njit(cache=True, error_model="numpy")
def add_cast(plan, ledger, record, st_op, a, b, offset):
    """bf16(fl32(a + b)): rounded by ``st_op``, then cast by the stage after it."""
    v = round_add(plan, ledger, record, st_op, a, b, 0)
    return round_stage(plan, ledger, record, st_op + 1, v, 0.0, offset)


@nb.njit(cache=True, error_model="numpy")
def delta_rows(o, do_values, plan, ledger, record, delta, ch, n_chunks):
    """δ = bf16(Σ_d bf16(dO_d · O_d)) of rows ch · n_rows // n_chunks .. (fp32 additions)."""
    BH, Nq, D = o.shape
    R = BH * Nq
    for r in range(ch * R // n_chunks, (ch + 1) * R // n_chunks):
        bh = r // Nq
        i = r % Nq
        acc = 0.0
        for d in range(D):
            t = mul_cast(plan, ledger, record, STAGE.delta_mul, do_values[bh, i, d], o[bh, i, d], 0)
            acc = round_add(plan, ledger, record, STAGE.delta_sum, acc, t, 0)
        delta[bh, i] = round_stage(plan, ledger, record, STAGE.delta_cast, acc, 0.0, bh * Nq + i)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def delta_kernel(o, do_values, plan, ledgers, record, delta):
    """δ of every row, ledger chunks in parallel."""
    n_chunks = ledgers.shape[0]
    for ch in nb.prange(n_chunks):
        delta_rows(o, do_values, plan, ledgers[ch], record, delta, ch, n_chunks)


@nb.njit(cache=True, error_model="numpy")
def key_block(ops, scalars, units, stages, lse, delta, outs, bh, j0, block_m, block_n, pT, dsT, dv, dk):
    """dK, dV of keys j0..j0+block_n of (batch·head) bh: per query block (ascending, every
    one), P and dS of the block, then dV = cast(dV + bf16(P̃ᵀ·dO)), dK likewise."""
    # groups unpacked once: numba increfs/decrefs each array it reads out of a tuple,
    # so the per-element helpers take plain arrays (units module docstring)
    plan, ledger, record = stages
    hw = units.hw
    tc = units.tc_qk
    ex2_pos, ex2_neg, ex2_params = units.ex2_pos, units.ex2_neg, units.ex2_params
    log2e = LOG2E_F32 if hw else 1.4426950408889634
    qk_scale = scalars.qk_scale
    scale = scalars.scale
    q_values, q_sig, q_exp, q_spec = row_operand(ops.q, bh)
    kT_values, kT_sig, kT_exp, kT_spec = row_operand(ops.kT, bh)
    do_values, do_sig, do_exp, do_spec = row_operand(ops.do, bh)
    vT_values, vT_sig, vT_exp, vT_spec = row_operand(ops.vT, bh)
    pT_values, pT_sig, pT_exp, pT_spec = pT
    dsT_values, dsT_sig, dsT_exp, dsT_spec = dsT
    Nq = lse.shape[1]
    Nk = outs.dk.shape[1]
    D = dv.shape[1]
    causal = outs.causal
    keep = outs.keep
    ds_cast = outs.ds_cast
    n_keys = min(block_n, Nk - j0)
    n_qblocks = (Nq + block_m - 1) // block_m
    for jj in range(n_keys):
        for d in range(D):
            dv[jj, d] = 0.0
            dk[jj, d] = 0.0
    for ib in range(n_qblocks):
        i0 = ib * block_m
        for ii in range(block_m):
            i = i0 + ii
            for jj in range(block_n):
                j = j0 + jj
                p_c = 0.0
                ds_c = 0.0
                if i < Nq and j < Nk:
                    masked = causal and j > i
                    # the paper computes every op on masked entries too (P = 0 there); the
                    # ledger records valid entries only, as the forward's
                    rec = record and not masked
                    off = (bh * Nq + i) * Nk + j
                    if masked:
                        p_c = 0.0
                    else:
                        s = tc_stage(plan, ledger, rec, STAGE.S, hw, q_values, q_sig, q_exp, q_spec, i,
                                     kT_values, kT_sig, kT_exp, kT_spec, j, D, 0.0, tc)
                        s = round_stage(plan, ledger, rec, STAGE.S_cast, s, 0.0, off)
                        s = mul_cast(plan, ledger, rec, STAGE.s, s, qk_scale, off)
                        x = add_cast(plan, ledger, rec, STAGE.x, s, -lse[bh, i], off)
                        e_arg = round_mul(plan, ledger, rec, STAGE.e_arg, x, log2e, 0)
                        p = ex2_unit(plan, ledger, rec, STAGE.P, e_arg, hw, ex2_pos, ex2_neg, ex2_params, False)
                        p_c = round_stage(plan, ledger, rec, STAGE.P_cast, p, 0.0, off)
                    dp = tc_stage(plan, ledger, rec, STAGE.dP, hw, do_values, do_sig, do_exp, do_spec, i,
                                  vT_values, vT_sig, vT_exp, vT_spec, j, D, 0.0, tc)
                    dp = round_stage(plan, ledger, rec, STAGE.dP_cast, dp, 0.0, off)
                    a = mul_cast(plan, ledger, rec, STAGE.Ps, p_c, scale, off)
                    u = add_cast(plan, ledger, rec, STAGE.dP_sub, dp, -delta[bh, i], off)
                    ds_c = mul_cast(plan, ledger, rec, STAGE.dS, a, u, off)
                    ds_cast[bh, i, j] = ds_c
                    if keep:
                        outs.p[bh, i, j] = p_c
                        outs.ds[bh, i, j] = ds_c
                set_operand(pT, jj, ii, p_c, BF16_MANT, BF16_EMIN)
                set_operand(dsT, jj, ii, ds_c, BF16_MANT, BF16_EMIN)
        dob_values, dob_sig, dob_exp, dob_spec = block_operand(ops.do, bh, i0, i0 + block_m)
        qb_values, qb_sig, qb_exp, qb_spec = block_operand(ops.q, bh, i0, i0 + block_m)
        for jj in range(n_keys):
            j = j0 + jj
            for d in range(D):
                off = ((bh * n_qblocks + ib) * Nk + j) * D + d
                blk = tc_stage(plan, ledger, record, STAGE.dV_blk, hw, pT_values, pT_sig, pT_exp, pT_spec, jj,
                               dob_values, dob_sig, dob_exp, dob_spec, d, block_m, 0.0, tc)
                blk = round_stage(plan, ledger, record, STAGE.dV_blk_cast, blk, 0.0, off)
                dv[jj, d] = add_cast(plan, ledger, record, STAGE.dV_add, dv[jj, d], blk, off)
                blk = tc_stage(plan, ledger, record, STAGE.dK_blk, hw, dsT_values, dsT_sig, dsT_exp, dsT_spec, jj,
                               qb_values, qb_sig, qb_exp, qb_spec, d, block_m, 0.0, tc)
                blk = round_stage(plan, ledger, record, STAGE.dK_blk_cast, blk, 0.0, off)
                dk[jj, d] = add_cast(plan, ledger, record, STAGE.dK_add, dk[jj, d], blk, off)
    for jj in range(n_keys):
        for d in range(D):
            outs.dv[bh, j0 + jj, d] = dv[jj, d]
            outs.dk[bh, j0 + jj, d] = dk[jj, d]


@nb.njit(cache=True, error_model="numpy")
def key_blocks(ops, scalars, units, plan, lse, delta, outs, block_m, block_n, ch, n_chunks):
    """Key blocks ch · n // n_chunks .. of all (batch·head, key block) pairs, in order."""
    BH, _, D = ops.q.values.shape
    Nk = outs.dk.shape[1]
    nkb = (Nk + block_n - 1) // block_n
    stages = StageContext(plan, outs.ledgers[ch], outs.record)
    pT = zeros_operand(block_n, block_m)
    dsT = zeros_operand(block_n, block_m)
    dv = np.zeros((block_n, D))
    dk = np.zeros((block_n, D))
    n = BH * nkb
    for u in range(ch * n // n_chunks, (ch + 1) * n // n_chunks):
        key_block(ops, scalars, units, stages, lse, delta, outs, u // nkb, (u % nkb) * block_n, block_m, block_n,
                  pT, dsT, dv, dk)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def dkdv_kernel(q, k, kT, vT, do, scalars, units, plan, lse, delta, outs, block_m, block_n):
    """dK, dV of every (batch·head, key block), ledger chunks in parallel."""
    n_chunks = outs.ledgers.shape[0]
    for ch in nb.prange(n_chunks):
        key_blocks(BackwardOperands(q, k, kT, vT, do), scalars, unit_tuples(units), plan, lse, delta, outs,
                   block_m, block_n, ch, n_chunks)


@nb.njit(cache=True, error_model="numpy")
def query_rows(ops, units, plan, outs, block_n, ch, n_chunks):
    """dQ of rows ch · n_rows // n_chunks ..: per key block ascending (every one),
    dQ = cast(dQ + bf16(dS̃_blk·K_blk)), from the kept dS̃."""
    ledger = outs.ledgers[ch]
    record = outs.record
    hw = units.hw
    tc = units.tc_qk
    BH, _, D = ops.q.values.shape
    Nq = outs.dq.shape[1]
    Nk = outs.dk.shape[1]
    nkb = (Nk + block_n - 1) // block_n
    ds_cast = outs.ds_cast
    ds_row = zeros_operand(1, block_n)
    ds_values, ds_sig, ds_exp, ds_spec = ds_row
    acc = np.zeros(D)
    R = BH * Nq
    for r in range(ch * R // n_chunks, (ch + 1) * R // n_chunks):
        bh = r // Nq
        i = r % Nq
        for d in range(D):
            acc[d] = 0.0
        for jb in range(nkb):
            j0 = jb * block_n
            for jj in range(block_n):
                j = j0 + jj
                set_operand(ds_row, 0, jj, ds_cast[bh, i, j] if j < Nk else 0.0, BF16_MANT, BF16_EMIN)
            kb_values, kb_sig, kb_exp, kb_spec = block_operand(ops.k, bh, j0, j0 + block_n)
            for d in range(D):
                off = ((bh * nkb + jb) * Nq + i) * D + d
                blk = tc_stage(plan, ledger, record, STAGE.dQ_blk, hw, ds_values, ds_sig, ds_exp, ds_spec, 0,
                               kb_values, kb_sig, kb_exp, kb_spec, d, block_n, 0.0, tc)
                blk = round_stage(plan, ledger, record, STAGE.dQ_blk_cast, blk, 0.0, off)
                acc[d] = add_cast(plan, ledger, record, STAGE.dQ_add, acc[d], blk, off)
        for d in range(D):
            outs.dq[bh, i, d] = acc[d]


@nb.njit(cache=True, parallel=True, error_model="numpy")
def dq_kernel(q, k, kT, vT, do, units, plan, outs, block_n):
    """dQ of every row, ledger chunks in parallel."""
    n_chunks = outs.ledgers.shape[0]
    for ch in nb.prange(n_chunks):
        query_rows(BackwardOperands(q, k, kT, vT, do), unit_tuples(units), plan, outs, block_n, ch, n_chunks)


def run(job):
    """The paper backward's passes on a backward.BackwardJob (its outputs filled)."""
    ops, outs = job.operands, job.outputs
    block_m, block_n = job.tiling
    delta_kernel(job.o, job.do_values, job.plan, outs.ledgers, outs.record, outs.delta)
    dkdv_kernel(*ops, job.scalars, job.units, job.plan, job.lse2, outs.delta, outs, block_m, block_n)
    dq_kernel(*ops, job.units, job.plan, outs, block_n)


def lse_operand(lse, fp64=False):
    """The paper saves a bf16 lse: bf16(lse) (rne; fp64: unrounded)."""
    x = np.asarray(lse, np.float64)
    return x if fp64 else quantize(x, "bf16", "rne").astype(np.float64)


BACKWARD = Backward(stages=PAPER_BACKWARD_STAGES, rounding_stages=ROUNDING_STAGES, run=run, lse_operand=lse_operand,
                    gpu_module=None)
