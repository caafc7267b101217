"""Command line: ``flashbits`` (formats, emulate, crosscheck, bias) and ``crosscheck``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

PRESETS = {
    "ties": dict(kind="ties", B=1, H=1, Nq=4096, Nk=64, D=64, causal=False, seed=1, gap=12.0,
                 recipe="paper",
                 doc="two tied maxima per row in one key block, the other 62 keys 12 nats lower, "
                     "V mostly negative; 4096 rows × 64 features = 2^18 output samples (docs/paper.md)"),
    "ties15": dict(kind="ties", B=1, H=1, Nq=4096, Nk=64, D=64, causal=False, seed=1, gap=15.0,
                   recipe="paper", doc="as ties, the others 15 nats lower"),
    "random": dict(kind="random", B=1, H=4, Nq=512, Nk=512, D=64, causal=False, seed=1, gap=0.0,
                   recipe="fa2", doc="q, k, v ~ N(0, 1), 4 heads of 512×512"),
    "lowrank": dict(kind="lowrank_v", B=1, H=4, Nq=1024, Nk=64, D=64, causal=False, seed=1, gap=0.0,
                    recipe="paper", doc="similar keys, same-sign rank-1 V"),
}


# the roundings the kernels offer for the P̄ and output casts
KERNEL_ROUNDINGS = ("rne", "sr")


def _csv_choice(text: str, allowed, what: str) -> list:
    items = [x for x in text.split(",") if x]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"unknown {what} {bad}; accepted: {', '.join(allowed)}")
    return items


def _parse_overrides(items):
    out = {}
    for it in items or ():
        try:
            stage, kv = it.split(":", 1)
            key, val = kv.split("=", 1)
        except ValueError:
            raise ValueError(f"--override takes STAGE:KEY=VALUE (e.g. P_cast:rounding=sr), got {it!r}") from None
        if key == "rand_bits":
            try:
                val = int(val)
            except ValueError:
                raise ValueError(f"--override {stage}:rand_bits takes an integer, got {val!r}") from None
        elif key == "exact":
            if val.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--override {stage}:exact takes true or false, got {val!r}")
            val = val.lower() in ("true", "1")
        out.setdefault(stage, {})[key] = val
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (threads, workers)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def check_out_dir(path, option="--out"):
    """Create ``path`` (a directory) and check it is writable, before any computation."""
    if not path:
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: the directory is not writable")


def cmd_formats(args):
    from flashbits.emulator import FORMATS

    print(f"{'name':<10}{'bits':>5}{'exp':>5}{'mant':>6}{'bias':>6}  {'max finite':>14}{'min normal':>14}"
          f"{'min subnormal':>15}  specials")
    for f in FORMATS.values():
        print(f"{f.name:<10}{f.bits:>5}{f.exp_bits:>5}{f.mant_bits:>6}{f.bias:>6}  {f.max_finite:>14.6g}"
              f"{f.min_normal:>14.6g}{f.min_subnormal:>15.6g}  {f.describe_specials()}")
    print("\ncanonical NaN written by flashbits (sign of the input kept): "
          + ", ".join(f"{f.name} 0x{f.canonical_nan:0{f.bits // 4}x}" for f in FORMATS.values()))
    return 0


def _load_inputs(args):
    import numpy as np

    from flashbits.crosscheck.cases import Case, generate
    from flashbits.crosscheck.record import open_npz

    if args.inputs:
        z = open_npz(args.inputs, "an .npz with arrays q, k, v (float32 bf16 values, shape (B, H, N, D) "
                                  "or (N, D))", ("q", "k", "v"))
        desc = f"inputs from {args.inputs}"
        return z["q"], z["k"], z["v"], bool(args.causal), desc, args.recipe or "fa2"
    p = dict(PRESETS[args.preset])
    doc = p.pop("doc")
    recipe = p.pop("recipe")
    if args.causal:
        p["causal"] = True
    case = Case(**p)
    q, k, v = generate(case)
    return q, k, v, case.causal, f"preset {args.preset}: {doc}", args.recipe or recipe


# the emulate arguments that decide its numbers: saved in emulate.json, restored by --rerun
RUN_KEYS = ("preset", "inputs", "recipe", "fix", "eps", "beta", "delta", "rounding", "override", "causal", "seed")


def _apply_rerun(args):
    """Restore a saved run's arguments from emulate.json (``--rerun``); its inputs are the
    preset's (regenerated from the seed) or, for --inputs runs, the q, k, v saved beside it."""
    try:
        with open(args.rerun) as f:
            run = json.load(f)["run"]
    except FileNotFoundError:
        raise ValueError(f"--rerun {args.rerun}: no such file; expected an emulate.json written by "
                         "flashbits emulate --out DIR") from None
    except (ValueError, KeyError, TypeError, OSError):
        raise ValueError(f"--rerun {args.rerun} is not an emulate.json with a 'run' section (written by "
                         "flashbits emulate --out DIR)") from None
    for key in RUN_KEYS:
        setattr(args, key, run.get(key))
    if args.inputs:
        args.inputs = os.path.join(os.path.dirname(os.path.abspath(args.rerun)), "emulate.npz")
    return run


