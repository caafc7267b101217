"""Experiment: the fa2 kernel with the P·V product of block j−1 in flight during
block j's softmax (FlashAttention-3's intra-warpgroup overlap), in plain Triton.

    PYTHONPATH=. python -m benchmarks.kernel_experiments.pipelined_fa2 [--json OUT.json]   # on the GPU
    PYTHONPATH=. python -m benchmarks.kernel_experiments.pipelined_fa2 --ptx                # compiler view, no GPU

Same operations, same order per element as ``flashbits.gpu.kernels.fa2._fa2_fwd`` (so the
same bits: checked here on every element against the production kernel, which
the crosscheck ties to the emulator); only the issue order changes:

    QK_j (wgmma, waited) → issue PV_{j−1} → softmax_j → wait, acc·α_j

Two obstacles in Triton 3.6 and how this file gets past them, for the record:
* its wgmma pipeliner keeps a dot asynchronous only if no op in the loop
  uses the result unconditionally; the rescale therefore sits in an
  always-true runtime ``if`` (Nk > 0), and its else branch yields the raw
  result (the pipeliner needs one such yield);
* with the QK dot synchronous, the pipeliner inserts no wait for the PV dot at
  all, so the rescale waits itself (inline ``wgmma.wait_group 0`` + the same
  ``mul.f32``), on both branches, or ptxas serialises every wgmma (C7515).

Not the production kernel: ptxas still decides where the waits land.  This
probe measures whether it pays, fix and no fix, against the production kernel
in the same run.  On the H200 it did not (benchmarks/kernel_experiments/results/
h200_pipelined_fa2_probe.json, LAB.md):
bit-identical, 5–7% slower, and the fix costs the same 10–11%.  ``--ptx`` shows
why without a GPU: the PTX has the whole softmax (34 ex2) between the P·V commit
and its wait, but ptxas adds a wait of its own before it (0 ex2 left in flight
without the fix, 9 with it).
"""

from __future__ import annotations

import argparse
import json
import sys

import triton
import triton.language as tl

from benchmarks.kernel_experiments.hooked_fa2 import _fa2_fwd, _fa2_softmax, use_kernel
from flashbits.gpu.kernels.common import _p_cast
from benchmarks.kernel_experiments.same_bits import Tally, probe_inputs, write_record

_PK_N = 8
_PK = tl.constexpr(_PK_N)
# mul.f32 is what `acc * alpha` compiles to (no contraction partner)
_WAIT_MUL_ASM = tl.constexpr("wgmma.wait_group.sync.aligned 0;\n" + "".join(
    f"mul.f32 ${i}, ${_PK_N + i}, ${2 * _PK_N + i};\n" for i in range(_PK_N)))
# outputs tied to the accumulator inputs: no register copies around the wgmma
_WAIT_MUL_CONS = tl.constexpr(",".join(["=f"] * _PK_N + [str(i) for i in range(_PK_N)] + ["f"] * _PK_N))


@triton.jit
def _wait_scale(acc, alpha):
    a2 = tl.broadcast_to(alpha[:, None], acc.shape)
    return tl.inline_asm_elementwise(_WAIT_MUL_ASM, _WAIT_MUL_CONS, [acc, a2], dtype=tl.float32, is_pure=False,
                                     pack=_PK)


