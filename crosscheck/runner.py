"""Run many cases through the GPU kernels and the emulator and compare every bit.

The GPU side runs in this process, one launch per case and launch kind
(production: no dumps; dump: intermediates stored too).  The emulator side runs
in a pool of worker processes (one numba thread each), so a 16-core GPU host
checks thousands of cases in minutes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor


from dataclasses import dataclass
from typing import Callable

from .cases import Case, generate
from .compare import compare_sides
from .progress import progress
from .sides import Config, emulator_side, gpu_side


@dataclass(frozen=True)
class Pass:
    """What the crosscheck runs of one case: the forward or the backward.

    ``gpu(case, q, k, v, cfg, dump_launch) -> (production side, dump side or None,
    carry)``: the kernel launches; ``carry`` is what the emulator side needs besides the
    case (the backward: the forward's out and lse and dO, so both backward sides read
    the same forward).  ``emulate(case, q, k, v, cfg, carry) -> side`` (dump tensors
    included); ``compared(cfg, launch)``: the tensors compared, earliest stage first.
    """

    name: str
    gpu: Callable
    emulate: Callable
    compared: Callable


def _forward_gpu(case, q, k, v, cfg, dump_launch):
    prod = gpu_side(q, k, v, case.causal, cfg, dump=False)
    return prod, gpu_side(q, k, v, case.causal, cfg, dump=True) if dump_launch else None, None


def _forward_emulate(case, q, k, v, cfg, carry):
    return emulator_side(q, k, v, case.causal, cfg, dump=True)


FORWARD = Pass("forward", _forward_gpu, _forward_emulate, lambda cfg, launch: cfg.compared(launch))


def _init_worker():
    import numba

    numba.set_num_threads(1)


def _emu_task(args):
    case, cfg, pass_name, carry = args
    q, k, v = generate(case)
    return passes()[pass_name].emulate(case, q, k, v, cfg, carry)


def passes() -> dict:
    """{name: Pass}: the forward, and the backward (crosscheck.backward_sides)."""
    from .backward_sides import BACKWARD

    return {"forward": FORWARD, "backward": BACKWARD}


_POOL = {}


def _pool(workers: int):
    """One process pool per size, reused across configurations (spawning costs seconds)."""
    if workers not in _POOL:
        # spawn, not fork: the parent already runs OpenMP/CUDA threads (torch, numba)
        ctx = multiprocessing.get_context("spawn")
        _POOL[workers] = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, mp_context=ctx)
    return _POOL[workers]


def emulate_many(cases, cfg, workers: int | None = None, pass_name: str = "forward", carries=None):
    """Emulator sides of ``cases`` under ``cfg``, in parallel processes (``carries``: the
    pass's per-case carry from its GPU side)."""
    workers = workers or os.cpu_count() or 1
    desc = f"{cfg.name}: emulator"
    tasks = [(c, cfg, pass_name, carry) for c, carry in zip(cases, carries or [None] * len(cases))]
    if workers == 1 or len(cases) < 4:
        return [_emu_task(t) for t in progress(tasks, total=len(tasks), desc=desc)]
    # compile (and cache) the kernels once here, so the workers only load them
    first = _emu_task(tasks[0])
    rest = _pool(workers).map(_emu_task, tasks[1:], chunksize=max(1, len(cases) // (4 * workers)))
    return [first] + list(progress(rest, total=len(cases) - 1, desc=desc))


def crosscheck_config(cases: list[Case], cfg: Config, *, dump_launch: bool = True, workers=None, log=print,
                      keep=None, pass_name: str = "forward") -> dict:
    """Compare GPU and emulator on every case for one configuration, forward or backward
    (``pass_name``: a key of :func:`passes`).

    Returns a JSON-able summary: per launch kind, cases, elements, mismatches,
    per-tensor counts, the first mismatching case located.  ``keep`` (a set of
    case indices) returns those cases' inputs and GPU sides for a golden record.
    """
    run = passes()[pass_name]
    t0 = time.time()
    gpu_prod, gpu_dump, carries, kept = [], [], [], {}
    for i, c in enumerate(progress(cases, total=len(cases), desc=f"{cfg.name}: GPU")):
        q, k, v = generate(c)
        prod, dump, carry = run.gpu(c, q, k, v, cfg, dump_launch)
        gpu_prod.append(prod)
        carries.append(carry)
        if dump_launch:
            gpu_dump.append(dump)
        if keep and i in keep:
            kept[i] = {"case": c, "q": q, "k": k, "v": v, "prod": prod, "dump": dump, "carry": carry}
    t_gpu = time.time() - t0
    emu = emulate_many(cases, cfg, workers, pass_name, carries)
    t_emu = time.time() - t0 - t_gpu
    summary = {"config": cfg.to_dict(), "name": cfg.name, "pass": pass_name, "cases": len(cases),
               "seconds_gpu": round(t_gpu, 1), "seconds_emulator": round(t_emu, 1)}
    for launch, sides in (("production", gpu_prod), ("dump", gpu_dump)):
        if not sides:
            continue
        tensors = run.compared(cfg, launch)
        tot = {"cases": 0, "cases_mismatching": 0, "elements": 0, "mismatches": 0, "tensors": {},
               "first_mismatch": None, "by_kind": {}}
        for c, e, g in zip(cases, emu, sides):
            r = compare_sides(e, g, tensors)
            tot["cases"] += 1
            tot["elements"] += r["elements"]
            tot["mismatches"] += r["mismatches"]
            bk = tot["by_kind"].setdefault(c.kind, [0, 0])
            bk[0] += 1
            if r["mismatches"]:
                tot["cases_mismatching"] += 1
                bk[1] += 1
                if tot["first_mismatch"] is None:
                    tot["first_mismatch"] = {"case": c.name, **r["first_mismatch"]}
            for name, t in r["tensors"].items():
                acc = tot["tensors"].setdefault(name, {"elements": 0, "mismatches": 0})
                acc["elements"] += t["elements"]
                acc["mismatches"] += t["mismatches"]
        summary[launch] = tot
        log(f"{cfg.name} [{launch}] {tot['cases']} cases, {tot['elements']} elements, "
            f"{tot['mismatches']} mismatching ({tot['cases_mismatching']} cases)")
    if keep is not None:
        summary["_kept"] = kept
    return summary
