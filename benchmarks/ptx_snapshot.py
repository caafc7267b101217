"""Snapshot the PTX of every production kernel variant, and compare two snapshots.

    python benchmarks/ptx_snapshot.py TREE OUTDIR [--tiles all|none] [--limit N]
    python benchmarks/ptx_snapshot.py --compare DIR_A DIR_B

The bit-neutrality check of a refactor of the Triton kernels (issue 13): compile
every variant for sm_90 on the CPU (``triton.compile`` for ``GPUTarget("cuda", 90,
32)``, specialised as a launch on contiguous tensors is: the tree's own
``compile_kernel``) in a subprocess with ``PYTHONPATH=TREE`` and no
TRITON_INTERPRET, and write one normalized PTX file per variant (``.loc``/``.file``
lines, debug sections, the labels only debug info refers to, comments and blank
lines dropped: they name source lines, which a refactor moves).  Works for the tree before the refactor
(``gpu.probes.resources``) and after it (``flashbits.gpu.compile``).

Identical here means identical PTX *instructions*.  The dropped debug labels still
reach ptxas, which can schedule and allocate registers differently around them (at
848efb4: integer address arithmetic and 184 → 188 registers in fa2 128×64w8, every
floating-point SASS count unchanged); when the labels moved, rerun the H200 crosscheck.

Variants: both kernels × head dim 64/128 × FIX × P_SR × O_SR × DUMP at the recipe's
default tile, and every tile the kernels accept (block_m 64/128 × block_n 32/64/128
× num_warps 4/8 × num_stages 2/3/4) at head dim 128 for (no fix, rne, no dump) and
(fix, sr, dump).  A variant that does not compile is written as its error message.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import os
import re
import subprocess
import sys
import time

KERNELS = {"_fa2_fwd": (128, 64, 8, 3), "_paper_fwd": (64, 64, 4, 3)}  # default tile (BM, BN, warps, stages)
TILES = list(itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4)))


def variants(tiles="all"):
    """[(name, D, BM, BN, warps, stages, fix, psr, osr, dump)], each once."""
    out = []
    for name, (bm, bn, nw, ns) in KERNELS.items():
        for D, fix, psr, osr, dump in itertools.product((64, 128), *[(False, True)] * 4):
            out.append((name, D, bm, bn, nw, ns, fix, psr, osr, dump))
    # the unbiased fix (FIX = 3, fa2 only): its own P̄ cast, the output cast sr
    for D, dump in itertools.product((64, 128), (False, True)):
        out.append(("_fa2_fwd", D, *KERNELS["_fa2_fwd"], 3, True, True, dump))
    if tiles == "all":
        for name in KERNELS:
            for (bm, bn, nw, ns), flags in itertools.product(TILES, [(False, False, False, False),
                                                                    (True, True, True, True)]):
                out.append((name, 128, bm, bn, nw, ns, *flags))
    seen, uniq = set(), []
    for v in out:
        if v not in seen:
            seen.add(v)
            uniq.append(v)
    return uniq


def variant_id(v):
    name, D, bm, bn, nw, ns, fix, psr, osr, dump = v
    flags = "".join(f for f, on in zip(("unbiased" if fix == 3 else "fix", "psr", "osr", "dump"),
                                       (fix, psr, osr, dump)) if on) or "plain"
    return f"{name.strip('_')}_D{D}_{bm}x{bn}w{nw}s{ns}_{flags}"


def normalize(ptx):
    """PTX without what names source positions: .loc/.file, debug sections, comments, blank lines."""
    out, depth, in_section = [], 0, False
    for line in ptx.splitlines():
        s = line.strip()
        if in_section:  # a debug section's body: skip to its closing brace
            depth += s.count("{") - s.count("}")
            in_section = depth > 0 or "{" not in s and depth == 0 and not s.endswith("}")
            continue
        if s.startswith(".section") and ".debug" in s:
            depth = s.count("{") - s.count("}")
            in_section = True
            continue
        s = re.sub(r"//.*$", "", s).rstrip()
        if not s or s.startswith((".loc", ".file")) or re.fullmatch(r"\$L__(tmp\d+|func_begin\d+|func_end\d+):", s):
            continue
        out.append(line.split("//")[0].rstrip())
    return "\n".join(out) + "\n"


def _compile_helper():
    try:
        from flashbits.gpu.compile import compile_kernel  # after the architecture step
    except ImportError:
        from gpu.probes.resources import compile_kernel  # before it (3672b4c and earlier)
    return compile_kernel


def child(outdir, todo):
    compile_kernel = _compile_helper()
    times = {}
    for v in todo:
        name, D, bm, bn, nw, ns, fix, psr, osr, dump = v
        t0 = time.perf_counter()
        try:
            text = normalize(compile_kernel(name, D, bm, bn, nw, ns, fix=fix, psr=psr, osr=osr, dump=dump).asm["ptx"])
        except Exception as e:  # noqa: BLE001 - a refused tile is a result too
            text = f"COMPILE ERROR {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
        times[variant_id(v)] = round(time.perf_counter() - t0, 2)
        with open(os.path.join(outdir, variant_id(v) + ".ptx"), "w") as f:
            f.write(text)
        print(variant_id(v), times[variant_id(v)], flush=True)
    return times


def snapshot(tree, outdir, tiles="all", limit=None):
    os.makedirs(outdir, exist_ok=True)
    todo = variants(tiles)[:limit]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.path.abspath(tree)
    t0 = time.time()
    code = ("import json, sys; sys.path.insert(0, %r); import ptx_snapshot as s; "
            "t = s.child(%r, [tuple(v) for v in json.load(sys.stdin)]); "
            "json.dump(t, open(%r, 'w'), indent=1)") % (
        os.path.dirname(os.path.abspath(__file__)), outdir, os.path.join(outdir, "compile_seconds.json"))
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(todo), text=True, env=env,
                       cwd=os.path.abspath(tree))
    print(f"{len(todo)} variants of {tree} in {time.time() - t0:.0f} s -> {outdir}", flush=True)
    return r.returncode


def compare(a, b):
    names = sorted(set(f for f in os.listdir(a) if f.endswith(".ptx")) | set(f for f in os.listdir(b)
                                                                            if f.endswith(".ptx")))
    same, diff, missing = [], [], []
    for n in names:
        pa, pb = os.path.join(a, n), os.path.join(b, n)
        if not (os.path.exists(pa) and os.path.exists(pb)):
            missing.append(n)
            continue
        ta, tb = open(pa).read(), open(pb).read()
        (same if ta == tb else diff).append(n)
    for n in diff:
        print(f"DIFFERENT {n}")
    for n in missing:
        print(f"MISSING (in one snapshot only) {n}")
    if diff:
        n = diff[0]
        lines = difflib.unified_diff(open(os.path.join(a, n)).read().splitlines(),
                                     open(os.path.join(b, n)).read().splitlines(), a + "/" + n, b + "/" + n,
                                     lineterm="", n=3)
        print("\n".join(itertools.islice(lines, 200)))
    errs = sum(open(os.path.join(a, n)).read().startswith("COMPILE ERROR") for n in same)
    print(f"{len(same)} identical ({errs} of them identical compile errors), {len(diff)} different, "
          f"{len(missing)} missing")
    return 1 if diff or missing else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tree", nargs="?")
    ap.add_argument("outdir", nargs="?")
    ap.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"))
    ap.add_argument("--tiles", choices=("all", "none"), default="all")
    ap.add_argument("--limit", type=int, default=None, help="only the first N variants (timing)")
    a = ap.parse_args(argv)
    if a.compare:
        return compare(*a.compare)
    if not (a.tree and a.outdir):
        ap.error("give TREE OUTDIR, or --compare DIR_A DIR_B")
    return snapshot(a.tree, a.outdir, a.tiles, a.limit)


if __name__ == "__main__":
    sys.exit(main())