@triton.jit
def _pipelined_blocks(acc, m_i, l_i, q, Kb, Vb, skn, skd, svn, svd, MB, LB, lo, hi, offs_m, offs_d, row_ok, bh,
            Nq, Nk, NBLK, qk_scale, eps2, beta, seed_p, BLOCK_N: tl.constexpr, CAUSAL,
            FIX: tl.constexpr, P_SR: tl.constexpr, DUMP: tl.constexpr, MASKED: tl.constexpr,
            STEP: tl.constexpr = None):
    """hooked_fa2._fa2_blocks with P·V of block j−1 issued before block j's softmax
    (_fa2_softmax, then the rescale fused with the wait: STEP, the production
    step, is split here, so the kernel's STEP argument is not used)."""
    if hi > lo:
        offs_n = lo * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = offs_n < Nk
        k_ptrs = Kb + offs_n[None, :] * skn + offs_d[:, None] * skd
        if MASKED:
            kT = tl.load(k_ptrs, mask=key_ok[None, :], other=0.0)
        else:
            kT = tl.load(k_ptrs)
        qk = tl.dot(q, kT)
        valid = key_ok[None, :] & ((CAUSAL == 0) | (offs_n[None, :] <= offs_m[:, None]))
        p, m_i, l_i, alpha = _fa2_softmax(qk, m_i, l_i, valid, qk_scale, eps2, beta, FIX, MASKED)
        acc = acc * alpha[:, None]
        if DUMP:
            tl.store(MB + (bh * Nq + offs_m) * NBLK + lo, m_i, mask=row_ok)
            tl.store(LB + (bh * Nq + offs_m) * NBLK + lo, l_i, mask=row_ok)
        for jb in range(lo + 1, hi):
            offs_n = jb * BLOCK_N + tl.arange(0, BLOCK_N)
            offs_v = offs_n - BLOCK_N
            key_ok = offs_n < Nk
            k_ptrs = Kb + offs_n[None, :] * skn + offs_d[:, None] * skd
            v_ptrs = Vb + offs_v[:, None] * svn + offs_d[None, :] * svd
            if MASKED:
                kT = tl.load(k_ptrs, mask=key_ok[None, :], other=0.0)
                v = tl.load(v_ptrs, mask=(offs_v < Nk)[:, None], other=0.0)
            else:
                kT = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
            qk = tl.dot(q, kT)
            pb = _p_cast(p, seed_p, bh, Nq, Nk, offs_m, offs_v, P_SR)
            acc = tl.dot(pb, v, acc)
            valid = key_ok[None, :] & ((CAUSAL == 0) | (offs_n[None, :] <= offs_m[:, None]))
            p, m_i, l_i, alpha = _fa2_softmax(qk, m_i, l_i, valid, qk_scale, eps2, beta, FIX, MASKED)
            if Nk > 0:
                acc = _wait_scale(acc, alpha)
            else:
                _wait_scale(acc, alpha)
            if DUMP:
                tl.store(MB + (bh * Nq + offs_m) * NBLK + jb, m_i, mask=row_ok)
                tl.store(LB + (bh * Nq + offs_m) * NBLK + jb, l_i, mask=row_ok)
        offs_v = (hi - 1) * BLOCK_N + tl.arange(0, BLOCK_N)
        v_ptrs = Vb + offs_v[:, None] * svn + offs_d[None, :] * svd
        if MASKED:
            v = tl.load(v_ptrs, mask=(offs_v < Nk)[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        pb = _p_cast(p, seed_p, bh, Nq, Nk, offs_m, offs_v, P_SR)
        acc = tl.dot(pb, v, acc)
    return acc, m_i, l_i


def _use_pipelined():
    """Within the block, gpu.flash_attention's fa2 launches run hooked_fa2's kernel
    with the key-block loop of this file (its BLOCKS constexpr)."""
    return use_kernel(BLOCKS=_pipelined_blocks)


def _ex2_in_flight(lines, issue, commit, wait, ex2):
    """Per P·V wgmma group (m64n128k16) in code order: how many ex2 lie between
    its commit and the next wait, i.e. run while it may be in flight."""
    out, i = [], 0
    while i < len(lines):
        if issue(lines[i]):
            while i < len(lines) and not commit(lines[i]):
                i += 1
            n = 0
            while i < len(lines) and not wait(lines[i]):
                n += ex2(lines[i])
                i += 1
            out.append(n)
        i += 1
    return out


def compiler_report(fix=False, D=128):
    """What the compiler made of the overlap, for sm_90 on the CPU: whether ptxas
    serialised the wgmmas (C7514, C7515), and per P·V wgmma group the ex2 count between
    its issue and the next wait in the PTX (what Triton emitted) and in the SASS
    (what ptxas kept; it places waits of its own)."""
    from flashbits.gpu.compile import compile_kernel, ptxas_report, sass_text, wgmma_serialised

    k = compile_kernel(_fa2_fwd, D, 128, 64, 8, 3, fix=fix, extra={"BLOCKS": _pipelined_blocks})
    ptx = k.asm["ptx"].splitlines()
    regs, spill, msgs = ptxas_report(k.asm["ptx"], messages=True)
    sass = sass_text(k.asm["cubin"]).splitlines()
    return {
        "fix": fix, "registers": regs, "spill_bytes": spill,
        "ptxas_serialised_wgmma": wgmma_serialised(msgs),
        "ex2_in_flight_ptx": _ex2_in_flight(ptx, lambda t: "mma_async" in t and "m64n128k16" in t,
                                            lambda t: "wgmma.commit_group" in t, lambda t: "wgmma.wait_group" in t,
                                            lambda t: "ex2.approx" in t),
        # ptxas marks the last HGMMA of a group with the scoreboard gsb0
        "ex2_in_flight_sass": _ex2_in_flight(sass, lambda t: "HGMMA.64x128x16" in t,
                                             lambda t: "HGMMA.64x128x16" in t and "gsb0" in t,
                                             lambda t: "WARPGROUP.DEPBAR" in t, lambda t: "MUFU.EX2" in t),
    }


def check_bits(rows):
    """Every element of out, m, l (and the dumps) equal to the production kernel's."""
    from flashbits.gpu import flash_attention

    tally = Tally(rows)
    for B, H, Nq, Nk, D, kind, q, k, v in probe_inputs(("random", "ties")):
        for causal in (False, True):
            for fix in (None, "paper"):
                for rounding, seed in (("rne", None), ("sr", 7)):
                    for dump in (False, True):
                        kw = dict(causal=causal, fix=fix, rounding=rounding, seed=seed, dump=dump)
                        ref = flash_attention(q, k, v, **kw)
                        with _use_pipelined():
                            got = flash_attention(q, k, v, **kw)
                        tally.compare(ref, got, dump, [B, H, Nq, Nk, D, kind, kw])
    return tally.summary()


def bench(reps=3):
    import torch

    from flashbits.gpu import flash_attention
    from flashbits.gpu.bench import time_forward

    B, H, N, D = 8, 16, 4096, 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = []
    for rep in range(reps):
        for causal in (False, True):
            for fix in (None, "paper"):
                for name in ("production", "pipelined"):
                    def f(causal=causal, fix=fix, name=name):
                        if name == "pipelined":
                            with _use_pipelined():
                                return flash_attention(q, k, v, causal=causal, fix=fix)
                        return flash_attention(q, k, v, causal=causal, fix=fix)
                    ms, tf = time_forward(f, B, H, N, D, causal)
                    out.append({"rep": rep, "kernel": name, "causal": causal, "fix": fix, "ms": ms, "tflops": tf})
                    print(f"rep {rep} {name:<11} {'causal' if causal else 'full':<7} fix={fix!s:<6}"
                          f"{ms:8.3f} ms {tf:7.1f} TFLOP/s", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ptx", action="store_true", help="only compile for sm_90 here and print compiler_report")
    args = ap.parse_args(argv)
    if args.ptx:
        for fix in (False, True):
            print(json.dumps(compiler_report(fix)), flush=True)
        return 0
    rows = []
    bits = check_bits(rows)
    perf = bench(args.reps)
    if args.json:
        write_record(args.json, bits, rows, perf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
