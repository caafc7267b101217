"""GPU probe: tensor-core dot products (``tl.dot`` → wgmma) against the emulator.

For each input format and case kind (``gpu/probes/dot_cases.py``), K and
zero / nonzero accumulator, it runs 64×64 tiles ``D = A @ B + C`` through one
``tl.dot`` (4 warps: one warpgroup, wgmma m64n64k16 / k32), compares every
output's bits with :func:`emulator.tensor_core_dot` on the CPU cores, and keeps
a golden subset (32 rows × 32 columns of one tile per combination).
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import torch
import triton
import triton.language as tl

# "cpu" only for smoke tests under TRITON_INTERPRET=1 (semantics, never bits)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

from flashbits.emulator import to_bits
from flashbits.emulator.hw.tensor_core import tensor_core_dot
from flashbits.gpu.probes.dot_cases import KINDS, TILE, make_case

TORCH_DTYPE = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
KS = {"bf16": (16, 64, 128), "fp16": (16, 64, 128), "fp8_e4m3": (32, 64, 128), "fp8_e5m2": (32, 64, 128)}
GOLDEN_ROWS = 32
NUM_WARPS = 4


@triton.jit
def _dot_tiles(A, B, C, D, K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, K)
    a = tl.load(A + t * BM * K + rm[:, None] * K + rk[None, :])
    b = tl.load(B + t * K * BN + rk[:, None] * BN + rn[None, :])
    c = tl.load(C + t * BM * BN + rm[:, None] * BN + rn[None, :])
    d = tl.dot(a, b, c)
    tl.store(D + t * BM * BN + rm[:, None] * BN + rn[None, :], d)


def gpu_dot_tiles(a: np.ndarray, b: np.ndarray, c: np.ndarray, fmt: str) -> np.ndarray:
    """a (T, 64, K), b (T, K, 64), c (T, 64, 64) float32 → D bits (T, 64, 64) uint32."""
    T, M, K = a.shape
    dt = TORCH_DTYPE[fmt]
    ta = torch.from_numpy(a).to(DEVICE).to(dt)
    tb = torch.from_numpy(b).to(DEVICE).to(dt)
    # the casts must be exact: the inputs are representable already
    assert np.array_equal(ta.float().cpu().numpy(), a, equal_nan=True), "inexact operand cast"
    assert np.array_equal(tb.float().cpu().numpy(), b, equal_nan=True), "inexact operand cast"
    tc = torch.from_numpy(c).to(DEVICE)
    td = torch.empty_like(tc)
    _dot_tiles[(T,)](ta, tb, tc, td, K=K, BM=M, BN=b.shape[2], num_warps=NUM_WARPS)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return td.view(torch.int32).cpu().numpy().view(np.uint32)


def ptx_of_dot(fmt: str, K: int) -> str:
    """The PTX Triton generates for one tile kernel (to confirm wgmma is used)."""
    a = np.zeros((1, TILE, K), np.float32)
    b = np.zeros((1, K, TILE), np.float32)
    c = np.zeros((1, TILE, TILE), np.float32)
    dt = TORCH_DTYPE[fmt]
    ta, tb = torch.from_numpy(a).to(DEVICE).to(dt), torch.from_numpy(b).to(DEVICE).to(dt)
    tc = torch.from_numpy(c).to(DEVICE)
    k = _dot_tiles[(1,)](ta, tb, tc, torch.empty_like(tc), K=K, BM=TILE, BN=TILE, num_warps=NUM_WARPS)
    return k.asm["ptx"]


def run(out: dict, log, tiles_per_combo: int = 8, formats=("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")):
    t0 = time.time()
    res = {}
    arrays = {}
    for fmt in formats:
        fres = {"mismatching_dots": 0, "nan_payload_only": 0, "dots": 0, "by_combo": {}, "examples": []}
        golden = {"a": [], "b": [], "c": [], "d": [], "meta": []}
        analysis = {"a": [], "b": [], "c": [], "d": [], "meta": []}
        for K in KS[fmt]:
            for kind in KINDS:
                for acc in (False, True):
                    seeds = [zlib.crc32(f"{fmt}/{K}/{kind}/{acc}/{i}".encode()) for i in range(tiles_per_combo)]
                    cases = [make_case(kind, fmt, K, acc, s) for s in seeds]
                    a = np.stack([x[0] for x in cases])
                    b = np.stack([x[1] for x in cases])
                    c = np.stack([x[2] for x in cases])
                    d_hw = gpu_dot_tiles(a, b, c, fmt)
                    bad_n = 0
                    nanonly = 0
                    for t in range(len(cases)):
                        d_em = tensor_core_dot(a[t], b[t], c[t], in_fmt=fmt).view(np.uint32)
                        diff = d_hw[t] != d_em
                        both_nan = np.isnan(d_hw[t].view(np.float32)) & np.isnan(d_em.view(np.float32))
                        nanonly += int((diff & both_nan).sum())
                        bad = diff & ~both_nan
                        bad_n += int(bad.sum())
                        if bad.any() and len(fres["examples"]) < 12:
                            i, j = map(int, np.argwhere(bad)[0])
                            fres["examples"].append({
                                "kind": kind, "K": K, "acc": acc, "seed": seeds[t], "i": i, "j": j,
                                "a_bits": to_bits(a[t, i], fmt).tolist(),
                                "b_bits": to_bits(b[t][:, j], fmt).tolist(),
                                "c_bits": int(c[t, i, j].view(np.uint32)),
                                "hw": int(d_hw[t, i, j]), "model": int(d_em[i, j])})
                    key = f"{kind}/K{K}/{'acc' if acc else 'zero'}"
                    fres["by_combo"][key] = [bad_n, nanonly, int(d_hw.size)]
                    fres["mismatching_dots"] += bad_n
                    fres["nan_payload_only"] += nanonly
                    fres["dots"] += int(d_hw.size)
                    r = GOLDEN_ROWS
                    golden["a"].append(to_bits(a[0, :r, :], fmt))
                    golden["b"].append(to_bits(b[0, :, :r], fmt))
                    golden["c"].append(c[0, :r, :r].view(np.uint32))
                    golden["d"].append(d_hw[0, :r, :r])
                    golden["meta"].append(f"{kind}/{K}/{int(acc)}/{seeds[0]}")
                    if fmt.startswith("fp8") and (K == 32 or (K == 64 and kind in ("random", "wide", "sparse"))):
                        for t in range(len(cases)):
                            analysis["a"].append(to_bits(a[t], fmt))
                            analysis["b"].append(to_bits(b[t], fmt))
                            analysis["c"].append(c[t].view(np.uint32))
                            analysis["d"].append(d_hw[t])
                            analysis["meta"].append(f"{kind}/{K}/{int(acc)}/{seeds[t]}")
            log(f"dots {fmt} K={K} done, {time.time() - t0:.1f}s, mismatching so far {fres['mismatching_dots']}")
        res[fmt] = fres
        # ragged K: store per-K groups as object-free arrays by padding to 128
        for name, store in (("golden", golden), ("analysis", analysis)):
            if not store["a"]:
                continue
            arrays[f"{name}_{fmt}_a"] = _pad_stack(store["a"], 1)
            arrays[f"{name}_{fmt}_b"] = _pad_stack(store["b"], 0)
            arrays[f"{name}_{fmt}_c"] = np.stack(store["c"])
            arrays[f"{name}_{fmt}_d"] = np.stack(store["d"])
            arrays[f"{name}_{fmt}_meta"] = np.array(store["meta"])
    try:
        res["ptx_wgmma"] = {f"{fmt}/K{K}": [ln.strip() for ln in ptx_of_dot(fmt, K).splitlines()
                                           if "wgmma.mma_async" in ln][:2]
                            for fmt in formats for K in KS[fmt][:2]}
    except Exception as e:  # noqa: BLE001
        res["ptx_wgmma"] = f"failed: {e!r}"
    res["seconds"] = round(time.time() - t0, 1)
    res["num_warps"] = NUM_WARPS
    out["dots"] = res
    return arrays


def _pad_stack(parts, axis):
    """Stack (rows, K) or (K, cols) code arrays of different K, zero-padded to K = 128.

    The record stores each tile's K in its meta string, so padding never enters a dot.
    """
    kmax = max(p.shape[axis] for p in parts)
    out = []
    for p in parts:
        pad = [(0, 0), (0, 0)]
        pad[axis] = (0, kmax - p.shape[axis])
        out.append(np.pad(p, pad))
    return np.stack(out)
