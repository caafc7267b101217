"""emulator.to_bits / emulator.from_bits: raw encodings.

* Every code of every format of at most 16 bits decodes (``from_bits``) to the
  value built independently from its sign/exponent/mantissa fields
  (tests/reference_rounding.decode_all), bit for bit in float32, ±0 included;
  and ``to_bits`` of that value gives the code back.
* NaN codes: every NaN code decodes to a NaN of the same sign; re-encoding
  gives the canonical NaN of the format with that sign (flashbits keeps no
  payload): bf16 0x7FC0, fp16 0x7E00, fp8_e5m2 0x7E, fp8_e4m3 0x7F (its only
  NaN), each OR'ed with the sign bit — the codes ml_dtypes / numpy produce
  for a quiet NaN, which is where these constants are taken from here.
* fp32 and fp64 round-trip on random bit patterns (every float value is
  exact there), with the same NaN rule.
* Errors: values that are not representable (inexact, beyond max finite,
  or ±inf in e4m3) raise ValueError telling to quantize first; bad code arrays
  raise TypeError / ValueError.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import reference_rounding as ref
from flashbits.emulator import from_bits, quantize, to_bits

SMALL = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")
ML_TYPE = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16, "fp8_e4m3": ml_dtypes.float8_e4m3fn,
           "fp8_e5m2": ml_dtypes.float8_e5m2}
CODE = {"bf16": np.uint16, "fp16": np.uint16, "fp8_e4m3": np.uint8, "fp8_e5m2": np.uint8}


def canonical_nan(fmt, negative=False):
    """The quiet NaN code ml_dtypes / numpy produce for float32 NaN of that sign."""
    x = np.array([-np.nan if negative else np.nan], np.float32)
    return int(x.astype(ML_TYPE[fmt]).view(CODE[fmt])[0])


def test_canonical_nan_constants():
    """The constants quoted in the module docstring are what ml_dtypes produces."""
    assert [canonical_nan(f) for f in SMALL] == [0x7FC0, 0x7E00, 0x7F, 0x7E]
    assert [canonical_nan(f, True) for f in SMALL] == [0xFFC0, 0xFE00, 0xFF, 0xFE]


@pytest.mark.parametrize("fmt", SMALL)
def test_every_code_round_trips(fmt):
    codes, val = ref.decode_all(fmt)
    c = codes.astype(CODE[fmt])
    got = from_bits(c, fmt)
    assert got.dtype == np.float32 and got.shape == c.shape
    bad = ref.mismatches(got, val)  # non-NaN: raw bits; NaN: NaN of the same sign
    assert bad.size == 0, ref.describe(val, got, val, bad)

    nan = np.isnan(val)
    assert nan.sum() >= 2  # every format here has NaN codes of both signs
    back = to_bits(got, fmt)
    assert back.dtype == CODE[fmt] and back.shape == c.shape
    assert np.array_equal(back[~nan], c[~nan])
    sign = (codes[nan] >> (8 * np.dtype(CODE[fmt]).itemsize - 1)) == 1
    want = np.where(sign, canonical_nan(fmt, True), canonical_nan(fmt))
    assert np.array_equal(back[nan].astype(np.int64), want)


@pytest.mark.parametrize("fmt", SMALL)
def test_codes_agree_with_ml_dtypes(fmt):
    """A second, third-party decoding of every code (ml_dtypes / numpy)."""
    codes, _ = ref.decode_all(fmt)
    c = codes.astype(CODE[fmt])
    with np.errstate(invalid="ignore"):  # signalling NaN codes raise 'invalid' when widened
        theirs = c.view(ML_TYPE[fmt]).astype(np.float32)
        bad = ref.mismatches(from_bits(c, fmt), theirs.astype(np.float64))
    assert bad.size == 0
    finite = np.isfinite(theirs) | np.isinf(theirs)
    assert np.array_equal(to_bits(theirs[finite], fmt), c[finite])


def test_float64_values_encode_like_float32():
    """to_bits takes float64 values too (the generic path), with the same codes."""
    for fmt in SMALL:
        codes, val = ref.decode_all(fmt)
        ok = ~np.isnan(val)
        assert np.array_equal(to_bits(val[ok], fmt), codes[ok].astype(CODE[fmt]))


@pytest.mark.parametrize("fmt,dt,ut", [("fp32", np.float32, np.uint32), ("fp64", np.float64, np.uint64)])
def test_wide_formats_round_trip(fmt, dt, ut):
    rng = np.random.default_rng(4)
    nbits = 8 * np.dtype(ut).itemsize
    b = rng.integers(0, 1 << nbits, 1 << 20, dtype=np.uint64, endpoint=False) if nbits == 64 else \
        rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0, 1 << (nbits - 1), 1, (1 << (nbits - 1)) | 1], ut)
    b = np.concatenate([b.astype(ut), specials])
    x = from_bits(b, fmt)
    assert x.dtype == dt
    nan = np.isnan(b.view(dt))
    assert nan.any() and (~nan).any()
    assert np.array_equal(x.view(ut)[~nan], b[~nan])
    assert np.isnan(x[nan]).all() and np.array_equal(np.signbit(x[nan]), (b[nan] >> (nbits - 1)) == 1)
    back = to_bits(x, fmt)
    assert back.dtype == ut
    assert np.array_equal(back[~nan], b[~nan])
    qnan = 0x7FC00000 if fmt == "fp32" else 0x7FF8000000000000  # the IEEE default quiet NaN
    sign = np.where((b[nan] >> (nbits - 1)) == 1, ut(1 << (nbits - 1)), ut(0))
    assert np.array_equal(back[nan], sign | ut(qnan))


def test_shapes_are_kept():
    c = np.arange(256, dtype=np.uint8).reshape(16, 16)
    v = from_bits(c, "fp8_e5m2")
    assert v.shape == (16, 16)
    assert to_bits(v, "fp8_e5m2").shape == (16, 16)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,value", [
    ("bf16", np.float32(1 + 2 ** -8)),  # between two bf16 values
    ("bf16", np.float32(3.4e38)),  # beyond bf16's max finite 3.3895e38
    ("fp16", np.float32(1e-9)),  # below fp16's smallest subnormal, not zero
    ("fp16", np.float64(1 + 2 ** -30)),
    ("fp8_e4m3", np.float32(480.0)),  # beyond max 448 (would be the NaN code)
    ("fp8_e4m3", np.float32(np.inf)),  # e4m3 has no inf
    ("fp8_e5m2", np.float32(1.1)),
    ("fp32", np.float64(1 + 2 ** -40)),
])
def test_non_representable_values_raise(fmt, value):
    with pytest.raises(ValueError, match=r"quantize") as e:
        to_bits(np.array([1.0, value, 2.0], dtype=type(value)), fmt)
    assert fmt in str(e.value)


def test_representable_neighbours_do_not_raise():
    """Exactly representable values around the failing ones are accepted."""
    assert int(to_bits(np.float32(448.0), "fp8_e4m3")) == 0x7E
    assert int(to_bits(np.float32(np.inf), "fp8_e5m2")) == 0x7C
    assert int(to_bits(np.float32(2.0 ** -24), "fp16")) == 0x0001
    q = quantize(np.float32(1 + 2 ** -8), "bf16")
    assert int(to_bits(q, "bf16")) == 0x3F80  # rounded first: fine


def test_from_bits_errors():
    with pytest.raises(TypeError, match="integer"):
        from_bits(np.array([1.0, 2.0]), "bf16")
    with pytest.raises(ValueError, match="0..2"):
        from_bits(np.array([256], np.int64), "fp8_e4m3")
    with pytest.raises(ValueError, match="0..2"):
        from_bits(np.array([-1], np.int64), "fp16")
    with pytest.raises(TypeError, match="float32 or float64"):
        to_bits(np.array([1, 2], np.int32), "bf16")
