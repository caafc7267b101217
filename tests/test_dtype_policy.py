"""Issue 14, point 6: one dtype policy for every public function that takes float arrays.

Accepted: float32, float64, and numpy float16 / every ml_dtypes float format whose values
convert exactly to float32 (widened first).  Refused with a TypeError naming the policy:
integers, booleans, complex, longdouble, ml_dtypes int4.  Each public function gets the
same values in each accepted dtype and must return what it returns for the float32 array,
bit for bit.
"""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import pytest

from flashbits import flash_attention, quantize, reference_attention, sfu_exp2, tensor_core_dot, to_bits
from flashbits.emulator.rounding import NARROW_FLOAT_DTYPES, as_float_array

ACCEPTED = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn,
            ml_dtypes.float8_e5m2, ml_dtypes.float4_e2m1fn, ml_dtypes.float8_e8m0fnu]
REFUSED = [np.int32, np.uint8, np.bool_, np.complex64, np.longdouble, ml_dtypes.int4]
# values every accepted format holds (e8m0: powers of two only, positive; fp4 e2m1: 0.5..6): so the same
# numbers reach the function in every dtype, and they are bf16 (and fp8) values too
BASE = np.array([0.5, 1.0, 2.0, 4.0, 1.5, 1.0, 0.5, 3.0], np.float32)


def _values(shape, dtype, widened=False):
    rng = np.random.default_rng(0)
    x = rng.choice(BASE, size=shape).astype(np.float32)
    if dtype is ml_dtypes.float8_e8m0fnu:
        x = np.exp2(np.round(np.log2(x))).astype(np.float32)
    else:
        x *= rng.choice(np.array([-1.0, 1.0], np.float32), size=shape)
    out = x.astype(dtype)
    assert np.array_equal(out.astype(np.float32), x)  # exact in the dtype
    return x if widened else out


def _public_calls():
    """name -> function(dtype, widened) giving the result as raw bits: of the dtype's
    array, or (widened) of the same values as float32."""
    def bits(r):
        return np.ascontiguousarray(r).view(np.uint32 if np.asarray(r).dtype == np.float32 else np.uint64)

    return {
        "quantize": lambda dt, w=False: bits(quantize(_values((4, 8), dt, w), "fp8_e4m3")),
        "to_bits": lambda dt, w=False: to_bits(_values((4, 8), dt, w), "bf16"),
        "sfu_exp2": lambda dt, w=False: bits(sfu_exp2(_values((4, 8), dt, w))),
        "tensor_core_dot": lambda dt, w=False: bits(tensor_core_dot(
            _values((4, 16), dt, w), _values((16, 8), dt, w), in_fmt="bf16")),
        "tensor_core_dot_fp8": lambda dt, w=False: bits(tensor_core_dot(
            _values((4, 32), dt, w), _values((32, 8), dt, w), in_fmt="fp8_e4m3")),
        "flash_attention": lambda dt, w=False: bits(flash_attention(
            *(_values((16, 16), dt, w) for _ in range(3))).out),
        "reference_attention": lambda dt, w=False: bits(reference_attention(
            *(_values((16, 16), dt, w) for _ in range(3)))[0]),
    }


CALLS = _public_calls()


@pytest.mark.parametrize("dtype", ACCEPTED, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_public_function_accepts_every_policy_dtype(name, dtype):
    assert np.array_equal(CALLS[name](dtype), CALLS[name](dtype, True))


@pytest.mark.parametrize("dtype", REFUSED, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_public_function_refuses_the_same_dtypes(name, dtype, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "_values", lambda shape, dt, w=False: np.ones(shape, dt))
    with pytest.raises(TypeError, match="must be a float array: float32 or float64"):
        CALLS[name](dtype)


def test_the_narrow_dtypes_are_exact_in_float32():
    """Every dtype the policy widens converts to float32 without rounding: each code's
    float32 value converts back to the same code (NaNs aside)."""
    assert {"float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"} <= set(NARROW_FLOAT_DTYPES.values())
    for dt in NARROW_FLOAT_DTYPES:
        codes = np.arange(1 << ml_dtypes.finfo(dt).bits, dtype=np.uint8 if dt.itemsize == 1 else np.uint16)
        vals = codes.view(dt)
        wide = as_float_array(vals)
        assert wide.dtype == np.float32
        keep = ~np.isnan(wide)
        assert np.array_equal(wide[keep].astype(dt).view(codes.dtype), codes[keep]), dt
