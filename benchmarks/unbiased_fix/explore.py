"""Exploration for issue 16 (an unbiased fix): the fa2 recipe's bias of O per regime under
candidate stage changes, with the bias study's cells (crosscheck.bias_study.run_cell).

    PYTHONPATH=. python benchmarks/unbiased_fix/explore.py VARIANT [VARIANT...] [--fix none]

VARIANT: rne | sr | o-sr (only the output cast stochastic) | any name of emulator.FIXES
         given with --fix.  Prints t per regime (|t| > 3: biased).
"""
import argparse
import time

from flashbits.crosscheck.bias_study import run_cell
from flashbits.crosscheck.regimes import REGIMES, regime_inputs
from flashbits.emulator import reference_attention

VARIANTS = {"rne": ("rne", None), "sr": ("sr", None), "o-sr": ("rne", {"O_cast": {"rounding": "sr"}})}

ap = argparse.ArgumentParser()
ap.add_argument("variants", nargs="+")
ap.add_argument("--fixes", default="none")
ap.add_argument("--rows", type=int, default=4096)
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
t0 = time.time()
print(f"{'regime':<11}" + "".join(f"{f + '/' + v:>18}" for f in args.fixes.split(",") for v in args.variants))
for regime in REGIMES:
    q, k, v = regime_inputs(regime, rows=args.rows, seed=args.seed)
    ref, _ = reference_attention(q, k, v)
    cells = []
    for fix in args.fixes.split(","):
        for var in args.variants:
            rnd, extra = VARIANTS[var]
            _, _, st = run_cell(q, k, v, ref, "fa2", fix, rnd, extra=extra, record=False)
            cells.append(f"{st['t']:+10.1f} ({st['mean_ulp']:+.4f})")
    print(f"{regime:<11}" + "".join(f"{c:>18}" for c in cells), flush=True)
print(f"{time.time() - t0:.0f} s")
