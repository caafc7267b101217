"""Benchmark: emulator.quantize (float32 -> fmt, rne) against ml_dtypes' cast.

Both sides get the same 2^24-element float32 ``randn`` array in the same run;
each time is the median of >= 7 repeats after a warm-up call (which also
compiles / loads numba's cache).  The baseline is ``x.astype(ml_dtypes.bfloat16)``
(and ``x.astype(ml_dtypes.float8_e4m3fn)``, ``x.astype(np.float16)``): a code
array that a user then widens to float32 for arithmetic, whereas quantize
returns float32 values directly — so the table also shows the baseline *with*
that widening (``astype(...).astype(np.float32)``), the like-for-like
comparison.  quantize runs with numba threads = 1 and = all cores; ml_dtypes
is single-threaded.  The goal is ratio <= 1.5.

Measured (2 shared cores, x86_64, numba 0.68.1, ml_dtypes 0.7.0, 2^24, median of 9), bf16:
1.22× (1 thread) / 1.45× (2 threads) before bf16 took the loop-invariant-shift loop
(rounding._round_f32_fast_loop, ``uniform``), 0.70–0.75× / 0.85–0.86× after; the
kernel alone went from 14.2 to 6.1 ms (np.copy of the input: 6.6 ms), the rest is the
first touch of the 64 MB float32 output (ml_dtypes writes 32 MB of bf16 codes).

    python benchmarks/bench_quantize.py [--n-log2 24] [--repeats 9]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import ml_dtypes
import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flashbits.emulator import quantize  # noqa: E402

CASTS = [("bf16", ml_dtypes.bfloat16), ("fp16", np.float16), ("fp8_e4m3", ml_dtypes.float8_e4m3fn)]


def median_time(fn, repeats):
    fn()  # warm-up (compilation, page faults of the first allocation)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-log2", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    if args.repeats < 7:
        ap.error("--repeats must be >= 7")
    n = 1 << args.n_log2
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    all_cores = numba.config.NUMBA_NUM_THREADS
    print(f"quantize float32 -> fmt, rne, n = 2^{args.n_log2}, median of {args.repeats}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, numba {numba.__version__}, "
          f"ml_dtypes {ml_dtypes.__version__}, numpy {np.__version__}")
    rows = []
    for fmt, t in CASTS:
        with np.errstate(over="ignore"):
            base = median_time(lambda: x.astype(t), args.repeats)
            base_f32 = median_time(lambda: x.astype(t).astype(np.float32), args.repeats)
        # same answer, or the comparison is meaningless
        assert np.array_equal(quantize(x, fmt, "rne"), x.astype(t).astype(np.float32))
        for threads in sorted({1, all_cores}):
            numba.set_num_threads(threads)
            tq = median_time(lambda: quantize(x, fmt, "rne"), args.repeats)
            rows.append((fmt, threads, tq, base, base_f32))
        numba.set_num_threads(all_cores)
    head = (f"{'format':<9} {'threads':>7} {'quantize ms':>11} {'astype ms':>9} {'ratio':>6} "
            f"{'astype+f32 ms':>13} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for fmt, th, tq, b, bf in rows:
        print(f"{fmt:<9} {th:>7} {tq * 1e3:>11.1f} {b * 1e3:>9.1f} {tq / b:>6.2f} {bf * 1e3:>13.1f} "
              f"{tq / bf:>6.2f}")
    print("ratio = quantize time / ml_dtypes time (goal: <= 1.5)")


if __name__ == "__main__":
    main()
