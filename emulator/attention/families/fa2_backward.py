"""Family ``fa2``, backward pass (docs/recipes.md, "fa2 backward").

FlashAttention-2 / Triton-tutorial style: δ = rowsum(O ∘ dO) as an fp32 fma chain,
P recomputed from the forward's lse with the same exp2 unit, dV = P̃ᵀ·dO,
dP = dO·Vᵀ, dS = P ∘ (dP − δ) in fp32 cast to bf16, dK = dS̃ᵀ·Q, dQ = dS̃·K on the
tensor-core model, dK and dQ scaled by fl32(scale) at the end.  GPU kernel:
``flashbits.gpu.kernels.fa2_bwd``.

Three passes, as the kernels run them, each over its own chunks in parallel:

* ``delta``: per query row;
* ``dK, dV``: per (batch·head, key block), looping over query blocks ascending;
  it also keeps dS̃ (the cast dS) for the next pass, and with ``keep`` the
  fp32 P and dS (the kernels' dump);
* ``dQ``: per query row, over key blocks ascending, from the kept dS̃ (the GPU
  kernel recomputes it; the bits are the same, since every op is deterministic).

Why the tiles do not matter: a wgmma chain is a sequence of k16 steps whose
accumulator carries over from one ``tl.dot`` to the next, and a step whose products
are all zero returns a nonzero accumulator unchanged and a zero one as +0 (the
tensor-core model, whose all-zero rule the H200 records show: +0, never −0;
tests/test_backward_emulator.py checks the model's side).  A chain starts at +0, so
the zero steps a kernel skips or adds (causal blocks before a key block's first row,
after a query block's last key) change nothing, and a chain over all query rows (or
keys) is the same whatever blocks the kernel splits it into, as long as steps stay
aligned to multiples of 16, which every tile is.  The emulator's blocks below are
its own choice.

Except for non-finite operands: a masked lane's product is 0 · Q_i (or dO_i, K_j), and
0 · ±inf is NaN.  Then the lanes a kernel visits decide the bits, so the causal chains
here visit what the kernels' default tiles visit (the first H100 run of the backward
kernels found this: an ``inf_inputs`` case, dQ NaN on the GPU, 0 here): a key's dK/dV
chain starts at the first row of its dK/dV program's key tile (``KERNEL_DKDV_KEYS``
keys), a row's dQ chain ends at the last key of its dQ program's row tile
(``KERNEL_DQ_ROWS`` rows).  Other kernel tiles give other bits for such inputs.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from . import LOG2E, Backward
from ..rows import (BF16_EMIN, BF16_MANT, BackwardOperands, block_operand, row_operand, set_operand, unit_tuples,
                    zeros_operand)
from ..stages import CASTS, ROUNDINGS, StageSpec, stage_indices, stage_table
from ..units import StageContext, ex2_unit, round_add, round_fma, round_mul, round_stage, tc_stage

FA2_BACKWARD_STAGES = stage_table(
    StageSpec("delta", "δ = fma(O_d, dO_d, δ) over d ascending, from +0 (fp32 fma chain)"),
    StageSpec("S", "S = Q·Kᵀ on tensor cores (as the forward's S)", "tensor_core"),
    StageSpec("x", "x = fma(S, c, −lse2), lse2 = fl32(lse·log2 e)"),
    StageSpec("P", "P = ex2.approx.ftz(x) (MUFU.EX2)", "approx"),
    StageSpec("P_cast", "P → bf16 (the dV operand)", format="bf16", roundings=ROUNDINGS),
    StageSpec("dP", "dP = dO·Vᵀ on tensor cores (fp32 from +0)", "tensor_core"),
    StageSpec("dP_sub", "u = dP − δ (fp32)"),
    StageSpec("dS", "dS = P · u (fp32, P before its cast)"),
    StageSpec("dS_cast", "dS → bf16 (the dK and dQ operand)", format="bf16", roundings=ROUNDINGS),
    StageSpec("dV", "dV = P̃ᵀ·dO: one wgmma chain over the query rows", "tensor_core"),
    StageSpec("dK", "dK = dS̃ᵀ·Q: one wgmma chain over the query rows", "tensor_core"),
    StageSpec("dQ", "dQ = dS̃·K: one wgmma chain over the keys", "tensor_core"),
    StageSpec("dK_scale", "dK · fl32(scale) (fp32)"),
    StageSpec("dQ_scale", "dQ · fl32(scale) (fp32)"),
    StageSpec("dQ_cast", "dQ → output format", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("dK_cast", "dK → output format", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("dV_cast", "dV → output format", format="bf16", formats=CASTS, roundings=ROUNDINGS),
)
# the stages the ``rounding=`` shorthand sets
ROUNDING_STAGES = ("P_cast", "dS_cast", "dQ_cast", "dK_cast", "dV_cast")

STAGE = stage_indices(FA2_BACKWARD_STAGES)   # a global namedtuple: numba freezes STAGE.x to a constant

# the emulator's own blocks (multiples of 16: module docstring)
BLOCK_M = 64
BLOCK_N = 64
# the default tiles of the kernels whose causal extent the chains follow (module docstring):
# gpu.kernels.fa2_bwd.BLOCK_N1 (keys per dK/dV program) and BLOCK_M2 (rows per dQ program)
KERNEL_DKDV_KEYS = 128
KERNEL_DQ_ROWS = 128


@nb.njit(inline="always", error_model="numpy")
def _valid(i, j, Nq, Nk, causal):
    return i < Nq and j < Nk and (not causal or j <= i)


@nb.njit(cache=True, error_model="numpy")
def delta_rows(o, do_values, plan, ledger, record, delta, ch, n_chunks):
    """δ of rows ch · n_rows // n_chunks ..: the fp32 fma chain of O·dO over d."""
    BH, Nq, D = o.shape
    R = BH * Nq
    for r in range(ch * R // n_chunks, (ch + 1) * R // n_chunks):
        bh = r // Nq
        i = r % Nq
        acc = 0.0
        for d in range(D):
            acc = round_fma(plan, ledger, record, STAGE.delta, o[bh, i, d], do_values[bh, i, d], acc, 0)
        delta[bh, i] = acc


@nb.njit(cache=True, parallel=True, error_model="numpy")
def delta_kernel(o, do_values, plan, ledgers, record, delta):
    """δ of every row, in ledger chunks in parallel (O and dO as float64 values)."""
    n_chunks = ledgers.shape[0]
    for ch in nb.prange(n_chunks):
        delta_rows(o, do_values, plan, ledgers[ch], record, delta, ch, n_chunks)


@nb.njit(cache=True, error_model="numpy")
def key_block(ops, scalars, units, stages, lse2, delta, outs, bh, j0, pT, dsT, acc_dv, acc_dk):
    """dV and dK of keys j0..j0+BLOCK_N of (batch·head) bh, from every query block that
    sees a key of the block, ascending; dS̃ (and with ``keep`` P and dS) kept."""
    # groups unpacked once: numba increfs/decrefs each array it reads out of a tuple,
    # so the per-element helpers take plain arrays (units module docstring)
    plan, ledger, record = stages
    hw = units.hw
    tc = units.tc_qk
    ex2_pos, ex2_neg, ex2_params = units.ex2_pos, units.ex2_neg, units.ex2_params
    c = scalars.qk_scale
    q_values, q_sig, q_exp, q_spec = row_operand(ops.q, bh)
    kT_values, kT_sig, kT_exp, kT_spec = row_operand(ops.kT, bh)
    do_values, do_sig, do_exp, do_spec = row_operand(ops.do, bh)
    vT_values, vT_sig, vT_exp, vT_spec = row_operand(ops.vT, bh)
    pT_values, pT_sig, pT_exp, pT_spec = pT
    dsT_values, dsT_sig, dsT_exp, dsT_spec = dsT
    Nq = lse2.shape[1]
    Nk = outs.dk.shape[1]
    D = acc_dv.shape[1]
    causal = outs.causal
    keep = outs.keep
    ds_cast = outs.ds_cast
    p_keep = outs.p
    ds_keep = outs.ds
    for jj in range(BLOCK_N):
        for d in range(D):
            acc_dv[jj, d] = 0.0
            acc_dk[jj, d] = 0.0
    # causal: the chain starts where the kernel's program of these keys starts, the first row
    # of its key tile (earlier rows of it add masked zero products; module docstring)
    i_start = ((j0 // KERNEL_DKDV_KEYS) * KERNEL_DKDV_KEYS // BLOCK_M) * BLOCK_M if causal else 0
    for i0 in range(i_start, Nq, BLOCK_M):
        for ii in range(BLOCK_M):
            i = i0 + ii
            for jj in range(BLOCK_N):
                j = j0 + jj
                p_c = 0.0
                ds_c = 0.0
                if _valid(i, j, Nq, Nk, causal):
                    s = tc_stage(plan, ledger, record, STAGE.S, hw, q_values, q_sig, q_exp, q_spec, i,
                                 kT_values, kT_sig, kT_exp, kT_spec, j, D, 0.0, tc)
                    x = round_fma(plan, ledger, record, STAGE.x, s, c, -lse2[bh, i], 0)
                    p = ex2_unit(plan, ledger, record, STAGE.P, x, hw, ex2_pos, ex2_neg, ex2_params, True)
                    off = (bh * Nq + i) * Nk + j
                    p_c = round_stage(plan, ledger, record, STAGE.P_cast, p, 0.0, off)
                    dp = tc_stage(plan, ledger, record, STAGE.dP, hw, do_values, do_sig, do_exp, do_spec, i,
                                  vT_values, vT_sig, vT_exp, vT_spec, j, D, 0.0, tc)
                    u = round_add(plan, ledger, record, STAGE.dP_sub, dp, -delta[bh, i], 0)
                    ds = round_mul(plan, ledger, record, STAGE.dS, p, u, 0)
                    ds_c = round_stage(plan, ledger, record, STAGE.dS_cast, ds, 0.0, off)
                    ds_cast[bh, i, j] = ds_c
                    if keep:
                        p_keep[bh, i, j] = p
                        ds_keep[bh, i, j] = ds
                set_operand(pT, jj, ii, p_c, BF16_MANT, BF16_EMIN)
                set_operand(dsT, jj, ii, ds_c, BF16_MANT, BF16_EMIN)
        # this query block's steps of the chains, the accumulators carried in
        dob_values, dob_sig, dob_exp, dob_spec = block_operand(ops.do, bh, i0, i0 + BLOCK_M)
        qb_values, qb_sig, qb_exp, qb_spec = block_operand(ops.q, bh, i0, i0 + BLOCK_M)
        for jj in range(min(BLOCK_N, Nk - j0)):
            for d in range(D):
                acc_dv[jj, d] = tc_stage(plan, ledger, record, STAGE.dV, hw, pT_values, pT_sig, pT_exp, pT_spec, jj,
                                         dob_values, dob_sig, dob_exp, dob_spec, d, BLOCK_M, acc_dv[jj, d], tc)
                acc_dk[jj, d] = tc_stage(plan, ledger, record, STAGE.dK, hw, dsT_values, dsT_sig, dsT_exp, dsT_spec,
                                         jj, qb_values, qb_sig, qb_exp, qb_spec, d, BLOCK_M, acc_dk[jj, d], tc)
    for jj in range(min(BLOCK_N, Nk - j0)):
        j = j0 + jj
        for d in range(D):
            off = (bh * Nk + j) * D + d
            dk = round_mul(plan, ledger, record, STAGE.dK_scale, acc_dk[jj, d], scalars.scale, 0)
            outs.dk[bh, j, d] = round_stage(plan, ledger, record, STAGE.dK_cast, dk, 0.0, off)
            outs.dv[bh, j, d] = round_stage(plan, ledger, record, STAGE.dV_cast, acc_dv[jj, d], 0.0, off)


@nb.njit(cache=True, error_model="numpy")
def key_blocks(ops, scalars, units, plan, lse2, delta, outs, ch, n_chunks):
    """Key blocks ch · n // n_chunks .. of all (batch·head, key block) pairs, in order,
    recorded into ledger chunk ch."""
    BH, _, D = ops.q.values.shape
    Nk = outs.dk.shape[1]
    nkb = (Nk + BLOCK_N - 1) // BLOCK_N
    stages = StageContext(plan, outs.ledgers[ch], outs.record)
    pT = zeros_operand(BLOCK_N, BLOCK_M)
    dsT = zeros_operand(BLOCK_N, BLOCK_M)
    acc_dv = np.zeros((BLOCK_N, D))
    acc_dk = np.zeros((BLOCK_N, D))
    n = BH * nkb
    for u in range(ch * n // n_chunks, (ch + 1) * n // n_chunks):
        key_block(ops, scalars, units, stages, lse2, delta, outs, u // nkb, (u % nkb) * BLOCK_N,
                  pT, dsT, acc_dv, acc_dk)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def dkdv_kernel(q, k, kT, vT, do, scalars, units, plan, lse2, delta, outs):
    """dK, dV of every (batch·head, key block), ledger chunks in parallel."""
    n_chunks = outs.ledgers.shape[0]
    for ch in nb.prange(n_chunks):
        key_blocks(BackwardOperands(q, k, kT, vT, do), scalars, unit_tuples(units), plan, lse2, delta, outs,
                   ch, n_chunks)


@nb.njit(cache=True, error_model="numpy")
def query_rows(ops, scalars, units, plan, outs, ch, n_chunks):
    """dQ of rows ch · n_rows // n_chunks .., each one chain over its key blocks
    ascending (causal: up to the block of its diagonal), from the kept dS̃."""
    ledger = outs.ledgers[ch]
    record = outs.record
    hw = units.hw
    tc = units.tc_qk
    BH, _, D = ops.q.values.shape
    Nq = outs.dq.shape[1]
    Nk = outs.dk.shape[1]
    ds_cast = outs.ds_cast
    ds_row = zeros_operand(1, BLOCK_N)
    ds_values, ds_sig, ds_exp, ds_spec = ds_row
    acc = np.zeros(D)
    R = BH * Nq
    for r in range(ch * R // n_chunks, (ch + 1) * R // n_chunks):
        bh = r // Nq
        i = r % Nq
        # causal: the chain runs to the last key the kernel's program of this row visits, the
        # end of its row tile (later lanes of it are masked zero products; module docstring)
        hi = min(Nk, (i // KERNEL_DQ_ROWS + 1) * KERNEL_DQ_ROWS) if outs.causal else Nk
        for d in range(D):
            acc[d] = 0.0
        for j0 in range(0, hi, BLOCK_N):
            for jj in range(BLOCK_N):
                j = j0 + jj
                ds = ds_cast[bh, i, j] if _valid(i, j, Nq, Nk, outs.causal) else 0.0
                set_operand(ds_row, 0, jj, ds, BF16_MANT, BF16_EMIN)
            kb_values, kb_sig, kb_exp, kb_spec = block_operand(ops.k, bh, j0, j0 + BLOCK_N)
            for d in range(D):
                acc[d] = tc_stage(plan, ledger, record, STAGE.dQ, hw, ds_values, ds_sig, ds_exp, ds_spec, 0,
                                  kb_values, kb_sig, kb_exp, kb_spec, d, BLOCK_N, acc[d], tc)
        for d in range(D):
            dq = round_mul(plan, ledger, record, STAGE.dQ_scale, acc[d], scalars.scale, 0)
            outs.dq[bh, i, d] = round_stage(plan, ledger, record, STAGE.dQ_cast, dq, 0.0, (bh * Nq + i) * D + d)


@nb.njit(cache=True, parallel=True, error_model="numpy")
def dq_kernel(q, k, kT, vT, do, scalars, units, plan, outs):
    """dQ of every row, ledger chunks in parallel."""
    n_chunks = outs.ledgers.shape[0]
    for ch in nb.prange(n_chunks):
        query_rows(BackwardOperands(q, k, kT, vT, do), scalars, unit_tuples(units), plan, outs, ch, n_chunks)


def run(job):
    """The three passes of the fa2 backward on a backward.BackwardJob (its outputs filled)."""
    ops, outs = job.operands, job.outputs
    delta_kernel(job.o, job.do_values, job.plan, outs.ledgers, outs.record, outs.delta)
    dkdv_kernel(*ops, job.scalars, job.units, job.plan, job.lse2, outs.delta, outs)
    dq_kernel(*ops, job.scalars, job.units, job.plan, outs)


def lse_operand(lse, fp64=False):
    """lse2 = fl32(lse · log2 e) (float64 product, rounded once; fp64: unrounded)."""
    x = np.asarray(lse, np.float64) * LOG2E
    return x if fp64 else x.astype(np.float32).astype(np.float64)


BACKWARD = Backward(stages=FA2_BACKWARD_STAGES, rounding_stages=ROUNDING_STAGES, run=run, lse_operand=lse_operand,
                    gpu_module="flashbits.gpu.kernels.fa2_bwd")
