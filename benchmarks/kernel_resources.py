"""Registers, spills and shared memory of the kernels, compiled for sm_90 on the CPU.

    PYTHONPATH=. python benchmarks/kernel_resources.py [--variants 128x64w8s3,64x64w4s3] [--D 128] [--sass]

No GPU needed: flashbits.gpu.compile (``triton.compile`` for ``GPUTarget("cuda",
90, 32)``) runs ptxas locally.  A tile that spills (local memory traffic in the inner loop) is slow
whatever else is right; read this before spending device time on a variant.  (A diagnostic,
not a record producer: it lives beside the benchmarks, not in gpu/probes.)
"""

from __future__ import annotations

import argparse
import sys

from flashbits.gpu.compile import compile_kernel, ptxas_report, sass_loops

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
