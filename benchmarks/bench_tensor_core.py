"""Speed of the tensor-core emulator: emulated multiply-adds per second.

    PYTHONPATH=. python benchmarks/bench_tensor_core.py [--m 256 --k 128 --n 256] [--repeat 9] [--formats bf16,fp8_e4m3]

For each input format it times ``emulator.tensor_core_dot`` on an (M×K)@(K×N)
product with a nonzero fp32 accumulator, with one numba thread and with all of
them (``numba.set_num_threads``), end to end (operand checks and decoding
included), the compiled kernel alone on pre-packed operands, and the readable
per-element reference ``tc_dot_ij`` (what the attention emulator calls).
The baseline, measured in the same run on the same shape, is numpy's float64
matmul (BLAS); ratios are printed against it.  Speed is never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flashbits.emulator import quantize  # noqa: E402
from flashbits.emulator.hw import tensor_core as tc  # noqa: E402


def best_of(fn, repeat):
    """(best wall seconds, best process CPU seconds) of ``repeat`` calls after a warm-up.

    CPU seconds (all threads of this process) are what a busy machine cannot
    inflate by time-sharing: MAC per CPU-second is the per-core throughput."""
    fn()  # warm-up (compilation, caches)
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def operands(fmt, M, K, N, seed=0):
    rng = np.random.default_rng(seed)
    sat = fmt.startswith("fp8")
    a = quantize(rng.standard_normal((M, K)), fmt, saturate=sat)
    b = quantize(rng.standard_normal((K, N)), fmt, saturate=sat)
    c = quantize(rng.standard_normal((M, N)), "fp32")
    return a, b, c


def kernel_only(a, b, c, fmt):
    """A callable running only the compiled kernel on pre-decoded operands."""
    model = tc.TC_MODELS["sm90"][fmt]
    from flashbits.emulator.formats import get_format

    f = get_format(fmt)
    ops = tc._prepare(a, b, c, f, model)

    def run():
        return tc._run_kernel(ops, model, f)

    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--formats", default="bf16,fp8_e4m3")
    args = ap.parse_args(argv)
    M, K, N = args.m, args.k, args.n
    macs = M * K * N
    all_threads = numba.config.NUMBA_NUM_THREADS
    print(f"shape ({M}x{K})@({K}x{N}) + C, {macs / 1e6:.2f} M multiply-adds; "
          f"numba threads available: {all_threads}; best of {args.repeat}")
    a64 = np.random.default_rng(1).standard_normal((M, K))
    b64 = np.random.default_rng(2).standard_normal((K, N))
    c64 = np.random.default_rng(3).standard_normal((M, N))
    t_np, c_np = best_of(lambda: a64 @ b64 + c64, max(args.repeat, 20))
    print(f"baseline numpy float64 matmul (same shape, this run): {t_np * 1e3:.3f} ms, "
          f"{macs / t_np:.3e} MAC/s, {macs / c_np:.3e} MAC/CPU-s")
    print("MAC/s: wall clock; MAC/CPU-s: per second of CPU time (per-core throughput, robust to a busy machine)")
    print()
    hdr = (f"{'format':9} {'threads':>7} {'what':>11} {'ms':>9} {'MAC/s':>10} {'MAC/CPU-s':>10} "
           f"{'time/numpy':>10}")
    print(hdr)
    print("-" * len(hdr))
    for fmt in args.formats.split(","):
        a, b, c = operands(fmt, M, K, N)
        for threads in sorted({1, all_threads}):
            numba.set_num_threads(threads)
            runs = [("end-to-end", lambda: tc.tensor_core_dot(a, b, c, in_fmt=fmt))]
            if hasattr(tc, "_prepare"):
                runs.append(("kernel", kernel_only(a, b, c, fmt)))
            if hasattr(tc, "_tensor_core_dot_reference"):
                # the per-element reference the attention emulator calls from numba
                runs.append(("tc_dot_ij", lambda: tc._tensor_core_dot_reference(a, b, c, in_fmt=fmt)))
            for what, fn in runs:
                t, cpu = best_of(fn, args.repeat)
                print(f"{fmt:9} {threads:7d} {what:>11} {t * 1e3:9.3f} {macs / t:10.3e} {macs / cpu:10.3e} "
                      f"{t / t_np:10.1f}")
    numba.set_num_threads(all_threads)
    # the bits must not depend on the thread count
    for fmt in args.formats.split(","):
        a, b, c = operands(fmt, 64, K, 64, seed=5)
        numba.set_num_threads(1)
        d1 = tc.tensor_core_dot(a, b, c, in_fmt=fmt).view(np.uint32)
        numba.set_num_threads(all_threads)
        d2 = tc.tensor_core_dot(a, b, c, in_fmt=fmt).view(np.uint32)
        assert np.array_equal(d1, d2), "result bits depend on the thread count"


if __name__ == "__main__":
    main()
