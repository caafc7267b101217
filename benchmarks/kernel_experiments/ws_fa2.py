"""Experiment: the fa2 recipe as a warp-specialised Gluon kernel (consumer
warpgroups of 64 rows, one TMA loader warp), to measure whether the paper fix
becomes cheap once the softmax of one warpgroup overlaps the tensor-core work of
another.  SCHEDULES lists the ways the consumers share the tensor cores; the GPU
run checks and times every one beside the production kernel:

* free: two consumers, no ordering between them;
* pingpong: FlashAttention-3's alternation (a turn barrier per warpgroup): a
  warpgroup issues P̄_{j-1}·V_{j-1} and Q·K_jᵀ on its turn, then hands it over;
* pingpong-early-max: and block j's max (with the fix's decision) runs while
  P̄_{j-1}·V_{j-1} is still in flight;
* pingpong-speculative: and the exps start from the plain max, redone for the
  warpgroup where the fix moved some row's m (ptxas still puts the fix's fold
  before the exps: slower);
* pingpong-pairs: two key blocks per turn, so the fold of block b can overlap
  the exps of block a;
* pingpong3-early-max: three consumers (192-row tiles) rotating the turn, so
  each softmax has two other warpgroups' wgmmas to hide under;
* pingpong3-count: the same, with the fix's decision counted against the
  threshold (one ALU op per score, ``set.ge``, plus two on the FMA pipe) instead
  of the top-2 fold (two ALU ops per score): the same decision, the same bits.

    PYTHONPATH=. python -m benchmarks.kernel_experiments.ws_fa2 [--json OUT.json]   # on the GPU
    PYTHONPATH=. python -m benchmarks.kernel_experiments.ws_fa2 --ptx                # compile for sm_90 here
    OUT=dir bash benchmarks/kernel_experiments/profile_ws_fa2.sh                     # Nsight Compute, on the GPU

Scope: non-causal, Nq = Nk a multiple of 128, head dim 128, round to nearest,
no dumps — the benchmark's case.  Every row runs the same operations in the
same order as the production fa2 kernel's unmasked loop (the same wgmma shapes per
warpgroup; the softmax step is the production kernel's own (hooked_fa2), compiled as Gluon, so the same
reductions in the same layout and the same contractions), so the outputs must be
bit-identical to the production kernel; the GPU run checks that on every element
of every schedule before it times anything.
"""

from __future__ import annotations

import argparse
import json
import sys

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from benchmarks.kernel_experiments.hooked_fa2 import _fa2_exp, _fa2_l, _fa2_p, _fa2_row_max, _fa2_softmax
from benchmarks.kernel_experiments.same_bits import bits_equal

BLOCK_M = 128   # N must be a multiple of this (two consumer warpgroups of 64 rows)
BLOCK_N = 64    # keys per block (the recipe's block_n)
HEAD_DIM = 128
NBUF = 3        # K/V ring depth; the pairs schedule holds four blocks at a turn
NBUF_PAIRS = 6  # and prefetches the next two
# how the consumer warpgroups share the tensor cores (the module docstring)
SCHEDULES = ("free", "pingpong", "pingpong-early-max", "pingpong-speculative", "pingpong-pairs",
             "pingpong3-early-max", "pingpong3-count")
# the kernel's SCHEDULE is the index in SCHEDULES
_FREE, _PINGPONG, _SPECULATIVE, _PAIRS, _THREE_COUNT = (
    gl.constexpr(SCHEDULES.index(n))
    for n in ("free", "pingpong", "pingpong-speculative", "pingpong-pairs", "pingpong3-count"))

_BN = gl.constexpr(BLOCK_N)      # for the jit functions
_D = gl.constexpr(HEAD_DIM)
# one consumer warpgroup's register layouts: scores (64 × BLOCK_N), the output
# accumulator (64 × HEAD_DIM), P̄ as the A operand of P̄·V, and a row of acc
_S_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                   instr_shape=[16, BLOCK_N, 16]))
_O_LAYOUT = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                   instr_shape=[16, HEAD_DIM, 16]))
_P_LAYOUT = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=_O_LAYOUT, k_width=2))
_O_ROW = gl.constexpr(gl.SliceLayout(1, _O_LAYOUT))