def cmd_emulate(args):
    import numpy as np

    from flashbits.emulator import flash_attention, reference_attention
    from flashbits.emulator.attention.stats import error_summary

    if args.rerun:
        _apply_rerun(args)
    check_out_dir(args.out)
    if args.fix == "none":
        args.fix = None
    q, k, v, causal, desc, recipe = _load_inputs(args)
    ov = _parse_overrides(args.override)
    t0 = time.time()
    r = flash_attention(q, k, v, recipe=recipe, fix=args.fix, eps=args.eps, beta=args.beta, delta=args.delta,
                        causal=causal,
                        rounding=args.rounding, overrides=ov, seed=args.seed, record=True, threads=args.threads)
    dt = time.time() - t0
    ref, ref_lse = reference_attention(q, k, v, causal=causal)
    out = np.asarray(r.out, np.float64)
    fin = np.isfinite(ref)
    err = out - ref
    summary = error_summary(out, ref, r.recipe.stages["O_cast"].format)
    stats, row = summary["element"], summary["row"]
    fix = r.fix.label if r.fix else "none"
    print(f"flashbits emulate — recipe {recipe}, fix {fix}, rounding "
          f"{r.recipe.stages['P_cast'].rounding}/{r.recipe.stages['O_cast'].rounding} (P̄/O casts), "
          f"{'causal' if causal else 'non-causal'}" + (f", seed {args.seed}" if args.seed is not None else ""))
    print(f"  {desc}")
    if args.override:
        print(f"  overrides: {', '.join(args.override)}")
    if args.rerun:
        print(f"  rerun of {args.rerun}")
    print(f"  shapes q {tuple(np.shape(q))}, k {tuple(np.shape(k))}; {dt:.1f} s")
    print(f"output error vs float64 reference: max |err| {np.nanmax(np.abs(err[fin])):.3e}, "
          f"rms relative {np.sqrt(np.nanmean(err[fin] ** 2) / np.nanmean(ref[fin] ** 2)):.3e}")
    for name, st, note in (("in ulps of the row's max |O|", row, ""),
                           ("in each output's own ulp", stats, " (near-zero outputs weigh most)")):
        verdict = "BIASED (|t| > 3)" if abs(st["t"]) > 3 else "no significant bias (|t| <= 3)"
        print(f"signed error of O {name}: mean {st['mean_ulp']:+.5f} ± {st['sem_ulp']:.5f} "
              f"(t = {st['t']:+.1f}, n = {st['n']}) — {verdict}{note}")
    print()
    print(r.ledger.format_table())
    if args.out:
        np.savez_compressed(os.path.join(args.out, "emulate.npz"), q=q, k=k, v=v, out=r.out, ref=ref,
                            m=r.m, l=r.l, lse=r.lse, ref_lse=ref_lse, ledger=r.ledger.table,
                            ledger_stages=np.array(r.ledger.stages))
        run = {key: getattr(args, key) for key in RUN_KEYS}
        run["fix"] = run["fix"] or "none"
        fix_params = None if r.fix is None else {"name": r.fix.name, "eps": r.fix.eps, "beta": r.fix.beta,
                                                 "delta": r.fix.delta}
        with open(os.path.join(args.out, "emulate.json"), "w") as f:
            json.dump({"recipe": recipe, "fix": fix, "description": desc, "bias": stats, "bias_row_scale": row,
                       "run": run, "fix_params": fix_params, "causal": causal, "seed": args.seed,
                       "rerun": f"flashbits emulate --rerun {os.path.join(args.out, 'emulate.json')}",
                       "stages": r.recipe.describe(), "ledger": r.ledger.to_dict(), "seconds": dt}, f,
                      indent=1, default=float)
        print(f"\nsaved {args.out}/emulate.npz and emulate.json "
              f"(rerun: flashbits emulate --rerun {os.path.join(args.out, 'emulate.json')})")
    return 0


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def cmd_crosscheck(args):
    from flashbits.crosscheck.record import find_record, replay_record
    from flashbits.crosscheck.report import to_markdown

    check_out_dir(args.out)
    check_out_dir(args.record, "--record")
    if args.replay:
        res = replay_record(find_record(args.replay))
        for f in res["failures"][:10]:
            print("  MISMATCH", json.dumps(f))
        verdict = "replay: all bits equal" if res["mismatches"] == 0 else f"replay: {res['mismatches']} mismatching"
        print(verdict)
        if args.out:
            from flashbits.crosscheck.report import to_json

            to_json(res, os.path.join(args.out, "replay.json"))
            with open(os.path.join(args.out, "replay.md"), "w") as f:
                f.write(f"# flashbits crosscheck --replay {args.replay}\n\n**{verdict}** — {res['entries']} "
                        f"entries, {res['elements']:,} elements compared, {res['mismatches']:,} mismatching.\n")
                f.writelines(f"\n- MISMATCH {json.dumps(x)}" for x in res["failures"])
            print(f"wrote {args.out}/replay.json and replay.md")
        return 0 if res["mismatches"] == 0 else 1
    from flashbits.crosscheck.cases import KINDS
    from flashbits.crosscheck.sides import KERNEL_FIXES, kernel_config, parse_tile

    kinds = tuple(args.kinds.split(",")) if args.kinds else KINDS
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown case kinds {bad}; accepted: {', '.join(KINDS)}")
    try:
        tiles = [parse_tile(t) for t in args.tiles.split(",")]
    except ValueError as e:
        raise ValueError(f"--tiles: {e}") from None
    from flashbits.gpu.attention import KERNEL_RECIPES

    recipes = _csv_choice(args.recipes, KERNEL_RECIPES, "recipes")
    pass_name = "backward" if args.backward else "forward"
    if args.backward:
        from flashbits.emulator import RECIPES

        no_kernels = [r for r in recipes if (RECIPES[r].spec.backward is None
                                             or RECIPES[r].spec.backward.gpu_module is None)]
        if no_kernels:
            raise ValueError(f"--backward: recipes {no_kernels} have no backward kernels (their backward runs in "
                             "the emulator only: flashbits.flash_attention_backward); pass --recipes fa2")
    fixes = _csv_choice(args.fixes, ("none",) + tuple(f for f in KERNEL_FIXES if f), "fixes")
    roundings = _csv_choice(args.roundings, KERNEL_ROUNDINGS, "roundings")
    if not _has_cuda():
        print("crosscheck: no CUDA GPU here (torch.cuda.is_available() is False), so the kernels cannot run.\n"
              "  To check the emulator against recorded GPU bits instead:\n"
              "    crosscheck --replay tests/data/hw/attention_golden.npz", file=sys.stderr)
        return 2
    from flashbits.crosscheck.cases import suite
    from flashbits.crosscheck.runner import crosscheck_config
    from flashbits.crosscheck.sides import Config
    from flashbits.gpu.provenance import provenance

    cases = suite(args.cases, seed=args.seed, kinds=kinds, dims=tuple(int(d) for d in args.dims.split(",")),
                  max_len=args.max_len)
    configs = [Config(recipe=r, fix=None if f == "none" else f, rounding=rd, seed=args.seed, **t)
               for r in recipes for t in tiles for f in fixes for rd in roundings
               if kernel_config(r, None if f == "none" else f, rd)]
    if not configs:
        raise ValueError(f"no configuration the kernels run among recipes {recipes} × fixes {fixes} × roundings "
                         f"{roundings} (the unbiased fix: fa2 only, rounding rne, as it sets the casts itself)")
    prov = provenance()
    report = {"provenance": prov, "pass": pass_name, "configs": [], "cases_total": 0, "elements": 0,
              "mismatches": 0}
    entries = []
    keep = set(range(min(args.record_cases, len(cases)))) if args.record else None
    for cfg in configs:
        s = crosscheck_config(cases, cfg, dump_launch=not args.no_dump, workers=args.workers, keep=keep,
                              pass_name=pass_name)
        kept = s.pop("_kept", {})
        for idx, kk in sorted(kept.items()):
            entries.append({"case": kk["case"], "cfg": cfg, "q": kk["q"], "k": kk["k"], "v": kk["v"],
                            "prod": kk["prod"], "dump": kk["dump"], "carry": kk["carry"], "pass": pass_name})
        report["configs"].append(s)
        for launch in ("production", "dump"):
            if launch in s:
                report["cases_total"] += s[launch]["cases"]
                report["elements"] += s[launch]["elements"]
                report["mismatches"] += s[launch]["mismatches"]
        _write(args, report, entries, prov)  # after every configuration: a long run leaves partial results
    print(to_markdown(report))
    return 0 if report["mismatches"] == 0 else 1


