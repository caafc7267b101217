"""What both families' forward kernels share: the stochastic bf16 cast, the P̄
cast, loading a program's query rows, and the tile's epilogue (O = bf16(acc / l),
m and l stored).  Each function compiles to exactly the operations the emulator
models (see the package docstring)."""

from __future__ import annotations

import triton
import triton.language as tl

from flashbits.emulator.attention import units

# what the launcher needs beyond KERNEL: the stages whose rounding a kernel
# switches, rne or sr with 16 random bits ({stage: (constexpr, seed argument)};
# every other stage is fixed to the family's plan); each family module says which
# fixes it implements (FIXES)
SR_STAGES = {"P_cast": ("P_SR", "seed_p"), "O_cast": ("O_SR", "seed_o")}
SR_RAND_BITS = 16
# the FIX constexpr: which fix the kernel compiles in, and the unbiased fix's Weyl step
# between a row's key blocks: the emulator's own constants (emulator.attention.units)
FIX_NONE, FIX_PAPER, FIX_UNBIASED = (tl.constexpr(units.FIX_KINDS[f]) for f in (None, "paper", "unbiased"))
WEYL_STEP = tl.constexpr(units.WEYL_STEP)

# Lengths, flags and seeds vary per call: specialising on them (== 1, % 16)
# would recompile for every length; the arithmetic does not depend on it.
_NO_SPEC = ["H", "Nq", "Nk", "NBLK", "CAUSAL", "seed_p", "seed_o"]


@triton.jit
def _sr_bf16(x, seed, offs):
    """fp32 → bf16 with stochastic rounding: add the top 16 bits of
    tl.randint(seed, offs) below bit 16 of the magnitude, truncate.  NaN stays
    NaN (as cvt.rn.bf16.f32 writes it)."""
    r = tl.randint(seed, offs)
    bits = x.to(tl.uint32, bitcast=True)
    y = ((bits + (r >> 16)) >> 16).to(tl.uint16)
    return tl.where(x != x, x.to(tl.bfloat16), y.to(tl.bfloat16, bitcast=True))


@triton.jit
def _sr_bf16_shared(x, w):
    """fp32 P̄ (BLOCK_M, BLOCK_N), each in [0, 1] or NaN → bf16, stochastic with one word per
    row: add the top 16 bits of w (a uint32 per row) below bit 16, truncate (the unbiased
    fix's P̄ cast; emulator.attention.units.shared_word).  Three integer ops per score:
    the unsigned min first caps a NaN's pattern at 0x7FFF0000 (still NaN) so that the add
    cannot carry into the sign; a NaN comes out as the bf16 NaN 0x7FFF."""
    bits = tl.minimum(x.to(tl.uint32, bitcast=True), 0x7FFF0000)
    y = ((bits + (w >> 16)[:, None]) >> 16).to(tl.uint16)
    return y.to(tl.bfloat16, bitcast=True)


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
