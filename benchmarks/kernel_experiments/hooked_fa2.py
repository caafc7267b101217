"""The fa2 forward kernel with the experiments' hooks: the production kernel
(flashbits.gpu.kernels.fa2, commit a516bc7) as it was when the experiments ran,
its softmax step split six levels deep so that each experiment can replace one
part, and two constexpr function parameters: ``BLOCKS`` (the key-block loop:
pipelined_fa2.py passes another) and ``STEP`` (a block's softmax step and
rescale: speculative_fa2.py passes another).  With the defaults it performs the
production kernel's operations in the production kernel's order (the same bits).

The production kernel lost these hooks (issue 13); this copy is what the
experiments mutate.  ``_top2_block_max`` keeps the Gluon-compatible all-NaN slot
(``qk + NaN``) that ws_fa2.py needs.  Helpers that did not change are imported
from flashbits.gpu.kernels.
"""

from __future__ import annotations

import triton
import triton.language as tl

from flashbits.gpu.kernels.common import _NO_SPEC, _finish_tile, _p_cast, _row_tile
from flashbits.gpu.kernels.fa2 import _paper_fix_shift, _top2_combine

__all__ = ["_top2_block_max", "_paper_fix_shift", "_top2_combine", "_fa2_row_max", "_fa2_p", "_fa2_alpha",
           "_fa2_l_update", "_fa2_l", "_fa2_exp", "_fa2_softmax", "_fa2_step", "_fa2_blocks", "_fa2_fwd",
           "use_kernel"]


@triton.jit
def _top2_block_max(qk, qk_scale, eps2):
    """(bm, two) of unmasked fp32 scores: bm = fl(max·c), the block max in the log2
    domain, and two = the paper fix's n > 1, decided exactly from the second
    largest score s2 (with multiplicity): n > 1 <=> fl(s2·c) >= thr, since fl(x·c)
    is monotone in x and the largest always passes (thr = fl(max·c − ε') <=
    fl(max·c)).  Two ops per score instead of a multiply, compare and count."""
    # qk + NaN: the all-NaN second slot in qk's layout (folded to a constant),
    # so that this step also compiles as Gluon (ws_fa2.py)
    q1, q2 = tl.reduce((qk, qk + float("nan")), 1, _top2_combine)
    bm = q1 * qk_scale
    thr = bm - eps2
    return bm, (q2 * qk_scale) >= thr


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


@triton.jit(do_not_specialize=_NO_SPEC)
def _fa2_fwd(Q, K, V, O, M, L, MB, LB, ACC,
             sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
             H, Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, seed_o,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             CAUSAL, FIX: tl.constexpr, P_SR: tl.constexpr, O_SR: tl.constexpr,
             DUMP: tl.constexpr, BLOCKS: tl.constexpr = _fa2_blocks, STEP: tl.constexpr = _fa2_step):
    """``BLOCKS`` runs the key-block loop (pipelined_fa2.py passes another) and
    ``STEP`` each block's softmax step and rescale (speculative_fa2.py passes
    another); the same arguments, the same bits."""
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


class use_kernel:
    """Within the block, flashbits.gpu.flash_attention's fa2 launches run ``_fa2_fwd``
    of this file with the given constexpr hooks (e.g. ``STEP=...``, ``BLOCKS=...``):
    the family module's KERNEL, which the launcher reads per call, is swapped."""

    class _Launcher:
        def __init__(self, kern, hooks):
            self.kern, self.hooks = kern, hooks

        def __getitem__(self, grid):
            launch = self.kern[grid]
            return lambda *args, **kw: launch(*args, **self.hooks, **kw)

    def __init__(self, **hooks):
        self.hooks = hooks

    def __enter__(self):
        from flashbits.gpu.kernels import fa2

        self._saved = fa2.KERNEL
        fa2.KERNEL = self._Launcher(_fa2_fwd, self.hooks)

    def __exit__(self, *exc):
        from flashbits.gpu.kernels import fa2

        fa2.KERNEL = self._saved
