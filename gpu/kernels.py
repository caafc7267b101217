"""Triton forward kernels of the ``fa2`` and ``paper`` recipes (docs/recipes.md).

Each kernel is the recipe's op sequence, written so that the compiled code
performs exactly the roundings the emulator models:

* ``tl.dot`` → wgmma chains (bf16, fp32 accumulator);
* ``tl.math.exp2`` → ``ex2.approx.ftz.f32`` (fa2); ``tl.exp`` → multiply by
  fl32(log2 e) then ``ex2.approx.f32`` (paper);
* ``x * c - m`` → ``fma.rn.f32(x, c, −m)``; ``l * α + l_blk`` → fma; ``acc * α``
  → ``mul.rn.f32`` (NVPTX contraction, checked in the PTX by the tests);
* ``tl.sum`` over the wgmma accumulator layout → the lane-tree order;
* ``tl.math.div_rn`` → ``div.rn.f32`` (IEEE);
* ``.to(tl.bfloat16)`` → ``cvt.rn.bf16.f32``; stochastic rounding adds the top
  16 bits of ``tl.randint(seed, offset)`` below the kept bits and truncates.

``DUMP`` (constexpr) also stores m and l after every key block and the
accumulator before the division; the production launch (``DUMP=False``) must
give the same bits (crosscheck checks both).

fa2 compiles its key-block loop twice (``_fa2_blocks``): without masks for the
blocks every row of the tile sees whole, with masks for the tail and diagonal
blocks; same blocks, same order, same operations, and in unmasked blocks the
paper fix's count is decided from the second largest score (exact: see
docs/hardware.md, "The attention kernels").  The paper kernel keeps one masked
loop: its speed is not a target.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sr_bf16(x, seed, offs):
    """fp32 → bf16 with stochastic rounding: add the top 16 bits of
    tl.randint(seed, offs) below bit 16 of the magnitude, truncate.  NaN stays
    NaN (as cvt.rn.bf16.f32 writes it)."""
    r = tl.randint(seed, offs)
    bits = x.to(tl.uint32, bitcast=True)
    y = ((bits + (r >> 16)) >> 16).to(tl.uint16)
    return tl.where(x != x, x.to(tl.bfloat16), y.to(tl.bfloat16, bitcast=True))


# Lengths, flags and seeds vary per call: specialising on them (== 1, % 16)
# would recompile for every length; the arithmetic does not depend on it.
_NO_SPEC = ["H", "Nq", "Nk", "NBLK", "CAUSAL", "seed_p", "seed_o"]


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
    # qk + NaN: the all-NaN second slot in qk's layout (folded to a constant),
    # so that this step also compiles as Gluon (gpu/probes/ws_fa2.py)
    q1, q2 = tl.reduce((qk, qk + float("nan")), 1, _top2_combine)
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
def _fa2_row_max(qk, m_i, valid, qk_scale, eps2, beta, FIX: tl.constexpr, MASKED: tl.constexpr):
    """The max half of one key block's online-softmax step on the fp32 scores qk
    (masked to −inf where not ``valid`` if MASKED): the block max (with the paper
    fix if FIX), scaled to the log2 domain, and m_new = max(m_old, block max).
    Returns (qk, m_new), qk masked."""
    if MASKED:
        qk = tl.where(valid, qk, float("-inf"))
    if FIX:
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
    return qk, tl.maximum(m_i, bm)


@triton.jit
def _fa2_p(qk, m_new, qk_scale):
    """P = exp2(qk·c − m_new): one fma.rn.f32 and one ex2.approx.ftz.f32 per score."""
    return tl.math.exp2(qk * qk_scale - m_new[:, None])


@triton.jit
def _fa2_alpha(m_i, m_new):
    """α = exp2(m_old − m_new) (``ex2.approx.ftz.f32``), the accumulator's rescale."""
    return tl.math.exp2(m_i - m_new)


@triton.jit
def _fa2_l_update(l_i, alpha, l_blk):
    """l·α + l_blk (an fma): the row sum after a block whose P sums to l_blk."""
    return l_i * alpha + l_blk


@triton.jit
def _fa2_l(p, m_i, m_new, l_i):
    """α = exp2(m_old − m_new) and l·α + rowsum(P) (an fma).  Returns (l_new, α)."""
    l_blk = tl.sum(p, 1)
    alpha = _fa2_alpha(m_i, m_new)
    return _fa2_l_update(l_i, alpha, l_blk), alpha


@triton.jit
def _fa2_exp(qk, m_i, m_new, l_i, qk_scale):
    """The exp half of the step: P (_fa2_p), then α and l (_fa2_l).
    Returns (P, l_new, α)."""
    p = _fa2_p(qk, m_new, qk_scale)
    l_i, alpha = _fa2_l(p, m_i, m_new, l_i)
    return p, l_i, alpha


