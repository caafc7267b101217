"""Experiment: the paper fix with the exps started before its decision, and redone
per thread only where the decision moved a row's m.

The fix decides each row's m_new from the block's two largest scores, and the
exps need m_new: in the fa2 kernel's softmax step (hooked_fa2._fa2_softmax) the decision sits between the
block max and the exps, on the softmax's critical path.  Here, in the unmasked
blocks with the fix:

    bm, two = top-2 of the block          (as hooked_fa2._top2_block_max)
    m0      = max(m_old, bm)              (the plain max: no fix)
    P       = exp2(qk·c − m0)             (starts as soon as bm is known)
    m_new   = max(m_old, shift(bm, two))  (the fix's decision, off the exps' path)
    P       = exp2(qk·c − m_new) for the whole warp if one of its threads
              holds a row with m_new != m0  (a warp vote and a uniform branch: rare)

so the top-2 fold can run beside the exps.  The redo is one inline-asm block
per thread (pack = all of the thread's scores) whose branch skips it unless a
row some thread of the warp holds moved; it repeats _fa2_p's ``fma.rn.f32``
and ``ex2.approx.ftz.f32`` with m_new, so P has the production bits (in a row
that did not move, m_new = m0 or the two differ only in the sign of a zero,
which gives the same P).  Everything else is
the production kernel's own code (hooked_fa2), so every output must be bit-identical to the production
kernel; the GPU run checks that on every element before it times anything.

Two variants (STEPS): ``top2`` takes the plain max from the fold's first slot,
``count`` takes it from its own max reduction and decides n > 1 by counting
the scores at or above the threshold.

    PYTHONPATH=. python -m benchmarks.kernel_experiments.speculative_fa2 [--json OUT.json]   # on the GPU
    PYTHONPATH=. python -m benchmarks.kernel_experiments.speculative_fa2 --sass               # compile for sm_90 here

A negative result.  On the H200 (benchmarks/kernel_experiments/results/h200_speculative_fa2.json)
both variants are bit-identical to the production kernel (96 launches,
132,075,120 elements) and slower with the fix: 374–384 TFLOP/s non-causal
against production's 409–416, a fix cost of 23–26% against 14–15% in the same
run.  ``--sass`` shows why without a GPU: the redo's branch ends the basic
block, and ptxas moves the accumulator's 64 rescale multiplies, which the
production kernel issues between its exps, past the branch's join, so they
(and the P̄ casts and the row sum) run after the exps instead of under them.
"""

from __future__ import annotations

import argparse
import json
import sys

import triton
import triton.language as tl

from benchmarks.kernel_experiments.hooked_fa2 import (
    _fa2_alpha,
    _fa2_fwd,
    _fa2_l_update,
    _fa2_p,
    _fa2_step,
    _paper_fix_shift,
    _top2_block_max,
    use_kernel,
)
from benchmarks.kernel_experiments.same_bits import Tally, probe_inputs, write_record

# The scores one thread holds: the fa2 tile (128 × 64, 8 warps) in the wgmma
# accumulator layout gives each thread two rows (r, r + 8) × 16 columns.  Its
# register order is, per 8-column chunk, (r, c), (r, c + 1), (r + 8, c),
# (r + 8, c + 1): the first four elements cover both of the thread's rows.
_PACK_N = 32
_ROW_REPS = (0, 1, 2, 3)   # elements whose row flags together cover the thread's rows


def _redo_asm(n, reps):
    """PTX for one thread's n scores.  Operands: $0..n-1 P out (tied to the P in,
    $n..2n-1), qk $2n.., −m_new $3n.., c $4n.., moved-flag $5n.. (b32, nonzero
    where the element's row moved)."""
    q, nm, c, f = 2 * n, 3 * n, 4 * n, 5 * n
    lines = ["{", ".reg .pred moved;", ".reg .b32 any;", f"mov.b32 any, ${f + reps[0]};"]
    lines += [f"or.b32 any, any, ${f + i};" for i in reps[1:]]
    # one vote per warp: the branch is uniform (no divergence), and in a warp
    # that redoes, a thread whose rows did not move recomputes the same P.  The
    # fence was an attempt to keep the accumulator's rescale ahead of the
    # branch (ptxas moves it past the join regardless); it is in the kernel the
    # GPU record measured
    lines += ["wgmma.fence.sync.aligned;", "setp.ne.b32 moved, any, 0;", "vote.sync.any.pred moved, moved, 0xffffffff;",
              "@!moved bra.uni REDO_DONE;"]
    for i in range(n):
        lines += [f"fma.rn.f32 ${i}, ${q + i}, ${c + i}, ${nm + i};", f"ex2.approx.ftz.f32 ${i}, ${i};"]
    lines += ["REDO_DONE:", "}"]
    return "\n".join(lines)


_PACK = tl.constexpr(_PACK_N)
_REDO_ASM = tl.constexpr(_redo_asm(_PACK_N, _ROW_REPS))
_REDO_CONS = tl.constexpr(",".join(["=f"] * _PACK_N + [str(i) for i in range(_PACK_N)] + ["f"] * (3 * _PACK_N)
                                   + ["r"] * _PACK_N))


