"""The ``paper_code`` recipe: the paper's published attention code exactly (docs/recipes.md,
"paper_code"), in the emulator only.

What is checked, and against what:

* the option off changes nothing: ``RECIPES["paper"]`` is the family's recipe as before
  (the golden replays of tests/test_attention_replay.py cover its bits), and where none of
  the three behaviours can act, ``paper_code`` equals ``paper`` at the same tiles;
* ``precision="fp64"`` equals the float64 reference (the behaviours are exact
  transformations of softmax there), causal or not, with and without the fix, lengths
  that are no multiple of 512;
* each behaviour on a constructed input where it decides bits, against the paper
  code's op sequence for one row restated below in plain numpy (each op in fp32, the
  result rounded once to bf16, as PyTorch's bf16 kernels do; rounding by ml_dtypes,
  not by the emulator): inputs are small integers, so every dot product and row sum is
  exact in fp32 and the tensor-core model's rounding cannot matter, and the exps are
  checked to sit far from a bf16 rounding boundary, so that which exp2 implementation
  computed them cannot matter either;
* the paper family's lse formula against an independent torch computation, numpy and
  torch inputs alike; the GPU launcher's refusal; the error messages.
"""

from __future__ import annotations

import math
from dataclasses import replace

import ml_dtypes
import numpy as np
import pytest
import torch

from flashbits.emulator import RECIPES, Recipe, flash_attention, reference_attention
from flashbits.emulator.attention.families import FAMILIES

BF16 = ml_dtypes.bfloat16
NEG_MAX = -float(ml_dtypes.finfo(BF16).max)   # the paper code's max_neg_value for bf16 inputs


def bf(x):
    """Values computed exactly (float64), rounded as a PyTorch bf16 op: to fp32, then to bf16."""
    return np.asarray(np.asarray(x, np.float64).astype(np.float32).astype(BF16), np.float64)


CLAMP = float(bf(1e-10))   # torch converts clamp's Python scalar to fp32, then to bf16


def bf_exp(d):
    """bf16(exp(d)) for bf16 values d, asserting the bf16 result does not depend on how
    exp is computed: exp(d) sits more than the error of any fp32 exp (ex2.approx of an
    fp32-rounded d·log2 e: 2^-24·|d| + 2 ulp, doubled) away from a bf16 rounding boundary."""
    d = np.asarray(d, np.float64)
    e = np.exp(d)
    r = bf(e)
    for x, y, dd in zip(np.ravel(e), np.ravel(r), np.ravel(d)):
        if x < 2.0**-140:      # far below half of bf16's smallest subnormal: 0 whichever exp
            assert y == 0.0
            continue
        tol = 2 * (2.0**-24 * abs(dd) + 2.0**-22)
        assert float(bf(x * (1 + tol))) == float(bf(x * (1 - tol))) == y, \
            f"exp({dd}) = {x} lies too near a bf16 rounding boundary for this test"
    return r


def exact_f32_sum(terms, axis=-1):
    """A sum the paper code takes in fp32 (a row sum, an einsum), asserted exact so that its
    order (torch's reduction, the wgmma chain) cannot matter."""
    s = np.sum(terms, axis=axis)
    assert np.array_equal(s.astype(np.float32).astype(np.float64), s), "sum not exact in fp32"
    return s


