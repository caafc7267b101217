"""saturate=True for fp8 is Hopper's ``cvt.rn.satfinite``; golden-record replays.

(i)  The rule, written here independently: clamp x to [−max, +max] (±inf to
     ±max; NaN stays NaN), then round to nearest even (the reference of
     tests/reference_rounding.py, which never overflows below max).
(ii) The H200 golden record tests/data/hw/casts_golden.npz: float32 inputs and
     the GPU's output codes of Triton's ``.to(float8e4nv)`` / ``.to(float8e5)``
     (``cvt.rn.satfinite``), ``.to(bfloat16)`` (rn and rtz) and ``.to(float16)``.
     What the GPU writes for NaN is pinned here: 0x7F for both fp8 formats (the
     sign is dropped), 0x7FFF for bf16 and for fp16.  flashbits writes the
     canonical NaN with the input's sign instead (fp8_e4m3 0x7F/0xFF, fp8_e5m2
     0x7E/0xFE, bf16 0x7FC0/0xFFC0, fp16 0x7E00/0xFE00 — the codes ml_dtypes and
     numpy produce), so NaN is compared as NaN; every other code bit for bit.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

import reference_rounding as ref
from flashbits.emulator import quantize, to_bits

HERE = os.path.dirname(os.path.abspath(__file__))
CASTS = os.path.join(HERE, "data", "hw", "casts_golden.npz")
FP8 = ("fp8_e4m3", "fp8_e5m2")
ML_TYPE = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16, "fp8_e4m3": ml_dtypes.float8_e4m3fn,
           "fp8_e5m2": ml_dtypes.float8_e5m2}
GPU_NAN_CODE = {"fp8_e4m3": 0x7F, "fp8_e5m2": 0x7F, "bf16": 0x7FFF, "fp16": 0x7FFF}


def _satfinite_rule(x, fmt):
    """clamp to ±max finite, then RNE (independent of emulator.rounding)."""
    vmax = ref.max_finite(fmt)
    with np.errstate(invalid="ignore"):
        x64 = x.astype(np.float64)
    clamped = np.clip(x64, -vmax, vmax)  # NaN stays NaN, -0 stays -0
    return ref.round_ref(clamped, fmt, "rne")


def _inputs(dtype):
    """Dense around and beyond the fp8 overflow thresholds, plus everything else."""
    rng = np.random.default_rng(11)
    parts = []
    for fmt in FP8:
        E, M, bias, _ = ref.PARAMS[fmt]
        emax = (2 ** E - 1) - bias if fmt == "fp8_e4m3" else (2 ** E - 2) - bias
        for e in range(emax - 2, emax + 3):
            # each binade: every float32 mantissa on a stride of 2^7, low 7 bits 0 or random
            m = np.arange(0, 1 << 23, 1 << 7, dtype=np.uint32)
            exp_field = np.uint32((e + 127) << 23)
            parts += [exp_field | m, exp_field | m | rng.integers(1, 1 << 7, m.size, dtype=np.uint32)]
        g, vmax = ref.grid(fmt)
        mids = ((g[1:] + g[:-1]) * 0.5).astype(np.float32)
        parts += [mids.view(np.uint32), np.nextafter(mids, np.float32(np.inf)).view(np.uint32),
                  np.nextafter(mids, np.float32(0)).view(np.uint32)]
    parts.append(rng.integers(0, 1 << 32, 1 << 19, dtype=np.uint64).astype(np.uint32))  # anything
    parts.append(np.array([0, 0x7F800000, 0x7FC00000, 0x7F800001, 0x7F7FFFFF, 1], np.uint32))
    bits = np.concatenate(parts)
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    x = bits.view(np.float32)
    if dtype == np.float64:
        # float64 inputs: the same values nudged by random low bits (inexact in float32)
        with np.errstate(invalid="ignore", over="ignore"):
            x = x.astype(np.float64) * (1 + rng.integers(-(1 << 20), 1 << 20, x.size) * 2.0 ** -45)
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("fmt", FP8)
def test_saturate_is_clamp_then_rne(fmt, dtype):
    x = _inputs(dtype)
    assert x.size > 2_000_000
    got = quantize(x, fmt, "rne", saturate=True)
    want = _satfinite_rule(x, fmt)
    bad = ref.mismatches(got, want)
    assert bad.size == 0, ref.describe(x, got, want, bad)
    # the inputs do reach saturation: finite overflow, ±inf, and the (max, overflow) ties
    vmax = ref.max_finite(fmt)
    with np.errstate(invalid="ignore"):
        a = np.abs(x.astype(np.float64))
    assert (np.isfinite(a) & (a > vmax * 1.1)).sum() > 100_000 and np.isinf(a).sum() >= 2


@pytest.mark.parametrize("fmt", FP8)
def test_saturate_differs_from_plain_rne_exactly_on_overflow(fmt):
    """Without saturate the same inputs overflow to inf (e5m2) or NaN (e4m3): the
    two results differ exactly where the unsaturated one is not finite for a
    non-NaN input, and there the saturated one is ±max of the input's sign."""
    x = _inputs(np.float32)
    sat = quantize(x, fmt, "rne", saturate=True)
    plain = quantize(x, fmt, "rne")
    vmax = np.float32(ref.max_finite(fmt))
    over = ~np.isfinite(plain) & ~np.isnan(x)
    assert over.sum() > 100_000
    assert np.array_equal(sat[over], np.where(np.signbit(x[over]), -vmax, vmax))
    assert np.array_equal(sat.view(np.uint32)[~over & ~np.isnan(x)], plain.view(np.uint32)[~over & ~np.isnan(x)])


