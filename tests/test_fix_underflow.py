"""Issue 14, point 12: the paper fix can make a whole row NaN where the float64 reference
is finite — the documented rule (docs/recipes.md, "The fix"; recipes.Fix), and the
emulator agreeing with it.

Rule: with the paper fix each key block b sets m ≥ f(bm_b), where f(bm) = β·bm if the
block has n > 1 scores ≥ bm − ε and bm > 0, 0 if n > 1 and bm < 0, else bm.  The
final m of a row is the max over its blocks; the largest P̄ of the row, after every α
rescaling, is e^(M − m) with M the row's max score.  When M − m < −134·ln 2 ≈ −92.9
nats, every P̄ (and every α-scaled partial sum) is below half the smallest bf16
subnormal 2^-133 and rounds to 0: l = 0 and O = 0/0 = NaN.  The reference softmax
(m = M) is finite.  Near the threshold the bf16 roundings of d = s − m (spacing 0.5 at
|d| ≈ 93) decide, so the test keeps a margin of one nat.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from flashbits import flash_attention, get_recipe, reference_attention

UNDERFLOW = 134 * math.log(2)  # e^-x < 2^-134: rounds to +0 in bf16 (RNE)


def _bf16(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def predicted_nan_rows(s, block_n, eps=1e-3, beta=2.0):
    """The documented rule on the recipe's bf16 scores s (rows × keys): (nan, margin)."""
    nrow, nk = s.shape
    m = np.full(nrow, -np.inf)
    for j0 in range(0, nk, block_n):
        blk = s[:, j0:j0 + block_n]
        bm = blk.max(axis=1)
        thr = _bf16(np.float32(bm) - np.float32(eps))
        n = (blk >= thr[:, None]).sum(axis=1)
        f = np.where((n > 1) & (bm > 0), beta * bm, np.where((n > 1) & (bm < 0), 0.0, bm))
        m = np.maximum(m, f)
    gap = s.max(axis=1) - m
    return gap < -UNDERFLOW, np.abs(gap + UNDERFLOW)


def _constructed():
    """One row per (row max M, tied or not): feature i carries row i's scores, so
    s_ij = k_ji exactly (scale 1); keys 0..63 (block 1) 20 nats below M and all tied,
    the row max at key 100 (block 2), tied with key 101 or alone."""
    Ms = [-150, -100, -94, -92, -60, 60, 80, 90, 92, 94, 96, 100, 150]
    rows = [(M, t) for t in (True, False) for M in Ms]
    D, Nk = 64, 128
    q = np.zeros((len(rows), D), np.float32)
    k = np.zeros((Nk, D), np.float32)
    for i, (M, tied) in enumerate(rows):
        q[i, i] = 1.0
        k[:, i] = M - 20.0
        k[100, i] = M
        if tied:
            k[101, i] = M
    v = np.random.default_rng(0).standard_normal((Nk, D)).astype(ml_dtypes.bfloat16).astype(np.float32)
    return q, k, v, rows


def test_constructed_rows_nan_exactly_where_the_rule_says():
    q, k, v, rows = _constructed()
    r = flash_attention(q, k, v, recipe="paper", fix="paper", scale=1.0)
    ref, _ = reference_attention(q, k, v, scale=1.0)
    nan, margin = predicted_nan_rows((q @ k.T).astype(np.float64), get_recipe("paper").block_n)
    assert (margin > 0.5).all()  # 92 and 94 straddle 92.9; d = ∓92, ∓94 are exact in bf16
    got = np.isnan(r.out).all(axis=1)
    assert np.array_equal(np.isnan(r.out).any(axis=1), got)  # whole rows, or none of a row
    assert np.array_equal(got, nan), [(rows[i], got[i], nan[i]) for i in range(len(rows)) if got[i] != nan[i]]
    assert np.isfinite(ref).all()
    # both signs and both routes: the row max's own tie, and an earlier tied block's β·bm
    assert {rows[i] for i in np.flatnonzero(got)} >= {(94, True), (150, False), (-94, False), (-94, True)}
    assert not got[rows.index((92, True))] and not got[rows.index((100, False))]
    without = flash_attention(q, k, v, recipe="paper", fix=None, scale=1.0)
    assert np.isfinite(without.out).all()  # the fix's m, not the inputs


@pytest.mark.parametrize("scale", [10.0])
def test_random_inputs_at_scale_10(scale):
    """The issue's case: q, k, v ~ N(0, 1) in bf16, scale 10.  Scores of ~±100 have a
    bf16 spacing of 0.5, so exact ties (n > 1 at ε = 1e-3) are common, β·bm ≈ 200, and
    rows go NaN; the rule, on the recipe's bf16 scores, predicts each of them."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((256, 64)).astype(ml_dtypes.bfloat16).astype(np.float32) for _ in range(3))
    r = flash_attention(q, k, v, recipe="paper", fix="paper", scale=scale)
    ref, _ = reference_attention(q, k, v, scale=scale)
    assert np.isfinite(ref).all()
    # the paper recipe's scores: S (fp32 tensor core, exact here to well under bf16's
    # spacing) → bf16, · scale in fp32 → bf16
    S = _bf16(q.astype(np.float64) @ k.T.astype(np.float64))
    s = _bf16(np.float32(S) * np.float32(scale))
    nan, margin = predicted_nan_rows(s, get_recipe("paper").block_n)
    got = np.isnan(r.out).all(axis=1)
    sure = margin > 1
    assert got.sum() > 0 and sure.mean() > 0.8
    assert np.array_equal(got[sure], nan[sure])
