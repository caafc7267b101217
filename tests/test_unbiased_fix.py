"""The unbiased fix (``fix="unbiased"``, fa2 family): its contract in the emulator.

* exact-arithmetic softmax unchanged (float64 mode equals the reference);
* the row sum adds the rounded weights: with V = 1 the fp32 O = acc / l is 1 to a few
  fp32 ulps (the tensor cores' truncation), where the unfixed recipe's l (a sum of the
  unrounded P̄) is off by up to bf16's relative rounding error;
* the P̄ cast's words: one Philox word per row, a Weyl step per key block
  (units.shared_word), the same formula the kernel computes;
* the bias it removes, deterministic (seeded) cells: ties-12 and lowrank-v of the bias
  study and a repeated-query regime (identical rows, where a deterministic P̄ cast
  errs the same way in every row), |t| < 3 with the fix and > 3 without;
* refusals: no seed, the paper family, eps/beta/delta.
"""

from __future__ import annotations

import numpy as np
import pytest

from flashbits.crosscheck.bias_study import run_cell
from flashbits.crosscheck.regimes import regime_inputs
from flashbits.emulator import flash_attention, quantize, reference_attention
from flashbits.emulator.attention.api import stage_seed
from flashbits.emulator.philox import randint_word, seed_to_u64


def _qkv(Nq=96, Nk=150, D=64, seed=0, v=None):
    rng = np.random.default_rng(seed)
    q = quantize(rng.standard_normal((1, 2, Nq, D)), "bf16")
    k = quantize(rng.standard_normal((1, 2, Nk, D)), "bf16")
    vv = quantize(rng.standard_normal((1, 2, Nk, D)), "bf16") if v is None else np.full((1, 2, Nk, D), v, np.float32)
    return q, k, vv


@pytest.mark.parametrize("causal", [False, True])
def test_exact_arithmetic_is_unchanged(causal):
    q, k, v = _qkv(seed=1)
    ref, ref_lse = reference_attention(q, k, v, causal=causal)
    r = flash_attention(q, k, v, fix="unbiased", seed=3, causal=causal, precision="fp64")
    np.testing.assert_allclose(r.out, ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(r.lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_the_row_sum_adds_the_rounded_weights():
    q, k, v = _qkv(seed=2, v=1.0)
    fixed = flash_attention(q, k, v, fix="unbiased", seed=4, dump=True)
    plain = flash_attention(q, k, v, dump=True)
    dev_fixed = np.abs(fixed.acc / fixed.l[..., None] - 1).max()
    dev_plain = np.abs(plain.acc / plain.l[..., None] - 1).max()
    assert dev_fixed <= 8 * 2.0 ** -24, dev_fixed            # acc and l sum the same P̃
    assert dev_plain > 2.0 ** -12, dev_plain                  # l sums P̄, acc sums bf16(P̄)


def test_the_p_cast_words_are_one_philox_word_per_row_and_a_weyl_step_per_block():
    from flashbits.emulator.attention.units import WEYL_STEP

    assert WEYL_STEP == 0x9E3779B9
    key = seed_to_u64(stage_seed(5, "P_cast"))
    # the words the kernel forms: (tl.randint(seed_p, row) + block·WEYL_STEP) mod 2^32
    for row, block in ((0, 0), (7, 1), (12345, 63)):
        u = int(randint_word(key, row))
        assert 0 <= u < 2 ** 32
        assert (u + block * WEYL_STEP) % 2 ** 32 == (u + block * 0x9E3779B9) & 0xFFFFFFFF


def _repeated(rows=4096, seed=7):
    rng = np.random.default_rng(seed)
    q = np.repeat(rng.standard_normal((1, 64)) * 2, rows, axis=0)
    k = rng.standard_normal((128, 64))
    v = rng.normal(-0.3, 0.5, (128, 64))
    return tuple(quantize(x, "bf16") for x in (q, k, v))


@pytest.mark.parametrize("regime", ["ties-12", "lowrank-v", "repeated"])
def test_it_removes_the_bias_where_rne_has_one(regime):
    q, k, v = _repeated() if regime == "repeated" else regime_inputs(regime, rows=4096)
    ref, _ = reference_attention(q, k, v)
    _, _, plain = run_cell(q, k, v, ref, "fa2", "none", "rne", record=False)
    _, _, fixed = run_cell(q, k, v, ref, "fa2", "unbiased", "rne", record=False)
    assert abs(plain["t"]) > 3, plain
    assert abs(fixed["t"]) < 3, fixed


def test_refusals():
    q, k, v = _qkv(8, 8)
    with pytest.raises(ValueError, match="seed"):
        flash_attention(q, k, v, fix="unbiased")
    with pytest.raises(ValueError, match="fa2 family"):
        flash_attention(q, k, v, recipe="paper", fix="unbiased", seed=1)
    for kw in ({"eps": 1e-3}, {"beta": 2.0}, {"delta": 0.3}):
        with pytest.raises(ValueError, match="no eps, beta or delta"):
            flash_attention(q, k, v, fix="unbiased", seed=1, **kw)