def paper_code_row(s, v, block, stable, eps=1e-3, beta=2.0):
    """The paper's forward for one query row, op by op (our restatement, docs/recipes.md,
    "paper_code"): ``s`` the row's bf16 scores for every key that exists, a causally
    masked key holding NEG_MAX; ``v`` (Nk, D) bf16 values.  Key blocks of ``block`` keys,
    the last one short; running max from NEG_MAX, row sum and output from 0, all bf16.
    Returns out, m, l and l after every block."""
    m, l, o = NEG_MAX, 0.0, np.zeros(v.shape[1])
    l_blocks = []
    for j0 in range(0, len(s), block):
        sb, vb = s[j0:j0 + block], v[j0:j0 + block]
        bm = sb.max()
        if stable:
            n = int((sb >= bf(np.float32(bm) - np.float32(eps))).sum())
            if n > 1 and bm > 0:
                bm = float(bf(np.float32(beta) * bm))
            elif n > 1 and bm < 0:
                bm = 0.0
        m_new = max(bm, m)
        p = bf_exp(bf(sb - m_new))
        l_blk = max(float(bf(exact_f32_sum(p))), CLAMP)          # .clamp(min=1e-10) on bf16
        pv = bf(exact_f32_sum(p[:, None] * vb, axis=0))
        alpha = float(bf_exp(bf(m - m_new)))
        l = float(bf(float(bf(alpha * l)) + l_blk))
        o = bf(bf(alpha * o) + pv)
        m = m_new
        l_blocks.append(l)
    return bf(o / l), m, l, l_blocks


def row_scores(q, k, i, causal, scale=1.0):
    """Row i's bf16 scores bf16(bf16(q·k)·scale) for every key, masked keys NEG_MAX (the test's inputs
    are small integers: q·k is exact)."""
    s = bf(bf(k @ q[i]) * np.float32(scale))
    if causal:
        s = np.where(np.arange(len(k)) > i, NEG_MAX, s)
    return s


def bits(x):
    return np.asarray(x, np.float64).view(np.uint64)


# --------------------------------------------------------------------------------------------
# the option off, and where none of the behaviours acts
# --------------------------------------------------------------------------------------------

def test_option_off_leaves_the_registered_recipes_as_they_were():
    fam = FAMILIES["paper"]
    assert RECIPES["paper"] == Recipe("paper", "paper", 64, 64, 4, fam.stages)
    assert RECIPES["paper"].paper_code is False and RECIPES["fa2"].paper_code is False
    assert RECIPES["fa2"] == Recipe("fa2", "fa2", 128, 64, 8, FAMILIES["fa2"].stages)
    pc = RECIPES["paper_code"]
    assert (pc.family, pc.block_m, pc.block_n, pc.num_warps, pc.paper_code) == ("paper", 512, 512, 4, True)
    assert pc.stages == RECIPES["paper"].stages
    assert list(RECIPES)[:2] == ["fa2", "paper"]


def test_paper_code_equals_paper_where_no_behaviour_acts():
    """Non-causal, no fix, N(0, 1) inputs at scale 1/sqrt(d): no masked key, no −inf score, and
    no block sum below 1e-10 (every score is within a few nats of the row max): paper_code
    is the paper recipe at the same tiles, bit for bit.  The ledger too, but for the first
    block's α argument: m_old − m_new is −max(bf16) − m_new (finite; its ·log2 e overflows
    to −inf) where the plain recipe has −inf − m_new (special); the same operations."""
    rng = np.random.default_rng(3)
    q, k, v = (bf(rng.standard_normal((1, 2, n, 32))) for n in (300, 700, 700))
    a = flash_attention(q, k, v, recipe="paper_code", record=True)
    b = flash_attention(q, k, v, recipe="paper", block_m=512, block_n=512, record=True)
    for name in ("out", "m", "l", "lse"):
        assert np.array_equal(bits(getattr(a, name)), bits(getattr(b, name))), name
    first_alpha = [a.ledger.stages.index(s) for s in ("a_arg", "a_arg_cast", "a_e_arg")]
    others = [i for i in range(len(a.ledger.stages)) if i not in first_alpha]
    assert np.array_equal(a.ledger.table[others], b.ledger.table[others])
    assert np.array_equal(a.ledger.table[first_alpha, 0], b.ledger.table[first_alpha, 0])   # operation counts
    assert not np.array_equal(a.ledger.table[first_alpha], b.ledger.table[first_alpha])


