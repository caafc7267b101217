"""The ``paper`` family's forward kernel (the paper's every-tensor-bf16 reference;
docs/recipes.md): every intermediate rounded to bf16 (values kept in fp32
registers between bf16 casts), ``tl.exp`` (a multiply by fl32(log2 e), then the
non-FTZ ``ex2.approx.f32``), one masked key-block loop (its speed is not a
target)."""

from __future__ import annotations

import triton
import triton.language as tl

from .common import _NO_SPEC, _finish_tile, _p_cast, _row_tile
# what the launcher reads from a family module besides KERNEL (both kernels switch the same casts)
from .common import SR_RAND_BITS, SR_STAGES  # noqa: F401
from ..attention import KERNEL_FIXES_OF

FIXES = KERNEL_FIXES_OF["paper"]


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


KERNEL = _paper_fwd