@triton.jit
def _fa2_softmax(qk, m_i, l_i, valid, qk_scale, eps2, beta, FIX: tl.constexpr, MASKED: tl.constexpr):
    """One key block's online-softmax step: _fa2_row_max, then _fa2_exp.
    Returns (P, m_new, l_new, α); the caller rescales the accumulator by α."""
    qk, m_new = _fa2_row_max(qk, m_i, valid, qk_scale, eps2, beta, FIX, MASKED)
    p, l_i, alpha = _fa2_exp(qk, m_i, m_new, l_i, qk_scale)
    return p, m_new, l_i, alpha


@triton.jit
def _fa2_step(qk, m_i, l_i, acc, valid, qk_scale, eps2, beta, FIX: tl.constexpr, MASKED: tl.constexpr):
    """_fa2_softmax, then the accumulator's rescale acc·α (``mul.rn.f32``).
    Returns (P, m_new, l_new, acc·α)."""
    p, m_new, l_new, alpha = _fa2_softmax(qk, m_i, l_i, valid, qk_scale, eps2, beta, FIX, MASKED)
    return p, m_new, l_new, acc * alpha[:, None]


@triton.jit
def _p_cast(p, seed_p, bh, Nq, Nk, offs_m, offs_n, P_SR: tl.constexpr):
    """P̄ = bf16(P), round to nearest even or stochastic (Philox stream at the
    score's flat index)."""
    if P_SR:
        pb = _sr_bf16(p, seed_p, (bh * Nq + offs_m[:, None]) * Nk + offs_n[None, :])
    else:
        pb = p.to(tl.bfloat16)
    return pb


@triton.jit
def _fa2_blocks(acc, m_i, l_i, q, Kb, Vb, skn, skd, svn, svd, MB, LB, lo, hi, offs_m, offs_d, row_ok, bh,
                Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, BLOCK_N: tl.constexpr, CAUSAL,
                FIX: tl.constexpr, P_SR: tl.constexpr, DUMP: tl.constexpr, MASKED: tl.constexpr,
                STEP: tl.constexpr = _fa2_step):
    """Key blocks lo..hi-1 of one row tile, each through STEP (a function with
    _fa2_step's arguments, results and bits).  MASKED=False is only called for blocks
    that every row of the tile sees whole (inside Nk, at or below the causal
    diagonal): there the mask is all true, so leaving it out changes no bit."""
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
        p, m_i, l_i, acc = STEP(qk, m_i, l_i, acc, valid, qk_scale, eps2, beta, FIX, MASKED)
        pb = _p_cast(p, seed_p, bh, Nq, Nk, offs_m, offs_n, P_SR)
        acc = tl.dot(pb, v, acc)
        if DUMP:
            tl.store(MB + (bh * Nq + offs_m) * NBLK + jb, m_i, mask=row_ok)
            tl.store(LB + (bh * Nq + offs_m) * NBLK + jb, l_i, mask=row_ok)
    return acc, m_i, l_i


@triton.jit
def _row_tile(Q, sqb, sqh, sqm, sqd, H, Nq, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's query rows: (pid_m, b, h, bh, offs_m, offs_d, row_ok, q)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Nq
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None], other=0.0)
    return pid_m, b, h, bh, offs_m, offs_d, row_ok, q


