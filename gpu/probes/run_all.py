"""The hardware probes (exp2, exp2_verify, dots, casts) and their golden records.

    PYTHONPATH=. python -m flashbits.gpu.probes.run_all OUTDIR [--only PROBES]

``python -m flashbits.crosscheck.records regenerate OUT`` runs it once per probe
(``OUT/probes/<probe>/``) beside the attention records, and ``... records install``
installs what it wrote.  Run by hand, it writes into OUTDIR:

* ``summary.json`` — every count (mismatches per probe, per case kind), examples,
  provenance;
* ``exp2_tables.npz`` — the MUFU.EX2 tables and chosen model parameters
  (becomes ``emulator/hw/data/sfu_exp2_sm90.npz``);
* ``exp2_golden.npz``, ``dot_golden.npz``, ``casts_golden.npz`` — golden records
  for ``tests/data/hw/``;
* ``fp8_e4m3_analysis.npz``, ``fp8_e5m2_analysis.npz`` — raw fp8 dot data;
* ``log.txt``.

``--only exp2,exp2_verify,dots,casts`` picks probes (default: all but
``exp2_verify``, which checks the installed model on all 2^32 inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

from flashbits.gpu.provenance import provenance


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--only", default="exp2,dots,casts", help="comma-separated probes to run")
    args = ap.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    logf = open(os.path.join(args.outdir, "log.txt"), "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    prov = provenance()
    summary = {"provenance": prov}
    log(json.dumps(prov))
    probes = [p.strip() for p in args.only.split(",") if p.strip()]

    def save(name, arrays):
        arrays = dict(arrays)
        arrays["provenance"] = np.array(json.dumps(prov))
        np.savez_compressed(os.path.join(args.outdir, name), **arrays)
        log(f"saved {name} ({os.path.getsize(os.path.join(args.outdir, name)) / 2**20:.2f} MiB)")

    def dump_summary():
        with open(os.path.join(args.outdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True, default=str)

    if "exp2" in probes:
        try:
            from flashbits.emulator.hw.sfu import delta_encode
            from flashbits.gpu.probes import exp2_probe

            arrays = exp2_probe.run(summary, log)
            params = dict(summary["exp2"]["chosen_params"])
            params["provenance"] = prov
            tab = {}
            for side in ("tpos", "tneg"):
                d, first = delta_encode(arrays.pop(f"{side}_bits"))
                tab[f"{side}_delta"] = d
                tab[f"{side}_first"] = np.int64(first)
            tab["params"] = np.array(json.dumps(params))
            np.savez_compressed(os.path.join(args.outdir, "exp2_tables.npz"), **tab)
            log(f"saved exp2_tables.npz ({os.path.getsize(os.path.join(args.outdir, 'exp2_tables.npz')) / 2**20:.2f} MiB)")
            save("exp2_golden.npz", arrays)
        except Exception:
            summary["exp2_error"] = traceback.format_exc()
            log(summary["exp2_error"])
        dump_summary()
    if "exp2_verify" in probes:
        try:
            from flashbits.gpu.probes import exp2_probe

            exp2_probe.verify(summary, log)
        except Exception:
            summary["exp2_verify_error"] = traceback.format_exc()
            log(summary["exp2_verify_error"])
        dump_summary()
    if "dots" in probes:
        try:
            from flashbits.gpu.probes import dot_probe

            arrays = dot_probe.run(summary, log)
            save("dot_golden.npz", {k: v for k, v in arrays.items() if k.startswith("golden_")})
            for fmt in ("fp8_e4m3", "fp8_e5m2"):
                part = {k: v for k, v in arrays.items() if k.startswith(f"analysis_{fmt}_")}
                if part:
                    save(f"{fmt}_analysis.npz", part)
        except Exception:
            summary["dots_error"] = traceback.format_exc()
            log(summary["dots_error"])
        dump_summary()
    if "casts" in probes:
        try:
            from flashbits.gpu.probes import casts_probe

            save("casts_golden.npz", casts_probe.run(summary, log))
        except Exception:
            summary["casts_error"] = traceback.format_exc()
            log(summary["casts_error"])
        dump_summary()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
