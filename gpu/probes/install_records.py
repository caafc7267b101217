"""Install the output of ``gpu.probes.run_all`` into the repository.

    PYTHONPATH=. python -m gpu.probes.install_records OUTDIR

copies the golden records into ``tests/data/hw/`` and turns the captured
MUFU.EX2 tables into the package data ``emulator/hw/data/sfu_exp2_sm90.npz``
(only the 2^F entries the chosen model reads, delta-coded).
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
    from emulator.hw.sfu import DATA, delta_encode, _undelta

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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    install(sys.argv[1])