@triton.jit
def _finish_tile(acc, m_i, l_i, O, M, L, ACC, b, h, bh, offs_m, offs_d, row_ok, sob, soh, som, sod, Nq, seed_o,
                 HEAD_DIM: tl.constexpr, O_SR: tl.constexpr, DUMP: tl.constexpr):
    """O = bf16(acc / l) (IEEE division; cast rne or stochastic), m and l stored."""
    if DUMP:
        tl.store(ACC + (bh * Nq + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
    o = tl.math.div_rn(acc, l_i[:, None])
    if O_SR:
        ob = _sr_bf16(o, seed_o, (bh * Nq + offs_m[:, None]) * HEAD_DIM + offs_d[None, :])
    else:
        ob = o.to(tl.bfloat16)
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, ob, mask=row_ok[:, None])
    tl.store(M + bh * Nq + offs_m, m_i, mask=row_ok)
    tl.store(L + bh * Nq + offs_m, l_i, mask=row_ok)


@triton.jit(do_not_specialize=_NO_SPEC)
def _fa2_fwd(Q, K, V, O, M, L, MB, LB, ACC,
             sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
             H, Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, seed_o,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             CAUSAL, FIX: tl.constexpr, P_SR: tl.constexpr, O_SR: tl.constexpr,
             DUMP: tl.constexpr, BLOCKS: tl.constexpr = _fa2_blocks, STEP: tl.constexpr = _fa2_step):
    """``BLOCKS`` runs the key-block loop (gpu/probes/pipelined_fa2.py passes
    another) and ``STEP`` each block's softmax step and rescale
    (gpu/probes/speculative_fa2.py passes another); the same arguments, the same bits."""
    tl.static_assert(BLOCK_N % 16 == 0)
    tl.static_assert(HEAD_DIM % 16 == 0)
    pid_m, b, h, bh, offs_m, offs_d, row_ok, q = _row_tile(Q, sqb, sqh, sqm, sqd, H, Nq, HEAD_DIM, BLOCK_M)
    Kb = K + b * skb + h * skh
    Vb = V + b * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
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
    acc, m_i, l_i = BLOCKS(acc, m_i, l_i, q, Kb, Vb, skn, skd, svn, svd, MB, LB, 0, n_full, offs_m, offs_d,
                           row_ok, bh, Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, BLOCK_N, CAUSAL, FIX,
                           P_SR, DUMP, False, STEP)
    acc, m_i, l_i = BLOCKS(acc, m_i, l_i, q, Kb, Vb, skn, skd, svn, svd, MB, LB, n_full, n_all, offs_m, offs_d,
                           row_ok, bh, Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, BLOCK_N, CAUSAL, FIX,
                           P_SR, DUMP, True, STEP)
    _finish_tile(acc, m_i, l_i, O, M, L, ACC, b, h, bh, offs_m, offs_d, row_ok, sob, soh, som, sod, Nq, seed_o,
                 HEAD_DIM, O_SR, DUMP)


@triton.jit(do_not_specialize=_NO_SPEC)
def _paper_fwd(Q, K, V, O, M, L, MB, LB, ACC,
               sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
               H, Nq, Nk, NBLK, scale, eps, beta, seed_p, seed_o,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL, FIX: tl.constexpr, P_SR: tl.constexpr, O_SR: tl.constexpr,
               DUMP: tl.constexpr):
    """Every tensor bf16 (values kept in fp32 registers between bf16 casts)."""
    tl.static_assert(BLOCK_N % 16 == 0)
    pid_m, b, h, bh, offs_m, offs_d, row_ok, q = _row_tile(Q, sqb, sqh, sqm, sqd, H, Nq, HEAD_DIM, BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    o_i = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # CAUSAL is a runtime flag (0/1): fewer compiled variants, same arithmetic
    hi = Nk
    if CAUSAL != 0:
        hi = tl.minimum(Nk, (pid_m + 1) * BLOCK_M)
    for jb in range(0, (hi + BLOCK_N - 1) // BLOCK_N):
        offs_n = jb * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = offs_n < Nk
        kT = tl.load(K + b * skb + h * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=key_ok[None, :], other=0.0)
        s = tl.dot(q, kT).to(tl.bfloat16).to(tl.float32)
        s = (s * scale).to(tl.bfloat16).to(tl.float32)
        valid = key_ok[None, :] & ((CAUSAL == 0) | (offs_n[None, :] <= offs_m[:, None]))
        s = tl.where(valid, s, float("-inf"))
        bm = tl.max(s, 1)
        if FIX:
            thr = (bm - eps).to(tl.bfloat16).to(tl.float32)
            n = tl.sum((valid & (s >= thr[:, None])).to(tl.int32), 1)
            bm = tl.where((n > 1) & (bm > 0), (bm * beta).to(tl.bfloat16).to(tl.float32), bm)
            bm = tl.where((n > 1) & (bm < 0), 0.0, bm)
        m_new = tl.maximum(m_i, bm)
        d = (s - m_new[:, None]).to(tl.bfloat16).to(tl.float32)
        pe = tl.exp(d)
        p = _p_cast(pe, seed_p, bh, Nq, Nk, offs_m, offs_n, P_SR)
        lb = tl.sum(p.to(tl.float32), 1).to(tl.bfloat16).to(tl.float32)
        a = (m_i - m_new).to(tl.bfloat16).to(tl.float32)
        alpha = tl.exp(a).to(tl.bfloat16).to(tl.float32)
        l_i = (alpha * l_i).to(tl.bfloat16).to(tl.float32)
        l_i = (l_i + lb).to(tl.bfloat16).to(tl.float32)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=key_ok[:, None], other=0.0)
        pv = tl.dot(p, v).to(tl.bfloat16).to(tl.float32)
        o_i = (alpha[:, None] * o_i).to(tl.bfloat16).to(tl.float32)
        o_i = (o_i + pv).to(tl.bfloat16).to(tl.float32)
        m_i = m_new
        if DUMP:
            tl.store(MB + (bh * Nq + offs_m) * NBLK + jb, m_i, mask=row_ok)
            tl.store(LB + (bh * Nq + offs_m) * NBLK + jb, l_i, mask=row_ok)
    _finish_tile(o_i, m_i, l_i, O, M, L, ACC, b, h, bh, offs_m, offs_d, row_ok, sob, soh, som, sod, Nq, seed_o,
                 HEAD_DIM, O_SR, DUMP)