@triton.jit
def _redo_where_moved(p, qk, m_new, m0, qk_scale):
    """P, recomputed as _fa2_p(qk, m_new) in every warp in which some thread holds
    a row with m_new != m0 (unordered: NaN counts as moved); elsewhere P
    unchanged.  For the fa2 tile only (128 × 64, 8 warps: _PACK_N scores per
    thread)."""
    moved = (m_new != m0).to(tl.int32)
    return tl.inline_asm_elementwise(
        _REDO_ASM, _REDO_CONS,
        [p, qk, tl.broadcast_to(-m_new[:, None], qk.shape), tl.full(qk.shape, qk_scale, tl.float32),
         tl.broadcast_to(moved[:, None], qk.shape)],
        dtype=tl.float32, is_pure=True, pack=_PACK)


@triton.jit
def _finish_step(qk, p, m_i, m0, m_new, l_i, acc, qk_scale):
    """α and acc·α first (they need m_new, not P), then the redo, then l: the
    redo's branch is the last thing before l and the P̄ cast."""
    alpha = _fa2_alpha(m_i, m_new)
    acc = acc * alpha[:, None]
    p = _redo_where_moved(p, qk, m_new, m0, qk_scale)
    return p, m_new, _fa2_l_update(l_i, alpha, tl.sum(p, 1)), acc


@triton.jit
def _step_top2(qk, m_i, l_i, acc, valid, qk_scale, eps2, beta, FIX: tl.constexpr, MASKED: tl.constexpr):
    """hooked_fa2._fa2_step, the unmasked fix step reordered: the plain max from
    the top-2 fold's first slot."""
    if FIX and not MASKED:
        bm, two = _top2_block_max(qk, qk_scale, eps2)
        m0 = tl.maximum(m_i, bm)
        p = _fa2_p(qk, m0, qk_scale)
        m_new = tl.maximum(m_i, _paper_fix_shift(bm, two, beta))
        p, m_new, l_new, acc = _finish_step(qk, p, m_i, m0, m_new, l_i, acc, qk_scale)
    else:
        p, m_new, l_new, acc = _fa2_step(qk, m_i, l_i, acc, valid, qk_scale, eps2, beta, FIX, MASKED)
    return p, m_new, l_new, acc


@triton.jit
def _step_count(qk, m_i, l_i, acc, valid, qk_scale, eps2, beta, FIX: tl.constexpr, MASKED: tl.constexpr):
    """As _step_top2, with the plain max by its own reduction and n > 1 decided by
    counting the scores with fl(s·c) >= thr (``set.ge.f32.f32`` writes 1.0 or
    0.0; the row sum is exact), as the masked loop does: neither the max nor the
    exps wait for the count."""
    if FIX and not MASKED:
        bm = tl.max(qk, 1) * qk_scale
        m0 = tl.maximum(m_i, bm)
        p = _fa2_p(qk, m0, qk_scale)
        thr = bm - eps2
        hit = tl.inline_asm_elementwise("set.ge.f32.f32 $0, $1, $2;", "=f,f,f",
                                        [qk * qk_scale, tl.broadcast_to(thr[:, None], qk.shape)],
                                        dtype=tl.float32, is_pure=True, pack=1)
        m_new = tl.maximum(m_i, _paper_fix_shift(bm, tl.sum(hit, 1) > 1.0, beta))
        p, m_new, l_new, acc = _finish_step(qk, p, m_i, m0, m_new, l_i, acc, qk_scale)
    else:
        p, m_new, l_new, acc = _fa2_step(qk, m_i, l_i, acc, valid, qk_scale, eps2, beta, FIX, MASKED)
    return p, m_new, l_new, acc


STEPS = {"top2": _step_top2, "count": _step_count}


def _use_step(name):
    """Within the block, gpu.flash_attention's fa2 launches run hooked_fa2's kernel
    with STEPS[name] (its STEP constexpr)."""
    return use_kernel(STEP=STEPS[name])


def compiler_report(D=128):
    """The fix kernel, production and every STEPS variant, compiled for sm_90 here:
    one dict each with registers, spills, wgmma serialisation, and in the first
    key-block loop the instruction count, MUFU.EX2, FMNMX and FMNMX.NAN, and
    how many FMUL (the accumulator's rescale) come after the last MUFU.EX2
    before the P̄·V wgmma, i.e. after the redo's branch in the variants.  For the
    variants also whether the redo's test covers every row its thread holds
    (from the LLVM IR: the moved-flags of elements _ROW_REPS take every distinct
    value among the thread's flags)."""
    from flashbits.gpu.compile import (
        compile_kernel,
        ptxas_report,
        sass_loops,
        sass_text,
        wgmma_serialised,
    )

    out = []
    for name, extra in [("production", None)] + [(n, {"STEP": f}) for n, f in STEPS.items()]:
        # production: the installed kernel; the variants: hooked_fa2's copy with their STEP
        k = compile_kernel(_fa2_fwd if extra else "_fa2_fwd", D, 128, 64, 8, 3, fix=True, extra=extra)
        regs, spill, msgs = ptxas_report(k.asm["ptx"], messages=True)
        n, ops = sass_loops(k.asm["cubin"])[0]
        row = {"kernel": name, "registers": regs, "spill_bytes": spill,
               "ptxas_serialised_wgmma": wgmma_serialised(msgs), "loop_instructions": n,
               "MUFU.EX2": ops["MUFU.EX2"], "FMNMX": ops["FMNMX"], "FMNMX.NAN": ops["FMNMX.NAN"],
               "fmul_after_last_ex2": _fmul_after_last_ex2(sass_text(k.asm["cubin"]))}
        if extra:
            row["redo_test_covers_rows"] = _redo_test_covers_rows(k.asm["llir"])
        out.append(row)
    return out