# the production kernel's softmax step, compiled as Gluon (it uses only
# layout-free tl operations); MASKED=False, so its ``valid`` is never read
_softmax = gluon.jit(_fa2_softmax.fn)
_row_max = gluon.jit(_fa2_row_max.fn)
_exp = gluon.jit(_fa2_exp.fn)
_p = gluon.jit(_fa2_p.fn)
_l = gluon.jit(_fa2_l.fn)


@gluon.jit
def _row_max_count(qk, m_i, qk_scale, eps2, beta):
    """hooked_fa2._fa2_row_max (unmasked, with the fix) deciding n > 1 by counting
    the scores with fl(s·c) >= thr, as the masked loop does: ``set.ge.f32.f32``
    writes 1.0 or 0.0 (0.0 for NaN, as the compare is ordered) and the row sum
    of those is exact.  The same decision as the top-2 fold, with one ALU
    operation per score instead of two (the multiply and the add run on the FMA
    pipe)."""
    bm = gl.max(qk, 1) * qk_scale
    thr = bm - eps2
    z = qk * qk_scale
    thr2 = gl.expand_dims(thr, 1) + gl.zeros_like(z)
    hit = gl.inline_asm_elementwise("set.ge.f32.f32 $0, $1, $2;", "=f,f,f", [z, thr2],
                                    dtype=gl.float32, is_pure=True, pack=1)
    two = gl.sum(hit, 1) > 1.0
    bm = gl.where(two & (bm > 0), bm * beta, bm)
    bm = gl.where(two & (bm < 0), 0.0, bm)
    return qk, gl.maximum(m_i, bm)


@gluon.jit
def _consumer_start(q_smem, c: gl.constexpr):
    """Consumer warpgroup c's Q tile and starting state: (q, m, l, acc, zero
    scores), m = −inf, l = 0, acc = 0."""
    BM: gl.constexpr = 64
    m_i = gl.full([BM], float("-inf"), gl.float32, gl.SliceLayout(1, _S_LAYOUT))
    l_i = gl.full([BM], 0.0, gl.float32, gl.SliceLayout(1, _S_LAYOUT))
    acc = gl.zeros([BM, _D], gl.float32, _O_LAYOUT)
    zero_s = gl.zeros([BM, _BN], gl.float32, _S_LAYOUT)
    return q_smem.index(c), m_i, l_i, acc, zero_s


@gluon.jit
def _rescale(acc, alpha):
    """acc·α, α one value per row (the scores' row layout moved to acc's)."""
    return acc * gl.expand_dims(gl.convert_layout(alpha, _O_ROW), 1)


@gluon.jit
def _p_operand(p):
    """P̄ = bf16(P) (round to nearest) as the A operand of the P̄·V wgmma."""
    return gl.convert_layout(p.to(gl.bfloat16), _P_LAYOUT)


@gluon.jit
def _store_rows(acc, m_i, l_i, O, M, L, row0):
    """O = bf16(acc / l) (IEEE division, rne), m and l of 64 rows from row0."""
    BM: gl.constexpr = acc.type.shape[0]
    D: gl.constexpr = acc.type.shape[1]
    o = gl.div_rn(acc, gl.expand_dims(gl.convert_layout(l_i, _O_ROW), 1))
    rows_o = row0 + gl.arange(0, BM, _O_ROW)
    cols = gl.arange(0, D, gl.SliceLayout(0, _O_LAYOUT))
    gl.store(O + gl.expand_dims(rows_o.to(gl.int64) * D, 1) + gl.expand_dims(cols, 0), o.to(gl.bfloat16))
    rows_s = row0 + gl.arange(0, BM, gl.SliceLayout(1, _S_LAYOUT))
    gl.store(M + rows_s, m_i)
    gl.store(L + rows_s, l_i)


