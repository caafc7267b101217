"""Issue 14, point 9: error statistics that mean something on random inputs.

Per-element ulps (the bias study's unit) blow up at outputs near zero; row-scale ulps
(the ulp of the row's max |ref|) measure every error of a row in one unit.  Checked on a
hand-built row where one near-zero output used to dominate, and on random inputs
through the emulator and ``flashbits emulate``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np

from flashbits import flash_attention, reference_attention
from flashbits.emulator.attention.stats import (error_summary, row_scale_ulp, signed_error_row_ulps,
                                                signed_error_ulps)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_near_zero_output_no_longer_dominates():
    # one row: three outputs near 1 (bf16 ulp there 2^-7), one at 2^-20 (ulp 2^-27)
    ref = np.array([[1.0, 1.0, -1.0, 2.0 ** -20]])
    err = np.array([[2.0 ** -9, -(2.0 ** -9), 2.0 ** -9, 2.0 ** -14]])  # all tiny in absolute terms
    out = ref + err
    elem = signed_error_ulps(out, ref)
    assert elem[0, 3] == 2.0 ** 13  # 8192 "ulps" for an error of 6e-5
    assert np.array_equal(row_scale_ulp(ref), np.full((1, 4), 2.0 ** -7))
    row = signed_error_row_ulps(out, ref)
    assert np.array_equal(row, err / 2.0 ** -7)  # exact: 0.25, -0.25, 0.25, 2^-7
    s = error_summary(out, ref)
    assert s["element"]["mean_ulp"] > 2000          # the old headline
    assert abs(s["row"]["mean_ulp"] - (0.25 + 2.0 ** -7) / 4) < 1e-12
    assert "max|O| of the row" in s["row"]["unit"]


def test_rows_are_scaled_separately_and_non_finite_is_skipped():
    ref = np.array([[4.0, 0.5], [0.25, np.inf], [0.0, 0.0]])
    u = row_scale_ulp(ref)
    assert np.array_equal(u[:2], [[2.0 ** -5] * 2, [2.0 ** -9] * 2])
    assert u[2, 0] == u[2, 1] > 0  # a row of zeros: the format's smallest ulp, no division by 0
    e = signed_error_row_ulps(ref + 2.0 ** -10, ref)
    assert np.isnan(e[1, 1]) and e[1, 0] == 0.5


def _random_qkv(n=512, d=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, d)).astype(ml_dtypes.bfloat16) for _ in range(3)]


def test_random_inputs_give_a_small_row_scale_mean_and_sem():
    q, k, v = _random_qkv()
    ref, _ = reference_attention(q, k, v)
    out = np.asarray(flash_attention(q, k, v).out, np.float64)
    s = error_summary(out, ref)
    # element ulps: a standard error far above any plausible bias (near-zero outputs);
    # row-scale ulps: well under a thousandth of an ulp of noise
    assert s["element"]["sem_ulp"] > 0.1
    assert s["row"]["sem_ulp"] < 0.005 and abs(s["row"]["mean_ulp"]) < 0.01
    assert s["row"]["sem_ulp"] < s["element"]["sem_ulp"] / 50


def test_emulate_prints_and_saves_both_units(tmp_path):
    q, k, v = (np.asarray(a, np.float32) for a in _random_qkv(256))
    np.savez(tmp_path / "in.npz", q=q, k=k, v=v)
    r = subprocess.run([sys.executable, "-m", "flashbits.crosscheck.cli", "emulate", "--inputs",
                        str(tmp_path / "in.npz"), "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "signed error of O in ulps of the row's max |O|: mean" in r.stdout
    assert "signed error of O in each output's own ulp: mean" in r.stdout
    d = json.load(open(tmp_path / "o" / "emulate.json"))
    assert d["bias_row_scale"]["n"] == d["bias"]["n"] == 256 * 64
    assert d["bias_row_scale"]["sem_ulp"] < d["bias"]["sem_ulp"]