def _write(args, report, entries, prov):
    from flashbits.crosscheck.record import save_record
    from flashbits.crosscheck.report import to_json, to_markdown

    if args.record:
        os.makedirs(args.record, exist_ok=True)
        path = os.path.join(args.record, "backward_golden.npz" if args.backward else "attention_golden.npz")
        save_record(path, entries, prov)
        report["record"] = path
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        to_json(report, os.path.join(args.out, "crosscheck.json"))
        with open(os.path.join(args.out, "crosscheck.md"), "w") as f:
            f.write(to_markdown(report))


def _add_crosscheck_args(p):
    from flashbits.crosscheck.cases import KINDS
    from flashbits.crosscheck.sides import KERNEL_FIXES
    from flashbits.gpu.attention import KERNEL_RECIPES

    p.add_argument("--cases", type=int, default=64, help="cases per configuration (default 64)")
    p.add_argument("--kinds", help=f"comma-separated case kinds (default: all: {', '.join(KINDS)})")

    recipes = ",".join(KERNEL_RECIPES)
    fixes = ",".join(f or "none" for f in KERNEL_FIXES)
    p.add_argument("--recipes", default=recipes, help=f"comma-separated recipes the kernels implement "
                                                     f"(default {recipes})")
    p.add_argument("--fixes", default=fixes, help=f"comma-separated fixes the kernels implement: "
                                                 f"{', '.join(fixes.split(','))} (default all)")
    p.add_argument("--roundings", default=",".join(KERNEL_ROUNDINGS),
                   help=f"P̄/output cast roundings: {', '.join(KERNEL_ROUNDINGS)} (default both)")
    p.add_argument("--tiles", default="default",
                   help="comma-separated kernel tiles BMxBNwW[sS] (block_m x block_n, warps, pipeline stages), "
                        "e.g. default,64x64w4,128x128w8s2; 'default' is each recipe's own (default)")
    p.add_argument("--dims", default="64,128", help="head dims to cycle through (default 64,128)")
    p.add_argument("--max-len", type=int, default=260, help="longest sequence generated (default 260)")
    p.add_argument("--seed", type=int, default=0, help="case generator seed and Philox key (default 0)")
    p.add_argument("--workers", type=positive_int, help="emulator processes (default: all cores)")
    p.add_argument("--no-dump", action="store_true", help="only the production launch (no intermediates)")
    p.add_argument("--backward", action="store_true",
                   help="crosscheck the backward kernels instead (δ, dV, dK, dQ; the dump launch also P and dS), "
                        "both sides on the GPU forward's out and lse and a seeded dO; recipes with backward "
                        "kernels: fa2")
    p.add_argument("--out", metavar="DIR", help="directory for crosscheck.json and crosscheck.md "
                                                "(with --replay: replay.json and replay.md)")
    p.add_argument("--record", metavar="DIR", help="save a golden record (inputs + GPU bits) into DIR")
    p.add_argument("--record-cases", type=int, default=4, help="cases per configuration kept in the record")
    p.add_argument("--replay", metavar="FILE", help="check a golden record on the CPU instead (no GPU needed)")
    p.set_defaults(func=cmd_crosscheck)


