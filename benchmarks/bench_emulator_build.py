"""The emulator's numba compile time and single-thread speed: this tree against another.

    PYTHONPATH=. python benchmarks/bench_emulator_build.py --baseline DIR [--N 512] [--D 64] [--reps 5]

DIR is another checkout of flashbits (or just its emulator/ folder inside a folder),
e.g. the commit before a refactor: ``mkdir -p .baseline && git archive REV emulator |
tar -x -C .baseline``.  Both trees run in the same invocation, each in fresh
subprocesses with NUMBA_NUM_THREADS=1:

* cold: an empty NUMBA_CACHE_DIR, so the first calls compile (fa2 and paper, each
  with the ledger and without; the time of the first call of each minus a warm call);
* cached: a second process on the same cache dir (what every later run pays);
* warm: median of ``--reps`` calls of one head, N×N, d=D, per recipe, record off/on.

Printed as seconds and as ratios this tree / baseline (lower is better).  Speed is
only ever reported, never asserted.  A tree with a top-level flashbits/ folder is
imported as flashbits.emulator, an older one as emulator.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
try:
    from flashbits.emulator import flash_attention, quantize
except ImportError:
    from emulator import flash_attention, quantize
import numpy as np
t_import = time.perf_counter() - t0
N, D, reps, mode, recipes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
rng = np.random.default_rng(0)
q, k, v = (quantize(rng.standard_normal((N, D)).astype(np.float32), "bf16") for _ in range(3))
res = {"import_s": t_import}
for recipe in recipes:
    for record in (False, True):
        t = time.perf_counter()
        flash_attention(q[:16], k[:16], v[:16], recipe=recipe, record=record)
        first = time.perf_counter() - t
        t = time.perf_counter()
        flash_attention(q[:16], k[:16], v[:16], recipe=recipe, record=record)
        res[f"first_{recipe}_{int(record)}"] = first - (time.perf_counter() - t)
if mode == "warm":
    for recipe in recipes:
        for record in (False, True):
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                flash_attention(q, k, v, recipe=recipe, record=record, threads=1)
                ts.append(time.perf_counter() - t)
            res[f"warm_{recipe}_{int(record)}"] = statistics.median(ts)
print(json.dumps(res))
"""


def _run(tree: str, cache: str, mode: str, args) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, str(args.N), str(args.D), str(args.reps), mode, args.recipes],
                         env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode:
        raise SystemExit(f"benchmark child failed in {tree}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(tree: str, args) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        cold = _run(tree, cache, "cold", args)
        cached = _run(tree, cache, "warm", args)
    res = {"compile_s": sum(v for k, v in cold.items() if k.startswith("first_")),
           "cached_start_s": sum(v for k, v in cached.items() if k.startswith("first_")) + cached["import_s"]}
    res.update({k: v for k, v in cold.items() if k.startswith("first_")})
    res.update({k: v for k, v in cached.items() if k.startswith("warm_")})
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="the other tree (a folder holding emulator/)")
    ap.add_argument("--N", type=int, default=512, help="rows and keys of the warm runs (default 512)")
    ap.add_argument("--D", type=int, default=64, help="head dim of the warm runs (default 64)")
    ap.add_argument("--reps", type=int, default=5, help="warm calls per cell, median (default 5)")
    ap.add_argument("--recipes", default="fa2,paper", help="recipes to time, comma-separated (default fa2,paper)")
    ap.add_argument("--this-first", action="store_true",
                    help="measure this tree before the baseline (to see whether the order matters)")
    ap.add_argument("--json", help="write both trees' numbers here")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.baseline, "emulator", "__init__.py")):
        ap.error(f"--baseline {args.baseline!r} holds no emulator/ package")
    if args.this_first:
        this = measure(HERE, args)
        base = measure(os.path.abspath(args.baseline), args)
    else:
        base = measure(os.path.abspath(args.baseline), args)
        this = measure(HERE, args)
    print(f"numba, one thread; warm runs: one head, N={args.N}, d={args.D}, median of {args.reps}")
    print(f"{'':<22}{'baseline s':>12}{'this tree s':>13}{'ratio':>8}")
    for key in ["compile_s", "cached_start_s"] + sorted(k for k in this if k.startswith(("first_", "warm_"))):
        print(f"{key:<22}{base[key]:>12.3f}{this[key]:>13.3f}{this[key] / base[key]:>8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline": base, "this": this, "N": args.N, "D": args.D, "reps": args.reps}, f, indent=1)


if __name__ == "__main__":
    main()
