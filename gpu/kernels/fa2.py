"""The ``fa2`` family's forward kernel (FlashAttention-2, as the Triton tutorial
writes it; docs/recipes.md): scores scaled into the log2 domain by one fma,
``ex2.approx.ftz.f32`` exps, an fp32 accumulator rescaled by α, one division at
the end.

The key-block loop (``_fa2_inner``) is compiled twice: without masks for the
blocks every row of the tile sees whole, with masks for the tail and diagonal
blocks; same blocks, same order, same operations, and in unmasked blocks the
paper fix's count is decided from the second largest score (exact: see
docs/hardware.md, "The attention kernels").
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..attention import KERNEL_FIXES_OF
from .common import FIX_PAPER, FIX_UNBIASED, WEYL_STEP, _NO_SPEC, _finish_tile, _p_cast, _row_tile, _sr_bf16_shared
# what the launcher reads from a family module besides KERNEL and FIXES (both kernels switch the same casts)
from .common import SR_RAND_BITS, SR_STAGES  # noqa: F401

FIXES = KERNEL_FIXES_OF["fa2"]


@triton.jit
def _top2_combine(a1, a2, b1, b2):
    """(largest, second largest) of a multiset, NaN elements ignored; NaN in the
    second slot means "fewer than two".  max.f32 ignores NaN; the NaN-propagating
    min makes a NaN (or empty) side contribute nothing to the second slot."""
    lo = tl.minimum(a1, b1, propagate_nan=tl.PropagateNan.ALL)
    return tl.maximum(a1, b1), tl.maximum(tl.maximum(a2, b2), lo)


@triton.jit
def _top2_block_max(qk, qk_scale, eps2):
    """(bm, two) of unmasked fp32 scores: bm = fl(max·c), the block max in the log2
    domain, and two = the paper fix's n > 1, decided exactly from the second
    largest score s2 (with multiplicity): n > 1 <=> fl(s2·c) >= thr, since fl(x·c)
    is monotone in x and the largest always passes (thr = fl(max·c − ε') <=
    fl(max·c)).  Two ops per score instead of a multiply, compare and count."""
    q1, q2 = tl.reduce((qk, tl.full(qk.shape, float("nan"), tl.float32)), 1, _top2_combine)
    bm = q1 * qk_scale
    thr = bm - eps2
    return bm, (q2 * qk_scale) >= thr


@triton.jit
def _paper_fix_shift(bm, two, beta):
    """The paper fix's new block max (log2 domain) where ``two`` (n > 1): β·bm if
    bm > 0, 0 if bm < 0, bm itself where bm == 0 or not two."""
    bm = tl.where(two & (bm > 0), bm * beta, bm)
    return tl.where(two & (bm < 0), 0.0, bm)


@triton.jit
def _fa2_inner(acc, m_i, l_i, q, Kb, Vb, skn, skd, svn, svd, MB, LB, lo, hi, offs_m, offs_d, row_ok, bh,
               Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, row_word, BLOCK_N: tl.constexpr, CAUSAL,
               FIX: tl.constexpr, P_SR: tl.constexpr, DUMP: tl.constexpr, MASKED: tl.constexpr):
    """Key blocks lo..hi-1 of one row tile: S = Q·Kᵀ, the online-softmax step, acc·α,
    acc += P̄·V.  MASKED=False is only called for blocks that every row of the tile
    sees whole (inside Nk, at or below the causal diagonal): there the mask is all
    true, so leaving it out changes no bit.  FIX: 0 none, FIX_PAPER, FIX_UNBIASED (P̄
    cast with the row's shared word of the block, l summing the cast P̃)."""
    for jb in range(lo, hi):
        offs_n = jb * BLOCK_N + tl.arange(0, BLOCK_N)
        k_ptrs = Kb + offs_n[None, :] * skn + offs_d[:, None] * skd
        v_ptrs = Vb + offs_n[:, None] * svn + offs_d[None, :] * svd
        key_ok = offs_n < Nk
        if MASKED:
            kT = tl.load(k_ptrs, mask=key_ok[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
        else:
            kT = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, kT)
        valid = key_ok[None, :] & ((CAUSAL == 0) | (offs_n[None, :] <= offs_m[:, None]))
        # the block max (with the paper fix), scaled to the log2 domain
        if MASKED:
            qk = tl.where(valid, qk, float("-inf"))
        if FIX == FIX_PAPER:
            if MASKED:
                bm = tl.max(qk, 1) * qk_scale
                thr = bm - eps2
                n = tl.sum((valid & ((qk * qk_scale) >= thr[:, None])).to(tl.int32), 1)
                two = n > 1
            else:
                bm, two = _top2_block_max(qk, qk_scale, eps2)
            bm = _paper_fix_shift(bm, two, beta)
        else:
            bm = tl.max(qk, 1) * qk_scale
        m_new = tl.maximum(m_i, bm)
        # P = exp2(S·c − m_new) (one fma.rn.f32 and one ex2.approx.ftz.f32 per score),
        # α = exp2(m_old − m_new), l·α + rowsum(P) (an fma), acc·α (mul.rn.f32)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        if FIX == FIX_UNBIASED:
            # one word per row and block: u_row + jb·WEYL_STEP, exact in int64, mod 2^32
            block = (offs_m * 0 + jb).to(tl.int64)      # jb per row (a tensor also in the interpreter)
            pb = _sr_bf16_shared(p, (row_word.to(tl.int64) + block * WEYL_STEP).to(tl.uint32))
            l_blk = tl.sum(pb.to(tl.float32), 1)
        else:
            l_blk = tl.sum(p, 1)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + l_blk
        m_i = m_new
        acc = acc * alpha[:, None]
        if FIX != FIX_UNBIASED:
            pb = _p_cast(p, seed_p, bh, Nq, Nk, offs_m, offs_n, P_SR)
        acc = tl.dot(pb, v, acc)
        if DUMP:
            tl.store(MB + (bh * Nq + offs_m) * NBLK + jb, m_i, mask=row_ok)
            tl.store(LB + (bh * Nq + offs_m) * NBLK + jb, l_i, mask=row_ok)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=_NO_SPEC)
def _fa2_fwd(Q, K, V, O, M, L, MB, LB, ACC,
             sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
             H, Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, seed_o,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             CAUSAL, FIX: tl.constexpr, P_SR: tl.constexpr, O_SR: tl.constexpr,
             DUMP: tl.constexpr):
    """One program per (query tile, batch·head): the unmasked blocks, then the
    masked ones, then O = bf16(acc / l)."""
    tl.static_assert(BLOCK_N % 16 == 0)
    tl.static_assert(HEAD_DIM % 16 == 0)
    pid_m, b, h, bh, offs_m, offs_d, row_ok, q = _row_tile(Q, sqb, sqh, sqm, sqd, H, Nq, HEAD_DIM, BLOCK_M)
    Kb = K + b * skb + h * skh
    Vb = V + b * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # the unbiased fix's Philox word per row (tl.randint at the row's flat index)
    row_word = tl.randint(seed_p, bh * Nq + offs_m) if FIX == FIX_UNBIASED else offs_m.to(tl.uint32)
    # CAUSAL is a runtime flag (0/1): fewer compiled variants, same arithmetic.
    # Blocks 0..n_full-1 lie inside Nk and (causal) wholly at or below the
    # diagonal of the tile's first row: no mask.  The rest (the tail block, the
    # diagonal blocks) are masked.  The block order is unchanged.
    hi = Nk
    full_keys = Nk
    if CAUSAL != 0:
        hi = tl.minimum(Nk, (pid_m + 1) * BLOCK_M)
        full_keys = tl.minimum(Nk, pid_m * BLOCK_M + 1)
    n_full = full_keys // BLOCK_N
    n_all = (hi + BLOCK_N - 1) // BLOCK_N
    acc, m_i, l_i = _fa2_inner(acc, m_i, l_i, q, Kb, Vb, skn, skd, svn, svd, MB, LB, 0, n_full, offs_m, offs_d,
                               row_ok, bh, Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, row_word, BLOCK_N, CAUSAL,
                               FIX, P_SR, DUMP, False)
    acc, m_i, l_i = _fa2_inner(acc, m_i, l_i, q, Kb, Vb, skn, skd, svn, svd, MB, LB, n_full, n_all, offs_m,
                               offs_d, row_ok, bh, Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, row_word, BLOCK_N,
                               CAUSAL, FIX, P_SR, DUMP, True)
    _finish_tile(acc, m_i, l_i, O, M, L, ACC, b, h, bh, offs_m, offs_d, row_ok, sob, soh, som, sod, Nq, seed_o,
                 HEAD_DIM, O_SR, DUMP)


KERNEL = _fa2_fwd
