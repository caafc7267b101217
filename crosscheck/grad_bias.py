"""The gradient-bias study (``flashbits grad-bias``): does the forward's bias reach δ, dQ, dK, dV?

Every cell runs the emulator's forward and backward (the recipes' arithmetic; the
backward kernels' bits are not yet confirmed on the GPU) on one regime's q, k, v
(:mod:`crosscheck.regimes`) with an upstream gradient dO of one of two kinds, and
measures the signed error of each gradient against torch float64 autograd of exact
attention (same inputs), in bf16 ulps:

* dQ, dK, dV: row-scale ulps (each error in the ulp of max|ref| over its row's
  features; gradients have mixed signs, so per-element ulps would be set by the
  near-zero ones);
* δ = rowsum(dO ∘ O): the ulp of max|δ_ref| over all rows (one unit for the vector),
  split into the part O carries, Σ dO·(O − O_ref) in float64, and δ's own rounding,
  δ − Σ dO·O;
* the backward ledger's stages whose own rounding errors are biased (|t| > 3).

dO kinds: ``pos`` = |N(0, 1)| (one sign, as a loss gradient that pushes every feature
the same way: then δ sums O's errors with one sign), ``sym`` = N(0, 1) (the control).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

from flashbits.emulator import flash_attention, flash_attention_backward, quantize
from flashbits.emulator.attention.stats import bias_stats, signed_error_row_ulps, signed_error_ulps

from .bias_study import BIASED_T, FIX_SPECS, fix_applies
from .regimes import REGIMES, ROWS, regime_inputs

DO_KINDS = {"pos": "dO = |N(0, 1)| (one sign)", "sym": "dO = N(0, 1)"}
GRAD_ROUNDINGS = {"rne": None, "sr": "sr"}
GRAD_FIXES = ("none", "paper-b2", "unbiased")
TENSORS = ("delta", "dq", "dk", "dv")


def upstream_gradient(kind: str, shape, seed: int = 11) -> np.ndarray:
    """dO of ``kind`` (DO_KINDS), bf16 values."""
    if kind not in DO_KINDS:
        raise ValueError(f"unknown dO kind {kind!r}; accepted: {', '.join(DO_KINDS)}")
    g = np.random.default_rng(seed).standard_normal(shape)
    return quantize(np.abs(g) if kind == "pos" else g, "bf16", "rne")


def reference_gradients(q, k, v, do, scale=None):
    """(O, dq, dk, dv) of exact attention by torch float64 autograd (non-causal)."""
    import torch

    qt, kt, vt = (torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in (q, k, v))
    sc = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.softmax(qt @ kt.transpose(-1, -2) * sc, -1) @ vt
    out.backward(torch.tensor(np.asarray(do, np.float64)))
    return out.detach().numpy(), qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy()


def _vector_ulps(x, ref):
    """Errors of a vector in the bf16 ulp of its max |ref| (one unit for all)."""
    return signed_error_row_ulps(np.ravel(x), np.ravel(ref))


def run_cell(q, k, v, do, ref, recipe, fix, rounding, seed=1):
    o_ref, dq_ref, dk_ref, dv_ref = ref
    mode = GRAD_ROUNDINGS[rounding]
    f = flash_attention(q, k, v, recipe=recipe, rounding=mode, seed=seed, **FIX_SPECS[fix])
    g = flash_attention_backward(q, k, v, f.out, f.lse, do, recipe=recipe, rounding=mode, seed=seed,
                                 fix=FIX_SPECS[fix]["fix"], record=True)
    do64 = np.asarray(do, np.float64)
    delta_ref = (do64 * o_ref).sum(-1)
    delta_o = (do64 * np.asarray(f.out, np.float64)).sum(-1)   # δ of the rounded O, exactly
    unit_ref = np.ravel(delta_ref)
    cell = {"O": bias_stats(signed_error_ulps(f.out, o_ref)),
            "delta": bias_stats(_vector_ulps(g.delta, unit_ref)),
            "delta_from_O": bias_stats(_vector_ulps(delta_o, unit_ref)),
            # (δ − δ_O) in the same unit: δ's own rounding
            "delta_own": bias_stats(_vector_ulps(np.ravel(g.delta) - np.ravel(delta_o) + unit_ref, unit_ref)),
            "dq": bias_stats(signed_error_row_ulps(g.dq, dq_ref)),
            "dk": bias_stats(signed_error_row_ulps(g.dk, dk_ref)),
            "dv": bias_stats(signed_error_row_ulps(g.dv, dv_ref))}
    cell["biased_stages"] = {r["stage"]: {"mean_ulp": r["mean_ulp"], "t": r["t"], "ops": r["ops"]}
                             for r in g.ledger.rows() if r["ops"] and abs(r["t"]) > BIASED_T}
    return cell


def run_grid(regimes, recipes, do_kinds=tuple(DO_KINDS), fixes=GRAD_FIXES, roundings=tuple(GRAD_ROUNDINGS), *,
             rows=ROWS, log=print):
    t0 = time.time()
    table = []
    for regime in regimes:
        q, k, v = regime_inputs(regime, rows=rows)
        for kind in do_kinds:
            do = upstream_gradient(kind, q.shape)
            ref = reference_gradients(q, k, v, do)
            for recipe in recipes:
                for fix in fixes:
                    for rnd in roundings:
                        if not fix_applies(recipe, fix, "rne"):
                            continue   # a fix the family does not define
                        c = run_cell(q, k, v, do, ref, recipe, fix, rnd)
                        c.update(regime=regime, dO=kind, recipe=recipe, fix=fix, rounding=rnd)
                        table.append(c)
                        log(f"{regime:<10} dO {kind:<4} {recipe:<6} {fix:<9} {rnd:<4} "
                            + " ".join(f"{t} t {c[t]['t']:+7.1f}" for t in ("O",) + TENSORS)
                            + f"  ({time.time() - t0:.0f}s)")
    return table, time.time() - t0


def _fmt_t(s):
    t = s["t"]
    mark = "**" if abs(t) > BIASED_T else ""
    return f"{mark}{t:+.1f}{mark}" if math.isfinite(t) else "—"


def to_markdown(table, seconds, rows) -> str:
    lines = ["# Gradient bias: the signed error of δ, dQ, dK, dV", "",
             f"`flashbits grad-bias`: {len(table)} cells, {rows} query rows × 64 keys × d 64 per regime, "
             f"{seconds:.0f} s.  t = mean / standard error of the signed error against torch float64 "
             f"autograd of exact attention (|t| > {BIASED_T:g} in bold).  δ: in the bf16 ulp of max|δ_ref|; "
             "δ←O: the part of δ's error that O carries (Σ dO·(O − O_ref), exact); δ own: the rest "
             "(the backward's δ rounding).  dQ, dK, dV: row-scale ulps.  Emulator only: the backward "
             "kernels' bits are not yet confirmed on the GPU.", "",
             "| regime | dO | recipe | fix | rounding | O | δ | δ←O | δ own | dQ | dK | dV | biased backward stages |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in table:
        st = ", ".join(f"{n} ({s['t']:+.0f})" for n, s in sorted(c["biased_stages"].items(),
                                                                  key=lambda kv: -abs(kv[1]["t"]))[:4])
        lines.append(f"| {c['regime']} | {c['dO']} | {c['recipe']} | {c['fix']} | {c['rounding']} | "
                     + " | ".join(_fmt_t(c[t]) for t in ("O", "delta", "delta_from_O", "delta_own", "dq", "dk",
                                                         "dv"))
                     + f" | {st or '—'} |")
    return "\n".join(lines) + "\n"


def cmd_grad_bias(args):
    import os
    import platform

    from flashbits.emulator import RECIPES

    from .bias_cli import short_commit
    from .cli import _csv_choice, check_out_dir

    regimes = tuple(_csv_choice(args.regimes, tuple(REGIMES), "regimes")) if args.regimes else tuple(REGIMES)
    recipes = tuple(_csv_choice(args.recipes, tuple(RECIPES), "recipes")) if args.recipes else tuple(RECIPES)
    check_out_dir(args.out)
    table, seconds = run_grid(regimes, recipes, rows=args.rows)
    meta = {"rows": args.rows, "seconds": seconds, "commit": short_commit(),
            "host": f"{platform.node()} ({os.cpu_count()} cores)", "regimes": regimes, "recipes": recipes,
            "dO": DO_KINDS, "fixes": GRAD_FIXES, "roundings": tuple(GRAD_ROUNDINGS)}
    with open(os.path.join(args.out, "grad_bias.json"), "w") as f:
        json.dump({"meta": meta, "cells": table}, f, indent=1, default=float)
    with open(os.path.join(args.out, "grad_bias.md"), "w") as f:
        f.write(to_markdown(table, seconds, args.rows))
    print(f"wrote {args.out}/grad_bias.json, grad_bias.md ({seconds:.0f} s)")
    return 0


def add_grad_bias_parser(sub):
    import argparse

    from flashbits.emulator import RECIPES

    from .cli import positive_int

    p = sub.add_parser("grad-bias", help="does the forward's bias reach δ, dQ, dK, dV? (grid + report)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"The grid: regimes × dO kinds ({', '.join(DO_KINDS)}) × recipes × fixes "
                              f"({', '.join(GRAD_FIXES)}) × roundings ({', '.join(GRAD_ROUNDINGS)}); about 4 "
                              "minutes on two cores at the default rows.")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/grad_bias.json and DIR/grad_bias.md")
    p.add_argument("--regimes", help=f"comma-separated subset of: {', '.join(REGIMES)}")
    p.add_argument("--recipes", help=f"comma-separated subset of: {', '.join(RECIPES)}")
    p.add_argument("--rows", type=positive_int, default=ROWS, help=f"query rows per regime (default {ROWS})")
    p.set_defaults(func=cmd_grad_bias)