# --------------------------------------------------------------------------------------------
# float64 mode: equal to the reference
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fix", [None, "paper"])
@pytest.mark.parametrize("Nq,Nk,causal", [(700, 700, True), (700, 700, False), (900, 600, True),
                                          (300, 700, False), (700, 1100, False)])
def test_fp64_equals_reference(Nq, Nk, causal, fix):
    rng = np.random.default_rng(Nq + Nk)
    q = bf(2.0 * rng.standard_normal((1, 2, Nq, 32)))
    k = rng.standard_normal((1, 2, Nk, 32))
    k[:, :, 1::7] = k[:, :, 0::7][:, :, :k[:, :, 1::7].shape[2]]   # exactly tied scores: the fix's β·bm
    k, v = bf(k), bf(rng.standard_normal((1, 2, Nk, 32)))
    r = flash_attention(q, k, v, recipe="paper_code", causal=causal, fix=fix, precision="fp64")
    ref, ref_lse = reference_attention(q, k, v, causal=causal)
    assert np.isfinite(r.out).all()
    rel = np.abs(r.out - ref).max() / np.abs(ref).max()
    assert rel <= 1e-12, rel
    assert np.all(np.abs(r.lse - ref_lse) <= 1e-12 * (1 + np.abs(ref_lse) + np.abs(r.m)))
    if fix:   # the fix acted (m above the row max), so the check covers it
        plain = flash_attention(q, k, v, recipe="paper_code", causal=causal, precision="fp64")
        assert (r.m > plain.m).any()


# --------------------------------------------------------------------------------------------
# the three behaviours, each where it decides bits
# --------------------------------------------------------------------------------------------

def causal_negative_rows_case():
    """Nq = Nk = 520, d = 16, scale 1, q_i·k_j = a_i·(j + 1): rows 0 and 5 see only negative
    scores (a = −3, −1), so their running max is negative after block 0; keys 512..519 form
    a second block, fully above the diagonal for rows < 512."""
    N, D = 520, 16
    rng = np.random.default_rng(0)
    a = rng.integers(1, 4, N).astype(np.float64)
    a[0], a[5] = -3.0, -1.0
    q = np.zeros((N, D))
    q[:, 0] = a
    k = np.zeros((N, D))
    k[:, 0] = np.arange(N) % 64 + 1
    v = rng.integers(-7, 8, (N, D)).astype(np.float64)
    v[0, :4] = (7, 5, 3, -7)
    return q, k, v


def test_causal_fix_visits_the_masked_block_and_sets_m_to_zero():
    """(a) causal + fix: the paper code visits key block 1 for rows of query block 0 too; all its
    keys hold −max(bf16), all tie (n = 8 > 1) and bm < 0, so bm = 0 and m = max(0, m_old):
    rows 0 and 5 (negative max) get m = 0 and an α = bf16(e^m_old) rescale, which rounds
    their output; the plain paper recipe keeps m_old."""
    q, k, v = causal_negative_rows_case()
    r = flash_attention(q, k, v, recipe="paper_code", causal=True, fix="paper", scale=1.0, dump=True)
    plain = flash_attention(q, k, v, recipe="paper", causal=True, fix="paper", scale=1.0)
    plain512 = flash_attention(q, k, v, recipe="paper", causal=True, fix="paper", scale=1.0,
                               block_m=512, block_n=512)
    for i in (0, 5):
        out, m, l, l_blocks = paper_code_row(row_scores(q, k, i, True), v, 512, stable=True)
        assert m == 0.0 and r.m[i] == 0.0 and r.m_blocks[i, 0] < 0
        assert np.array_equal(bits(r.out[i]), bits(out)), i
        assert (r.l[i], list(r.l_blocks[i])) == (l, l_blocks)
        for other in (plain, plain512):
            assert other.m[i] < 0 and other.l[i] != r.l[i]
    # row 0 in numbers: m −3 → 0, α = bf16(e^−3) = 51/1024, l = α, out = bf16(bf16(α·v)/α)
    assert r.l[0] == 51 / 1024
    assert list(r.out[0, :4]) == [6.96875, 5.0, 3.0, -6.96875] and list(plain.out[0, :4]) == [7, 5, 3, -7]


