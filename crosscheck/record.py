"""Golden records of the kernels: inputs, configuration and raw GPU output bits.

``save_record`` writes one ``.npz`` (inputs as bf16 codes, GPU outputs as raw
bits, case and config as JSON, provenance); ``replay_record`` recomputes every
entry with the emulator on the CPU and compares bit for bit — how the GPU's
truth reaches a CI without a GPU.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from flashbits.emulator import from_bits, to_bits

from .cases import Case
from .compare import compare_sides
from .progress import progress
from .sides import Config


# Where golden records are looked for after the current directory: an installed wheel
# ships tests/data/hw/attention*_golden.npz as flashbits/records/ (pyproject.toml's
# package-data); a source checkout keeps them in tests/data/hw/.
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # flashbits/ or the checkout root
RECORD_DIRS = (os.path.join(_PKG, "records"), os.path.join(_PKG, "tests", "data", "hw"))
DOCUMENTED_PREFIX = os.path.join("tests", "data", "hw")


def record_dirs() -> list[str]:
    """The folders holding the shipped golden records, those that exist here."""
    return [d for d in RECORD_DIRS if os.path.isdir(d)]


def find_record(name: str) -> str:
    """Resolve a record argument: a path (as given, relative to the current directory)
    first, then its file name (``.npz`` added when missing) in the installed package
    data and the checkout's tests/data/hw/.  So ``attention_golden``,
    ``attention_golden.npz`` and the documented ``tests/data/hw/attention_golden.npz``
    all work from any directory.  FileNotFoundError lists every place looked at."""
    looked = [os.path.abspath(name)]
    if os.path.isfile(name):
        return name
    base = os.path.basename(name)
    if not base.endswith(".npz"):
        base += ".npz"
    if not os.path.isabs(name):
        for d in record_dirs():
            cand = os.path.join(d, base)
            if cand not in looked:
                looked.append(cand)
            if os.path.isfile(cand):
                return cand
    shipped = sorted({f for d in record_dirs() for f in os.listdir(d)
                      if f.startswith("attention") and f.endswith(".npz")})
    raise FileNotFoundError(f"no such record: {name}; looked in:\n  " + "\n  ".join(looked)
                            + ("\nshipped records: " + ", ".join(shipped) if shipped else ""))


def save_record(path: str, entries: list[dict], provenance: dict) -> None:
    """entries: dicts with case (Case), cfg (Config), q, k, v (bf16 values), prod, dump (sides);
    a backward entry also ``pass`` = "backward" and ``carry`` = (out, lse, dO), the forward
    both of its sides read (out, dO bf16 values; lse float64)."""
    arrays = {"provenance": np.array(json.dumps(provenance)), "n": np.int64(len(entries))}
    for i, e in enumerate(entries):
        arrays[f"e{i}_case"] = np.array(json.dumps(e["case"].to_dict()))
        arrays[f"e{i}_config"] = np.array(json.dumps(e["cfg"].to_dict()))
        for t in ("q", "k", "v"):
            arrays[f"e{i}_{t}"] = to_bits(e[t], "bf16")
        if e.get("pass", "forward") == "backward":
            out, lse, do = e["carry"]
            arrays[f"e{i}_pass"] = np.array("backward")
            arrays[f"e{i}_carry_out"] = to_bits(out, "bf16")
            arrays[f"e{i}_carry_lse"] = np.asarray(lse, np.float64)
            arrays[f"e{i}_carry_do"] = to_bits(do, "bf16")
        for launch in ("prod", "dump"):
            for name, bits in (e.get(launch) or {}).items():
                arrays[f"e{i}_{launch}_{name}"] = bits
    np.savez_compressed(path, **arrays)


def open_npz(path: str, expected: str, keys=()):
    """``np.load(path)`` of an .npz archive holding ``keys``, or a ValueError that says
    what is wrong with the file and what was ``expected`` (no traceback for a user's mistake)."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file; expected {expected}")
    try:
        z = np.load(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a valid .npz (a corrupt or truncated zip archive); "
                         f"expected {expected}") from None
    except (ValueError, OSError, EOFError) as e:  # a text file: numpy's allow_pickle advice; a folder
        raise ValueError(f"{path} is not an .npz archive ({type(e).__name__}); expected {expected}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, not an .npz archive; expected {expected}")
    missing = [k for k in keys if k not in z.files]
    if missing:
        raise ValueError(f"{path} lacks the arrays {', '.join(missing)}; expected {expected}")
    return z


RECORD = "a flashbits golden record (written by crosscheck --record; e.g. tests/data/hw/attention_golden.npz)"


def load_record(path: str):
    z = open_npz(path, RECORD, ("provenance", "n"))
    prov = json.loads(str(z["provenance"]))
    entries = []
    for i in range(int(z["n"])):
        case = Case(**json.loads(str(z[f"e{i}_case"])))
        cfg = Config(**json.loads(str(z[f"e{i}_config"])))
        ent = {"case": case, "cfg": cfg}
        for t in ("q", "k", "v"):
            ent[t] = from_bits(z[f"e{i}_{t}"], "bf16")
        ent["pass"] = str(z[f"e{i}_pass"]) if f"e{i}_pass" in z.files else "forward"
        if ent["pass"] == "backward":
            ent["carry"] = (from_bits(z[f"e{i}_carry_out"], "bf16"), z[f"e{i}_carry_lse"],
                            from_bits(z[f"e{i}_carry_do"], "bf16"))
        for launch in ("prod", "dump"):
            pre = f"e{i}_{launch}_"
            side = {key[len(pre):]: z[key] for key in z.files if key.startswith(pre)}
            ent[launch] = side or None
        entries.append(ent)
    return entries, prov


def replay_record(path: str, log=print) -> dict:
    """Emulate every entry of a record and compare with its GPU bits."""
    entries, prov = load_record(path)
    res = {"record": path, "provenance": prov, "entries": len(entries), "elements": 0, "mismatches": 0,
           "failures": []}
    from .runner import passes

    for e in progress(entries, total=len(entries), desc="replay"):
        run = passes()[e["pass"]]
        emu = run.emulate(e["case"], e["q"], e["k"], e["v"], e["cfg"], e.get("carry"))
        for launch in ("prod", "dump"):
            if e[launch] is None:
                continue
            # the pass's tensors of this launch, those the record holds
            wanted = run.compared(e["cfg"], "production" if launch == "prod" else "dump")
            r = compare_sides(emu, e[launch], tuple(t for t in wanted if t in e[launch]))
            res["elements"] += r["elements"]
            res["mismatches"] += r["mismatches"]
            if r["mismatches"]:
                res["failures"].append({"case": e["case"].name, "config": e["cfg"].name, "launch": launch,
                                        **(r["first_mismatch"] or {})})
    log(f"replayed {res['entries']} entries of {path}: {res['elements']} elements, "
        f"{res['mismatches']} mismatching")
    return res
