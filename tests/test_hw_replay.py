"""Replay the golden H200 records (tests/data/hw/) through the emulator, bit for bit.

Every record holds inputs and the raw output bits the GPU produced (see
docs/hardware.md for how they were made and the command that regenerates them).
Equality is on raw bits, NaN included: the models write the GPU's own NaN code
(fp32 0x7FFFFFFF).  Nothing here is computed by the code under test except the
emulator's answer itself.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from flashbits.emulator import from_bits, quantize, sfu_exp2, tensor_core_dot, to_bits
from flashbits.emulator.hw.tensor_core import _tensor_core_dot_reference
from flashbits.emulator.philox import philox_words
from flashbits.gpu.probes.dot_cases import KINDS

HW = os.path.join(os.path.dirname(__file__), "data", "hw")
DOT = os.path.join(HW, "dot_golden.npz")
EXP2 = os.path.join(HW, "exp2_golden.npz")
CASTS = os.path.join(HW, "casts_golden.npz")
DOT_FORMATS = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")
K_STEP = {"bf16": 16, "fp16": 16, "fp8_e4m3": 32, "fp8_e5m2": 32}

_cache: dict = {}


def _npz(path):
    if path not in _cache:
        with np.load(path) as z:
            _cache[path] = {k: z[k] for k in z.files}
    return _cache[path]


def _dot_cases():
    """(fmt, tile index, meta) for every tile of every format; ids name fmt/kind/K/acc."""
    with np.load(DOT) as z:
        metas = {fmt: [str(m) for m in z[f"golden_{fmt}_meta"]] for fmt in DOT_FORMATS}
    out = []
    for fmt in DOT_FORMATS:
        for t, m in enumerate(metas[fmt]):
            kind, K, acc, seed = m.split("/")
            out.append(pytest.param(fmt, t, id=f"{fmt}-{kind}-K{K}-{'acc' if acc == '1' else 'zero'}-tile{t}"))
    return out


def _nonequal(got_bits, want_bits):
    bad = np.argwhere(got_bits != want_bits)
    if bad.size == 0:
        return ""
    idx = tuple(bad[0])
    return (f"{len(bad)} of {want_bits.size} outputs differ; first at {idx}: "
            f"emulator 0x{int(got_bits[idx]):08x}, GPU 0x{int(want_bits[idx]):08x}")


@pytest.mark.parametrize("impl", ["fast", "tc_dot_ij"])
@pytest.mark.parametrize("fmt,t", _dot_cases())
def test_dot_golden_tile(fmt, t, impl):
    """Both implementations: tensor_core_dot's packed kernels and the
    per-element tc_dot_ij the attention emulator calls."""
    z = _npz(DOT)
    kind, K, acc, seed = str(z[f"golden_{fmt}_meta"][t]).split("/")
    K = int(K)
    a_codes = z[f"golden_{fmt}_a"][t]
    b_codes = z[f"golden_{fmt}_b"][t]
    # the record pads codes beyond K with zeros; they must never enter the dot
    assert not a_codes[:, K:].any() and not b_codes[K:, :].any()
    c_bits = z[f"golden_{fmt}_c"][t]
    want = z[f"golden_{fmt}_d"][t]
    if acc == "0":
        assert not c_bits.any(), "a tile recorded without accumulator must have C = +0"
    dot = tensor_core_dot if impl == "fast" else _tensor_core_dot_reference
    got = dot(from_bits(a_codes[:, :K], fmt), from_bits(b_codes[:K, :], fmt),
              c_bits.view(np.float32), in_fmt=fmt).view(np.uint32)
    assert got.dtype == np.uint32 and got.shape == want.shape
    msg = _nonequal(got, want)
    assert not msg, f"{impl} {fmt} {kind} K={K} acc={acc} seed={seed}: {msg}"


def test_dot_golden_covers_every_combination():
    """The record holds one tile per (kind, K, acc) per format (kinds of
    gpu/probes/dot_cases.py; K the step, 64 and 128), and exercises NaN
    outputs (written as 0x7FFFFFFF), ±inf and +0."""
    z = _npz(DOT)
    for fmt in DOT_FORMATS:
        metas = [str(m).split("/") for m in z[f"golden_{fmt}_meta"]]
        combos = {(k, int(K), acc) for k, K, acc, _ in metas}
        kinds = {k for k, _, _ in combos}
        assert len(combos) == len(metas) and kinds <= set(KINDS) and len(kinds) >= 8
        assert combos == {(k, K, acc) for k in kinds for K in (K_STEP[fmt], 64, 128) for acc in "01"}
        d = z[f"golden_{fmt}_d"]
        assert (d == 0x7FFFFFFF).any() and (d == 0).any()
        assert ((d & 0x7FFFFFFF) == 0x7F800000).any()


def test_dot_nan_code_is_the_gpus():
    """Every NaN the GPU wrote in the dot records is 0x7FFFFFFF (the models' constant)."""
    z = _npz(DOT)
    for fmt in DOT_FORMATS:
        d = z[f"golden_{fmt}_d"]
        nan = np.isnan(d.view(np.float32))
        assert nan.any()
        assert np.all(d[nan] == 0x7FFFFFFF)


# ---------------------------------------------------------------- exp2 -----

@pytest.mark.parametrize("mode,key", [("ftz", "golden_ftz_bits"), ("nonftz", "golden_nonftz_bits"),
                                      ("tl.math.exp2=ftz", "golden_mathexp2_bits")])
def test_exp2_golden(mode, key):
    z = _npz(EXP2)
    x = z["golden_x_bits"].view(np.float32)
    got = sfu_exp2(x, ftz=mode != "nonftz").view(np.uint32)
    msg = _nonequal(got, z[key])
    assert not msg, f"exp2 {mode}: {msg}"


def test_exp2_golden_covers_the_edges():
    """The record reaches every branch of the model: NaN, ±inf, ±0, subnormals,
    x < −126 (where ftz and non-ftz differ) and the overflow/underflow ends."""
    z = _npz(EXP2)
    xb = z["golden_x_bits"]
    x = xb.view(np.float32)
    assert np.isnan(x).sum() > 100 and np.isinf(x).sum() == 2 and (x == 0).sum() == 2
    assert ((xb & 0x7F800000) == 0).sum() > 200  # subnormals (and zeros)
    assert ((x < -126) & (x > -150)).sum() > 1000
    assert (x > 128).any() and (x < -150).any()
    ftz, nonftz = z["golden_ftz_bits"], z["golden_nonftz_bits"]
    # GPU facts the model encodes: NaN code, and where the two instructions differ
    assert np.all(ftz[np.isnan(x)] == 0x7FFFFFFF) and np.all(nonftz[np.isnan(x)] == 0x7FFFFFFF)
    differ = ftz != nonftz
    assert differ.any()
    assert np.all((x[differ] < -126) & (x[differ] > -150))


# --------------------------------------------------------------- casts -----

# record key: (format, rounding, saturate, NaN code the GPU writes)
CAST_RECORDS = {
    "bf16_rn": ("bf16", "rne", False, 0x7FFF),
    "bf16_rz": ("bf16", "rz", False, 0x7FFF),
    "fp16_rn": ("fp16", "rne", False, 0x7FFF),
    "fp8_e4m3_rn_satfinite": ("fp8_e4m3", "rne", True, 0x7F),
    "fp8_e5m2_rn_satfinite": ("fp8_e5m2", "rne", True, 0x7F),
}


@pytest.mark.parametrize("name", list(CAST_RECORDS))
def test_cast_golden(name):
    """Non-NaN inputs: the emulator's rounding gives the GPU's code exactly.
    NaN inputs: the GPU writes one fixed code (documented in docs/hardware.md);
    flashbits' quantize keeps the NaN's sign instead, by design."""
    fmt, rnd, sat, nan_code = CAST_RECORDS[name]
    z = _npz(CASTS)
    x = z["golden_x_bits"].view(np.float32)
    want = z[f"golden_{name}"]
    nan = np.isnan(x)
    got = to_bits(quantize(x[~nan], fmt, rnd, saturate=sat), fmt)
    msg = _nonequal(got, want[~nan])
    assert not msg, f"cast {name}: {msg}"
    assert nan.sum() > 100 and np.all(want[nan] == nan_code)


# GPU codes from the first H200 run (probe_summary.json of 2026-11-28, casts
# examples): x = ±1.5·2^-9, a tie between e4m3 codes 1 and 2, went to the even one
RUN1_CAST_EXAMPLES = [("fp8_e4m3_rn_satfinite", 0x3B400000, 0x02), ("fp8_e4m3_rn_satfinite", 0xBB400000, 0x82)]


def test_cast_summary_examples():
    """Inputs on which an emulator disagreed with the GPU, recorded with the
    GPU's code (run 1: 2 of 2^32, fp8 e4m3 ties at a 23-bit shift, since fixed),
    plus whatever the installed summary lists: the emulator gives the GPU's code."""
    with open(os.path.join(HW, "probe_summary.json")) as f:
        casts = json.load(f)["casts"]
    cases = list(RUN1_CAST_EXAMPLES)
    for name in CAST_RECORDS:
        cases += [(name, x_bits, hw_code) for x_bits, hw_code, _ in casts[name]["examples"]]
    for name, x_bits, hw_code in cases:
        fmt, rnd, sat, _ = CAST_RECORDS[name]
        x = np.array([x_bits], np.uint32).view(np.float32)
        assert int(to_bits(quantize(x, fmt, rnd, saturate=sat), fmt)[0]) == hw_code, (name, hex(x_bits))


def test_philox_golden():
    z = _npz(CASTS)
    offs = z["philox_offsets"]
    for s, words in zip(z["philox_seeds"], z["philox_words"]):
        got = np.concatenate([philox_words(int(s), 1, int(o)) for o in offs])
        msg = _nonequal(got, words)
        assert not msg, f"philox seed {int(s)}: {msg}"


# ----------------------------------------------------------- provenance -----

@pytest.mark.parametrize("path", [DOT, EXP2, CASTS], ids=os.path.basename)
def test_record_provenance(path):
    z = _npz(path)
    assert "provenance" in z, f"{path} carries no provenance"
    p = json.loads(str(z["provenance"]))
    assert "H200" in p["gpu"]
    assert p["triton"] == "3.6.0"
    assert re.fullmatch(r"[0-9a-f]{7,40}", p["git_commit"]), p["git_commit"]
    assert p["compute_capability"] == "9.0"
    for k in ("torch", "cuda", "date_utc", "nvidia_smi"):
        assert p.get(k), f"provenance lacks {k}"


def test_summary_provenance_matches_records():
    with open(os.path.join(HW, "probe_summary.json")) as f:
        summ = json.load(f)
    p = json.loads(str(_npz(DOT)["provenance"]))
    assert summ["provenance"]["git_commit"] == p["git_commit"]
    assert summ["provenance"]["gpu"] == p["gpu"]
