"""Emulator attention speed: fa2 with the hardware models, against the float64 reference.

    PYTHONPATH=. python benchmarks/bench_attention.py [--N 1024] [--D 64]

One head, N query rows and N keys, bf16 inputs; wall time of emulator.flash_attention
(all cores, then one) and its ratio to emulator.reference_attention (numpy float64) in
the same run.  Medians of 5 runs after a warm-up (the warm-up also compiles).  The
issue's goal: N=1024, d=64, both cores, under 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

from flashbits.emulator import flash_attention, quantize, reference_attention


def median_time(fn, reps=5):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--N", type=int, default=1024)
    ap.add_argument("--D", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    q, k, v = (quantize(rng.standard_normal((args.N, args.D)), "bf16") for _ in range(3))
    flash_attention(q, k, v, recipe="fa2")
    flash_attention(q, k, v, recipe="fa2", record=True)
    t_ref = median_time(lambda: reference_attention(q, k, v))
    all_cores = numba.config.NUMBA_NUM_THREADS
    print(f"N={args.N}, d={args.D}, one head, fa2 with hardware models; float64 reference {t_ref * 1e3:.1f} ms")
    print(f"{'threads':>8}{'record':>8}{'emulator s':>12}{'× reference':>13}")
    for threads in sorted({all_cores, 1}, reverse=True):
        for rec in (False, True):
            t = median_time(lambda: flash_attention(q, k, v, recipe="fa2", record=rec, threads=threads))
            print(f"{threads:>8}{str(rec):>8}{t:>12.3f}{t / t_ref:>13.1f}")


if __name__ == "__main__":
    main()
