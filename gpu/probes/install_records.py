"""Install GPU outputs into the repository.

    PYTHONPATH=. python -m flashbits.gpu.probes.install_records OUTDIR
    PYTHONPATH=. python -m flashbits.gpu.probes.install_records --attention OUTDIR [OUTDIR...]
    PYTHONPATH=. python -m flashbits.gpu.probes.install_records --tiles OUTDIR [OUTDIR...]

The first form takes ``gpu.probes.run_all``'s output: it copies the golden
records into ``tests/data/hw/`` and turns the captured MUFU.EX2 tables into the
package data ``emulator/hw/data/sfu_exp2_sm90.npz`` (only the 2^F entries the
chosen model reads, delta-coded).

The second takes the step folders of ``gpu/probes/attention_checks.sh`` (one or
more calls' OUT): every crosscheck step's report becomes
``tests/data/hw/crosscheck/<step>.{md,json}`` and the entries of all their
records are merged into ``tests/data/hw/attention_golden.npz`` (provenance: the
first record's, with every record's under ``runs``); the bias step's files are
copied as they are, and the bench step's ``bench.json`` becomes
``benchmarks/results/h200_attention_bench.json``.

The third takes ``gpu/probes/tile_checks.sh``'s OUT folders in the same way:
reports ``tests/data/hw/crosscheck/tiles_<step>.{md,json}``, records merged into
``tests/data/hw/attention_tiles_golden.npz``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDS = ("exp2_golden.npz", "dot_golden.npz", "casts_golden.npz")


def install(outdir: str) -> None:
    from flashbits.emulator.hw.sfu import DATA, delta_encode, _undelta

    hw = os.path.join(ROOT, "tests", "data", "hw")
    os.makedirs(hw, exist_ok=True)
    for name in RECORDS:
        src = os.path.join(outdir, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(hw, name))
            print(f"installed tests/data/hw/{name}")
    summ = os.path.join(outdir, "summary.json")
    if os.path.exists(summ):
        shutil.copy(summ, os.path.join(hw, "probe_summary.json"))
        print("installed tests/data/hw/probe_summary.json")
    tab = os.path.join(outdir, "exp2_tables.npz")
    if os.path.exists(tab):
        z = np.load(tab)
        params = json.loads(str(z["params"]))
        F = int(params["F"])
        step = 1 << (24 - F)  # captured at 2^-24 spacing; the model reads 2^-F spacing
        out = {}
        for side in ("tpos", "tneg"):
            full = _undelta(z[f"{side}_delta"], int(z[f"{side}_first"]))
            d, first = delta_encode(full[::step])
            out[f"{side}_delta"] = d
            out[f"{side}_first"] = np.int64(first)
        out["params"] = np.array(json.dumps(params))
        os.makedirs(os.path.dirname(DATA), exist_ok=True)
        np.savez_compressed(DATA, **out)
        print(f"installed {os.path.relpath(DATA, ROOT)} ({os.path.getsize(DATA) / 2**20:.2f} MiB, F={F})")


def install_attention(outdirs: list[str], record: str = "attention_golden.npz", prefix: str = "") -> None:
    """Crosscheck reports as tests/data/hw/crosscheck/<prefix><step>.{md,json}, the
    steps' records merged into tests/data/hw/<record>, and the bench and bias
    steps' files where they belong."""
    from flashbits.crosscheck.record import load_record, save_record

    hw = os.path.join(ROOT, "tests", "data", "hw")
    reports = os.path.join(hw, "crosscheck")
    os.makedirs(reports, exist_ok=True)
    entries, runs = [], []
    for outdir in outdirs:
        for step in sorted(os.listdir(outdir)):
            d = os.path.join(outdir, step)
            if os.path.exists(os.path.join(d, "crosscheck.json")):
                for ext in ("md", "json"):
                    shutil.copy(os.path.join(d, f"crosscheck.{ext}"),
                                os.path.join(reports, f"{prefix}{step}.{ext}"))
                rec = os.path.join(d, "attention_golden.npz")
                if os.path.exists(rec):
                    ents, prov = load_record(rec)
                    entries += ents
                    runs.append({"step": step, **prov})
                print(f"installed tests/data/hw/crosscheck/{prefix}{step}.md, .json")
            if os.path.exists(os.path.join(d, "bench.json")):
                shutil.copy(os.path.join(d, "bench.json"),
                            os.path.join(ROOT, "benchmarks", "results", "h200_attention_bench.json"))
                print("installed benchmarks/results/h200_attention_bench.json")
            for name in ("bias_gpu_confirmation.json", "attention_bias_golden.npz"):
                if os.path.exists(os.path.join(d, name)):
                    shutil.copy(os.path.join(d, name), os.path.join(hw, name))
                    print(f"installed tests/data/hw/{name}")
    if entries:
        prov = {**{k: v for k, v in runs[0].items() if k != "step"}, "runs": runs}
        save_record(os.path.join(hw, record), entries, prov)
        print(f"installed tests/data/hw/{record} ({len(entries)} entries from {len(runs)} records)")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--attention":
        install_attention(sys.argv[2:])
    elif len(sys.argv) >= 3 and sys.argv[1] == "--tiles":
        install_attention(sys.argv[2:], record="attention_tiles_golden.npz", prefix="tiles_")
    elif len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        install(sys.argv[1])
    else:
        sys.exit(__doc__)
