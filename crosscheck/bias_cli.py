"""``flashbits bias``: the bias grid, its report, plots and the worked example."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

from flashbits.emulator import RECIPES
from flashbits.gpu.attention import KERNEL_RECIPES

from .bias_study import FIX_SPECS, ROUNDINGS, plots, run_grid, to_markdown, worked_example
from .cli import _csv_choice, check_out_dir, positive_int
from .regimes import REGIMES, ROWS

# the grids run the recipes the kernels implement (their cells are GPU-confirmed); --recipes
# takes any registered one (paper_code: emulator only)
QUICK = dict(regimes=("random", "ties-12", "ties-15"), recipes=KERNEL_RECIPES,
             fixes=("none", "paper-b2", "offset"), roundings=("rne", "sr", "fp32-O+l"))
FULL = dict(regimes=tuple(REGIMES), recipes=KERNEL_RECIPES, fixes=tuple(FIX_SPECS), roundings=ROUNDINGS)
_RECORD_NAME = os.path.join("tests", "data", "hw", "bias_gpu_confirmation.json")


def gpu_record_path() -> str:
    """The H200 confirmation record: $FLASHBITS_HW_RECORDS, the current checkout, or the source tree."""
    for base in (os.environ.get("FLASHBITS_HW_RECORDS"), os.getcwd(),
                 os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        if base:
            p = os.path.join(base, _RECORD_NAME) if not base.endswith("hw") else \
                os.path.join(base, "bias_gpu_confirmation.json")
            if os.path.exists(p):
                return p
    return os.path.join(os.getcwd(), _RECORD_NAME)

DESC = """Measure the signed error of O (bf16 ulps against float64) over a grid of
regimes × recipes × fixes × roundings with the bit-exact emulator; for biased
cells (|t| > 3, rne) ablate each stage in turn.  Writes DIR/bias.json,
DIR/bias.md, DIR/bias_vs_gap.png and DIR/error_histogram.png.  Cells the GPU kernels implement are marked with the H200 record
that confirmed them bit for bit (tests/data/hw/bias_gpu_confirmation.json).

--quick: 3 regimes × 2 recipes × 3 fixes × 3 roundings (2–5 minutes on two
cores; measured 140–308 s, the first run also compiles the emulator).  The full grid: 8 regimes × 2 recipes × 5 fixes × 6 roundings with
ablations (its runtime is written into bias.md).
"""


def _csv(val, allowed, what):
    return tuple(_csv_choice(val, allowed, what))


def short_commit() -> str:
    """The current directory's git commit (short), or "unknown": a study's provenance."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.getcwd()).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def cmd_bias(args):
    if args.explain:
        print(worked_example(args.explain_regime))
        return 0
    if not args.out:
        raise ValueError("the grid needs --out DIR for its report and plots (or --explain for the worked "
                         "example alone)")
    grid = dict(QUICK if args.quick else FULL)
    if args.regimes:
        grid["regimes"] = _csv(args.regimes, tuple(REGIMES), "regimes")
    if args.recipes:
        grid["recipes"] = _csv(args.recipes, tuple(RECIPES), "recipes")
    if args.fixes:
        grid["fixes"] = _csv(args.fixes, tuple(FIX_SPECS), "fixes")
    if args.roundings:
        grid["roundings"] = _csv(args.roundings, ROUNDINGS, "roundings")
    check_out_dir(args.out)
    table, kept, secs = run_grid(grid["regimes"], grid["recipes"], grid["fixes"], grid["roundings"],
                                 rows=args.rows, ablate=None if args.no_ablation else "rne",
                                 gpu_record=gpu_record_path())
    commit = short_commit()
    meta = {"command": "flashbits bias " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "flashbits bias",
            "seconds": secs, "host": f"{platform.node()} ({os.cpu_count()} cores)", "commit": commit,
            "rows": args.rows, **grid}
    with open(os.path.join(args.out, "bias.json"), "w") as f:
        json.dump({"meta": meta, "cells": table}, f, indent=1, default=float)
    md = to_markdown(table, meta)
    files = plots(table, kept, args.out)
    if files:
        md += "\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in files) + "\n"
    else:
        md += "\n(plots NOT written: matplotlib could not be imported; pip install matplotlib)\n"
        print("flashbits bias: warning: plots NOT written: matplotlib could not be imported "
              "(it is a dependency of flashbits: pip install matplotlib)", file=sys.stderr)
    md += "\n## A tie decided by sticky bits, from a real case\n\n```\n" + worked_example() + "\n```\n"
    with open(os.path.join(args.out, "bias.md"), "w") as f:
        f.write(md)
    print(f"\nwrote {args.out}/bias.json, bias.md" + "".join(f", {os.path.basename(p)}" for p in files)
          + f" ({secs:.0f} s)")
    return 0


def add_bias_parser(sub):
    import argparse

    p = sub.add_parser("bias", help="where the bias arises, and which fixes remove it (grid + report)",
                       description=DESC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", metavar="DIR", help="output directory")
    p.add_argument("--quick", action="store_true", help="the small grid (2–5 minutes on two cores)")
    p.add_argument("--regimes", help=f"comma-separated subset of: {', '.join(REGIMES)}")
    p.add_argument("--recipes", help=f"comma-separated subset of: {', '.join(RECIPES)}")
    p.add_argument("--fixes", help=f"comma-separated subset of: {', '.join(FIX_SPECS)}")
    p.add_argument("--roundings", help=f"comma-separated subset of: {', '.join(ROUNDINGS)}")
    p.add_argument("--rows", type=positive_int, default=ROWS, help=f"query rows per cell (default {ROWS}: 2^18 samples)")
    p.add_argument("--no-ablation", action="store_true", help="skip the per-stage ablation of biased cells")
    p.add_argument("--explain", action="store_true", help="only print the worked example (a tie decided by "
                                                          "sticky bits, bit by bit)")
    p.add_argument("--explain-regime", default="ties-12", help="regime of the worked example (default ties-12)")
    p.set_defaults(func=cmd_bias)