@gluon.jit
def _consume(args, c: gl.constexpr, FIX: gl.constexpr):
    """Consumer warpgroup c: rows c·64 .. c·64 + 63 of the program's 128-row tile,
    every key block in order (wait for it, S = Q·Kᵀ, softmax step, acc·α,
    acc += P̄·V, release it), then O, m and l stored."""
    (q_smem, k_bufs, v_bufs, ready, empty, q_bar, _q_desc, _k_desc, _v_desc, O, M, L,
     qrow0, _krow0, n_blocks, qk_scale, eps2, beta, _turn) = args
    BM: gl.constexpr = 64
    NB: gl.constexpr = k_bufs.type.shape[0]
    q, m_i, l_i, acc, zero_s = _consumer_start(q_smem, c)
    mbarrier.wait(q_bar, 0)
    for j in range(n_blocks):
        s = j % NB
        mbarrier.wait(ready.index(s), (j // NB) & 1)
        qk = warpgroup_mma(q, k_bufs.index(s).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        qk = warpgroup_mma_wait(0, deps=(qk,))
        p, m_i, l_i, alpha = _softmax(qk, m_i, l_i, qk, qk_scale, eps2, beta, FIX, False)
        acc = _rescale(acc, alpha)
        pb = _p_operand(p)
        acc = warpgroup_mma(pb, v_bufs.index(s), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index(s), count=1)
    _store_rows(acc, m_i, l_i, O, M, L, qrow0 + c * BM)


@gluon.jit
def _consume_pingpong(args, c: gl.constexpr, FIX: gl.constexpr, EARLY_MAX: gl.constexpr,
                      SPECULATE: gl.constexpr, COUNT: gl.constexpr = False):
    """Consumer warpgroup c as _consume, reordered FlashAttention-3 style so that
    one warpgroup's softmax runs while the other's wgmmas do: at step j it waits
    its turn, issues P̄_{j-1}·V_{j-1} and Q·K_jᵀ together, hands the turn to the
    other warpgroup, waits for both, then runs block j's softmax step and acc·α.
    Per row the operations and their order are _consume's (acc·α_j, then
    acc += P̄_j·V_j, then acc·α_{j+1}, ...): only the issue times move.
    With three consumer warpgroups the turn passes 0 → 1 → 2 → 0, so each
    softmax has two other warpgroups' wgmmas to hide under."""
    (q_smem, k_bufs, v_bufs, ready, empty, q_bar, _q_desc, _k_desc, _v_desc, O, M, L,
     qrow0, krow0, n_blocks, qk_scale, eps2, beta, turn) = args
    BM: gl.constexpr = 64
    NB: gl.constexpr = k_bufs.type.shape[0]
    q, m_i, l_i, acc, zero_s = _consumer_start(q_smem, c)
    NT: gl.constexpr = turn.type.shape[0]
    mine = turn.index(c)
    theirs = turn.index((c + 1) % NT)
    # warpgroup 0 goes first: at step j it waits for the j-th hand-over, the
    # others for the (j+1)-th; at step 0 warpgroup 0 waits with the parity an
    # mbarrier reports complete before any arrival
    FIRST: gl.constexpr = 1 if c == 0 else 0
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(mine, FIRST)
    mbarrier.wait(ready.index(0), 0)
    qk = warpgroup_mma(q, k_bufs.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    mbarrier.arrive(theirs, count=1)
    qk = warpgroup_mma_wait(0, deps=(qk,))
    p, m_i, l_i, alpha = _softmax(qk, m_i, l_i, qk, qk_scale, eps2, beta, FIX, False)
    acc = _rescale(acc, alpha)
    pb = _p_operand(p)
    for j in range(1, n_blocks):
        s = j % NB
        sp = (j - 1) % NB
        mbarrier.wait(mine, (j & 1) ^ FIRST)
        mbarrier.wait(ready.index(s), (j // NB) & 1)
        if EARLY_MAX:
            # Q·K_jᵀ first: wgmma groups complete in order, so block j's max
            # (and the fix's decision) runs while P̄_{j-1}·V_{j-1} is in flight
            qk = warpgroup_mma(q, k_bufs.index(s).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            acc = warpgroup_mma(pb, v_bufs.index(sp), acc, is_async=True)
            mbarrier.arrive(theirs, count=1)
            qk = warpgroup_mma_wait(1, deps=(qk,))
            if SPECULATE:
                # the exps start from m0 = max(m_old, plain block max) before the
                # fix's second-largest fold, and are redone for the whole
                # warpgroup only where the fix moved some row's m_new off m0.
                # The same fma and ex2 with the same m as _fa2_p, so the same
                # bits (m0 and m_new equal but for the sign of a zero give the
                # same P)
                m0 = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
                p = _p(qk, m0, qk_scale)
            if COUNT and FIX:
                qk, m_new = _row_max_count(qk, m_i, qk_scale, eps2, beta)
            else:
                qk, m_new = _row_max(qk, m_i, qk, qk_scale, eps2, beta, FIX, False)
            acc = warpgroup_mma_wait(0, deps=(acc,))
        else:
            acc = warpgroup_mma(pb, v_bufs.index(sp), acc, is_async=True)
            qk = warpgroup_mma(q, k_bufs.index(s).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            mbarrier.arrive(theirs, count=1)
            acc, qk = warpgroup_mma_wait(0, deps=(acc, qk))
            qk, m_new = _row_max(qk, m_i, qk, qk_scale, eps2, beta, FIX, False)
        mbarrier.arrive(empty.index(sp), count=1)
        if SPECULATE:
            if gl.max((m_new != m0).to(gl.int32), 0) != 0:
                p = _p(qk, m_new, qk_scale)
            l_i, alpha = _l(p, m_i, m_new, l_i)
        else:
            p, l_i, alpha = _exp(qk, m_i, m_new, l_i, qk_scale)
        m_i = m_new
        acc = _rescale(acc, alpha)
        pb = _p_operand(p)
    sp = (n_blocks - 1) % NB
    mbarrier.wait(mine, (n_blocks & 1) ^ FIRST)
    acc = warpgroup_mma(pb, v_bufs.index(sp), acc, is_async=True)
    mbarrier.arrive(theirs, count=1)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    mbarrier.arrive(empty.index(sp), count=1)
    # a tile of three warpgroups may run past the head's last row (N is a
    # multiple of 128, not of 192): those rows are computed, not stored
    if qrow0 - krow0 + c * BM < n_blocks * _BN:
        _store_rows(acc, m_i, l_i, O, M, L, qrow0 + c * BM)


@gluon.jit
def _consume_pairs(args, c: gl.constexpr, FIX: gl.constexpr):
    """Consumer warpgroup c in the pingpong order, two key blocks (a, b) per
    turn: it issues P̄_a'·V_a' of the previous pair, Q·K_aᵀ and Q·K_bᵀ, waits
    for the first (in-order completion), rescales acc by α_b', issues
    P̄_b'·V_b', hands the turn over, then runs the softmax steps of a and b
    back to back (the fold of b independent of a's exps).  Per row the
    operations and their order are _consume's; only the issue times move."""
    (q_smem, k_bufs, v_bufs, ready, empty, q_bar, _q_desc, _k_desc, _v_desc, O, M, L,
     qrow0, _krow0, n_blocks, qk_scale, eps2, beta, turn) = args
    BM: gl.constexpr = 64
    NB: gl.constexpr = k_bufs.type.shape[0]
    q, m_i, l_i, acc, zero_s = _consumer_start(q_smem, c)
    mine = turn.index(c)
    theirs = turn.index(1 - c)
    FIRST: gl.constexpr = 1 if c == 0 else 0   # as in _consume_pingpong
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(mine, FIRST)
    mbarrier.wait(ready.index(0), 0)
    mbarrier.wait(ready.index(1), 0)
    qa = warpgroup_mma(q, k_bufs.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    qb = warpgroup_mma(q, k_bufs.index(1).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    mbarrier.arrive(theirs, count=1)
    qa, qb = warpgroup_mma_wait(0, deps=(qa, qb))
    pa, m_i, l_i, alpha_a = _softmax(qa, m_i, l_i, qa, qk_scale, eps2, beta, FIX, False)
    pb, m_i, l_i, alpha_b = _softmax(qb, m_i, l_i, qb, qk_scale, eps2, beta, FIX, False)
    acc = _rescale(acc, alpha_a)
    pa = _p_operand(pa)
    pb = _p_operand(pb)
    for t in range(1, n_blocks // 2):
        ja = 2 * t
        spa = (ja - 2) % NB
        spb = (ja - 1) % NB
        mbarrier.wait(mine, (t & 1) ^ FIRST)
        mbarrier.wait(ready.index(ja % NB), (ja // NB) & 1)
        mbarrier.wait(ready.index((ja + 1) % NB), ((ja + 1) // NB) & 1)
        acc = warpgroup_mma(pa, v_bufs.index(spa), acc, is_async=True)
        qa = warpgroup_mma(q, k_bufs.index(ja % NB).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        qb = warpgroup_mma(q, k_bufs.index((ja + 1) % NB).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        acc = warpgroup_mma_wait(2, deps=(acc,))
        acc = _rescale(acc, alpha_b)
        acc = warpgroup_mma(pb, v_bufs.index(spb), acc, is_async=True)
        mbarrier.arrive(theirs, count=1)
        acc, qa, qb = warpgroup_mma_wait(0, deps=(acc, qa, qb))
        mbarrier.arrive(empty.index(spa), count=1)
        mbarrier.arrive(empty.index(spb), count=1)
        pa, m_i, l_i, alpha_a = _softmax(qa, m_i, l_i, qa, qk_scale, eps2, beta, FIX, False)
        pb, m_i, l_i, alpha_b = _softmax(qb, m_i, l_i, qb, qk_scale, eps2, beta, FIX, False)
        acc = _rescale(acc, alpha_a)
        pa = _p_operand(pa)
        pb = _p_operand(pb)
    spa = (n_blocks - 2) % NB
    spb = (n_blocks - 1) % NB
    mbarrier.wait(mine, ((n_blocks // 2) & 1) ^ FIRST)
    acc = warpgroup_mma(pa, v_bufs.index(spa), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    acc = _rescale(acc, alpha_b)
    acc = warpgroup_mma(pb, v_bufs.index(spb), acc, is_async=True)
    mbarrier.arrive(theirs, count=1)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    mbarrier.arrive(empty.index(spa), count=1)
    mbarrier.arrive(empty.index(spb), count=1)
    _store_rows(acc, m_i, l_i, O, M, L, qrow0 + c * BM)


@gluon.jit
def _consume_as(args, c: gl.constexpr, FIX: gl.constexpr, SCHEDULE: gl.constexpr):
    """Consumer warpgroup c under the schedule SCHEDULE (an index in SCHEDULES)."""
    if SCHEDULE == _PAIRS:
        _consume_pairs(args, c, FIX)
    elif SCHEDULE == _FREE:
        _consume(args, c, FIX)
    else:
        _consume_pingpong(args, c, FIX, SCHEDULE != _PINGPONG, SCHEDULE == _SPECULATIVE and FIX,
                          SCHEDULE == _THREE_COUNT)


@gluon.jit
def _consume_lo(args, FIX: gl.constexpr, SCHEDULE: gl.constexpr):
    _consume_as(args, 0, FIX, SCHEDULE)


@gluon.jit
def _consume_hi(args, FIX: gl.constexpr, SCHEDULE: gl.constexpr):
    _consume_as(args, 1, FIX, SCHEDULE)


@gluon.jit
def _consume_third(args, FIX: gl.constexpr, SCHEDULE: gl.constexpr):
    _consume_as(args, 2, FIX, SCHEDULE)


@gluon.jit
def _load(args, FIX: gl.constexpr, SCHEDULE: gl.constexpr):
    """The loader warp: Q once, then K and V of every key block into the ring, each
    slot reused after every consumer released it."""
    (q_smem, k_bufs, v_bufs, ready, empty, q_bar, q_desc, k_desc, v_desc, _O, _M, _L,
     qrow0, krow0, n_blocks, _qk_scale, _eps2, _beta, _turn) = args
    BN: gl.constexpr = k_desc.block_type.shape[0]
    NB: gl.constexpr = k_bufs.type.shape[0]
    QB: gl.constexpr = q_desc.block_type.shape[0]
    NQ: gl.constexpr = q_smem.type.shape[0]
    mbarrier.expect(q_bar, NQ * q_desc.block_type.nbytes)
    for i in gl.static_range(NQ):   # one 64-row block per consumer warpgroup
        tma.async_copy_global_to_shared(q_desc, [qrow0 + i * QB, 0], q_bar, q_smem.index(i))
    for j in range(n_blocks):
        s = j % NB
        # the ring starts empty: an mbarrier starts with phase 1 complete
        mbarrier.wait(empty.index(s), ((j // NB) & 1) ^ 1)
        mbarrier.expect(ready.index(s), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [krow0 + j * BN, 0], ready.index(s), k_bufs.index(s))
        tma.async_copy_global_to_shared(v_desc, [krow0 + j * BN, 0], ready.index(s), v_bufs.index(s))


@gluon.jit
def _ws_fa2_fwd(q_desc, k_desc, v_desc, O, M, L, N, qk_scale, eps2, beta,
                FIX: gl.constexpr, NBUF_: gl.constexpr, SCHEDULE: gl.constexpr, NCONS: gl.constexpr,
                CONS_REGS: gl.constexpr):
    BM: gl.constexpr = q_desc.block_type.shape[0] * NCONS
    BN: gl.constexpr = k_desc.block_type.shape[0]
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    qrow0 = bh * N + pid_m * BM
    krow0 = bh * N
    n_blocks = N // BN
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [NCONS] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(k_desc.dtype, [NBUF_] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(v_desc.dtype, [NBUF_] + v_desc.block_type.shape, v_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NBUF_, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NBUF_, 1], mbarrier.MBarrierLayout())
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NBUF_):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=NCONS)   # every consumer warpgroup releases a block
    mbarrier.init(q_bar, count=1)
    turn = gl.allocate_shared_memory(gl.int64, [NCONS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NCONS):
        mbarrier.init(turn.index(i), count=1)   # pingpong: the previous warpgroup hands the turn over
    args = (q_smem, k_bufs, v_bufs, ready, empty, q_bar, q_desc, k_desc, v_desc, O, M, L,
            qrow0, krow0, n_blocks, qk_scale, eps2, beta, turn)
    if NCONS == 3:
        gl.warp_specialize([(_consume_lo, (args, FIX, SCHEDULE)), (_consume_hi, (args, FIX, SCHEDULE)),
                            (_consume_third, (args, FIX, SCHEDULE)), (_load, (args, FIX, SCHEDULE))],
                           [4, 4, 1], [CONS_REGS, CONS_REGS, 24])
    else:
        gl.warp_specialize([(_consume_lo, (args, FIX, SCHEDULE)), (_consume_hi, (args, FIX, SCHEDULE)),
                            (_load, (args, FIX, SCHEDULE))],
                           [4, 1], [CONS_REGS, 24])


def _ring_depth(schedule):
    return NBUF_PAIRS if schedule == "pingpong-pairs" else NBUF


def _launch_shape(schedule):
    """(consumer warpgroups, their registers per thread, the kernel's maxnreg).
    The loader warp is padded to a warpgroup, so three consumers launch 512
    threads: 128 registers each at launch (ptxas fits the consumer loop in
    them, no spills), 160 for the consumers after setmaxnreg."""
    return (3, 160, 128) if schedule.startswith("pingpong3") else (2, 240, 168)


def _descriptors(q, k, v):
    """TMA descriptors of Q (64-row blocks: one per consumer warpgroup), K and V."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    B, H, N, D = q.shape
    out = []
    for t, rows in ((q, 64), (k, BLOCK_N), (v, BLOCK_N)):
        t2 = t.reshape(B * H * N, D)
        layout = gl.NVMMASharedLayout.get_default_for([rows, D], gl.bfloat16)
        out.append(TensorDescriptor(t2, [B * H * N, D], [D, 1], [rows, D], layout))
    return out


def ws_flash_attention(q, k, v, fix=None, schedule="free"):
    """(out, m, l) of the fa2 recipe (default tiles, rne, non-causal) for contiguous
    (B, H, N, 128) bf16 CUDA tensors with N a multiple of 128."""
    import math

    import numpy as np
    import torch

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; the schedules are {', '.join(SCHEDULES)}")
    B, H, N, D = q.shape
    if D != HEAD_DIM or N % BLOCK_M or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"ws_fa2 covers (B, H, N, {HEAD_DIM}) with N a multiple of {BLOCK_M}; got {tuple(q.shape)}")
    from flashbits.emulator.attention.recipes import get_fix

    fx = get_fix(fix, None, None)
    qk_scale = float(np.float32((1.0 / math.sqrt(D)) * 1.4426950408889634))
    eps2 = float(np.float32(fx.eps * 1.4426950408889634)) if fx else 0.0
    beta = float(np.float32(fx.beta)) if fx else 1.0
    out = torch.empty_like(q)
    m = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    l = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    ncons, regs, maxnreg = _launch_shape(schedule)
    qd, kd, vd = _descriptors(q.contiguous(), k.contiguous(), v.contiguous())
    _ws_fa2_fwd[(triton.cdiv(N, 64 * ncons), B * H)](
        qd, kd, vd, out, m, l, N, qk_scale, eps2, beta, FIX=fx is not None, NBUF_=_ring_depth(schedule),
        SCHEDULE=SCHEDULES.index(schedule), NCONS=ncons, CONS_REGS=regs, num_warps=4, maxnreg=maxnreg)
    return out, m, l


def compile_for_sm90(fix, schedule="free"):
    """The kernel compiled here for sm_90 (no GPU), specialised as the launch is."""
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    ncons, regs, maxnreg = _launch_shape(schedule)
    q = torch.zeros(1, 1, 192, HEAD_DIM, dtype=torch.bfloat16)
    sig = {name: native_specialize_impl(BaseBackend, d, False, True, True)[0]
           for name, d in zip(("q_desc", "k_desc", "v_desc"), _descriptors(q, q, q))}
    sig.update(O="*bf16", M="*fp32", L="*fp32", N="i32", qk_scale="fp32", eps2="fp32", beta="fp32",
               FIX="constexpr", NBUF_="constexpr", SCHEDULE="constexpr", NCONS="constexpr", CONS_REGS="constexpr")
    attrs = {(i,): [["tt.divisibility", 16]] for i in (3, 4, 5, 6)}  # O, M, L and N (a multiple of 128)
    src = GluonASTSource(_ws_fa2_fwd, sig, constexprs={"FIX": fix, "NBUF_": _ring_depth(schedule),
                                                        "SCHEDULE": SCHEDULES.index(schedule), "NCONS": ncons,
                                                        "CONS_REGS": regs}, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "maxnreg": maxnreg})


def check_bits():
    """out, m, l equal to the production kernel's on every element."""
    import torch

    from flashbits.gpu import flash_attention

    g = torch.Generator(device="cuda").manual_seed(2)
    res = {"launches": 0, "elements": 0, "mismatching_launches": 0, "mismatches": []}
    for B, H, N in ((2, 3, 1024), (8, 16, 4096), (1, 1, 128)):
        for kind in ("random", "ties"):
            q, k, v = (torch.randn(B, H, N, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16)
                       for _ in range(3))
            if kind == "ties":  # coarse, repeated keys: tied maxima in most rows
                k = (k * 2).round().to(torch.bfloat16)
                k[:, :, 1::2] = k[:, :, 0::2]
                q = (q * 2).round().to(torch.bfloat16)
            for fix in (None, "paper"):
                ref = flash_attention(q, k, v, fix=fix)
                for schedule in SCHEDULES:
                    out, m, l = ws_flash_attention(q, k, v, fix=fix, schedule=schedule)
                    bad = [nm for nm, a, b in (("out", ref.out, out), ("m", ref.m, m), ("l", ref.l, l))
                           if not bits_equal(a, b)]
                    res["launches"] += 1
                    res["elements"] += out.numel() + m.numel() + l.numel()
                    if bad:
                        res["mismatching_launches"] += 1
                        res["mismatches"].append([B, H, N, kind, fix, schedule, bad])
                        print("MISMATCH", B, H, N, kind, fix, schedule, bad, flush=True)
    print(f"bits: {res['launches']} launches, {res['elements']} elements, "
          f"{res['mismatching_launches']} launches with a mismatching tensor", flush=True)
    return res


def bench(reps=3):
    import torch

    from flashbits.gpu import flash_attention
    from flashbits.gpu.bench import time_forward

    B, H, N, D = 8, 16, 4096, HEAD_DIM
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    rows = []
    for rep in range(reps):
        for fix in (None, "paper"):
            kernels = [("production", lambda fix=fix: flash_attention(q, k, v, fix=fix))]
            kernels += [(f"ws {sch}", lambda fix=fix, sch=sch: ws_flash_attention(q, k, v, fix=fix, schedule=sch))
                        for sch in SCHEDULES]
            for name, fn in kernels:
                ms, tf = time_forward(fn, B, H, N, D, False)
                rows.append({"rep": rep, "kernel": name, "causal": False, "fix": fix, "ms": ms, "tflops": tf})
                print(f"rep {rep} {name:<22} fix={fix!s:<6}{ms:8.3f} ms {tf:7.1f} TFLOP/s", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ptx", action="store_true", help="only compile for sm_90 here: registers, spills, loop sizes")
    ap.add_argument("--once", metavar="SCHEDULE", choices=SCHEDULES,
                    help="only launch that schedule twice on the benchmark shape (for a profiler: "
                         "benchmarks/kernel_experiments/profile_ws_fa2.sh)")
    ap.add_argument("--fix", action="store_true", help="with --once: the paper fix")
    args = ap.parse_args(argv)
    if args.once:
        import torch

        torch.manual_seed(0)
        q, k, v = (torch.randn(8, 16, 4096, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for _ in range(2):
            ws_flash_attention(q, k, v, fix="paper" if args.fix else None, schedule=args.once)
        torch.cuda.synchronize()
        return 0
    if args.ptx:
        from flashbits.gpu.compile import ptxas_report, sass_loops, wgmma_serialised

        for schedule in SCHEDULES:
            for fix in (False, True):
                k = compile_for_sm90(fix, schedule)
                regs, spill, msgs = ptxas_report(k.asm["ptx"], messages=True)
                loops = sass_loops(k.asm["cubin"])
                print(json.dumps({"schedule": schedule, "fix": fix, "registers": regs, "spill_bytes": spill,
                                  "ptxas_serialised_wgmma": wgmma_serialised(msgs),
                                  "loop_instructions": [n for n, _ in loops],
                                  "loop_ex2": [ops["MUFU.EX2"] for _, ops in loops]}),
                      flush=True)
        return 0
    bits = check_bits()
    perf = bench(args.reps) if bits["mismatching_launches"] == 0 else []
    if args.json:
        from flashbits.gpu.provenance import provenance

        with open(args.json, "w") as f:
            json.dump({"provenance": provenance(), "bits_vs_production": bits, "bench": perf}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
