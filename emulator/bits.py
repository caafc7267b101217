"""Raw encodings: :func:`to_bits` and :func:`from_bits`.

``to_bits(x, fmt)`` returns the encoding of values that are already exactly
representable in ``fmt`` (quantize first); anything else raises, so a silent
rounding can never hide here.  NaN becomes the canonical NaN of ``fmt`` with the
input's sign (:mod:`emulator.formats`); ±inf becomes ±inf, or raises for a
format without inf.  ``from_bits(bits, fmt)`` decodes every code, returning
float32 (float64 for fp64) values; every NaN code decodes to a NaN of the same
sign.
"""

from __future__ import annotations

import numpy as np

from .formats import FORMATS, get_format
from .rounding import _inexact_count, _round_array, as_float_array, layout, target

__all__ = ["to_bits", "from_bits"]


def to_bits(x, fmt) -> np.ndarray:
    """Encodings (uint8/16/32/64) of values exactly representable in ``fmt``."""
    f = get_format(fmt)
    arr = as_float_array(x)
    src_fmt = FORMATS["fp32"] if arr.dtype == np.float32 else FORMATS["fp64"]
    src_bits = np.ascontiguousarray(arr).view(src_fmt.storage_dtype).reshape(-1)
    bad = _inexact_count(src_bits, layout(src_fmt), target(f), layout(f))
    if bad or (not f.has_inf and np.isinf(arr).any()):
        what = "are not representable" if bad else "are ±inf, which has no code"
        raise ValueError(
            f"{bad or int(np.isinf(arr).sum())} of {arr.size} values {what} in {f.name}; "
            f"round them first with emulator.quantize(x, {f.name!r}, ...)")
    out = np.empty(src_bits.size, dtype=np.uint64)
    _round_array(src_bits, out, layout(src_fmt), target(f), layout(f), 2,
                 np.uint64(0), np.int64(0), 32, False)
    return out.astype(f.storage_dtype).reshape(arr.shape)


def from_bits(bits, fmt) -> np.ndarray:
    """Values (float32, or float64 for fp64) of the encodings ``bits`` in ``fmt``."""
    f = get_format(fmt)
    arr = np.asarray(bits)
    if arr.dtype.kind not in "ui":
        raise TypeError(f"bits must be an integer array of {f.storage_dtype} codes, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or int(arr.max()) >= (1 << f.bits)):
        raise ValueError(f"codes of {f.name} lie in 0..2^{f.bits}-1; got values outside that range")
    out_fmt = FORMATS["fp64"] if f.bits > 32 else FORMATS["fp32"]
    src = np.ascontiguousarray(arr).reshape(-1).astype(np.uint64)
    out = np.empty(src.size, dtype=out_fmt.storage_dtype)
    _round_array(src, out, layout(f), target(out_fmt), layout(out_fmt), 0,
                 np.uint64(0), np.int64(0), 32, False)
    return out.view(out_fmt.value_dtype).reshape(arr.shape)
