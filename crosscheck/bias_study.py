"""The bias study (``flashbits bias``): regimes × recipes × fixes × roundings.

Every cell runs the emulator (the arithmetic the H200 kernels were shown to
perform bit for bit, tests/data/hw/) on one regime's inputs
(:mod:`crosscheck.regimes`), measures the signed error of every output element
against the float64 reference in ulps of bf16 (mean, standard error, t), keeps
the per-stage ledger, and — for biased cells — ablates: each single stage in
turn is made exact (a cast or fp32 rounding to fp32/fp64, a hardware unit to
the exact operation rounded once) and the cell is measured again.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from flashbits.emulator import flash_attention, get_recipe, reference_attention
from flashbits.emulator.attention.recipes import get_fix
from flashbits.emulator.attention.stats import bias_stats, signed_error_ulps

from .progress import progress
from .regimes import REGIMES, ROWS, regime_inputs

BIASED_T = 3.0

FIX_SPECS = {
    "none": dict(fix=None),
    "paper-b2": dict(fix="paper", beta=2.0),
    "paper-b4": dict(fix="paper", beta=4.0),
    "paper-b8": dict(fix="paper", beta=8.0),
    "offset": dict(fix="offset"),
    "unbiased": dict(fix="unbiased"),
}


def _cast_stages(recipe):
    return [n for n, s in get_recipe(recipe).stages.items() if s.kind == "round" and "sr" in s.roundings]


# the rounding variants as stage overrides (the stages a recipe lacks are left out);
# sr-all: every cast that can round stochastically (filled in per recipe)
_VARIANTS = {
    "rne": {},
    "sr": {"P_cast": {"rounding": "sr"}, "O_cast": {"rounding": "sr"}},
    "sr-all": None,
    "compensated": {"O_add_cast": {"accumulation": "compensated"}, "l_add_cast": {"accumulation": "compensated"}},
    "fp32-O": {s: {"format": "fp32"} for s in ("PV_cast", "O_mul_cast", "O_add_cast")},
    "fp32-O+l": {s: {"format": "fp32"} for s in ("PV_cast", "O_mul_cast", "O_add_cast", "l_blk_cast",
                                                  "l_mul_cast", "l_add_cast")},
}


def _changes(stage, change: dict) -> bool:
    """Whether overriding ``stage`` with ``change`` is possible and changes its arithmetic."""
    allowed = {"rounding": stage.roundings, "format": stage.formats, "accumulation": stage.accumulations}
    return all(val in allowed[key] and getattr(stage, key) != val for key, val in change.items())


def fix_applies(recipe: str, fix_name: str, rounding: str) -> bool:
    """Whether a fix (a FIX_SPECS name) is a cell of ``recipe``: the family defines it
    (Family.fixes), and a fix that sets the P̄ and output casts itself (unbiased) is run
    once, with ``rne`` for the rest."""
    fix = FIX_SPECS[fix_name]["fix"]
    if fix is None:
        return True
    if fix not in get_recipe(recipe).spec.fixes:
        return False
    return not (get_fix(fix).stage_overrides and rounding != "rne")


def rounding_overrides(recipe: str, rounding: str) -> dict | None:
    """Stage overrides of a rounding variant; None when it does not apply to the recipe.

    The recipe is asked, not named: a variant applies when the recipe has every stage
    it overrides and each override is one the stage accepts and changes something (fa2
    keeps Ō in fp32 and has no running bf16 accumulators, so only rne and sr apply); a
    variant that only repeats another (sr-all where sr already covers every
    stochastic-capable cast) does not apply either.
    """
    if rounding not in _VARIANTS:
        raise ValueError(f"unknown rounding variant {rounding!r}; accepted: {', '.join(ROUNDINGS)}")
    stages = get_recipe(recipe).stages
    if rounding == "sr-all":
        casts = _cast_stages(recipe)
        if set(casts) <= set(_VARIANTS["sr"]):
            return None  # the same as sr
        return {n: {"rounding": "sr"} for n in casts}
    ov = _VARIANTS[rounding]
    if not all(name in stages and _changes(stages[name], change) for name, change in ov.items()):
        return None
    return {name: dict(change) for name, change in ov.items()}


ROUNDINGS = ("rne", "sr", "sr-all", "compensated", "fp32-O", "fp32-O+l")
ROUNDING_DOCS = {
    "rne": "every cast round-to-nearest-even (the hardware default)",
    "sr": "P̄ and output casts stochastic (what the GPU kernels offer)",
    "sr-all": "paper: every bf16 cast stochastic",
    "compensated": "paper: running l and O with Kahan–Neumaier compensation (bf16 terms)",
    "fp32-O": "paper: Ō = P̄V and the running output kept in fp32",
    "fp32-O+l": "paper: Ō, the running output and the row sums in fp32",
}


# per family: groups of stages made exact together (a family without groups: none)
ABLATION_GROUPS = {
    "paper": {
        "Ō path→fp32": ("PV_cast", "O_mul_cast", "O_add_cast"),
        "l path→fp32": ("l_blk_cast", "l_mul_cast", "l_add_cast"),
        "Ō+l paths→fp32": ("PV_cast", "O_mul_cast", "O_add_cast", "l_blk_cast", "l_mul_cast", "l_add_cast"),
    },
    "fa2": {},
}
# groups that also make a hardware unit exact: {label: (casts → fp32, units → exact)}
ABLATION_UNIT_GROUPS = {
    "paper": {"Ō+l paths→fp32, PV→exact": (ABLATION_GROUPS["paper"]["Ō+l paths→fp32"], ("PV",))},
    "fa2": {"O_cast→fp32, PV→exact": (("O_cast",), ("PV",))},
}


def ablations(recipe: str) -> dict:
    """Ablations: {label: overrides}, each single stage made exact (casts → fp32, fp32
    roundings → fp64, hardware units → the exact operation rounded once), plus the
    recipe's groups (a bias that moves to the next cast shows up only there)."""
    out = {}
    family = get_recipe(recipe).family
    for label, names in ABLATION_GROUPS.get(family, {}).items():
        out[label] = {n: {"format": "fp32"} for n in names}
    for label, (casts, units) in ABLATION_UNIT_GROUPS.get(family, {}).items():
        out[label] = {**{n: {"format": "fp32"} for n in casts}, **{u: {"exact": True} for u in units}}
    for name, st in get_recipe(recipe).stages.items():
        if name in ("V_cast", "comp"):
            continue
        if st.kind == "round":
            fmt = "fp32" if st.format != "fp32" else "fp64"
            if fmt == "fp32" and "fp32" not in st.formats:
                continue
            out[f"{name}→{fmt}"] = {name: {"format": fmt}}
        else:
            out[f"{name}→exact"] = {name: {"exact": True}}
    return out