CROSSCHECK_DESC = """Run the Triton kernels and the emulator on the same inputs and compare every
output (and, with the dump launch, every intermediate: m and l after each key
block, the accumulator before the division) bit for bit.

Cases: random; the bias regimes of docs/paper.md (tied maxima, concentrated
attention, same-sign low-rank V); adversarial (±inf inputs, huge logits,
subnormal values, odd lengths, causal edges).  Output: match counts per
configuration and tensor, the first mismatch located (tensor, index, stage,
both bit patterns, ulps), JSON and Markdown with --out.  Exit status 0 when all
bits agree, 1 on any mismatch, 2 without a GPU or on a bad argument.

Without a GPU: crosscheck --replay tests/data/hw/attention_golden.npz
"""


def build_parser():
    from flashbits.emulator import FIXES, RECIPES
    from flashbits.emulator.attention.stages import ROUNDINGS as ROUNDING_NAMES

    ap = argparse.ArgumentParser(
        prog="flashbits",
        description="Prove, bit for bit, where low-precision flash attention rounds with a bias and "
                    "whether a fix removes it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Quick start: flashbits emulate --preset ties   (the biased regime of docs/paper.md, on the CPU)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("formats", help="print the table of number formats",
                       description="Print every format flashbits knows: widths, bias, range, special values.")
    p.set_defaults(func=cmd_formats)
    p = sub.add_parser("emulate", help="run a recipe in the bit-exact CPU emulator and show the bias",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run flash attention in the emulator on a preset case or .npz inputs; print "
                                   "the error against the float64 reference, the signed bias of O (mean, standard "
                                   "error, t) in ulps of each row's max |O| and in each output's own ulp "
                                   "(emulator/attention/stats.py), and the rounding ledger per stage.",
                       epilog="presets:\n" + "\n".join(f"  {k:<8} {v['doc']}" for k, v in PRESETS.items()))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), default="ties", help="named case (default ties)")
    src.add_argument("--inputs", metavar="FILE.npz", help="q, k, v arrays of bf16 values")
    src.add_argument("--rerun", metavar="DIR/emulate.json",
                     help="rerun a saved run with its arguments (preset or inputs, recipe, fix, rounding, "
                          "overrides, causal, seed)")
    p.add_argument("--recipe", choices=list(RECIPES), help="recipe (default: the preset's)")
    p.add_argument("--fix", choices=["none"] + list(FIXES),
                   help="softmax fix: none (default), paper (β·max on tied blocks) or offset (max + δ on "
                        "every block)")
    p.add_argument("--eps", type=float, help="paper fix ε (default 1e-3)")
    p.add_argument("--beta", type=float, help="paper fix β (default 2)")
    p.add_argument("--delta", type=float, help="offset fix δ in nats (default ln 2 / 2)")
    p.add_argument("--rounding", choices=list(ROUNDING_NAMES),
                   help="rounding of the P̄ and output casts (default rne)")
    p.add_argument("--override", action="append", metavar="STAGE:KEY=VALUE",
                   help="stage override, repeatable: e.g. PV_cast:format=fp32, P_cast:rounding=sr, "
                        "O_add_cast:accumulation=compensated, PV:exact=true, x:format=fp64 "
                        "(stage names: docs/recipes.md)")
    p.add_argument("--causal", action="store_true", help="causal mask (top-left aligned)")
    p.add_argument("--seed", type=int, help="Philox key (needed with sr)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default all)")
    p.add_argument("--out", metavar="DIR", help="save inputs, outputs, ledger and the run's arguments "
                                                "(emulate.npz, emulate.json)")
    p.set_defaults(func=cmd_emulate)
    p = sub.add_parser("crosscheck", help="compare the GPU kernels with the emulator bit for bit",
                       description=CROSSCHECK_DESC, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_crosscheck_args(p)
    try:
        from flashbits.crosscheck.bias_cli import add_bias_parser
    except ImportError:
        pass
    else:
        add_bias_parser(sub)
        from flashbits.crosscheck.grad_bias import add_grad_bias_parser

        add_grad_bias_parser(sub)
    return ap


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"flashbits {args.command}: error: {e}", file=sys.stderr)
        return 2


def crosscheck_main(argv=None):
    ap = argparse.ArgumentParser(prog="crosscheck", description=CROSSCHECK_DESC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_crosscheck_args(ap)
    args = ap.parse_args(argv)
    args.command = "crosscheck"
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"crosscheck: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
