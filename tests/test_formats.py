"""emulator.FORMATS against numpy's and ml_dtypes' own descriptions of the formats."""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from flashbits.emulator import FORMATS, FloatFormat, get_format

NUMPY_TYPE = {
    "fp64": np.float64,
    "fp32": np.float32,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
}
CODE = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def finfo(name):
    t = NUMPY_TYPE[name]
    return np.finfo(t) if t in (np.float64, np.float32, np.float16) else ml_dtypes.finfo(t)


def test_the_six_formats():
    assert set(FORMATS) == {"fp64", "fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"}
    for name, f in FORMATS.items():
        assert f.name == name and isinstance(f, FloatFormat)


@pytest.mark.parametrize("name", list(NUMPY_TYPE))
def test_values_match_finfo(name):
    f = FORMATS[name]
    fi = finfo(name)
    assert f.mant_bits == fi.nmant
    assert f.exp_bits == fi.nexp
    assert f.bits == fi.bits == 8 * np.dtype(NUMPY_TYPE[name]).itemsize
    assert f.max_finite == float(fi.max)
    assert f.min_normal == float(fi.smallest_normal)
    assert f.min_subnormal == float(fi.smallest_subnormal)
    assert f.eps == float(fi.eps)
    assert f.emin == fi.minexp
    assert f.emax == fi.maxexp - 1
    assert f.precision == fi.nmant + 1
    # the exact Fractions agree with the floats
    assert float(f.max_finite_exact) == f.max_finite and isinstance(f.max_finite_exact, Fraction)
    assert f.min_subnormal_exact == Fraction(2) ** (f.emin - f.mant_bits)


@pytest.mark.parametrize("name", list(NUMPY_TYPE))
def test_codes_decode_as_numpy_and_ml_dtypes_say(name):
    f = FORMATS[name]
    t = NUMPY_TYPE[name]
    ct = CODE[f.bits]

    def dec(code):
        return np.array([code], ct).view(t).astype(np.float64)[0]

    assert dec(f.max_finite_code) == f.max_finite
    assert not np.isfinite(dec(f.max_finite_code + 1))  # the next code is inf or NaN
    assert np.isnan(dec(f.canonical_nan)) and np.isnan(dec(f.canonical_nan | f.sign_mask))
    assert np.signbit(dec(f.canonical_nan | f.sign_mask))
    assert dec(f.sign_mask) == 0 and np.signbit(dec(f.sign_mask))
    if f.has_inf:
        assert dec(f.inf_code) == np.inf and dec(f.inf_code | f.sign_mask) == -np.inf
    else:
        assert f.inf_code is None
    # the canonical NaN is the quiet NaN numpy / ml_dtypes produce from float32 NaN
    produced = np.array([np.nan], np.float32).astype(t).view(ct)[0]
    assert int(produced) == f.canonical_nan
    assert f.storage_dtype == np.dtype(ct).name
    assert f.value_dtype == ("float64" if name == "fp64" else "float32")


def test_has_inf_matches_ml_dtypes():
    for name, t in NUMPY_TYPE.items():
        with np.errstate(invalid="ignore", over="ignore"):
            inf_survives = bool(np.isinf(np.array([np.inf], np.float32).astype(t).astype(np.float32))[0])
        assert FORMATS[name].has_inf == inf_survives, name


def test_e4m3_is_ocp_e4m3fn():
    f = FORMATS["fp8_e4m3"]
    assert (f.convention, f.bias, f.max_finite, f.canonical_nan) == ("fn", 7, 448.0, 0x7F)
    assert f.max_finite_code == 0x7E


def test_get_format():
    f = FORMATS["bf16"]
    assert get_format("bf16") is f
    assert get_format(f) is f
    custom = FloatFormat("e3m2", 3, 2, 3)
    assert get_format(custom) is custom


@pytest.mark.parametrize("bad", ["bf17", "fp8", "FP16", ""])
def test_get_format_unknown_name(bad):
    with pytest.raises(ValueError) as e:
        get_format(bad)
    msg = str(e.value)
    assert repr(bad) in msg and all(n in msg for n in FORMATS)


@pytest.mark.parametrize("bad", [16, None, np.float16, 1.0])
def test_get_format_wrong_type(bad):
    with pytest.raises(TypeError) as e:
        get_format(bad)
    assert "FloatFormat" in str(e.value) and "bf16" in str(e.value)


def test_format_is_immutable_and_checks_convention():
    f = FORMATS["fp16"]
    with pytest.raises(Exception):
        f.bias = 16
    with pytest.raises(ValueError, match="convention"):
        FloatFormat("x", 4, 3, 7, convention="fnuz")