def test_block_sum_clamped_to_bf16_of_1e_10():
    """(b) the fix at large logits: keys 0, 1 tie at s = 100, so m = β·100 = 200 and every P̄
    of block 0 underflows (e^−100 < 2^−134): the block's row sum 0 is clamped to bf16(1e-10)
    = 0x2EDC.  Key 512 (block 1, s = 180) then adds e^−20 ≈ 2.1e-9, and the clamped 1e-10
    stays in l: out = bf16(bf16(P̄·v)/bf16(1e-10 + P̄)) ≈ 0.95·v, where without the clamp
    the plain recipe gives ≈ v; with block 1 cut off, paper_code gives 0 and paper NaN."""
    D = 16
    q = np.zeros((1, D))
    q[0, 0] = 10.0
    k = np.zeros((513, D))
    k[:, 0] = -10.0
    k[0, 0] = k[1, 0] = 10.0
    k[512, 0] = 18.0
    v = np.zeros((513, D))
    v[:, :] = np.arange(1, D + 1)
    assert CLAMP == 1.000444171950221e-10 and bf(1e-10).astype(np.float32).view(np.uint32) >> 16 == 0x2EDC
    out, m, l, l_blocks = paper_code_row(row_scores(q, k, 0, False), v, 512, stable=True)
    assert m == 200.0 and l_blocks[0] == CLAMP
    r = flash_attention(q, k, v, recipe="paper_code", fix="paper", scale=1.0, dump=True)
    assert np.array_equal(bits(r.out[0]), bits(out))
    assert (r.m[0], r.l[0], list(r.l_blocks[0])) == (m, l, l_blocks)
    plain = flash_attention(q, k, v, recipe="paper", fix="paper", scale=1.0, block_m=512, block_n=512, dump=True)
    assert plain.l_blocks[0, 0] == 0.0 and plain.m[0] == 200.0
    assert (plain.out[0] != r.out[0]).all()
    assert np.abs(r.out[0] / v[0] - 0.95).max() < 0.02 and np.abs(plain.out[0] / v[0] - 1).max() < 0.01
    # only block 0: every P̄ is 0, l = bf16(1e-10) instead of 0, out = 0 instead of 0/0 = NaN
    r1 = flash_attention(q, k[:512], v[:512], recipe="paper_code", fix="paper", scale=1.0)
    p1 = flash_attention(q, k[:512], v[:512], recipe="paper", fix="paper", scale=1.0, block_m=512, block_n=512)
    assert r1.l[0] == CLAMP and (r1.out[0] == 0).all() and np.isnan(p1.out[0]).all()
    # the float64 mode drops the clamp (it would change exact math): as the reference
    r64 = flash_attention(q, k, v, recipe="paper_code", fix="paper", scale=1.0, precision="fp64")
    ref, _ = reference_attention(q, k, v, scale=1.0)
    assert np.allclose(r64.out, ref, rtol=1e-12, atol=0)


def test_running_max_starts_at_minus_max():
    """The running max starts at −max(bf16), not −inf.  With finite scores that changes no bit
    (a first block's α is exp(−max(bf16) − m_new) = 0, as exp(−inf)); a row whose first block
    has only −inf scores (here q = +inf against negative keys) gets m = −max(bf16), d = −inf,
    P̄ = 0 and out = 0/bf16(1e-10) = 0 instead of (−inf) − (−inf) = NaN."""
    D = 16
    q = np.zeros((2, D))
    q[0, 0] = np.inf
    q[1, 0] = 1.0
    k = np.zeros((40, D))
    k[:, 0] = -1.0
    k[:, 1] = np.arange(40)
    v = np.ones((40, D))
    r = flash_attention(q, k, v, recipe="paper_code")
    plain = flash_attention(q, k, v, recipe="paper", block_m=512, block_n=512)
    assert r.m[0] == NEG_MAX and r.l[0] == CLAMP and (r.out[0] == 0).all()
    assert plain.m[0] == -np.inf and np.isnan(plain.out[0]).all()
    assert np.array_equal(bits(r.out[1]), bits(plain.out[1])) and r.m[1] == plain.m[1]