def run_cell(q, k, v, ref, recipe, fix_name, rounding, *, seed=1, extra=None, record=True):
    ov = dict(rounding_overrides(recipe, rounding) or {})
    for st, o in (extra or {}).items():
        ov[st] = {**ov.get(st, {}), **o}
    spec = FIX_SPECS[fix_name]
    r = flash_attention(q, k, v, recipe=recipe, overrides=ov, seed=seed, record=record, **spec)
    out_fmt = r.recipe.stages["O_cast"].format
    err = signed_error_ulps(r.out, ref, "bf16" if out_fmt in ("fp32", "fp64") else out_fmt)
    return r, err, bias_stats(err)


def gpu_confirmations(path: str) -> dict:
    """{(regime, recipe, fix-name, rounding): mismatches} from the H200 confirmation record."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        d = json.load(f)
    out = {}
    for c in d["cells"]:
        fix = "none" if c["fix"] is None else f"paper-b{c['beta']:g}"
        out[(c["regime"], c["recipe"], fix, c["rounding"])] = c["mismatches"]
    return out


def run_grid(regimes, recipes, fixes, roundings, *, rows=ROWS, ablate="rne", log=print, gpu_record=None):
    """Run the grid; returns (rows of bias.json, error arrays kept for plots)."""
    t0 = time.time()
    gpu = gpu_confirmations(gpu_record) if gpu_record else {}
    table = []
    kept = {}
    bar = progress(total=len(regimes) * sum(rounding_overrides(r, rnd) is not None and fix_applies(r, f, rnd)
                                            for r in recipes for rnd in roundings for f in fixes), desc="bias grid")
    for regime in regimes:
        q, k, v = regime_inputs(regime, rows=rows)
        ref, _ = reference_attention(q, k, v)
        for recipe in recipes:
            for fix in fixes:
                for rnd in roundings:
                    if rounding_overrides(recipe, rnd) is None or not fix_applies(recipe, fix, rnd):
                        continue
                    r, err, st = run_cell(q, k, v, ref, recipe, fix, rnd)
                    stages = {row["stage"]: {"mean_ulp": row["mean_ulp"], "t": row["t"], "ops": row["ops"],
                                             "sticky_ties": row["sticky_ties"],
                                             "sticky_ties_away": row["sticky_ties_away"]}
                              for row in r.ledger.rows()}
                    key = (regime, recipe, fix, rnd)
                    cell = {"regime": regime, "recipe": recipe, "fix": fix, "rounding": rnd,
                            "rows": st["n"], "mean_ulp": st["mean_ulp"], "sem_ulp": st["sem_ulp"], "t": st["t"],
                            "biased": abs(st["t"]) > BIASED_T, "stages": stages}
                    if key in gpu:
                        cell["gpu"] = {"confirmed": gpu[key] == 0, "mismatching_elements": gpu[key],
                                       "record": os.path.basename(gpu_record)}
                    else:
                        cell["gpu"] = {"confirmed": False, "why": "emulator only (not a kernel cell, or not run)"}
                    if cell["biased"] and rnd == ablate:
                        cell["ablation"] = {}
                        for label, ov in ablations(recipe).items():
                            _, _, sa = run_cell(q, k, v, ref, recipe, fix, rnd, extra=ov, record=False)
                            cell["ablation"][label] = {"mean_ulp": sa["mean_ulp"], "t": sa["t"],
                                                       "removes_bias": abs(sa["t"]) <= BIASED_T}
                        cell["ablation_removers"] = [k_ for k_, a in cell["ablation"].items() if a["removes_bias"]]
                    table.append(cell)
                    if regime in ("ties-12", "ties-15") and fix == "none" and rnd == "rne":
                        kept[key] = err
                    bar.update(1)
                    log(f"{regime:<10} {recipe:<6} {fix:<9} {rnd:<12} mean {st['mean_ulp']:+.5f} ulp "
                        f"t {st['t']:+8.1f}  ({time.time() - t0:.0f}s)")
    bar.close()
    return table, kept, time.time() - t0


def to_markdown(table, meta) -> str:
    lines = ["# Where low-precision flash attention rounds with a bias", "",
             f"Generated by `{meta['command']}` in {meta['seconds']:.0f} s on {meta['host']} "
             f"(commit {meta['commit']}). Every cell: {meta['rows']} query rows × 64 features = "
             f"{meta['rows'] * 64} signed errors of O against the float64 reference, in bf16 ulps; "
             f"biased = |t| > {BIASED_T:g}.", ""]
    lines += ["Regimes: " + "; ".join(f"`{k}` {REGIMES[k][0]}" for k in meta["regimes"]), "",
              "Roundings: " + "; ".join(f"`{k}` {ROUNDING_DOCS[k]}" for k in meta["roundings"]), ""]
    lines += ["Columns: mean signed error of O (ulp), its standard error, t; whether the H200 kernel computed "
              "the same cell bit for bit; the low-precision cast stage with the largest |t| in the ledger and its "
              "ties decided by sticky bits (share rounded away from zero).", "",
              "| regime | recipe | fix | rounding | mean ulp | ± sem | t | GPU bit-exact | loudest cast: t, sticky ties |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for c in table:
        g = "yes" if c["gpu"].get("confirmed") else "—"
        lines.append(f"| {c['regime']} | {c['recipe']} | {c['fix']} | {c['rounding']} | {c['mean_ulp']:+.4f} | "
                     f"{c['sem_ulp']:.4f} | {c['t']:+.1f}{' **B**' if c['biased'] else ''} | {g} | "
                     f"{loudest_cast(c)} |")
    lines.append("")
    abl = [c for c in table if "ablation" in c]
    if abl:
        lines += ["## Stage ablation (biased rne cells): which single stage made exact removes the bias", "",
                  "Single stages, then groups (a bias that moves to the next cast shows only in a group). "
                  "t measures significance, not size: where an ablation removes the output cast, the output's "
                  "noise drops by 2^16 and tiny biases become significant; compare mean ulps in bias.json.", "",
                  "| regime | recipe | fix | t | stages whose exact version gives \\|t\\| ≤ 3 | smallest \\|t\\| (stage) |",
                  "| --- | --- | --- | ---: | --- | --- |"]
        for c in abl:
            best = min(c["ablation"].items(), key=lambda kv: abs(kv[1]["t"]))
            lines.append(f"| {c['regime']} | {c['recipe']} | {c['fix']} | {c['t']:+.1f} | "
                         f"{', '.join(c['ablation_removers']) or 'none'} | {best[1]['t']:+.1f} ({best[0]}) |")
        lines.append("")
    lines += ["## Headline", ""] + headline(table) + [""]
    return "\n".join(lines)


def loudest_cast(cell) -> str:
    """The cast stage (a rounding into a format below fp32) with the largest |t|."""
    casts = {k: v for k, v in cell["stages"].items() if k.endswith("_cast") and math.isfinite(v["t"]) and v["ops"]}
    if not casts:
        return "—"
    name, st = max(casts.items(), key=lambda kv: abs(kv[1]["t"]))
    # cells saved before the rename call them near_ties
    nt = st.get("sticky_ties", st.get("near_ties", 0))
    away = st.get("sticky_ties_away", st.get("near_ties_away", 0))
    share = f" ({100 * away / nt:.0f}% away)" if nt else ""
    return f"{name} t {st['t']:+.0f}, {nt}{share}"


def headline(table) -> list[str]:
    """Findings computed from the table (no hand-written numbers)."""
    out = []
    for recipe in sorted({c["recipe"] for c in table}):
        cells = [c for c in table if c["recipe"] == recipe]
        for fix in sorted({c["fix"] for c in cells}):
            for rnd in sorted({c["rounding"] for c in cells}):
                sub = [c for c in cells if c["fix"] == fix and c["rounding"] == rnd]
                if not sub:
                    continue
                worst = max(sub, key=lambda c: abs(c["t"]))
                n_b = sum(c["biased"] for c in sub)
                out.append(f"- {recipe}, fix {fix}, {rnd}: biased in {n_b}/{len(sub)} regimes; worst "
                           f"{worst['regime']} t = {worst['t']:+.1f} ({worst['mean_ulp']:+.4f} ulp)")
    clean = {}
    for c in table:
        clean.setdefault((c["fix"], c["rounding"]), set()).add(c["recipe"])
    good = []
    for (fix, rnd), recs in clean.items():
        sub = [c for c in table if c["fix"] == fix and c["rounding"] == rnd]
        if recs == {c["recipe"] for c in table} and not any(c["biased"] for c in sub):
            good.append(f"{fix}/{rnd}")
    out.append("- unbiased (|t| ≤ 3) in every tested regime for every recipe: "
               + (", ".join(sorted(good)) if good else "no (fix, rounding) combination"))
    return out


def plots(table, kept, outdir) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    gaps = {"ties-4": 4, "ties-10": 10, "ties-12": 12, "ties-15": 15}
    recipes = sorted({c["recipe"] for c in table})
    fig, axes = plt.subplots(1, len(recipes), figsize=(6 * len(recipes), 4), squeeze=False)
    for ax, recipe in zip(axes[0], recipes):
        for fix in FIX_SPECS:
            pts = sorted((gaps[c["regime"]], c["t"]) for c in table if c["recipe"] == recipe and c["fix"] == fix
                         and c["rounding"] == "rne" and c["regime"] in gaps)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fix)
        ax.axhspan(-BIASED_T, BIASED_T, color="0.85")
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_yscale("symlog", linthresh=3)
        ax.set_xlabel("gap: the other scores this many nats below the two tied maxima")
        ax.set_ylabel("t of the signed error of O (rne)")
        ax.set_title(f"{recipe}: bias against the concentration gap")
        ax.legend()
    files.append(_save(fig, outdir, "bias_vs_gap.png"))
    if kept:
        key = next(iter(sorted(kept)))
        err = kept[key]
        err = err[np.isfinite(err)]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(err, bins=np.linspace(-1, 1, 81), color="C3")
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(float(err.mean()), color="C0", lw=1.5, label=f"mean {err.mean():+.3f} ulp")
        ax.set_xlabel("signed error of O (bf16 ulps)")
        ax.set_ylabel("outputs")
        ax.set_title(f"{key[0]}, {key[1]}, fix {key[2]}, {key[3]}")
        ax.legend()
        files.append(_save(fig, outdir, "error_histogram.png"))
    return files


def _save(fig, outdir, name):
    """Lay out, write DIR/name at 120 dpi, close; the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    p = os.path.join(outdir, name)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def worked_example(regime: str = "ties-12", rows: int = 256) -> str:
    """A tie decided by sticky bits, bit by bit, from a real case of the paper recipe.

    Rebuilds one row of the paper recipe step by step with the emulator's
    primitives, checks the rebuilt output equals ``flash_attention``'s bit for
    bit, then shows the first block-output cast (PV_cast) whose exact tie was
    pushed just over one half by the small terms.
    """
    from flashbits.emulator import quantize, sfu_exp2, tensor_core_dot, to_bits

    q, k, v = regime_inputs(regime, rows=rows)
    q2, k2, v2 = q[0, 0], k[0, 0], v[0, 0]
    D = q2.shape[1]
    sc32 = np.float32(1.0 / math.sqrt(D))
    l2e = np.float32(1.4426950408889634)
    emu = flash_attention(q, k, v, recipe="paper").out[0, 0]
    bf = lambda x: quantize(np.asarray(x, np.float32), "bf16")  # noqa: E731
    for i in range(rows):
        S = tensor_core_dot(q2[i:i + 1], np.ascontiguousarray(k2.T), in_fmt="bf16")[0]
        s = bf(bf(S) * sc32)
        m = s.max()
        d = bf(s - m)
        p = bf(sfu_exp2((d * l2e).astype(np.float32), ftz=False))
        pv = tensor_core_dot(p[None], v2, in_fmt="bf16")[0]
        ob = bf(pv)
        lb = bf(np.float32(p.astype(np.float64).sum()))  # exact here: a few dozen bf16 terms
        out = bf(ob / lb)
        if not np.array_equal(to_bits(out, "bf16"), to_bits(emu[i], "bf16")):
            raise AssertionError(f"row {i}: the step-by-step rebuild differs from flash_attention")
        tied = np.nonzero(s == m)[0]
        if len(tied) != 2:
            continue
        a, b = tied
        for dd in range(D):
            x = float(pv[dd])
            xb = int(np.float32(x).view(np.uint32))
            low = xb & 0xFFFF
            va, vb = float(v2[a, dd]), float(v2[b, dd])
            big = np.float32(va + vb)
            # an exact tie that round-to-nearest-even alone would send toward zero ...
            tie_down = (int(big.view(np.uint32)) & 0xFFFF) == 0x8000 and abs(float(bf(big))) < abs(float(big))
            # ... but which the small terms push just over one half, away from zero
            if tie_down and 0x8000 < low < 0x8000 + 0x1000 and abs(float(ob[dd])) > abs(x):
                small = x - float(big)
                exact = float(np.dot(p.astype(np.float64), v2[:, dd].astype(np.float64)))
                lines = [
                    f"regime {regime}, paper recipe, row {i}, feature {dd}: keys {a} and {b} tie for the "
                    f"row maximum, so P̄ = 1 for both (the other {len(s) - 2} P̄ are about "
                    f"{float(np.median(p[p < 1])):.2e}).",
                    f"  V_a                = {va:+.8f}  bf16 0x{int(to_bits(np.float32(va), 'bf16')):04x}",
                    f"  V_b                = {vb:+.8f}  bf16 0x{int(to_bits(np.float32(vb), 'bf16')):04x}",
                    f"  V_a + V_b (exact)  = {float(big):+.8f}  fp32 0x{int(big.view(np.uint32)):08x}: "
                    f"low 16 bits 0x{int(big.view(np.uint32)) & 0xFFFF:04x} = exactly half a bf16 ulp (a tie; "
                    f"alone, RNE would give the even {float(bf(big)):+.8f}, toward zero)",
                    f"  small terms Σ P̄·V  = {small:+.3e} (same sign as V: {np.sign(small) == np.sign(va)})",
                    f"  tensor-core sum    = {x:+.8f}  fp32 0x{xb:08x}: low 16 bits 0x{low:04x} = "
                    f"{low / 65536:.5f} ulp, just over one half: the sticky bits decide",
                    f"  cast to bf16 (RNE) = {float(ob[dd]):+.8f}  bf16 0x{int(to_bits(ob[dd:dd + 1], 'bf16')[0]):04x} "
                    f"— rounded away from zero",
                    f"  exact Σ P̄·V        = {exact:+.8f}; the cast's error is "
                    f"{(float(ob[dd]) - x) / (2.0 ** (math.floor(math.log2(abs(x))) - 7)):+.4f} ulp "
                    f"(toward more negative, the sign of V)",
                    "Without the small terms this would be an exact tie, rounded to even (up or down evenly); with "
                    "them it is always rounded away from zero, in the direction of V's sign: the bias.",
                ]
                return "\n".join(lines)
    return f"no tie decided by sticky bits found in the first {rows} rows of {regime}"
