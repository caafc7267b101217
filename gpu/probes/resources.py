"""Registers, spills and shared memory of the kernels, compiled for sm_90 on the CPU.

    PYTHONPATH=. python -m flashbits.gpu.probes.resources [--variants 128x64w8s3,64x64w4s3] [--D 128] [--sass]

No GPU needed: ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` runs ptxas
locally.  A tile that spills (local memory traffic in the inner loop) is slow
whatever else is right; read this before spending device time on a variant.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys

PTR_BF16 = {"Q", "K", "V", "O"}
PTR_F32 = {"M", "L", "MB", "LB", "ACC"}
FLOAT_ARGS = {"qk_scale", "eps2", "beta", "scale", "eps", "delta", "delta2"}


# How gpu.flash_attention's launch specialises the kernels for contiguous
# (B, H, N, D) tensors, mirrored so that what is compiled here is what runs:
# Triton's JIT turns an int argument equal to 1 into a constexpr (the last-dim
# strides) and marks pointers and ints divisible by 16 (the other strides; every
# torch allocation is 16-byte aligned) with tt.divisibility.  Lengths, flags and
# seeds are exempt (gpu.kernels._NO_SPEC).  Without this the loads compile to
# 2-byte scalar accesses and the register counts are those of a kernel that
# never runs.
UNIT_STRIDES = ("sqd", "skd", "svd", "sod")
_DIV16_STRIDE = re.compile(r"s[qkvo][bhmn]")


def runtime_params(name):
    """The kernel's arguments that stay runtime parameters under that specialisation,
    in order (the .param list of its PTX)."""
    from flashbits.gpu import kernels

    return [p.name for p in getattr(kernels, name).params if not p.is_constexpr and p.name not in UNIT_STRIDES]


def compile_kernel(name, D, BM, BN, warps, stages, fix=False, psr=False, osr=False, dump=False, extra=None):
    """The compiled kernel (triton CompiledKernel) of gpu.kernels.<name> for sm_90,
    specialised as a launch on contiguous tensors specialises it (UNIT_STRIDES).
    ``extra``: values of constexprs that have defaults (e.g. fa2's BLOCKS)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter cannot compile for sm_90")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from flashbits.gpu import kernels

    fn = getattr(kernels, name)
    consts = dict(HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, FIX=fix, P_SR=psr, O_SR=osr, DUMP=dump, **(extra or {}))
    sig = {}
    attrs = {}
    for i, p in enumerate(fn.params):
        a = p.name
        if p.is_constexpr:
            if a not in consts:
                if p.default is inspect.Parameter.empty:
                    raise ValueError(f"kernel {name} has a constexpr {a} that compile_kernel does not set")
                consts[a] = p.default
            sig[a] = "constexpr"
        elif a in UNIT_STRIDES:
            consts[a] = 1
            sig[a] = "constexpr"
        elif a in PTR_BF16 or a in PTR_F32:
            sig[a] = "*bf16" if a in PTR_BF16 else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif a in FLOAT_ARGS:
            sig[a] = "fp32"
        elif a.startswith("seed"):
            sig[a] = "i64"
        else:
            sig[a] = "i32"
            if _DIV16_STRIDE.fullmatch(a):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def ptxas_report(ptx, messages=False):
    """(registers, spill stores + loads in bytes) from ``ptxas -v`` (Triton's bundled ptxas);
    with ``messages``, also ptxas's full output (its performance notes, e.g. C7515)."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-arch=sm_90a", "-v", src, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True, check=True)
    text = r.stderr + r.stdout
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return (regs, spill, text) if messages else (regs, spill)


def wgmma_serialised(ptxas_text):
    """Whether ptxas reports that it serialised the wgmmas (performance notes C7514,
    C7515, ...: a wgmma's accumulator touched by other instructions while in flight)."""
    return "wgmma.mma_async instructions are serialized" in ptxas_text


def sass_text(cubin):
    """nvdisasm's listing (bundled with Triton) of a cubin."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    nvdisasm = os.path.join(os.path.dirname(get_ptxas(90).path), "nvdisasm")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout


def sass_loops(cubin):
    """[(instructions, Counter of opcodes)] for every loop of the kernel's SASS
    (nvdisasm, bundled with Triton), in code order.  A loop is the span from a
    backward branch's target to the branch.  Opcodes are counted with their
    modifiers (``FMNMX.NAN`` is not ``FMNMX``), predicates dropped."""
    import collections

    text = sass_text(cubin)
    insns, labels, pending = [], {}, []
    for line in text.splitlines():
        lab = re.match(r"\s*\.(L_x_\d+):", line)
        if lab:
            pending.append(lab.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                labels[name] = addr
            pending = []
            insns.append((addr, re.sub(r"^@!?U?P\w+\s+", "", m.group(2))))
    loops = []
    for addr, text_ in insns:
        b = re.match(r"BRA\s+`?\(?\.?(L_x_\d+)", text_)
        if b and labels.get(b.group(1), addr) < addr:
            lo = labels[b.group(1)]
            ops = collections.Counter(t.split()[0] for a, t in insns if lo <= a <= addr)
            loops.append((sum(ops.values()), ops))
    return loops


SASS_SHOWN = ("FMNMX", "FMNMX.NAN", "FFMA", "FADD", "FMUL", "MUFU.EX2", "F2FP.BF16.F32.PACK_AB", "FSEL",
              "SHFL.BFLY")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="128x64w8s2,128x64w8s3,64x64w4s3,128x128w8s2",
                    help="tiles BMxBNwWARPSsSTAGES, comma-separated")
    ap.add_argument("--D", type=int, default=128, help="head dim (64 or 128)")
    ap.add_argument("--kernel", default="_fa2_fwd", choices=["_fa2_fwd", "_paper_fwd"])
    ap.add_argument("--sass", action="store_true",
                    help="also count the SASS instructions of every loop (per thread and block iteration)")
    args = ap.parse_args(argv)
    print(f"{'kernel':<10}{'tile':<14}{'fix':<5}{'regs':>6}{'spills':>8}{'smem':>8}")
    for var in args.variants.split(","):
        bmn, rest = var.split("w")
        bm, bn = (int(x) for x in bmn.split("x"))
        w, s = (int(x) for x in rest.split("s"))
        for fix in (False, True):
            k = compile_kernel(args.kernel, args.D, bm, bn, w, s, fix=fix)
            regs, spill = ptxas_report(k.asm["ptx"])
            print(f"{args.kernel:<10}{var:<14}{str(fix):<5}{regs:>6}{spill:>8}{k.metadata.shared:>8}", flush=True)
            if args.sass:
                for i, (n, ops) in enumerate(sass_loops(k.asm["cubin"])):
                    shown = ", ".join(f"{op} {ops[op]}" for op in SASS_SHOWN if ops[op])
                    print(f"    loop {i}: {n} instructions ({shown})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