def test_masked_keys_hold_minus_max():
    """A masked key's score is −max(bf16), a number: a causal row whose one valid score is −inf
    (q = +inf against a negative key) has block max −max(bf16) = its running max, so its masked
    keys get d = 0 and P̄ = 1, and the row averages the V of keys it may not see; with −inf
    masks it would be 0/bf16(1e-10) = 0.  With the fix the 39 tied masked keys set bm = 0."""
    D, N = 16, 40
    q = np.zeros((N, D))
    q[0, 0] = np.inf
    q[1:, 0] = 1.0
    k = np.zeros((N, D))
    k[:, 0] = -1.0
    k[:, 1] = np.arange(N)
    v = np.random.default_rng(2).integers(-4, 5, (N, D)).astype(np.float64)
    for fix in (None, "paper"):
        r = flash_attention(q, k, v, recipe="paper_code", causal=True, fix=fix)
        out, m, l, _ = paper_code_row(row_scores(q, k, 0, True, 0.25), v, 512, stable=fix is not None)
        assert np.array_equal(bits(r.out[0]), bits(out)) and (r.m[0], r.l[0]) == (m, l)
        if fix is None:
            assert (m, l) == (NEG_MAX, 39.0) and np.array_equal(out, bf(v[1:].sum(0) / 39))
        else:
            assert (m, l) == (0.0, CLAMP) and (out == 0).all()


def test_keys_beyond_nk_do_not_exist_and_masked_keys_do():
    """The fix's n counts the keys of a block that exist: a last block of one key (Nk = 513)
    never triggers the fix, fully masked or not, while a fully masked block of two keys does."""
    q, k, v = causal_negative_rows_case()
    for Nk, expect_m0 in ((513, -3.0), (514, 0.0)):
        qq, kk, vv = q[:Nk], k[:Nk], v[:Nk]
        r = flash_attention(qq, kk, vv, recipe="paper_code", causal=True, fix="paper", scale=1.0)
        out, m, l, _ = paper_code_row(row_scores(qq, kk, 0, True), vv, 512, stable=True)
        assert r.m[0] == m == expect_m0
        assert np.array_equal(bits(r.out[0]), bits(out)) and r.l[0] == l


def test_512_blocks_in_the_emulator_refused_by_the_gpu_launcher():
    """(c) the emulator takes 512 × 512 blocks (above, and for the plain recipe too); the GPU
    launcher refuses the paper-code mode, naming the emulator, and 512 tiles of the plain recipe."""
    from flashbits.gpu import attention as ga

    assert "paper_code" not in ga.KERNEL_RECIPES and set(ga.KERNEL_RECIPES) == {"fa2", "paper"}
    with pytest.raises(ValueError, match=r"paper-code mode.*do not implement.*emulator"):
        ga.check_kernel_recipe(RECIPES["paper_code"], None)
    with pytest.raises(ValueError, match="emulator"):
        ga.check_kernel_recipe(RECIPES["paper_code"].with_overrides(block_m=64, block_n=64), None)
    with pytest.raises(ValueError, match="kernel tiles"):
        ga.check_kernel_recipe(RECIPES["paper"].with_overrides(block_m=512, block_n=512), None)
    t = torch.zeros((1, 1, 8, 64), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="emulator"):
        ga.flash_attention(t, t, t, recipe="paper_code")
    assert ga.check_kernel_recipe(RECIPES["paper"], None)["FIX"] == 0   # the plain recipe passes, no fix


