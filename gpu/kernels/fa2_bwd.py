"""The ``fa2`` family's backward kernels (docs/recipes.md, "The backward pass",
the ``fa2`` backward table: every line of it is one operation here).

Three launches, each deterministic (no atomics):

* ``_bwd_delta``: δ_i = fma(O_i,D−1, dO_i,D−1, … fma(O_i0, dO_i0, +0)), an explicit
  fp32 fma chain over d ascending (one column at a time; never ``tl.sum``, whose
  reduction tree the emulator does not model);
* ``_bwd_dkdv``: one program per key block (``BLOCK_N1`` keys) × batch·head; query
  blocks (``BLOCK_M1`` rows) ascending: Sᵀ = K·Qᵀ, x = fma(Sᵀ, c, −lse2), P = exp2(x),
  P̃ = bf16(P), dV += P̃ᵀ·dO, dPᵀ = V·dOᵀ, u = dP − δ, dS = P·u, dS̃ = bf16(dS),
  dK += dS̃ᵀ·Q; then dK·fl32(scale), and both cast to bf16;
* ``_bwd_dq``: one program per query block (``BLOCK_M2`` rows) × batch·head; key blocks
  (``BLOCK_N2`` keys) ascending, recomputing S, x, P, dP, u, dS and dS̃ exactly as
  ``_bwd_dkdv`` does (same operations, same Philox words, same seed): dQ += dS̃·K;
  then dQ·fl32(scale), cast to bf16.

How the source maps to the hardware's roundings (as for the forward, see the package
docstring): ``tl.dot(a, b, acc)`` is one wgmma chain continued from ``acc`` (the
gradients' chains over all query / key blocks are single chains: the accumulator is
passed *into* each dot, never added after it); ``tl.fma`` is ``fma.rn.f32`` (written
out, not left to contraction); ``tl.math.exp2`` is ``ex2.approx.ftz.f32`` (the
forward's exp2 call); ``dP − δ``, ``P·u``, ``dK·s`` are single ``sub``/``mul``
with nothing after them to contract into; ``.to(tl.bfloat16)`` is ``cvt.rn.bf16.f32``
and ``_sr_bf16`` the forward's stochastic cast (tests/test_backward_kernel_ptx.py reads
all of this in the sm_90 PTX).  Triton writes ``−lse2`` as ``0 − lse2`` (``sub.f32``),
which differs from a negation only in the sign of a zero result (lse2 = +0 gives +0),
and fma(S, c, ±0) is the same either way: a nonzero product plus a zero is the product,
and a zero product is +0·c = +0 (S is never −0: its chain starts from +0).

Masked entries (keys ≥ Nk, rows ≥ Nq, key > query when causal, top-left aligned as
the forward) get P = dS = +0 by ``tl.where``; out-of-range rows and keys are
loaded as 0.  A causal key block starts at the query block holding its first key's
row (earlier rows see none of its keys: only chunks of +0 products are skipped); a
causal query block stops after the key block holding its last row's diagonal.

``DUMP`` (constexpr) also stores the fp32 P (before its cast) and the fp32 dS (before
its cast) at ``(bh·Nq + i)·Nk + j`` of (B·H, Nq, Nk) arrays, from each kernel into its
own pair of arrays: entries the kernel visits are stored (masked ones as the +0 the
kernel computed), the others are never written (the launcher zero-fills, so every
masked entry reads +0).  The production launch (DUMP=False) computes the same bits.

Tiles change speed only, never bits (docs/recipes.md): every tile must be a multiple
of 16 (the k16 steps of the chains; ``BLOCK_M1`` is the chain step count of dK, dV,
``BLOCK_N2`` that of dQ).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import _sr_bf16

# the backward's casts whose rounding the launcher switches (rne or sr, 16 random bits),
# {stage: (constexpr, seed argument)}; the seed is stage_seed(seed, "backward." + stage)
SR_STAGES = {"P_cast": ("P_SR", "seed_p"), "dS_cast": ("DS_SR", "seed_ds"), "dQ_cast": ("DQ_SR", "seed_dq"),
             "dK_cast": ("DK_SR", "seed_dk"), "dV_cast": ("DV_SR", "seed_dv")}

# default tiles: (BLOCK_M1, BLOCK_N1) of the dK/dV kernel, (BLOCK_M2, BLOCK_N2) of the dQ
# kernel (the Triton tutorial's: a long accumulator side, a short chain step), rows per
# δ program, warps.  Chosen on ptxas's report for sm_90 (compiled on the CPU): with 8
# warps neither kernel spills at head dim 64 or 128 (dK/dV 169 / 233 registers, dQ
# 102 / 131); 4 warps spill at 32×128.  Not yet timed on the H200.
BLOCK_M1, BLOCK_N1 = 32, 128
BLOCK_M2, BLOCK_N2 = 128, 32
BLOCK_DELTA = 64
NUM_WARPS = 8
KERNEL_TILES = (16, 32, 64, 128)   # the tile sizes the launcher accepts (multiples of 16)

# lengths, the causal flag and seeds vary per call: no specialisation on them (as the forward)
_NO_SPEC = ["H", "Nq", "Nk", "CAUSAL", "seed_p", "seed_ds", "seed_dq", "seed_dk", "seed_dv"]


@triton.jit
def _bf16_cast(x, seed, offs, SR: tl.constexpr):
    """fp32 → bf16, round to nearest even or stochastic with the Philox word at ``offs``."""
    if SR:
        xb = _sr_bf16(x, seed, offs)
    else:
        xb = x.to(tl.bfloat16)
    return xb


@triton.jit
def _program_block(H, N, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """(bh, b, h, offs, offs_d, ok) of this program: its batch·head (grid axis 1, as the
    forward) and its block of BLOCK rows of N (grid axis 0), those < N ok."""
    tl.static_assert(BLOCK % 16 == 0)
    bh = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    return bh, bh // H, bh % H, offs, tl.arange(0, HEAD_DIM), offs < N


@triton.jit
def _tile(base, offs_r, offs_d, s_r, s_d, ok):
    """A (rows, HEAD_DIM) tile of a (seq, dim) operand, rows outside ``ok`` as 0."""
    return tl.load(base + offs_r[:, None] * s_r + offs_d[None, :] * s_d, mask=ok[:, None], other=0.0)


@triton.jit
def _tile_t(base, offs_r, offs_d, s_r, s_d, ok):
    """The same tile transposed: (HEAD_DIM, rows)."""
    return tl.load(base + offs_r[None, :] * s_r + offs_d[:, None] * s_d, mask=ok[None, :], other=0.0)


@triton.jit
def _p_and_ds(s, dp, lse2, delta, valid, qk_scale):
    """The table's x, P, dP_sub and dS on a tile of scores S and dP, in either orientation
    (lse2 and δ broadcast along the query axis): x = fma(S, c, −lse2) (one fma.rn),
    P = ex2.approx.ftz(x), u = fl32(dP − δ), dS = fl32(P·u) with P before its cast; P and
    dS +0 where masked.  Both kernels call this: the same operations on the same bits."""
    p = tl.where(valid, tl.math.exp2(tl.fma(s, qk_scale, -lse2)), 0.0)
    ds = tl.where(valid, p * (dp - delta), 0.0)
    return p, ds


@triton.jit
def _dump(PD, DSD, words, p, ds, seen):
    """DUMP: the fp32 P and dS at their flat indices (bh·Nq + i)·Nk + j."""
    tl.store(PD + words, p, mask=seen)
    tl.store(DSD + words, ds, mask=seen)


@triton.jit
def _store_grad(base, offs_r, offs_d, s_r, s_d, ok, g, seed, bh, N, HEAD_DIM: tl.constexpr, SR: tl.constexpr):
    """A gradient tile cast to bf16 (rne or sr, Philox word (bh·N + r)·D + d) and stored."""
    words = (bh * N + offs_r[:, None]) * HEAD_DIM + offs_d[None, :]
    tl.store(base + offs_r[:, None] * s_r + offs_d[None, :] * s_d, _bf16_cast(g, seed, words, SR), mask=ok[:, None])


@triton.jit(do_not_specialize=["H", "Nq"])
def _bwd_delta(O, DO, DELTA, sob, soh, som, sod, sdob, sdoh, sdom, sdod, H, Nq,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """δ_i = fma(O_i,D−1, dO_i,D−1, … fma(O_i0, dO_i0, +0)) in fp32, d ascending, one
    column of O and dO at a time; stored at DELTA[bh·Nq + i]."""
    bh, b, h, offs_m, _, row_ok = _program_block(H, Nq, BLOCK_M, HEAD_DIM)
    o_rows = O + b * sob + h * soh + offs_m * som
    do_rows = DO + b * sdob + h * sdoh + offs_m * sdom
    delta = tl.zeros([BLOCK_M], tl.float32)
    for d in tl.static_range(HEAD_DIM):
        o = tl.load(o_rows + d * sod, mask=row_ok, other=0.0).to(tl.float32)
        do = tl.load(do_rows + d * sdod, mask=row_ok, other=0.0).to(tl.float32)
        delta = tl.fma(o, do, delta)
    tl.store(DELTA + bh * Nq + offs_m, delta, mask=row_ok)


@triton.jit(do_not_specialize=_NO_SPEC)
def _bwd_dkdv(Q, K, V, DO, LSE2, DELTA, DK, DV, PD, DSD,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdom, sdod,
              sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
              H, Nq, Nk, qk_scale, scale, seed_p, seed_ds, seed_dk, seed_dv,
              HEAD_DIM: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr, CAUSAL,
              P_SR: tl.constexpr, DS_SR: tl.constexpr, DK_SR: tl.constexpr, DV_SR: tl.constexpr,
              DUMP: tl.constexpr):
    """dK, dV of one key block: query blocks ascending, one wgmma chain each for dV
    (over i, P̃ᵀ·dO) and dK (over i, dS̃ᵀ·Q), then dK·s and the bf16 casts.  Tiles are
    transposed, (keys, query rows): Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ."""
    tl.static_assert(BLOCK_M1 % 16 == 0)
    bh, b, h, offs_n, offs_d, key_ok = _program_block(H, Nk, BLOCK_N1, HEAD_DIM)
    k = _tile(K + b * skb + h * skh, offs_n, offs_d, skn, skd, key_ok)
    v = _tile(V + b * svb + h * svh, offs_n, offs_d, svn, svd, key_ok)
    Qb = Q + b * sqb + h * sqh
    DOb = DO + b * sdob + h * sdoh
    dk = tl.zeros([BLOCK_N1, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N1, HEAD_DIM], tl.float32)
    # causal: rows before the block's first key see none of its keys
    lo = 0
    if CAUSAL != 0:
        lo = (tl.program_id(0) * BLOCK_N1) // BLOCK_M1
    for mb in range(lo, tl.cdiv(Nq, BLOCK_M1)):
        offs_m = mb * BLOCK_M1 + tl.arange(0, BLOCK_M1)
        row_ok = offs_m < Nq
        qT = _tile_t(Qb, offs_m, offs_d, sqm, sqd, row_ok)
        do = _tile(DOb, offs_m, offs_d, sdom, sdod, row_ok)
        lse2 = tl.load(LSE2 + bh * Nq + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + bh * Nq + offs_m, mask=row_ok, other=0.0)
        seen = key_ok[:, None] & row_ok[None, :]
        valid = seen & ((CAUSAL == 0) | (offs_n[:, None] <= offs_m[None, :]))
        words = (bh * Nq + offs_m[None, :]) * Nk + offs_n[:, None]
        # S and dP: chains over d from +0
        pT, dsT = _p_and_ds(tl.dot(k, qT), tl.dot(v, tl.trans(do)), lse2[None, :], delta[None, :], valid,
                            qk_scale)
        dv = tl.dot(_bf16_cast(pT, seed_p, words, P_SR), do, dv)
        dk = tl.dot(_bf16_cast(dsT, seed_ds, words, DS_SR), tl.trans(qT), dk)
        if DUMP:
            _dump(PD, DSD, words, pT, dsT, seen)
    _store_grad(DK + b * sdkb + h * sdkh, offs_n, offs_d, sdkn, sdkd, key_ok, dk * scale, seed_dk, bh, Nk,
                HEAD_DIM, DK_SR)
    _store_grad(DV + b * sdvb + h * sdvh, offs_n, offs_d, sdvn, sdvd, key_ok, dv, seed_dv, bh, Nk, HEAD_DIM, DV_SR)


@triton.jit(do_not_specialize=_NO_SPEC)
def _bwd_dq(Q, K, V, DO, LSE2, DELTA, DQ, PD, DSD,
            sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdom, sdod,
            sdqb, sdqh, sdqm, sdqd,
            H, Nq, Nk, qk_scale, scale, seed_ds, seed_dq,
            HEAD_DIM: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr, CAUSAL,
            DS_SR: tl.constexpr, DQ_SR: tl.constexpr, DUMP: tl.constexpr):
    """dQ of one query block: key blocks ascending, recomputing P and dS as
    ``_bwd_dkdv`` does, one wgmma chain over j (dS̃·K), then dQ·s and the bf16 cast."""
    tl.static_assert(BLOCK_N2 % 16 == 0)
    bh, b, h, offs_m, offs_d, row_ok = _program_block(H, Nq, BLOCK_M2, HEAD_DIM)
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqm, sqd, row_ok)
    do = _tile(DO + b * sdob + h * sdoh, offs_m, offs_d, sdom, sdod, row_ok)
    lse2 = tl.load(LSE2 + bh * Nq + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh * Nq + offs_m, mask=row_ok, other=0.0)
    Kb = K + b * skb + h * skh
    Vb = V + b * svb + h * svh
    dq = tl.zeros([BLOCK_M2, HEAD_DIM], tl.float32)
    # causal: keys after the block's last row are seen by none of its rows
    hi = Nk
    if CAUSAL != 0:
        hi = tl.minimum(Nk, (tl.program_id(0) + 1) * BLOCK_M2)
    for nb in range(0, tl.cdiv(hi, BLOCK_N2)):
        offs_n = nb * BLOCK_N2 + tl.arange(0, BLOCK_N2)
        key_ok = offs_n < Nk
        kT = _tile_t(Kb, offs_n, offs_d, skn, skd, key_ok)
        vT = _tile_t(Vb, offs_n, offs_d, svn, svd, key_ok)
        seen = row_ok[:, None] & key_ok[None, :]
        valid = seen & ((CAUSAL == 0) | (offs_n[None, :] <= offs_m[:, None]))
        words = (bh * Nq + offs_m[:, None]) * Nk + offs_n[None, :]
        p, ds = _p_and_ds(tl.dot(q, kT), tl.dot(do, vT), lse2[:, None], delta[:, None], valid, qk_scale)
        dq = tl.dot(_bf16_cast(ds, seed_ds, words, DS_SR), tl.trans(kT), dq)
        if DUMP:
            _dump(PD, DSD, words, p, ds, seen)
    _store_grad(DQ + b * sdqb + h * sdqh, offs_m, offs_d, sdqm, sdqd, row_ok, dq * scale, seed_dq, bh, Nq,
                HEAD_DIM, DQ_SR)


KERNELS = {k.__name__: k for k in (_bwd_delta, _bwd_dkdv, _bwd_dq)}
