"""The golden hardware records: regenerate them all on the GPU, install them here.

    python -m flashbits.crosscheck.records regenerate OUT [--only PARTS] [--cases N] [--budget S]
    python -m flashbits.crosscheck.records install OUT [OUT...]

``regenerate`` runs every step that produces a record into one tree ``OUT``
(parts, in this order; each step a child process with its own time cap, its
output in ``OUT/<part>/<step>/log.txt``):

==============  =====================================================================
part            steps and what they write
==============  =====================================================================
``exp2``        ``gpu.probes.run_all --only exp2``: the MUFU.EX2 tables and
                ``exp2_golden.npz`` (``OUT/probes/exp2/``)
``exp2_verify`` the installed exp2 model against the GPU on all 2^32 inputs
``dots``        wgmma dot products: ``dot_golden.npz``
``casts``       bf16/fp8 casts and Philox: ``casts_golden.npz``
``attention``   one step per recipe × kernel fix (``fa2nofix``, ``fa2fix``, ...): the
                crosscheck, rne and sr, production and dump launches, ``--cases``
                (default 1000) cases per configuration, 3 kept per configuration in
                ``attention_golden.npz`` (``OUT/attention/<step>/``)
``backward``    one step per kernel fix (``fa2nofix``, ``fa2fix``): ``crosscheck
                --backward`` of every recipe with backward kernels (fa2), rne and sr,
                production and dump launches, ``--cases`` cases, 3 kept per
                configuration in ``backward_golden.npz`` (``OUT/backward/<step>/``)
``bias``        ``crosscheck.bias_confirm``: every kernel cell of the bias study
``sdpa``        ``gpu.probes.sdpa_probe``: the torch drop-in's record ``sdpa_golden.npz``
                (forward and gradients through the custom ops) and ``sdpa_gpu.json``
``tiles``       one step per recipe: every other tile the kernels accept
                (``sides.other_tiles``), no fix with rne and the paper fix with sr
                side by side, 48 cases each (``--cases``), one kept per tile
``bench``       ``gpu.bench``: throughput against FlexAttention and SDPA
==============  =====================================================================

``OUT/manifest.json`` says what ran: per step its command, exit status, seconds,
and the commit (``FLASHBITS_COMMIT`` or ``git rev-parse HEAD``; dirty:
``FLASHBITS_DIRTY`` or ``git status``), which every record's provenance repeats.
A step already done in ``OUT`` is skipped, so one long regeneration is split
over several machine sessions by running the same command again: with
``--budget S`` it starts no step whose estimate (below, or that step's last
recorded time) no longer fits in S seconds, and says so (exit status 3).
``--only`` takes parts or single steps (``attention/fa2fix``, ``tiles/paper``),
``--force`` runs done steps again, ``--dry-run`` prints the plan.

``install`` recognises what each OUT holds, whatever produced it (this tree,
or an older layout: a ``run_all`` folder, crosscheck ``--out`` folders), and
installs it into ``tests/data/hw/``:

* the probes' records and their summaries (merged into ``probe_summary.json``,
  one key per probe); captured MUFU.EX2 tables become the package data
  ``emulator/hw/data/sfu_exp2_sm90.npz`` (only the 2^F entries the model reads,
  delta-coded);
* each crosscheck folder's report as ``crosscheck/<step>.{md,json}`` (tile runs:
  ``crosscheck/tiles_<step>``, backward runs ``crosscheck/backward_<step>``), their
  records merged into ``attention_golden.npz``, ``attention_tiles_golden.npz`` or
  ``backward_golden.npz`` (entries of
  configurations not installed now are kept; provenance: the first run's, with
  every run's under ``runs``);
* the bias files and the drop-in's files as they are; ``bench.json`` as
  ``benchmarks/results/h200_attention_bench.json``.

The parts read the GPU only through child processes (``python -m ...``), so this
module imports nothing from ``flashbits.gpu.probes``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)  # the repository root when run from a checkout
PROBE_RECORDS = ("exp2_golden.npz", "dot_golden.npz", "casts_golden.npz")
PARTS = ("exp2", "exp2_verify", "dots", "casts", "attention", "backward", "bias", "sdpa", "tiles", "bench")
MANIFEST = "manifest.json"

# Seconds per step on the H200 host (16 cores), from the installed records: the
# probes' `seconds` in tests/data/hw/probe_summary{,_run1}.json; attention: the sum
# of seconds_gpu + seconds_emulator in tests/data/hw/crosscheck/<step>.json (1000
# cases; the steps' provenance dates lie 3-3.7 min apart); bias: `seconds` of
# bias_gpu_confirmation.json; tiles: the slower of the two side-by-side
# configurations' sums in crosscheck/tiles_*.json (the fa2 step's dates: 7.5 min);
# bench: not recorded (it ran under a 300 s cap); backward: not yet run (a guess: the
# emulator's backward costs about 4 forwards).  Each adds ~20 s of start-up.
ESTIMATE_S = {"exp2": 70, "exp2_verify": 50, "dots": 30, "casts": 135, "attention": 220, "backward": 500, "sdpa": 180,
              "bias": 60, "tiles": 450, "bench": 300}
# a step is killed after this many seconds (a hung compile must not eat the call)
CAP_S = {"exp2": 300, "exp2_verify": 300, "dots": 300, "casts": 400, "attention": 540, "backward": 570, "sdpa": 400,
         "bias": 300, "tiles": 570, "bench": 300}
# the tile steps' two configurations: (fix, rounding), run side by side
TILE_CONFIGS = ((None, "rne"), ("paper", "sr"))
ATTENTION_CASES, TILE_CASES = 1000, 48


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def fix_label(fix) -> str:
    """The step-name suffix of a fix: ``nofix``, ``fix`` (the paper fix), ``<name>fix``."""
    return "nofix" if fix is None else "fix" if fix == "paper" else f"{fix}fix"


@dataclass
class Step:
    """One child process of a regeneration: ``part/name`` writes into ``OUT/<outdir>``."""

    part: str
    name: str
    outdir: str
    commands: list = field(default_factory=list)  # run side by side, each (argv, log file)

    @property
    def key(self) -> str:
        """``part`` for a part of one step, else ``part/name`` (what --only takes)."""
        return self.part if self.name == self.part else f"{self.part}/{self.name}"


def plan(out: str, cases: int | None = None, workers: int | None = None, python: str = sys.executable) -> list:
    """Every step of a full regeneration, in order."""
    from flashbits.emulator import RECIPES
    from flashbits.gpu.attention import KERNEL_RECIPES

    from .sides import KERNEL_FIXES, kernel_config, other_tiles

    workers = workers or os.cpu_count() or 1
    steps = []
    for probe in ("exp2", "exp2_verify", "dots", "casts"):
        d = os.path.join("probes", probe)
        steps.append(Step(probe, probe, d, [([python, "-m", "flashbits.gpu.probes.run_all", os.path.join(out, d),
                                              "--only", probe], os.path.join(d, "run.log"))]))
    for recipe in KERNEL_RECIPES:
        for fix in KERNEL_FIXES:
            if not kernel_config(recipe, fix, "rne"):
                continue
            name = f"{recipe}{fix_label(fix)}"
            d = os.path.join("attention", name)
            steps.append(Step("attention", name, d, [(
                [python, "-m", "flashbits.crosscheck.cli", "crosscheck", "--recipes", recipe,
                 "--fixes", fix or "none", "--cases", str(cases or ATTENTION_CASES), "--workers", str(workers),
                 "--out", os.path.join(out, d), "--record", os.path.join(out, d), "--record-cases", "3"],
                os.path.join(d, "log.txt"))]))
    bwd_recipes = [r for r in KERNEL_RECIPES if RECIPES[r].spec.backward and RECIPES[r].spec.backward.gpu_module]
    for fix in KERNEL_FIXES:
        if not all(kernel_config(r, fix, "rne") for r in bwd_recipes):
            continue
        d = os.path.join("backward", f"{'_'.join(bwd_recipes)}{fix_label(fix)}")
        steps.append(Step("backward", os.path.basename(d), d, [(
            [python, "-m", "flashbits.crosscheck.cli", "crosscheck", "--backward", "--recipes", ",".join(bwd_recipes),
             "--fixes", fix or "none", "--cases", str(cases or ATTENTION_CASES), "--workers", str(workers),
             "--out", os.path.join(out, d), "--record", os.path.join(out, d), "--record-cases", "3"],
            os.path.join(d, "log.txt"))]))
    d = "bias"
    steps.append(Step("bias", "bias", d, [([python, "-m", "flashbits.crosscheck.bias_confirm",
                                            os.path.join(out, d, "bias_gpu_confirmation.json"),
                                            os.path.join(out, d, "attention_bias_golden.npz")],
                                           os.path.join(d, "log.txt"))]))
    d = "sdpa"
    steps.append(Step("sdpa", "sdpa", d, [([python, "-m", "flashbits.gpu.probes.sdpa_probe", os.path.join(out, d)],
                                           os.path.join(d, "log.txt"))]))
    for recipe in KERNEL_RECIPES:
        cmds = []
        for fix, rounding in TILE_CONFIGS:
            d = os.path.join("tiles", f"{recipe}_{fix_label(fix)}")
            cmds.append(([python, "-m", "flashbits.crosscheck.cli", "crosscheck", "--recipes", recipe,
                          "--fixes", fix or "none", "--roundings", rounding, "--tiles", ",".join(other_tiles(recipe)),
                          "--cases", str(cases or TILE_CASES), "--workers", str(max(1, workers // len(TILE_CONFIGS))),
                          "--out", os.path.join(out, d), "--record", os.path.join(out, d), "--record-cases", "1"],
                         os.path.join(d, "log.txt")))
        steps.append(Step("tiles", recipe, "tiles", cmds))
    d = "bench"
    steps.append(Step("bench", "bench", d, [([python, "-m", "flashbits.gpu.bench", "--json",
                                              os.path.join(out, d, "bench.json")], os.path.join(d, "log.txt"))]))
    return steps


def select(steps: list, only: str | None) -> list:
    """The steps named by ``--only`` (parts or part/step keys), in plan order."""
    if not only:
        return steps
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    known = set(PARTS) | {s.key for s in steps}
    bad = [w for w in wanted if w not in known]
    if bad:
        raise ValueError(f"unknown parts or steps {bad}; accepted: {', '.join(PARTS)}, or one step of "
                         f"{', '.join(s.key for s in steps)}")
    return [s for s in steps if s.part in wanted or s.key in wanted]


def _git(*args) -> str:
    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=CHECKOUT, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def source_identity() -> dict:
    """FLASHBITS_COMMIT / FLASHBITS_DIRTY, or what git says about this checkout."""
    commit = os.environ.get("FLASHBITS_COMMIT") or _git("rev-parse", "HEAD") or "unknown"
    dirty = os.environ.get("FLASHBITS_DIRTY")
    if not dirty:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = "unknown" if commit == "unknown" else ("yes" if status else "no")
    return {"commit": commit, "dirty": dirty}


def _load_manifest(out: str) -> dict:
    p = os.path.join(out, MANIFEST)
    if os.path.exists(p):
        with open(p) as f:
            return json.load(f)
    return {"steps": {}}


def _save_manifest(out: str, manifest: dict) -> None:
    manifest["updated_utc"] = _now()
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(out, MANIFEST))


def _status(rc: int) -> str:
    return {0: "ok", 1: "mismatch", 124: "timeout"}.get(rc, "failed")


def _run_step(step: Step, out: str, env: dict, cap: float, echo) -> int:
    """Run the step's commands side by side, each in its own process group; each one's
    output goes to its log file (and through ``echo``).  After ``cap`` seconds the
    groups are killed (their emulator pools with them).  The worst exit status
    (a timeout: 124; a failure outweighs a mismatch, 1)."""
    import signal
    import threading

    lock = threading.Lock()
    procs, readers = [], []

    def copy(p, f, tag):
        for line in p.stdout:
            f.write(line)
            f.flush()
            with lock:
                echo(f"    {tag}{line.rstrip()}")

    for argv, log in step.commands:
        path = os.path.join(out, log)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "w")
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)
        tag = os.path.basename(os.path.dirname(path)) + ": " if len(step.commands) > 1 else ""
        t = threading.Thread(target=copy, args=(p, f, tag), daemon=True)
        t.start()
        procs.append((p, f, tag))
        readers.append(t)
    deadline = time.time() + cap
    rcs = []
    for p, f, tag in procs:
        try:
            rc = p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            with lock:
                echo(f"    {tag}killed after {cap:.0f} s")
            rc = 124
        rcs.append(rc)
    for t in readers:
        t.join(timeout=10)
    for _, f, _ in procs:
        f.close()
    failing = [rc for rc in rcs if rc != 0]
    return max(failing, key=lambda rc: (rc != 1, rc)) if failing else 0


def regenerate(out: str, only: str | None = None, *, cases: int | None = None, workers: int | None = None,
               budget: float | None = None, force: bool = False, dry_run: bool = False, quiet: bool = False,
               log=print) -> int:
    """Run the selected steps into ``out`` (module docstring).  Exit status: 0 every
    selected step done with all bits equal, 1 a step mismatched or failed, 3 stopped by
    the budget with steps left (run the same command again)."""
    t0 = time.time()
    out = os.path.abspath(out)
    steps = select(plan(out, cases, workers), only)
    manifest = _load_manifest(out)
    ident = source_identity()
    todo = [s for s in steps if force or manifest["steps"].get(s.key, {}).get("status") != "ok"]

    def estimate(s):
        return manifest["steps"].get(s.key, {}).get("seconds") or ESTIMATE_S[s.part]

    log(f"regenerate into {out}: {len(steps)} steps selected, {len(steps) - len(todo)} already done, "
        f"{len(todo)} to run (≈ {_duration(sum(estimate(s) for s in todo))} on an H200 host); "
        f"commit {ident['commit']} (dirty: {ident['dirty']})")
    if dry_run:
        for s in steps:
            st = manifest["steps"].get(s.key, {}).get("status", "not run")
            log(f"  {s.key:<24} ≈ {estimate(s):>4.0f} s  [{st}]  → OUT/{s.outdir}")
            for argv, _ in s.commands:
                log("      " + " ".join(argv[1:]))
        return 0
    if todo and not _has_cuda():
        log("regenerate: no CUDA GPU here (torch.cuda.is_available() is False); the records come from the GPU.")
        return 2
    os.makedirs(out, exist_ok=True)
    if manifest.get("commit") not in (None, ident["commit"]):
        log(f"warning: {out} holds steps of commit {manifest['commit']}; this run is {ident['commit']}")
    manifest.update(ident)
    env = dict(os.environ, PYTHONUNBUFFERED="1", FLASHBITS_COMMIT=ident["commit"], FLASHBITS_DIRTY=ident["dirty"])
    if os.path.exists(os.path.join(CHECKOUT, "flashbits", "__init__.py")):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (CHECKOUT, env.get("PYTHONPATH")) if p)
    worst = 0
    for i, s in enumerate(todo, 1):
        left = None if budget is None else budget - (time.time() - t0)
        if left is not None and estimate(s) > left:
            rest = todo[i - 1:]
            log(f"stopped before {s.key}: it needs ≈ {estimate(s):.0f} s and {max(left, 0):.0f} s of the budget "
                f"are left; {len(rest)} steps to go ({', '.join(r.key for r in rest)}): run the same command again")
            _save_manifest(out, manifest)
            return 3 if worst == 0 else 1
        cap = CAP_S[s.part] if left is None else min(CAP_S[s.part], left)
        log(f"[{time.strftime('%H:%M:%S')}] step {i}/{len(todo)} {s.key} (≈ {estimate(s):.0f} s, cap {cap:.0f} s)")
        started, ts = _now(), time.time()
        rc = _run_step(s, out, env, cap, (lambda _line: None) if quiet else log)
        secs = round(time.time() - ts, 1)
        manifest["steps"][s.key] = {"part": s.part, "status": _status(rc), "rc": rc, "seconds": secs,
                                    "started_utc": started, "outdir": s.outdir, "commit": ident["commit"],
                                    "dirty": ident["dirty"],
                                    "commands": [" ".join(argv[1:]) for argv, _ in s.commands]}
        _save_manifest(out, manifest)
        log(f"[{time.strftime('%H:%M:%S')}] {s.key}: {_status(rc)} (exit {rc}) in {secs:.0f} s")
        if rc:
            worst = 1
    done = sum(manifest["steps"].get(s.key, {}).get("status") == "ok" for s in steps)
    log(f"regenerate: {done}/{len(steps)} selected steps ok, {time.time() - t0:.0f} s; "
        f"install with: python -m flashbits.crosscheck.records install {out}")
    return worst


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# ------------------------------------------------------------------ install ---

def _is_tile_report(report: dict) -> bool:
    tile_keys = ("block_m", "block_n", "num_warps", "num_stages")
    return any(c["config"].get(k) is not None for c in report.get("configs", []) for k in tile_keys)


def _classify(outdirs) -> dict:
    """{kind: [directories]} for every directory under ``outdirs`` that holds
    something installable (kind: probes, crosscheck, bias, bench)."""
    found = {"probes": [], "crosscheck": [], "bias": [], "bench": [], "sdpa": []}
    for top in outdirs:
        if not os.path.isdir(top):
            raise FileNotFoundError(f"no such directory: {top}")
        for d, dirs, files in sorted(os.walk(top)):
            dirs.sort()
            files = set(files)
            if "exp2_tables.npz" in files or files & set(PROBE_RECORDS) or (
                    "summary.json" in files and "crosscheck.json" not in files):
                found["probes"].append(d)
            if "crosscheck.json" in files:
                found["crosscheck"].append(d)
            if files & {"bias_gpu_confirmation.json", "attention_bias_golden.npz"}:
                found["bias"].append(d)
            if "bench.json" in files:
                found["bench"].append(d)
            if "sdpa_golden.npz" in files:
                found["sdpa"].append(d)
    return found


def install_probes(dirs, repo: str, log=print) -> None:
    """Probe records into tests/data/hw/, summaries merged into probe_summary.json, and
    captured exp2 tables as the package data."""
    from flashbits.emulator.hw.sfu import DATA, _undelta, delta_encode

    hw = os.path.join(repo, "tests", "data", "hw")
    os.makedirs(hw, exist_ok=True)
    summ_path = os.path.join(hw, "probe_summary.json")
    summary, merged = None, []
    for d in dirs:
        for name in PROBE_RECORDS:
            src = os.path.join(d, name)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(hw, name))
                log(f"installed tests/data/hw/{name} (from {src})")
        sp = os.path.join(d, "summary.json")
        if os.path.exists(sp):
            with open(sp) as f:
                part = json.load(f)
            if summary is None:
                summary = {}
                if os.path.exists(summ_path):
                    with open(summ_path) as f:
                        summary = json.load(f)
            by_probe = summary.setdefault("provenance_by_probe", {})
            for key, val in part.items():
                if key == "provenance":
                    continue
                summary[key] = val
                if not key.endswith("_error"):
                    by_probe[key] = part.get("provenance")
                    merged.append(key)
            # the summary's own provenance is that of the dot run (its records' check), else the newest
            if "dots" in part or "provenance" not in summary:
                summary["provenance"] = part.get("provenance")
        tab = os.path.join(d, "exp2_tables.npz")
        if os.path.exists(tab):
            z = np.load(tab)
            params = json.loads(str(z["params"]))
            F = int(params["F"])
            step = 1 << (24 - F)  # captured at 2^-24 spacing; the model reads 2^-F spacing
            arrays = {}
            for side in ("tpos", "tneg"):
                full = _undelta(z[f"{side}_delta"], int(z[f"{side}_first"]))
                delta, first = delta_encode(full[::step])
                arrays[f"{side}_delta"] = delta
                arrays[f"{side}_first"] = np.int64(first)
            arrays["params"] = np.array(json.dumps(params))
            data = os.path.join(repo, os.path.relpath(DATA, CHECKOUT))
            os.makedirs(os.path.dirname(data), exist_ok=True)
            np.savez_compressed(data, **arrays)
            log(f"installed {os.path.relpath(data, repo)} ({os.path.getsize(data) / 2**20:.2f} MiB, F={F})")
    if summary is not None:
        with open(summ_path, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True, default=str)
        log(f"installed tests/data/hw/probe_summary.json ({', '.join(merged) or 'no probe'} merged in)")


def _cfg_key(cfg) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def install_crosscheck(dirs, repo: str, *, record: str, prefix: str, log=print, source: str = "attention_golden.npz"
                       ) -> None:
    """Reports as tests/data/hw/crosscheck/<prefix><step>.{md,json}; the steps' records
    merged into tests/data/hw/<record>, keeping the entries of configurations not
    installed now."""
    from .record import load_record, save_record

    hw = os.path.join(repo, "tests", "data", "hw")
    reports = os.path.join(hw, "crosscheck")
    os.makedirs(reports, exist_ok=True)
    entries, runs = [], []
    for d in dirs:
        step = os.path.basename(os.path.normpath(d))
        for ext in ("md", "json"):
            if os.path.exists(os.path.join(d, f"crosscheck.{ext}")):
                shutil.copy(os.path.join(d, f"crosscheck.{ext}"), os.path.join(reports, f"{prefix}{step}.{ext}"))
        log(f"installed tests/data/hw/crosscheck/{prefix}{step}.md, .json")
        rec = os.path.join(d, source)
        if os.path.exists(rec):
            ents, prov = load_record(rec)
            entries += ents
            runs.append({"step": step, **prov})
    if not entries:
        return
    path = os.path.join(hw, record)
    kept, old_runs = [], []
    if os.path.exists(path):
        new = {_cfg_key(e["cfg"]) for e in entries}
        old, old_prov = load_record(path)
        kept = [e for e in old if _cfg_key(e["cfg"]) not in new]
        steps = {r["step"] for r in runs}
        old_runs = [r for r in old_prov.get("runs", []) if r.get("step") not in steps] if kept else []
    all_runs = old_runs + runs
    prov = {**{k: v for k, v in all_runs[0].items() if k != "step"}, "runs": all_runs}
    save_record(path, kept + entries, prov)
    log(f"installed tests/data/hw/{record} ({len(entries)} entries from {len(runs)} records"
        + (f", {len(kept)} kept from the installed one" if kept else "") + ")")


def install(outdirs, repo: str | None = None, log=print) -> dict:
    """Install whatever ``outdirs`` hold (module docstring); returns what was found."""
    repo = repo or (CHECKOUT if os.path.isdir(os.path.join(CHECKOUT, "tests", "data", "hw")) else os.getcwd())
    for top in outdirs:
        m = os.path.join(top, MANIFEST)
        if os.path.exists(m):
            with open(m) as f:
                man = json.load(f)
            bad = {k: v["status"] for k, v in man.get("steps", {}).items() if v.get("status") != "ok"}
            log(f"{top}: commit {man.get('commit')}, {len(man.get('steps', {}))} steps run"
                + (f"; NOT ok (installed anyway, check them): {bad}" if bad else ", all ok"))
    found = _classify(outdirs)
    if not any(found.values()):
        raise FileNotFoundError(f"nothing to install in {', '.join(outdirs)} (no records, summaries, crosscheck "
                                "reports, bias or bench files)")
    if found["probes"]:
        install_probes(found["probes"], repo, log)
    attention, tiles, backward = [], [], []
    for d in found["crosscheck"]:
        with open(os.path.join(d, "crosscheck.json")) as f:
            report = json.load(f)
        (backward if report.get("pass") == "backward" else tiles if _is_tile_report(report) else attention).append(d)
    if backward:
        install_crosscheck(backward, repo, record="backward_golden.npz", prefix="backward_", log=log,
                           source="backward_golden.npz")
    if attention:
        install_crosscheck(attention, repo, record="attention_golden.npz", prefix="", log=log)
    if tiles:
        install_crosscheck(tiles, repo, record="attention_tiles_golden.npz", prefix="tiles_", log=log)
    hw = os.path.join(repo, "tests", "data", "hw")
    for d in found["bias"]:
        for name in ("bias_gpu_confirmation.json", "attention_bias_golden.npz"):
            if os.path.exists(os.path.join(d, name)):
                shutil.copy(os.path.join(d, name), os.path.join(hw, name))
                log(f"installed tests/data/hw/{name}")
    for d in found["sdpa"]:
        for name in ("sdpa_golden.npz", "sdpa_gpu.json"):
            if os.path.exists(os.path.join(d, name)):
                shutil.copy(os.path.join(d, name), os.path.join(hw, name))
                log(f"installed tests/data/hw/{name}")
    for d in found["bench"]:
        dst = os.path.join(repo, "benchmarks", "results", "h200_attention_bench.json")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(os.path.join(d, "bench.json"), dst)
        log("installed benchmarks/results/h200_attention_bench.json")
    return found


# --------------------------------------------------------------------- CLI ----

def build_parser():
    ap = argparse.ArgumentParser(prog="python -m flashbits.crosscheck.records", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("regenerate", help="run every record-producing step on the GPU into one OUT tree",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run the parts below, in order, into OUT (a step done in OUT is skipped: "
                                   "run the same command again to continue).\nparts (≈ seconds per step on "
                                   "the H200 host): " + ", ".join(f"{k} {v}" for k, v in ESTIMATE_S.items())
                                   + "\nexit status: 0 all ok, 1 a step mismatched or failed, 2 no GPU or "
                                   "a bad argument, 3 stopped by --budget with steps left")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--only", help=f"comma-separated parts ({', '.join(PARTS)}) or steps (attention/fa2fix, "
                                  "tiles/paper); default all")
    p.add_argument("--cases", type=int, help=f"cases per configuration (default {ATTENTION_CASES} for attention, "
                                             f"{TILE_CASES} for tiles)")
    p.add_argument("--workers", type=int, help="emulator processes (default: all cores; tiles: half each)")
    p.add_argument("--budget", type=float, metavar="S",
                   help="start no step that no longer fits in S seconds (e.g. 540 for a 10-minute call)")
    p.add_argument("--force", action="store_true", help="run steps again that OUT already holds as done")
    p.add_argument("--dry-run", action="store_true", help="print the steps, their estimates and status; run nothing")
    p.add_argument("--quiet", action="store_true", help="only the step lines (the steps' output stays in their logs)")
    p = sub.add_parser("install", help="install what each OUT holds into tests/data/hw/",
                       description="Recognise what each OUT holds (probe records and summaries, crosscheck "
                                   "reports and records, bias and bench files) and install it.")
    p.add_argument("outs", nargs="+", metavar="OUT")
    p.add_argument("--repo", help="repository to install into (default: this checkout)")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        if args.command == "regenerate":
            return regenerate(args.out, args.only, cases=args.cases, workers=args.workers, budget=args.budget,
                              force=args.force, dry_run=args.dry_run, quiet=args.quiet)
        if args.command == "install":
            install(args.outs, args.repo)
            return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"records {args.command}: error: {e}", file=sys.stderr)
        return 2
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
