"""GPU probe: float32 → bf16 / fp16 / fp8 conversions on all 2^32 inputs, and Philox.

Compares Triton's ``.to()`` conversions (``cvt.rn[.satfinite]`` / ``cvt.rz``)
with :func:`emulator.quantize` on the CPU cores, and ``tl.randint`` with
:func:`emulator.philox.philox_words`; keeps golden samples of both.
"""

from __future__ import annotations

import time

import numba as nb
import numpy as np
import torch
import triton
import triton.language as tl

# "cpu" only for smoke tests under TRITON_INTERPRET=1 (semantics, never bits)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

from flashbits.emulator import from_bits, quantize
from flashbits.emulator.philox import philox_words

CHUNK = 1 << 28
TOTAL = 1 << 32  # inputs covered: every float32 bit pattern
BLOCK = 1024

# name: (Triton kernel MODE, emulator format, rounding, saturate, torch dtype of the codes)
# The first three are checked on all 2^32 inputs; all five get golden samples.
EXHAUSTIVE = ("bf16_rn", "fp8_e4m3_rn_satfinite", "fp8_e5m2_rn_satfinite")
CASTS = {
    "bf16_rn": (0, "bf16", "rne", False, torch.int16),
    "bf16_rz": (1, "bf16", "rz", False, torch.int16),
    "fp16_rn": (2, "fp16", "rne", False, torch.int16),
    "fp8_e4m3_rn_satfinite": (3, "fp8_e4m3", "rne", True, torch.int8),
    "fp8_e5m2_rn_satfinite": (4, "fp8_e5m2", "rne", True, torch.int8),
}