def _fmul_after_last_ex2(sass):
    """FMUL between the last MUFU.EX2 and the first P̄·V wgmma (HGMMA.64x128)
    after the first key block's Q·Kᵀ wait."""
    import re

    ops = [re.sub(r"^\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?", "", ln).split()[0] for ln in sass.splitlines()
           if re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+\S", ln)]
    wait = next(i for i, o in enumerate(ops) if o.startswith("WARPGROUP.DEPBAR"))
    pv = next(i for i in range(wait, len(ops)) if ops[i].startswith("HGMMA.64x128"))
    last_ex2 = max(i for i in range(wait, pv) if ops[i] == "MUFU.EX2")
    return sum(o == "FMUL" for o in ops[last_ex2:pv])


def _redo_test_covers_rows(llir):
    """Whether, in every redo asm call of the LLVM IR, the moved-flags (its i32
    operands) at _ROW_REPS take every distinct value among the call's flags."""
    import re

    calls = [ln for ln in llir.splitlines() if "REDO_DONE" in ln]
    ok = bool(calls)
    for ln in calls:
        args = ln[ln.rindex('"(') + 2:]
        flags = re.findall(r"\bi32 (%\w+|-?\d+)", args)
        ok &= len(flags) == _PACK_N and {flags[i] for i in _ROW_REPS} == set(flags)
    return ok


def check_bits(rows):
    """Every element of out, m, l (and the dumps) of every STEPS variant equal to
    the production kernel's, with the fix (without it the variants are
    hooked_fa2._fa2_step itself): random data, tied data (the fix fires in most
    rows) and near ties (in a few), causal and not, rne without dumps and sr
    with them."""
    from flashbits.gpu import flash_attention

    tally = Tally(rows)
    for B, H, Nq, Nk, D, kind, q, k, v in probe_inputs(("random", "ties", "near-ties")):
        for causal in (False, True):
            for rounding, seed, dump in (("rne", None, False), ("sr", 7, True)):
                kw = {"causal": causal, "fix": "paper", "rounding": rounding, "seed": seed, "dump": dump}
                ref = flash_attention(q, k, v, **kw)
                for step in STEPS:
                    with _use_step(step):
                        got = flash_attention(q, k, v, **kw)
                    tally.compare(ref, got, dump, [step, B, H, Nq, Nk, D, kind, kw])
    return tally.summary()


def bench(reps=3):
    """B=8, H=16, N=4096, D=128: production and speculative, causal and not, fix
    and not, interleaved per rep; fix costs per rep against the same kernel."""
    import torch

    from flashbits.gpu import flash_attention
    from flashbits.gpu.bench import time_forward

    B, H, N, D = 8, 16, 4096, 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = []
    for rep in range(reps):
        for causal in (False, True):
            for name in ("production",) + tuple(STEPS):
                ms_nofix = None
                for fix in (None, "paper"):
                    def f(causal=causal, fix=fix, name=name):
                        if name != "production":
                            with _use_step(name):
                                return flash_attention(q, k, v, causal=causal, fix=fix)
                        return flash_attention(q, k, v, causal=causal, fix=fix)
                    ms, tf = time_forward(f, B, H, N, D, causal)
                    row = {"rep": rep, "kernel": name, "causal": causal, "fix": fix, "ms": ms, "tflops": tf}
                    if fix is None:
                        ms_nofix = ms
                    else:
                        row["fix_cost"] = ms / ms_nofix - 1
                    out.append(row)
                    cost = f"  fix cost {100 * row['fix_cost']:.1f}%" if fix else ""
                    print(f"rep {rep} {name:<12} {'causal' if causal else 'full':<7} fix={fix!s:<6}"
                          f"{ms:8.3f} ms {tf:7.1f} TFLOP/s{cost}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sass", action="store_true", help="only compile for sm_90 here and print compiler_report")
    args = ap.parse_args(argv)
    if args.sass:
        for row in compiler_report():
            print(json.dumps(row), flush=True)
        return 0
    rows = []
    bits = check_bits(rows)
    perf = bench(args.reps)
    if args.json:
        write_record(args.json, bits, rows, perf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