def test_saturate_hand_cases():
    """e4m3: max 448 = 1.110·2^8; the next grid point would be 480, so 464 is the
    tie (to the even 448) and anything above saturates to 448 too; 2^-10 is the
    tie between 0 and the smallest subnormal 2^-9 (to the even 0).  e5m2: max
    57344 = 1.11·2^15, overflow tie at 61440."""
    x = np.array([448, 464, 465, 1e6, np.inf, -np.inf, -470, 1.25 * 2.0 ** -10, 2.0 ** -10], np.float32)
    assert np.array_equal(quantize(x, "fp8_e4m3", "rne", saturate=True),
                          np.array([448, 448, 448, 448, 448, -448, -448, 2.0 ** -9, 0], np.float32))
    y = np.array([57344, 61440, 61441, np.inf, -1e30], np.float32)
    assert np.array_equal(quantize(y, "fp8_e5m2", "rne", saturate=True),
                          np.array([57344, 57344, 57344, 57344, -57344], np.float32))


# ---------------------------------------------------------------------------
# GPU golden record
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden():
    d = np.load(CASTS)
    return {k: d[k] for k in d.files}


def test_golden_provenance(golden):
    prov = json.loads(str(golden["provenance"]))
    assert "H200" in prov["gpu"] and prov["compute_capability"] == "9.0"
    assert golden["golden_x_bits"].dtype == np.uint32 and golden["golden_x_bits"].size > 60_000


def _nan_codes(fmt):
    _, val = ref.decode_all(fmt)
    return np.isnan(val)


CASES = [  # (record key, format, rounding, saturate)
    ("golden_fp8_e4m3_rn_satfinite", "fp8_e4m3", "rne", True),
    ("golden_fp8_e5m2_rn_satfinite", "fp8_e5m2", "rne", True),
    ("golden_bf16_rn", "bf16", "rne", False),
    ("golden_bf16_rz", "bf16", "rz", False),
    ("golden_fp16_rn", "fp16", "rne", False),
]


@pytest.mark.parametrize("key,fmt,mode,saturate", CASES, ids=[c[0][7:] for c in CASES])
def test_golden_gpu_casts(golden, key, fmt, mode, saturate):
    x = golden["golden_x_bits"].view(np.float32)
    gpu = golden[key].astype(np.int64)
    xnan = np.isnan(x)
    gpu_nan = _nan_codes(fmt)[gpu]
    # the record's NaN convention, pinned: only NaN inputs give NaN, always this one code
    assert xnan.sum() >= 100
    assert np.array_equal(gpu_nan, xnan)
    assert set(np.unique(gpu[gpu_nan]).tolist()) == {GPU_NAN_CODE[fmt]}

    got = quantize(x, fmt, mode, saturate=saturate)
    codes = to_bits(got, fmt).astype(np.int64)
    assert np.array_equal(codes[~xnan], gpu[~xnan]), (
        f"{int((codes[~xnan] != gpu[~xnan]).sum())} codes differ; first at x=0x"
        f"{int(golden['golden_x_bits'][~xnan][np.argmax(codes[~xnan] != gpu[~xnan])]):08x}")
    # NaN: flashbits gives NaN, its canonical code with the input's sign (ml_dtypes' codes)
    assert np.isnan(got[xnan]).all()
    canon = np.array([np.nan, -np.nan], np.float32).astype(ML_TYPE[fmt]).view(
        np.uint8 if fmt.startswith("fp8") else np.uint16).astype(np.int64)
    want_nan = np.where(np.signbit(x[xnan]), canon[1], canon[0])
    assert np.array_equal(codes[xnan], want_nan)
    # and the independent reference agrees with the GPU too
    want = ref.round_ref(x, fmt, mode, saturate)
    gpu_val = ref.decode_all(fmt)[1][gpu]
    fin = ~xnan
    assert np.array_equal(want[fin], gpu_val[fin]) and np.array_equal(
        np.signbit(want[fin]), np.signbit(gpu_val[fin]))