# --------------------------------------------------------------------------------------------
# the lse
# --------------------------------------------------------------------------------------------

def torch_lse(m, l):
    """lse = bf16(fl32(bf16(fl32(ln l)) + m)), as the paper's bf16 tensors compute it, with
    a correctly rounded fp32 log (float64 log, rounded once)."""
    ln = torch.log(torch.tensor(l, dtype=torch.float64)).float().to(torch.bfloat16)
    return (ln.double() + torch.tensor(m, dtype=torch.float64)).float().to(torch.bfloat16).double().numpy()


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log")
def test_paper_lse_is_the_bf16_formula():
    rng = np.random.default_rng(7)
    m = bf(np.concatenate([rng.normal(0, 30, 3000), [0.0, -3.0, 200.0, NEG_MAX]]))
    l = bf(np.concatenate([np.exp(rng.uniform(-30, 12, 3000)), [1.0, CLAMP, 0.0, 1.5]]))
    want = torch_lse(m, l)
    for name in ("paper", "paper_code"):
        got = RECIPES[name].lse(m, l)
        assert got.dtype == np.float64 and np.array_equal(bits(got), bits(want)), name
        # torch inputs (as gpu.attention.launch passes m, l): the same values, float32
        t = RECIPES[name].lse(torch.tensor(m, dtype=torch.float32), torch.tensor(l, dtype=torch.float32), torch.log)
        assert t.dtype == torch.float32 and np.array_equal(t.double().numpy(), want)
    assert (want != m + np.log(l)).sum() > 2000          # the rounding is visible
    # fp64 mode and fa2: the float64 formulas, unchanged
    assert np.array_equal(RECIPES["paper"].lse(m, l, fp64=True), m + np.log(l))
    assert np.array_equal(RECIPES["fa2"].lse(m, l), m * math.log(2.0) + np.log(l))
    # and what flash_attention returns
    rng = np.random.default_rng(1)
    q, k, v = (bf(rng.standard_normal((1, 1, 100, 16))) for _ in range(3))
    for name in ("paper", "paper_code"):
        r = flash_attention(q, k, v, recipe=name, causal=True)
        assert np.array_equal(bits(r.lse), bits(torch_lse(r.m, r.l)))
        r64 = flash_attention(q, k, v, recipe=name, precision="fp64")
        assert np.array_equal(r64.lse, r64.m + np.log(r64.l))


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

def test_errors_name_what_is_accepted():
    rng = np.random.default_rng(0)
    q = bf(rng.standard_normal((8, 16)))
    with pytest.raises(ValueError, match=r"block_n must be one of 16, 32, 64, 128, 256, 512 .*got 100"):
        flash_attention(q, q, q, recipe="paper_code", block_n=100)
    with pytest.raises(ValueError, match=r"block_m must be one of .*512.*got 1024"):
        RECIPES["paper"].with_overrides(block_m=1024)
    with pytest.raises(ValueError, match=r"paper_code .* option of family 'paper', not of family 'fa2'"):
        replace(RECIPES["fa2"], paper_code=True).validate()
    with pytest.raises(ValueError, match=r"causal=True needs Nk <= Nq.*Nq=8, Nk=9"):
        flash_attention(q, bf(rng.standard_normal((9, 16))), bf(rng.standard_normal((9, 16))),
                        recipe="paper_code", causal=True)
    with pytest.raises(ValueError, match="paper_code"):
        flash_attention(q, q, q, recipe="paper-code")


def test_cli_emulate_takes_paper_code(capsys):
    from flashbits.crosscheck.cli import main

    with pytest.raises(SystemExit):
        main(["emulate", "--help"])
    assert "paper_code" in capsys.readouterr().out
    assert main(["emulate", "--preset", "ties", "--recipe", "paper_code", "--fix", "paper"]) == 0
    assert "recipe paper_code, fix paper(β=2, ε=0.001)" in capsys.readouterr().out