@triton.jit
def _cast_from_index(Y, start, n, MODE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = (start + offs).to(tl.uint32).to(tl.float32, bitcast=True)
    if MODE == 0:
        y = x.to(tl.bfloat16).to(tl.int16, bitcast=True)
    elif MODE == 1:
        y = x.to(tl.bfloat16, fp_downcast_rounding="rtz").to(tl.int16, bitcast=True)
    elif MODE == 2:
        y = x.to(tl.float16).to(tl.int16, bitcast=True)
    elif MODE == 3:
        y = x.to(tl.float8e4nv).to(tl.int8, bitcast=True)
    else:
        y = x.to(tl.float8e5).to(tl.int8, bitcast=True)
    tl.store(Y + offs, y, mask=mask)


@triton.jit
def _randint_kernel(Y, OFFS, seed, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    off = tl.load(OFFS + i, mask=m, other=0)
    tl.store(Y + i, tl.randint(seed, off).to(tl.int32, bitcast=True), mask=m)


@nb.njit(parallel=True, cache=True)
def _compare(hw, em, codes):
    """(value mismatches, NaN-vs-number mismatches, first mismatch indices, NaN code histogram)."""
    n = hw.size
    nchunk = 64
    vm = np.zeros(nchunk, np.int64)
    nm = np.zeros(nchunk, np.int64)
    first = np.full(nchunk, -1, np.int64)
    hist = np.zeros((nchunk, 1 << 16), np.int64)
    step = (n + nchunk - 1) // nchunk
    for c in nb.prange(nchunk):
        for i in range(c * step, min(n, (c + 1) * step)):
            h = hw[i]
            e = em[i]
            hnan = (h & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (h & np.uint32(0x7FFFFF)) != 0
            enan = (e & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (e & np.uint32(0x7FFFFF)) != 0
            if hnan:
                hist[c, codes[i]] += 1
            if hnan != enan:
                nm[c] += 1
            elif not hnan and h != e:
                vm[c] += 1
                if first[c] < 0:
                    first[c] = i
    return vm.sum(), nm.sum(), first, hist.sum(axis=0)


def cast_codes(start, n, mode, dt):
    y = torch.empty(n, dtype=dt, device=DEVICE)
    _cast_from_index[(triton.cdiv(n, BLOCK),)](y, start, n, MODE=mode, BLOCK=BLOCK)
    return y


def run(out: dict, log, golden_per_cast: int = 1 << 16):
    t0 = time.time()
    res = {}
    arrays = {}
    rng = np.random.default_rng(7)
    gold_x = np.concatenate([
        np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 1,
                  0x7F7FFFFF, 0x43E00000, 0x43E80000, 0x47600000, 0x47700000], np.uint32),
        rng.integers(0, 1 << 32, golden_per_cast // 2, dtype=np.uint64).astype(np.uint32),
        (rng.standard_normal(golden_per_cast // 2) * 2.0 ** rng.integers(-30, 20, golden_per_cast // 2))
        .astype(np.float32).view(np.uint32),
    ])
    arrays["golden_x_bits"] = gold_x
    for name, (mode, fmt, rnd, sat, dt) in CASTS.items():
        value_mism = 0
        nan_mism = 0
        nan_codes = {}
        examples = []
        for start in range(0, TOTAL, CHUNK) if name in EXHAUSTIVE else ():
            codes = cast_codes(start, CHUNK, mode, dt)
            nbits = 8 if dt == torch.int8 else 16
            ucodes = codes.cpu().numpy().view(np.uint8 if nbits == 8 else np.uint16)
            hw = from_bits(ucodes, fmt)  # exact decode on the CPU
            x = (np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32)).view(np.float32)
            em = quantize(x, fmt, rnd, saturate=sat)
            vm, nm, first, nan_hist = _compare(hw.view(np.uint32), em.view(np.uint32),
                                               ucodes.astype(np.uint32))
            value_mism += vm
            nan_mism += nm
            for j in first[first >= 0][:5]:
                if len(examples) < 20:
                    examples.append([int(x.view(np.uint32)[j]), int(ucodes[j]), float(em[j])])
            for code in np.nonzero(nan_hist)[0]:
                nan_codes[f"{code:x}"] = nan_codes.get(f"{code:x}", 0) + int(nan_hist[code])
        gx = torch.from_numpy(gold_x.view(np.int32)).to(DEVICE)
        gcodes = _cast_values(gx.view(torch.float32), mode, dt)
        arrays[f"golden_{name}"] = gcodes
        res[name] = {"value_mismatches_all_2^32": value_mism, "nan_vs_number": nan_mism,
                     "hw_nan_codes": nan_codes, "examples": examples}
        log(f"cast {name}: {value_mism} value mismatches, {time.time() - t0:.1f}s")
    # Philox
    seeds = [0, 1, 12345, -1, (1 << 40) + 7, -(1 << 62), 0x7FFFFFFF]
    offs = np.concatenate([np.arange(4096), (1 << 32) + np.arange(64), (1 << 40) + 3 * np.arange(64),
                           np.array([(1 << 62) + 5, 2**31 - 1, 2**31, 2**32 - 1])]).astype(np.int64)
    ph = {}
    words = []
    for s in seeds:
        y = torch.empty(offs.size, dtype=torch.int32, device=DEVICE)
        _randint_kernel[(triton.cdiv(offs.size, 256),)](y, torch.from_numpy(offs).to(DEVICE), s, offs.size,
                                                        BLOCK=256)
        hw = y.cpu().numpy().view(np.uint32)
        em = np.concatenate([philox_words(s, 1, int(o)) for o in offs])
        ph[str(s)] = int((hw != em).sum())
        words.append(hw)
    res["philox_mismatches"] = ph
    arrays["philox_seeds"] = np.array(seeds, np.int64)
    arrays["philox_offsets"] = offs
    arrays["philox_words"] = np.stack(words)
    res["seconds"] = round(time.time() - t0, 1)
    out["casts"] = res
    return arrays


@triton.jit
def _cast_values_kernel(X, Y, n, MODE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0)
    if MODE == 0:
        y = x.to(tl.bfloat16).to(tl.int16, bitcast=True)
    elif MODE == 1:
        y = x.to(tl.bfloat16, fp_downcast_rounding="rtz").to(tl.int16, bitcast=True)
    elif MODE == 2:
        y = x.to(tl.float16).to(tl.int16, bitcast=True)
    elif MODE == 3:
        y = x.to(tl.float8e4nv).to(tl.int8, bitcast=True)
    else:
        y = x.to(tl.float8e5).to(tl.int8, bitcast=True)
    tl.store(Y + offs, y, mask=mask)


def _cast_values(x, mode, dt):
    y = torch.empty(x.numel(), dtype=dt, device=DEVICE)
    _cast_values_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, x.numel(), MODE=mode, BLOCK=BLOCK)
    nb = 8 if dt == torch.int8 else 16
    return y.cpu().numpy().view(np.uint8 if nb == 8 else np.uint16)
