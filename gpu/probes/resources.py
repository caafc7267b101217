"""Registers, spills and shared memory of the kernels, compiled for sm_90 on the CPU.

    PYTHONPATH=. python -m gpu.probes.resources [--variants 128x64w8s3,64x64w4s3] [--D 128]

No GPU needed: ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` runs ptxas
locally.  A tile that spills (local memory traffic in the inner loop) is slow
whatever else is right; read this before spending device time on a variant.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

PTR_BF16 = {"Q", "K", "V", "O"}
PTR_F32 = {"M", "L", "MB", "LB", "ACC"}
FLOAT_ARGS = {"qk_scale", "eps2", "beta", "scale", "eps", "delta", "delta2"}


def compile_kernel(name, D, BM, BN, warps, stages, fix=False, psr=False, osr=False, dump=False):
    """The compiled kernel (triton CompiledKernel) of gpu.kernels.<name> for sm_90."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter cannot compile for sm_90")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gpu import kernels

    fn = getattr(kernels, name)
    consts = dict(HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, FIX=fix, P_SR=psr, O_SR=osr, DUMP=dump)
    sig = {}
    for p in fn.params:
        a = p.name
        if p.is_constexpr:
            if a not in consts:
                raise ValueError(f"kernel {name} has a constexpr {a} that compile_kernel does not set")
            sig[a] = "constexpr"
        elif a in PTR_BF16:
            sig[a] = "*bf16"
        elif a in PTR_F32:
            sig[a] = "*fp32"
        elif a in FLOAT_ARGS:
            sig[a] = "fp32"
        elif a.startswith("seed"):
            sig[a] = "i64"
        else:
            sig[a] = "i32"
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=stages))


def ptxas_report(ptx):
    """(registers, spill stores + loads in bytes) from ``ptxas -v`` (Triton's bundled ptxas)."""
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
    return regs, spill


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="128x64w8s2,128x64w8s3,64x64w4s3,128x128w8s2",
                    help="tiles BMxBNwWARPSsSTAGES, comma-separated")
    ap.add_argument("--D", type=int, default=128, help="head dim (64 or 128)")
    ap.add_argument("--kernel", default="_fa2_fwd", choices=["_fa2_fwd", "_paper_fwd"])
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
