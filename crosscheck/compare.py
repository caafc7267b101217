"""Bit-for-bit comparison of two sides (GPU, emulator) of one attention run.

A *side* is a dict of raw-bit arrays: ``out`` (uint16 bf16 codes), ``m`` and
``l`` (uint32 fp32 bits per row), and with dumps ``m_blocks``, ``l_blocks``
(uint32, NaN where a row visits fewer blocks) and ``acc`` (uint32).  Every
element is compared as raw bits; the one documented exception is NaN: two NaNs
are equal whatever their payload and sign (the GPU writes 0x7FFF / 0x7FFFFFFF,
the emulator its canonical quiet NaN).
"""

from __future__ import annotations

import numpy as np

# tensor → the recipe stage that produced it (for locating a mismatch); which tensors
# are compared, and in which order, is the recipe's (Recipe.compared_tensors)
STAGE_OF = {"m_blocks": "m_scale / fix / max (per block)", "l_blocks": "l (per block)",
            "acc": "PV (accumulator before the division)", "m": "m (final)", "l": "l (final)",
            "out": "O_cast (output)",
            # the backward (docs/recipes.md, "The backward pass")
            "delta": "delta (δ = rowsum(O ∘ dO))", "p": "S, x, P (P recomputed from lse)",
            "ds": "dP, dP_sub, dS (before its cast)", "dv": "dV chain, dV_cast", "dk": "dK chain, dK_scale, dK_cast",
            "dq": "dQ chain, dQ_scale, dQ_cast"}


def is_nan_bits(bits: np.ndarray) -> np.ndarray:
    if bits.dtype == np.uint16:
        return ((bits & 0x7F80) == 0x7F80) & ((bits & 0x007F) != 0)
    return ((bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000)) & ((bits & np.uint32(0x7FFFFF)) != 0)


def ordered(bits: np.ndarray) -> np.ndarray:
    """Integers in the order of the float values (for ulp distances)."""
    b = bits.astype(np.int64)
    top = 15 if bits.dtype == np.uint16 else 31
    mag = b & ((1 << top) - 1)
    return np.where(b >> top, -mag, mag)


def compare_tensor(a: np.ndarray, b: np.ndarray) -> tuple[int, np.ndarray]:
    """(number of mismatching elements, mask) — raw bits, NaN payloads aside."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"cannot compare {a.shape} {a.dtype} with {b.shape} {b.dtype}")
    mask = (a != b) & ~(is_nan_bits(a) & is_nan_bits(b))
    return int(mask.sum()), mask


def compare_sides(emu: dict, gpu: dict, tensors) -> dict:
    """Per-tensor element and mismatch counts over ``tensors`` (the recipe's
    ``compared_tensors`` of the launch, earliest stage first; one missing on
    either side is skipped), and the first mismatch located."""
    res = {"tensors": {}, "first_mismatch": None, "mismatches": 0, "elements": 0}
    for name in tensors:
        if name not in emu or name not in gpu:
            continue
        n, mask = compare_tensor(emu[name], gpu[name])
        res["tensors"][name] = {"elements": int(mask.size), "mismatches": n}
        res["mismatches"] += n
        res["elements"] += int(mask.size)
        if n and res["first_mismatch"] is None:
            idx = tuple(int(i) for i in np.argwhere(mask)[0])
            ea, ga = emu[name][idx], gpu[name][idx]
            width = 4 if emu[name].dtype == np.uint16 else 8
            ulps = abs(int(ordered(np.array([ea]))[0]) - int(ordered(np.array([ga]))[0]))
            res["first_mismatch"] = {
                "tensor": name, "index": dict(zip(("batch", "head", "row", "col")[:len(idx)], idx)),
                "stage": STAGE_OF.get(name, name), "emulator_bits": f"0x{int(ea):0{width}x}",
                "gpu_bits": f"0x{int(ga):0{width}x}", "ulps": ulps}
    return res
