"""emulator.flash_attention and emulator.reference_attention (emulator/attention/api.py).

What is checked, and against what:

* ``precision="fp64"`` (every unit IEEE float64) equals the float64 reference
  for any tiles, lengths, masks, recipe and fix: tiling and the fix are exact
  transformations of softmax (docs/recipes.md, "The fix").
* The bias claim of issue 4 / docs/paper.md on the regimes of crosscheck.regimes.
* Properties: 2-D = 4-D, no cross-talk between (batch, head), causal rows see
  only their keys, the NaN rule stated below, bf16 outputs, an a-priori error
  bound against the reference (derived in ``error_bound``).
* The rounding ledger's operation counts (docs/recipes.md, "The ledger's
  counting rules"), computed here independently from the shapes.
* Input errors, and stochastic rounding.

Bit equality means equal raw bits of every element; NaN payloads are the one
documented exception (the emulator writes its canonical NaN, the GPU 0x7FFF).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashbits.crosscheck.cases import Case, generate
from flashbits.crosscheck.regimes import regime_inputs
from flashbits.emulator import flash_attention, from_bits, quantize, reference_attention, to_bits
from flashbits.emulator.attention.stats import bias_stats, signed_error_ulps

from attention_bounds import error_bound, visible, visited_blocks

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RECIPES = ("fa2", "paper")
TILES = (16, 32, 64, 128)


def bf16(x) -> np.ndarray:
    return quantize(np.asarray(x, np.float64), "bf16", "rne")


def rand_qkv(seed, B, H, Nq, Nk, D, qscale=1.0, ties=0):
    """bf16 q, k, v ~ N(0, 1) (q scaled); ``ties`` keys duplicated (exactly tied scores)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Nq, D)) * qscale
    k = rng.standard_normal((B, H, Nk, D))
    v = rng.standard_normal((B, H, Nk, D))
    for _ in range(ties if Nk > 1 else 0):
        a, b = rng.choice(Nk, 2, replace=False)
        k[:, :, b] = k[:, :, a]
    return bf16(q), bf16(k), bf16(v)


def raw(a) -> np.ndarray:
    """Raw bits of a float array (float32 → uint32, float64 → uint64); NaNs mapped to one code."""
    a = np.ascontiguousarray(a)
    b = a.view(np.uint32 if a.dtype == np.float32 else np.uint64).copy()
    b[np.isnan(a)] = 0
    return b


def assert_bits_equal(a, b, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    bad = (raw(a) != raw(b)) | (nan_a != nan_b)
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        pytest.fail(f"{what}: {int(bad.sum())} of {a.size} elements differ; first at {idx}: {a[idx]!r} vs {b[idx]!r}")


def assert_bf16_values(out):
    """float32 array whose every value is a bf16 value: to_bits/from_bits round-trips it bit for bit."""
    out = np.asarray(out)
    assert out.dtype == np.float32
    back = from_bits(to_bits(out, "bf16"), "bf16")
    assert_bits_equal(back.astype(np.float32), out, "bf16 round trip")


# --------------------------------------------------------------------------------------------
# a. precision="fp64" equals the reference
# --------------------------------------------------------------------------------------------

@st.composite
def problems(draw, max_len=300):
    fix = draw(st.sampled_from([None, "paper"]))
    return dict(
        recipe=draw(st.sampled_from(RECIPES)),
        block_m=draw(st.sampled_from(TILES)), block_n=draw(st.sampled_from(TILES)),
        Nq=draw(st.integers(1, max_len)), Nk=draw(st.integers(1, max_len)),
        D=draw(st.sampled_from([1, 3, 16, 40, 64])),
        B=draw(st.integers(1, 2)), H=draw(st.integers(1, 2)),
        causal=draw(st.booleans()), fix=fix,
        eps=draw(st.sampled_from([0.0, 1e-3, 0.05, 0.5])) if fix else None,
        beta=draw(st.sampled_from([1.0, 2.0, 8.0])) if fix else None,
        qscale=draw(st.sampled_from([0.5, 1.0, 3.0])),
        ties=draw(st.integers(0, 3)),
        seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=40, **SETTINGS)
@given(pb=problems())
def test_fp64_equals_reference(pb):
    q, k, v = rand_qkv(pb["seed"], pb["B"], pb["H"], pb["Nq"], pb["Nk"], pb["D"], pb["qscale"], pb["ties"])
    r = flash_attention(q, k, v, recipe=pb["recipe"], causal=pb["causal"], block_m=pb["block_m"],
                        block_n=pb["block_n"], fix=pb["fix"], eps=pb["eps"], beta=pb["beta"], precision="fp64")
    ref, ref_lse = reference_attention(q, k, v, causal=pb["causal"])
    assert r.out.dtype == np.float64 and r.out.shape == ref.shape
    assert np.isfinite(r.out).all()
    rel = np.abs(r.out - ref).max() / np.abs(ref).max()
    assert rel <= 1e-12, f"relative difference {rel:.3e} > 1e-12 ({pb})"
    # lse = m + ln l: m is the shifted max (log2 domain for fa2), ln l absorbs the shift
    m_nats = np.abs(r.m) * (math.log(2.0) if pb["recipe"] == "fa2" else 1.0)
    assert np.all(np.abs(r.lse - ref_lse) <= 1e-12 * (1 + np.abs(ref_lse) + m_nats))


# --------------------------------------------------------------------------------------------
# b. the fix changes nothing exact, and some bits of the hardware result
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("beta", [2.0, 8.0])
def test_fix_exact_unchanged_hw_changed(recipe, beta):
    case = Case(kind="ties", B=1, H=2, Nq=96, Nk=80, D=64, causal=False, seed=5, gap=12.0)
    q, k, v = generate(case)
    ref, _ = reference_attention(q, k, v)
    e0 = flash_attention(q, k, v, recipe=recipe, precision="fp64")
    e1 = flash_attention(q, k, v, recipe=recipe, precision="fp64", fix="paper", beta=beta)
    scale = np.abs(ref).max()
    assert np.abs(e1.out - e0.out).max() <= 1e-12 * scale
    assert np.abs(e1.out - ref).max() <= 1e-12 * scale
    # the fix did act: in exact arithmetic it moved m above the row max
    assert np.all(e1.m >= e0.m) and np.any(e1.m > e0.m)
    h0 = flash_attention(q, k, v, recipe=recipe)
    h1 = flash_attention(q, k, v, recipe=recipe, fix="paper", beta=beta)
    differ = to_bits(h0.out, "bf16") != to_bits(h1.out, "bf16")
    assert differ.any(), "the fix changed no output bit of a tied-maxima case"


# --------------------------------------------------------------------------------------------
# c. the bias of issue 4 (docs/paper.md)
# --------------------------------------------------------------------------------------------

def _bias(recipe, q, k, v, ref, **kw):
    r = flash_attention(q, k, v, recipe=recipe, record=True, **kw)
    return r, bias_stats(signed_error_ulps(r.out, ref, "bf16"))


@pytest.mark.parametrize("regime", ["ties-12", "ties-15"])
def test_paper_recipe_bias_in_tied_regime(regime):
    """Two tied maxima, the rest 12/15 nats lower, V mostly negative, 2^18
    samples: the paper recipe without the fix rounds O away from zero (mean
    signed error < 0 with |t| > 10), and the ledger locates the cause: ties
    decided by sticky bits at the cast of the block output Ō = P̄V to bf16,
    rounded away from zero in more than 90% of cases.

    What the fix and fa2 do here is printed (pytest -s), not asserted: docs/paper.md
    says the fix is not known to remove all of the bias."""
    q, k, v = regime_inputs(regime)
    assert q.shape == (1, 1, 4096, 64) and k.shape == (1, 1, 64, 64)
    ref, _ = reference_attention(q, k, v)
    r, s = _bias("paper", q, k, v, ref)
    pv = r.ledger["PV_cast"]
    print(f"\n{regime} paper, no fix: mean {s['mean_ulp']:+.5f} ± {s['sem_ulp']:.5f} ulp, t = {s['t']:+.1f}, "
          f"n = {s['n']}; PV_cast sticky-bit ties {pv['sticky_ties']} ({pv['sticky_ties_away']} away)")
    print(r.ledger.format_table())
    assert s["n"] >= 2**18
    assert s["mean_ulp"] < 0 and s["t"] < -10, s
    assert pv["sticky_ties"] > 0
    assert pv["sticky_ties_away"] / pv["sticky_ties"] > 0.9, pv

    rf, sf = _bias("paper", q, k, v, ref, fix="paper")
    print(f"{regime} paper, fix=paper: mean {sf['mean_ulp']:+.5f} ± {sf['sem_ulp']:.5f} ulp, t = {sf['t']:+.1f}; "
          f"PV_cast sticky-bit ties {rf.ledger['PV_cast']['sticky_ties']} "
          f"({rf.ledger['PV_cast']['sticky_ties_away']} away)")
    # a mathematical fact only: the fix changes the arithmetic of tied rows
    assert (to_bits(rf.out, "bf16") != to_bits(r.out, "bf16")).any()
    for fix in (None, "paper"):
        ra, sa = _bias("fa2", q, k, v, ref, fix=fix)
        oc = ra.ledger["O_cast"]
        print(f"{regime} fa2, fix={fix}: mean {sa['mean_ulp']:+.5f} ± {sa['sem_ulp']:.5f} ulp, t = {sa['t']:+.1f}; "
              f"O_cast sticky-bit ties {oc['sticky_ties']} ({oc['sticky_ties_away']} away)")
        assert sa["n"] == 2**18


# --------------------------------------------------------------------------------------------
# d. properties
# --------------------------------------------------------------------------------------------

@settings(max_examples=12, **SETTINGS)
@given(recipe=st.sampled_from(RECIPES), causal=st.booleans(), Nq=st.integers(1, 150), Nk=st.integers(1, 150),
       D=st.sampled_from([8, 64]), seed=st.integers(0, 2**31))
def test_2d_equals_4d(recipe, causal, Nq, Nk, D, seed):
    q, k, v = rand_qkv(seed, 1, 1, Nq, Nk, D)
    r4 = flash_attention(q, k, v, recipe=recipe, causal=causal)
    r2 = flash_attention(q[0, 0], k[0, 0], v[0, 0], recipe=recipe, causal=causal)
    assert r2.out.shape == (Nq, D) and r4.out.shape == (1, 1, Nq, D)
    assert r2.lse.shape == (Nq,) and r4.lse.shape == (1, 1, Nq)
    assert_bits_equal(r2.out, r4.out[0, 0], "out")
    assert_bits_equal(r2.lse, r4.lse[0, 0], "lse")
    # ml_dtypes bfloat16 input is the same input
    import ml_dtypes
    r3 = flash_attention(*(a[0, 0].astype(ml_dtypes.bfloat16) for a in (q, k, v)), recipe=recipe, causal=causal)
    assert_bits_equal(r3.out, r2.out, "bfloat16 input")


@settings(max_examples=10, **SETTINGS)
@given(recipe=st.sampled_from(RECIPES), causal=st.booleans(), fix=st.sampled_from([None, "paper"]),
       Nq=st.integers(1, 140), Nk=st.integers(1, 140), seed=st.integers(0, 2**31))
def test_no_cross_talk_between_heads(recipe, causal, fix, Nq, Nk, seed):
    """A (B=2, H=3) call equals six separate (seq, dim) calls, bit for bit (RNE:
    stochastic rounding draws its random words at offsets that include the
    (batch, head) index, by design, so it is excluded here)."""
    B, H, D = 2, 3, 16
    q, k, v = rand_qkv(seed, B, H, Nq, Nk, D, qscale=2.0, ties=2)
    r = flash_attention(q, k, v, recipe=recipe, causal=causal, fix=fix, block_m=32, block_n=32)
    assert r.out.shape == (B, H, Nq, D) and r.m.shape == (B, H, Nq)
    for b in range(B):
        for h in range(H):
            s = flash_attention(q[b, h], k[b, h], v[b, h], recipe=recipe, causal=causal, fix=fix,
                                block_m=32, block_n=32)
            assert_bits_equal(s.out, r.out[b, h], f"out[{b},{h}]")
            assert_bits_equal(s.m, r.m[b, h], f"m[{b},{h}]")
            assert_bits_equal(s.l, r.l[b, h], f"l[{b},{h}]")


@settings(max_examples=10, **SETTINGS)
@given(recipe=st.sampled_from(RECIPES), fix=st.sampled_from([None, "paper"]), Nq=st.integers(1, 130),
       Nk=st.integers(1, 130), bm=st.sampled_from(TILES), bn=st.sampled_from(TILES), seed=st.integers(0, 2**31))
def test_causal_row_is_its_prefix_problem(recipe, fix, Nq, Nk, bm, bn, seed):
    """Causal row i, bit for bit, is the non-causal problem of query i over keys
    0..i: the extra blocks a causal row's program visits hold only masked keys
    and are exact no-ops (α = 1, P̄ = 0; docs/recipes.md).  And it is within the
    a-priori error bound of the reference (``error_bound``)."""
    D = 16
    q, k, v = rand_qkv(seed, 1, 1, Nq, Nk, D, qscale=2.0, ties=2)
    r = flash_attention(q, k, v, recipe=recipe, causal=True, fix=fix, block_m=bm, block_n=bn)
    # rows at every tile edge, the last rows, and a few others (each row is one emulator call)
    rows = {0, 1, bm - 1, bm, bn - 1, bn, Nk - 1, Nk, Nq - 1} | set(np.random.default_rng(seed).integers(0, Nq, 3))
    for i in sorted(r_ for r_ in rows if 0 <= r_ < Nq):
        n = min(i + 1, Nk)
        s = flash_attention(q[:, :, i:i + 1], k[:, :, :n], v[:, :, :n], recipe=recipe, fix=fix,
                            block_m=bm, block_n=bn)
        assert_bits_equal(s.out[0, 0, 0], r.out[0, 0, i], f"row {i}")
        assert_bits_equal(s.m[0, 0, 0], r.m[0, 0, i], f"m row {i}")
        assert_bits_equal(s.l[0, 0, 0], r.l[0, 0, i], f"l row {i}")
    ref, _ = reference_attention(q, k, v, causal=True)
    tol = error_bound(recipe, q, k, v, True, bm, bn, beta=2.0 if fix else 1.0)
    err = np.abs(r.out - ref)
    assert np.all(err <= tol), f"max err/bound {np.max(err / tol):.3f}"


@settings(max_examples=10, **SETTINGS)
@given(recipe=st.sampled_from(RECIPES), causal=st.booleans(), Nq=st.integers(1, 200), Nk=st.integers(1, 200),
       D=st.sampled_from([16, 64, 128]), qscale=st.sampled_from([0.25, 1.0, 2.0]), seed=st.integers(0, 2**31))
def test_within_a_priori_error_bound(recipe, causal, Nq, Nk, D, qscale, seed):
    """Every output element, for random inputs, is within ``error_bound`` of the
    float64 reference, and is a bf16 value; so is lse.  The bound is derived,
    not fitted; the test also checks it is not vacuous (on problems with enough
    roundings the largest error exceeds 1% of it)."""
    q, k, v = rand_qkv(seed, 1, 2, Nq, Nk, D, qscale)
    r = flash_attention(q, k, v, recipe=recipe, causal=causal)
    ref, _ = reference_attention(q, k, v, causal=causal)
    assert_bf16_values(r.out)
    tol = error_bound(recipe, q, k, v, causal, r.recipe.block_m, r.recipe.block_n)
    err = np.abs(r.out - ref)
    assert np.all(err <= tol), f"max err/bound {np.max(err / tol):.3f}"
    if Nk >= 16 and Nq * D >= 256:  # enough roundings that some output errs measurably
        assert np.max(err / tol) > 0.01, f"the bound is vacuous here: {np.max(err / tol):.4f}"
    ref_lse = reference_attention(q, k, v, causal=causal)[1]
    tol_lse = error_bound(recipe, q, k, v, causal, r.recipe.block_m, r.recipe.block_n, lse=True)
    assert np.all(np.abs(r.lse - ref_lse) <= tol_lse)


@settings(max_examples=10, **SETTINGS)
@given(recipe=st.sampled_from(RECIPES), fix=st.sampled_from([None, "paper"]),
       rounding=st.sampled_from(["rne", "sr"]), Nq=st.integers(2, 160), Nk=st.integers(2, 160),
       bm=st.sampled_from(TILES), bn=st.sampled_from(TILES), data=st.data())
def test_causal_row_ignores_later_keys(recipe, fix, rounding, Nq, Nk, bm, bn, data):
    """Perturbing (finite) keys and values j ≥ c leaves rows i < c bit for bit
    unchanged, for both roundings (the sr words are indexed by (row, key), not
    by position in a block)."""
    c = data.draw(st.integers(1, min(Nq, Nk) - 1) if min(Nq, Nk) > 1 else st.just(1))
    seed = data.draw(st.integers(0, 2**31))
    q, k, v = rand_qkv(seed, 1, 1, Nq, Nk, 16, qscale=2.0)
    rng = np.random.default_rng(seed + 1)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, c:] = bf16(rng.standard_normal(k2[:, :, c:].shape) * 8)
    v2[:, :, c:] = bf16(rng.standard_normal(v2[:, :, c:].shape) * 1e4)
    kw = dict(recipe=recipe, causal=True, fix=fix, block_m=bm, block_n=bn, rounding=rounding,
              seed=7 if rounding == "sr" else None)
    r1 = flash_attention(q, k, v, **kw)
    r2 = flash_attention(q, k2, v2, **kw)
    assert_bits_equal(r1.out[..., :c, :], r2.out[..., :c, :], "rows before the cut")
    assert_bits_equal(r1.l[..., :c], r2.l[..., :c], "l rows before the cut")


@pytest.mark.parametrize("recipe", RECIPES)
def test_nonfinite_v_at_a_masked_key_poisons_the_rows_of_its_block(recipe):
    """Observed and asserted behaviour, the kernels' too: P̄·V runs over the whole
    key block, masked lanes included (P̄ = 0 there), so an inf in V at a key
    j > i inside a block that row i visits gives 0·inf = NaN in the tensor-core
    dot for that feature.  The reference (which never touches masked keys) is
    finite there.  Rows whose visited blocks end before j are unaffected; so is
    the feature d' ≠ d."""
    Nq, Nk, D, bm, bn = 40, 70, 16, 16, 16
    q, k, v = rand_qkv(1, 1, 1, Nq, Nk, D)
    v[0, 0, 20, 1] = np.inf
    r = flash_attention(q, k, v, recipe=recipe, causal=True, block_m=bm, block_n=bn)
    ref, _ = reference_attention(q, k, v, causal=True)
    nan_rows = np.unique(np.nonzero(np.isnan(r.out[0, 0]))[0])
    np.testing.assert_array_equal(nan_rows, [16, 17, 18, 19])  # visit block [16, 32), do not see key 20
    assert np.isnan(r.out[0, 0, 16:20, 1]).all() and np.isfinite(np.delete(r.out[0, 0, 16:20], 1, axis=1)).all()
    assert np.isinf(r.out[0, 0, 20:, 1]).all() and np.isinf(ref[0, 0, 20:, 1]).all()  # rows that see key 20
    assert np.isfinite(r.out[0, 0, :16]).all()
    # reference_attention never touches masked keys: it is finite where the kernel
    # arithmetic (and so the emulator) meets 0·inf in a masked lane of a visited block
    assert np.isfinite(ref[0, 0, :20, 1]).all()
    assert (np.isnan(r.out) == np.isnan(r.out) & (np.arange(Nq)[None, None, :, None] >= 16)
            & (np.arange(Nq)[None, None, :, None] < 20) & (np.arange(D) == 1)).all()


def predicted_nan_rows(q, k, causal, block_m, block_n, fix):
    """The NaN rule of the recipes, restated from docs/recipes.md in float64.

    Per row, per visited key block (ascending): valid keys have score S (IEEE
    specials as the tensor core's: inf·0 and +inf meeting −inf give NaN —
    the same classes as a float64 dot, which is what is used here for inputs
    far from overflow), masked keys −inf.  The block max ignores NaN (PTX
    max.f32).  The paper fix counts valid scores ≥ max − ε (−inf ≥ −inf
    counts) and, when more than one and the max is −inf, sets it to 0.
    m_new = max(m, block max).  Row i is NaN iff

    * some valid score is NaN or +inf (x = S·c − m_new or s − m_new is NaN), or
    * m_new = −inf after some visited block (then x = −inf − (−inf) for the
      block's valid keys, and α's argument m − m_new, are NaN), or
    * no visible score is finite (with the fix, m = 0 and every P̄ = 0: l = 0,
      and the division is 0/0).

    Otherwise every element of the row is finite (V finite)."""
    s = np.einsum("...id,...jd->...ij", np.asarray(q, np.float64), np.asarray(k, np.float64))
    Nq, Nk = s.shape[-2:]
    out = np.zeros(s.shape[:-1], bool)
    for idx in np.ndindex(s.shape[:-2]):
        for i in range(Nq):
            m = -np.inf
            nan = False
            for jb in range(visited_blocks(i, Nk, causal, block_m, block_n)):
                js = [j for j in range(jb * block_n, min(Nk, (jb + 1) * block_n)) if not causal or j <= i]
                sv = s[idx + (i,)][js]
                if np.isnan(sv).any() or (sv == np.inf).any():
                    nan = True
                fin = sv[~np.isnan(sv)]
                bmax = fin.max() if fin.size else -np.inf
                if fix and bmax == -np.inf and (sv == -np.inf).sum() > 1:
                    bmax = 0.0
                m = max(m, bmax)
                if m == -np.inf:
                    nan = True
            vis_s = s[idx + (i,)][: min(Nk, i + 1) if causal else Nk]
            if not np.isfinite(vis_s).any():
                nan = True  # no finite score: l = 0 (or NaN), 0/0
            out[idx + (i,)] = nan
    return out


@settings(max_examples=16, **SETTINGS)
@given(recipe=st.sampled_from(RECIPES), causal=st.booleans(), fix=st.sampled_from([None, "paper"]),
       Nq=st.integers(1, 100), Nk=st.integers(1, 100), seed=st.integers(0, 2**31))
def test_nan_rule_with_infinite_inputs(recipe, causal, fix, Nq, Nk, seed):
    """±inf entries in q and k (case kind inf_inputs, plus a block of keys whose
    scores are −inf for half the rows): NaN exactly in the rows the rule of
    ``predicted_nan_rows`` names, whole rows; every other element finite and a
    bf16 value.  The reference is NaN only in rows the rule names (so the
    emulator is NaN only where the reference is NaN or the scores involve
    inf/NaN)."""
    case = Case(kind="inf_inputs", B=1, H=2, Nq=Nq, Nk=Nk, D=16, causal=causal, seed=seed)
    q, k, v = generate(case)
    q[:, :, :, 0] = bf16(np.abs(q[:, :, :, 0]) + 1.0)    # entry 0 of q rows > 0 ...
    q[:, :, ::2, 0] = -q[:, :, ::2, 0]                    # ... or < 0 on even rows
    k[:, :, : min(Nk, 16), 0] = -np.inf                   # first key block: scores −inf (odd rows) / +inf (even)
    r = flash_attention(q, k, v, recipe=recipe, causal=causal, fix=fix, block_m=16, block_n=16)
    ref, _ = reference_attention(q, k, v, causal=causal)
    pred = predicted_nan_rows(q, k, causal, 16, 16, fix)
    nan = np.isnan(r.out)
    np.testing.assert_array_equal(nan.any(axis=-1), pred)
    np.testing.assert_array_equal(nan.all(axis=-1), pred)
    assert np.isfinite(r.out[~pred]).all()
    assert_bf16_values(r.out)
    assert not (np.isnan(ref).any(axis=-1) & ~pred).any()


def test_nan_rule_fix_rescues_a_leading_block_of_minus_inf():
    """The case that separates the two branches of the rule: every score of the
    first key block is −inf, the others finite.  Without the fix m_new = −inf
    after block 0, so x = −inf − (−inf) = NaN: the row is NaN although the
    reference is finite (the kernels do what the emulator does).  The paper fix
    sets that block's max to 0 (−inf ≥ −inf counts as a tie), and the row is
    finite and within the a-priori bound of the reference."""
    q, k, v = rand_qkv(3, 1, 1, 8, 40, 16)
    q[..., 0] = 1.0
    k[:, :, :16, 0] = -np.inf
    ref, _ = reference_attention(q, k, v)
    assert np.isfinite(ref).all()
    # the reference's weights of keys 0..15 are exactly 0: it is the problem of keys 16..39
    ref_tail, _ = reference_attention(q, k[:, :, 16:], v[:, :, 16:])
    np.testing.assert_array_equal(ref, ref_tail)
    for recipe in RECIPES:
        r0 = flash_attention(q, k, v, recipe=recipe, block_n=16)
        assert np.isnan(r0.out).all()
        r1 = flash_attention(q, k, v, recipe=recipe, block_n=16, fix="paper")
        assert np.isfinite(r1.out).all()
        assert_bf16_values(r1.out)
        # bound of the tail problem, with one more visited block (8 more roundings of l and O in paper)
        tol = error_bound(recipe, q, k[:, :, 16:], v[:, :, 16:], False, 64, 16, beta=2.0, extra_blocks=1)
        assert np.all(np.abs(r1.out - ref) <= tol), np.max(np.abs(r1.out - ref) / tol)


def test_fp64_mode_with_infinite_scores():
    """precision="fp64" promises the reference (1e-12).  Two keys whose scores
    are −inf (k entry −inf, q entry +1): their weights are 0 in the reference,
    and the hardware recipes give finite rows too."""
    q, k, v = rand_qkv(3, 1, 1, 8, 40, 16)
    q[..., 0] = 1.0
    k[:, :, [3, 7], 0] = -np.inf
    ref, _ = reference_attention(q, k, v)
    assert np.isfinite(ref).all()
    for recipe in RECIPES:
        assert np.isfinite(flash_attention(q, k, v, recipe=recipe).out).all()
        e = flash_attention(q, k, v, recipe=recipe, precision="fp64")
        n_nan = int(np.isnan(e.out).sum())
        assert n_nan == 0, f"{recipe} fp64: {n_nan} of {e.out.size} outputs NaN, the reference none"
        assert np.abs(e.out - ref).max() <= 1e-12 * np.abs(ref).max()


def _extreme_case(rng, bvals, Nq=64, Nk=96, D=16):
    """q rows and k rows of one sign each, magnitudes 2^a_i (a ∈ {0, 8, 65}) and
    2^|b_j|: every product of a dot has the same sign, so the tensor core's fp32
    result is unambiguous, |S| ≈ 16·2^(a+|b|)·[1, 4]: ≤ 2^24, ≈ 2^67..2^75
    (finite), or ≥ 2^132 (±inf)."""
    a = np.resize([0, 8, 65], Nq)
    b = rng.choice(bvals, Nk)
    b[:2] = (0, 8)
    q = bf16(rng.uniform(1, 2, (Nq, D)) * 2.0 ** a[:, None])
    k = bf16(rng.uniform(1, 2, (Nk, D)) * np.sign(b + 0.5)[:, None] * 2.0 ** np.abs(b)[:, None])
    v = bf16(rng.standard_normal((Nk, D)))
    s = q.astype(np.float64) @ k.astype(np.float64).T / math.sqrt(D)  # exact, no overflow in float64
    plus_inf = (s >= 2.0**128).any(axis=1)
    max_log2 = np.abs(np.where(s < 2.0**128, s, -np.inf).max(axis=1)) * math.log2(math.e)
    return q, k, v, plus_inf, max_log2


@pytest.mark.parametrize("recipe", RECIPES)
def test_extreme_logits(recipe):
    """Scores far beyond any softmax range (``_extreme_case``).

    * Rows with a +inf score are NaN (x = S·c − m_new = inf − inf).
    * −inf scores (and finite ones 2^67 below the max) get weight 0.
    * fa2 only: x = fma(S, c, −m_new) with m_new = fl32(max S · c) is, for the
      max key, the rounding error of S·c, up to half an ulp: once
      |max S·c| ≥ 2^31 it can leave exp2's range (P̄ → 0 or inf, l → 0 or inf,
      out NaN) though every score is finite.  That is the recipe (and the
      kernel: NVPTX contracts the expression), so it is asserted: rows with
      |max S·c| < 2^30 (|x| ≤ 64 for the max key) are finite, and some rows with
      a finite max ≥ 2^67 are NaN.  The paper recipe subtracts bf16 values
      (exactly) and has no such rows.
    * Finite rows are bf16 values in the convex hull of their V rows (up to
      the bf16 rounding of weights and output)."""
    rng = np.random.default_rng(11)
    # A: no +inf score; a = 65 rows have a finite max ≈ 2^67..2^75 (fa2's hazard)
    q, k, v, plus_inf, max_log2 = _extreme_case(rng, [0, 8, -8, -65])
    assert not plus_inf.any()
    r = flash_attention(q, k, v, recipe=recipe)
    nan_rows = np.isnan(r.out).any(axis=1)
    safe, hazard = max_log2 < 2.0**30, max_log2 >= 2.0**31
    assert safe.any() and hazard.any() and (safe | hazard).all()
    assert not nan_rows[safe].any()
    if recipe == "fa2":
        print(f"\nfa2: {int(nan_rows[hazard].sum())} of {int(hazard.sum())} rows with |max S·c| >= 2^31 are NaN")
        assert nan_rows[hazard].any()
    else:
        assert not nan_rows.any()
    assert_bf16_values(r.out)
    hull = np.abs(v).max(axis=0) * (1 + 2.0**-6)
    assert np.all(np.abs(r.out[~nan_rows]) <= hull)
    # B: keys with +2^65 entries: +inf scores in the a = 65 rows
    q, k, v, plus_inf, max_log2 = _extreme_case(rng, [0, 8, -8, 65, -65])
    assert plus_inf.any() and not plus_inf.all()
    r = flash_attention(q, k, v, recipe=recipe)
    nan_rows = np.isnan(r.out).any(axis=1)
    assert np.isnan(r.out[plus_inf]).all()
    if recipe == "paper":
        assert not nan_rows[~plus_inf].any()
    assert_bf16_values(r.out)
    assert np.all(np.abs(r.out[~nan_rows]) <= np.abs(v).max(axis=0) * (1 + 2.0**-6))
    # C: large negative logits only (down to −2^12): within the a-priori bound of the
    # reference (the paper recipe's bound is vacuous at such scores; fa2's is tight)
    q2 = bf16(rng.uniform(1, 2, (64, 16)) * 2.0**3)
    k2 = bf16(-rng.uniform(1, 2, (96, 16)) * 2.0 ** rng.choice([0, 2, 4], 96)[:, None])
    r2 = flash_attention(q2, k2, v, recipe=recipe)
    ref2, _ = reference_attention(q2, k2, v)
    assert np.isfinite(r2.out).all()
    if recipe == "fa2":
        assert np.all(np.abs(r2.out - ref2) <= error_bound("fa2", q2, k2, v, False, 128, 64))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("causal", [False, True])
def test_subnormal_v(recipe, causal):
    """bf16 subnormal V (2^-135 .. 2^-121) and tiny q: the outputs are bf16
    values (subnormals kept, not flushed), finite, and within the a-priori
    bound, whose absolute floor counts one subnormal spacing per rounding."""
    case = Case(kind="subnormal", B=1, H=2, Nq=70, Nk=97, D=64, causal=causal, seed=3)
    q, k, v = generate(case)
    assert (np.abs(v) < 2.0**-126).mean() > 0.3
    r = flash_attention(q, k, v, recipe=recipe, causal=causal)
    ref, _ = reference_attention(q, k, v, causal=causal)
    assert np.isfinite(r.out).all()
    assert_bf16_values(r.out)
    assert (np.abs(r.out[r.out != 0]) < 2.0**-126).any()
    tol = error_bound(recipe, q, k, v, causal, r.recipe.block_m, r.recipe.block_n)
    assert np.all(np.abs(r.out - ref) <= tol)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("causal", [False, True])
def test_nan_inputs_propagate(recipe, causal):
    """NaN inputs are not an error; observed and asserted behaviour:
    NaN in q[i] → row i all NaN, nothing else; NaN in k[j] → every row that
    sees key j all NaN (causal: rows i ≥ j); NaN in v[j, d] → feature d NaN in
    every row whose visited blocks include key j's block (causal: rows of the
    programs reaching that block, even where key j is masked — 0·NaN in P̄·V)."""
    Nq, Nk, D, bm, bn = 40, 70, 16, 16, 16
    q, k, v = rand_qkv(2, 1, 1, Nq, Nk, D)
    rows = np.arange(Nq)

    q2 = q.copy(); q2[0, 0, 3, 5] = np.nan  # noqa: E702
    nan = np.isnan(flash_attention(q2, k, v, recipe=recipe, causal=causal, block_m=bm, block_n=bn).out[0, 0])
    np.testing.assert_array_equal(nan.all(axis=1), rows == 3)
    np.testing.assert_array_equal(nan.any(axis=1), rows == 3)

    k2 = k.copy(); k2[0, 0, 20, 1] = np.nan  # noqa: E702
    nan = np.isnan(flash_attention(q, k2, v, recipe=recipe, causal=causal, block_m=bm, block_n=bn).out[0, 0])
    want = rows >= 20 if causal else np.ones(Nq, bool)
    np.testing.assert_array_equal(nan.all(axis=1), want)
    np.testing.assert_array_equal(nan.any(axis=1), want)

    v2 = v.copy(); v2[0, 0, 20, 1] = np.nan  # noqa: E702
    nan = np.isnan(flash_attention(q, k, v2, recipe=recipe, causal=causal, block_m=bm, block_n=bn).out[0, 0])
    reach = np.array([visited_blocks(i, Nk, causal, bm, bn) > 20 // bn for i in rows])
    np.testing.assert_array_equal(nan[:, 1], reach)
    assert not np.delete(nan, 1, axis=1).any()


# --------------------------------------------------------------------------------------------
# e. ledger counting rules
# --------------------------------------------------------------------------------------------

def expected_ops(recipe, B, H, Nq, Nk, D, causal, bm, bn, fix):
    """Operations per stage from docs/recipes.md's counting rules, from the shapes alone."""
    VB = B * H * sum(visited_blocks(i, Nk, causal, bm, bn) for i in range(Nq))
    VP = B * H * int(visible(Nq, Nk, causal).sum())
    rows = B * H * Nq
    if recipe == "fa2":
        e = dict.fromkeys(["S", "x", "P", "P_cast"], VP)
        e.update(dict.fromkeys(["m_scale", "alpha_arg", "alpha", "l"], VB))
        e.update(l_blk=VB * (bn - 1), acc_scale=VB * D, PV=VB * D, div=rows * D, O_cast=rows * D, V_cast=0)
    else:
        e = dict.fromkeys(["S", "S_cast", "s", "s_cast", "d", "d_cast", "e_arg", "P", "P_cast"], VP)
        e.update(dict.fromkeys(["l_blk_cast", "a_arg", "a_arg_cast", "a_e_arg", "alpha", "alpha_cast", "l_mul",
                                "l_mul_cast", "l_add", "l_add_cast"], VB))
        e.update(dict.fromkeys(["PV", "PV_cast", "O_mul", "O_mul_cast", "O_add", "O_add_cast"], VB * D))
        e.update(l_blk=VB * (bn - 1), thr=VB if fix else 0, comp=0, div=rows * D, O_cast=rows * D)
    return e


@settings(max_examples=25, **SETTINGS)
@given(recipe=st.sampled_from(RECIPES), causal=st.booleans(), fix=st.sampled_from([None, "paper"]),
       rounding=st.sampled_from(["rne", "sr"]), B=st.integers(1, 2), H=st.integers(1, 2),
       Nq=st.integers(1, 150), Nk=st.integers(1, 150), D=st.sampled_from([1, 16, 24]),
       bm=st.sampled_from(TILES), bn=st.sampled_from(TILES), seed=st.integers(0, 2**31))
def test_ledger_counts(recipe, causal, fix, rounding, B, H, Nq, Nk, D, bm, bn, seed):
    q, k, v = rand_qkv(seed, B, H, Nq, Nk, D, ties=1)
    r = flash_attention(q, k, v, recipe=recipe, causal=causal, fix=fix, block_m=bm, block_n=bn, record=True,
                        rounding=rounding, seed=seed if rounding == "sr" else None)
    L = r.ledger
    exp = expected_ops(recipe, B, H, Nq, Nk, D, causal, bm, bn, fix)
    got = {s: L[s]["ops"] for s in L.stages}
    assert set(exp) <= set(got), set(exp) - set(got)
    assert {s: got[s] for s in exp} == exp
    for s in set(got) - set(exp):
        assert got[s] == 0, f"stage {s} not in docs/recipes.md's default plan but has {got[s]} ops"
    for s in L.stages:
        d = L[s]
        assert 0 <= d["inexact"] <= d["ops"], d
        assert d["ties"] + d["sticky_ties"] <= d["inexact"], d
        assert d["ties_away"] <= d["ties"] and d["sticky_ties_away"] <= d["sticky_ties"], d
        assert d["away"] <= d["inexact"], d
        assert d["n_err"] == d["ops"] - d["specials"] - d["overflow"], d
        if d["kind"] in ("approx", "tensor_core"):
            assert d["ties"] == 0 and d["sticky_ties"] == 0, d
    # finite inputs of moderate size: the only special operands are the initial
    # m = −inf of each row's first block, in the rescale argument m_old − m_new (→ −inf, α = 0)
    first = {"fa2": ("alpha_arg",), "paper": ("a_arg", "a_arg_cast", "a_e_arg")}[recipe]
    want = {s: (B * H * Nq if s in first else 0) for s in L.stages}
    # a causal row's program can visit a block with no key at or below the row (block_m >
    # block_n): its max is −inf, a special operand of the stage that reads it first (fa2:
    # m_scale, −inf · c; paper with the fix: thr, −inf − ε)
    empty = sum(1 for i in range(Nq) for jb in range(visited_blocks(i, Nk, causal, bm, bn))
                if causal and jb * bn > i)
    reads_block_max = {"fa2": "m_scale", "paper": "thr" if fix else None}[recipe]
    if reads_block_max:
        want[reads_block_max] = B * H * empty
    assert {s: L[s]["specials"] for s in L.stages} == want
    # the dumps: m, l after each block, NaN exactly where a row visits fewer blocks
    nblk = -(-Nk // bn)
    assert r.m_blocks.shape == (B, H, Nq, nblk)
    nv = np.array([visited_blocks(i, Nk, causal, bm, bn) for i in range(Nq)])
    want_nan = np.arange(nblk)[None, :] >= nv[:, None]
    np.testing.assert_array_equal(np.isnan(r.m_blocks), np.broadcast_to(want_nan, r.m_blocks.shape))
    np.testing.assert_array_equal(np.isnan(r.l_blocks), np.broadcast_to(want_nan, r.l_blocks.shape))
    # the last visited block holds the final m and l
    last = np.take_along_axis(r.m_blocks, np.broadcast_to((nv - 1)[None, None, :, None], (B, H, Nq, 1)), -1)
    assert_bits_equal(last[..., 0], r.m, "m_blocks at the last visited block vs m")


def test_ledger_counts_fp8_v_cast():
    """fa2 with P̄ cast to fp8: V is cast too (stage V_cast, one op per element of
    the zero-padded V)."""
    q, k, v = rand_qkv(4, 1, 2, 33, 70, 32)
    r = flash_attention(q, k, v, recipe="fa2", overrides={"P_cast": {"format": "fp8_e4m3"}}, record=True)
    assert r.ledger["V_cast"]["ops"] == 2 * 128 * 32  # Nk padded to 2 blocks of 64
    assert r.ledger["P_cast"]["ops"] == 2 * 33 * 70


# --------------------------------------------------------------------------------------------
# f. bad input: each message names what was given and what is accepted
# --------------------------------------------------------------------------------------------

def _qkv(Nq=8, Nk=9, D=16, B=1, H=2):
    return (np.zeros((B, H, Nq, D), np.float32), np.zeros((B, H, Nk, D), np.float32),
            np.zeros((B, H, Nk, D), np.float32))


def _nonbf16():
    q, k, v = _qkv()
    q[0, 0, 0, 0] = 0.1
    return (q, k, v), {}


def _f64_nonf32():
    q, k, v = _qkv()
    q = q.astype(np.float64)
    q[0, 0, 0, 0] = 0.1
    return (q, k, v), {}


BAD = {
    "batch/heads": (lambda: ((_qkv()[0], _qkv(H=1)[1], _qkv(H=1)[2]), {}), ValueError,
                    ["batch and heads", "(1, 2, 8, 16)", "(1, 1, 9, 16)"]),
    "k/v length": (lambda: ((_qkv()[0], _qkv()[1], _qkv(Nk=8)[2]), {}), ValueError, ["sequence length", "9", "8"]),
    "head dims": (lambda: ((_qkv()[0], _qkv(D=8)[1], _qkv()[2]), {}), ValueError, ["head dim", "16", "8"]),
    "2-D with 4-D": (lambda: ((_qkv()[0][0, 0], _qkv()[1], _qkv()[2]), {}), ValueError, ["2-D", "4-D"]),
    "3-D": (lambda: ((_qkv()[0][0], _qkv()[1][0], _qkv()[2][0]), {}), ValueError, ["(batch, heads, seq, dim)",
                                                                                     "(2, 8, 16)"]),
    "int dtype": (lambda: ((_qkv()[0].astype(np.int32),) + _qkv()[1:], {}), TypeError, ["int32", "float32"]),
    "complex dtype": (lambda: ((_qkv()[0].astype(np.complex64),) + _qkv()[1:], {}), TypeError,
                      ["complex64", "float32"]),
    "not bf16": (_nonbf16, ValueError, ["not representable in bf16", "quantize"]),
    "not even f32": (_f64_nonf32, ValueError, ["quantize"]),
    "head dim 0": (lambda: ((np.zeros((8, 0)), np.zeros((9, 0)), np.zeros((9, 0))), {}), ValueError,
                   ["head dim 0", "1..256"]),
    "head dim 257": (lambda: (tuple(np.zeros((n, 257), np.float32) for n in (8, 9, 9)), {}), ValueError,
                     ["head dim 257", "1..256"]),
    "empty seq": (lambda: ((_qkv(Nq=0)[0],) + _qkv()[1:], {}), ValueError, ["sequence lengths", ">= 1", "0"]),
    "recipe name": (lambda: (_qkv(), dict(recipe="fa3")), ValueError, ["'fa3'", "fa2", "paper"]),
    "recipe type": (lambda: (_qkv(), dict(recipe=3)), TypeError, ["int", "fa2", "paper"]),
    "stage name": (lambda: (_qkv(), dict(overrides={"nope": {"rounding": "rz"}})), ValueError,
                   ["'nope'", "P_cast", "O_cast"]),
    "fix name": (lambda: (_qkv(), dict(fix="nope")), ValueError, ["'nope'", "paper"]),
    "fix type": (lambda: (_qkv(), dict(fix=3)), TypeError, ["int", "paper"]),
    "stage format": (lambda: (_qkv(), dict(overrides={"S": {"format": "bf16"}})), ValueError,
                     ["'S'", "'bf16'", "fixed fp32"]),
    "stage rounding": (lambda: (_qkv(), dict(overrides={"S": {"rounding": "sr"}})), ValueError,
                       ["'S'", "'sr'", "fixed rne"]),
    "paper stage rounding": (lambda: (_qkv(), dict(recipe="paper", overrides={"thr": {"rounding": "rz"}})),
                             ValueError, ["'thr'", "'rz'"]),
    "format name": (lambda: (_qkv(), dict(overrides={"O_cast": {"format": "bogus"}})), ValueError,
                    ["'bogus'", "bf16", "fp8_e4m3"]),
    "rounding name": (lambda: (_qkv(), dict(overrides={"O_cast": {"rounding": "bogus"}})), ValueError,
                      ["'bogus'", "rne", "sr"]),
    "accumulation": (lambda: (_qkv(), dict(overrides={"P_cast": {"accumulation": "compensated"}})), ValueError,
                     ["'compensated'", "plain"]),
    "override key": (lambda: (_qkv(), dict(overrides={"P_cast": {"colour": "red"}})), ValueError,
                     ["colour", "rounding"]),
    "rand_bits": (lambda: (_qkv(), dict(overrides={"P_cast": {"rand_bits": 0}})), ValueError, ["0", "1..32"]),
    "sr without seed": (lambda: (_qkv(), dict(rounding="sr")), ValueError, ["P_cast", "O_cast", "seed"]),
    "sr stage without seed": (lambda: (_qkv(), dict(overrides={"O_cast": {"rounding": "sr"}})), ValueError,
                              ["O_cast", "seed"]),
    "eps without fix": (lambda: (_qkv(), dict(eps=1e-3)), ValueError, ["eps", "fix=None", "fix='paper'"]),
    "beta without fix": (lambda: (_qkv(), dict(beta=4.0)), ValueError, ["beta", "fix=None", "fix='paper'"]),
    "beta < 1": (lambda: (_qkv(), dict(fix="paper", beta=0.5)), ValueError, ["0.5", ">= 1"]),
    "eps < 0": (lambda: (_qkv(), dict(fix="paper", eps=-1.0)), ValueError, ["-1", ">= 0"]),
    "block_m": (lambda: (_qkv(), dict(block_m=48)), ValueError, ["block_m", "48", "16, 32, 64, 128, 256, 512"]),
    "block_n": (lambda: (_qkv(), dict(block_n=8)), ValueError, ["block_n", "8", "16, 32, 64, 128, 256, 512"]),
    "precision": (lambda: (_qkv(), dict(precision="fp32")), ValueError, ["'fp32'", "'hw'", "'fp64'"]),
    "scale": (lambda: (_qkv(), dict(scale=0.0)), ValueError, ["scale", "0", "positive finite"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_message(name):
    make, exc, parts = BAD[name]
    args, kw = make()
    with pytest.raises(exc) as ei:
        flash_attention(*args, **kw)
    msg = str(ei.value)
    for p in parts:
        assert p in msg, f"{name}: message {msg!r} lacks {p!r}"


def test_reference_rejects_what_flash_attention_rejects_by_shape():
    with pytest.raises(ValueError, match="(batch, heads, seq, dim)|shape"):
        reference_attention(np.zeros(4), np.zeros(4), np.zeros(4))
    with pytest.raises(TypeError, match="int64"):
        reference_attention(np.zeros((2, 4), np.int64), np.zeros((2, 4)), np.zeros((2, 4)))


# --------------------------------------------------------------------------------------------
# g. stochastic rounding
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", RECIPES)
def test_sr_reproducible_and_seeded(recipe):
    q, k, v = rand_qkv(9, 2, 2, 70, 97, 64)
    a = flash_attention(q, k, v, recipe=recipe, rounding="sr", seed=123, causal=True)
    b = flash_attention(q, k, v, recipe=recipe, rounding="sr", seed=123, causal=True)
    c = flash_attention(q, k, v, recipe=recipe, rounding="sr", seed=124, causal=True)
    n = flash_attention(q, k, v, recipe=recipe, causal=True)
    assert_bits_equal(a.out, b.out, "same seed")
    assert_bits_equal(a.l, b.l, "same seed, l")
    assert (to_bits(a.out, "bf16") != to_bits(c.out, "bf16")).any()
    assert (to_bits(a.out, "bf16") != to_bits(n.out, "bf16")).any()
    assert_bf16_values(a.out)
    # the seed is a stage key: P_cast alone in sr differs from both casts in sr
    p = flash_attention(q, k, v, recipe=recipe, seed=123, causal=True, overrides={"P_cast": {"rounding": "sr"}})
    assert (to_bits(p.out, "bf16") != to_bits(a.out, "bf16")).any()


def test_sr_removes_the_fa2_bias_on_average():
    """fa2 rounds to bf16 only at P_cast and O_cast; everything else is fp32
    (≤ 2^-16 bf16 ulp per operation).  With both casts stochastic (16 random
    bits: E[sr(x)] = x up to 2^-16 ulp), the expected output equals the fp32
    computation to well below 2^-12 ulp, so the pooled mean signed error over
    8 seeds × 2^18 samples (standard error ≈ 2.6e-4 ulp) must be
    statistically zero: |t| < 5 (false alarm ≈ 6e-7 under that model; the
    systematic part moves t by < 0.3).  On the same case RNE is biased with
    |t| > 10, and the SR mean is at least 10× smaller in magnitude."""
    q, k, v = regime_inputs("ties-15")
    ref, _ = reference_attention(q, k, v)
    rne = bias_stats(signed_error_ulps(flash_attention(q, k, v, recipe="fa2").out, ref))
    errs = [signed_error_ulps(flash_attention(q, k, v, recipe="fa2", rounding="sr", seed=s).out, ref).ravel()
            for s in range(8)]
    sr = bias_stats(np.concatenate(errs))
    print(f"\nfa2 ties-15: rne mean {rne['mean_ulp']:+.5f} (t = {rne['t']:+.1f}); "
          f"sr (8 seeds) mean {sr['mean_ulp']:+.6f} ± {sr['sem_ulp']:.6f} (t = {sr['t']:+.2f})")
    assert abs(rne["t"]) > 10
    assert sr["n"] == 8 * 2**18
    assert abs(sr["t"]) < 5, sr
    assert abs(sr["mean_ulp"]) < abs(rne["mean_ulp"]) / 10


def test_attention_exp2_unit_is_the_sfu_model():
    """The attention emulator's MUFU (units.mufu) is emulator.sfu_exp2 on fp32 values,
    FTZ and not; a value beyond fp32's range (only an fp64-format ablation can make
    one) reads as ±inf, so exp2 gives 0 or inf rather than garbage bits."""
    from flashbits.emulator import sfu_exp2
    from flashbits.emulator.attention.units import mufu
    from flashbits.emulator.hw.sfu import ex2_params, load_exp2_tables

    tpos, tneg, p = load_exp2_tables("sm90")
    ex2p = ex2_params(p)
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-160, 130, 3000), [-126.0, -126.5, -149.0, -150.5, 0.0, -0.0, 128.0]])
    x = x.astype(np.float32)
    for ftz in (True, False):
        want = sfu_exp2(x, ftz=ftz).view(np.uint32)
        got = np.array([mufu(float(v), tpos, tneg, ftz, ex2p) for v in x], dtype=np.float32).view(np.uint32)
        np.testing.assert_array_equal(got, want)
        for big in (2.0**128, 1.5 * 2.0**128, 2.0**129, 1e300):
            assert mufu(-big, tpos, tneg, ftz, ex2p) == 0.0
            assert mufu(big, tpos, tneg, ftz, ex2p) == np.inf


def test_ledger_names_ties_decided_by_sticky_bits_sticky_ties():
    """Issue 14, point 10: the ledger's field is sticky_ties (ties decided by sticky bits),
    and the name it had before, near_ties, still reads the same count."""
    from flashbits.emulator.attention.ledger import FIELDS

    assert "sticky_ties" in FIELDS and "sticky_ties_away" in FIELDS and "near_ties" not in FIELDS
    rng = np.random.default_rng(3)
    q, k, v = (quantize(rng.standard_normal((40, 16)).astype(np.float32), "bf16") for _ in range(3))
    row = flash_attention(q, k, v, recipe="paper", record=True).ledger["PV_cast"]
    assert row["sticky_ties"] == row["near_ties"] and row["sticky_ties_away"] == row["near_ties_away"]
    assert row["inexact"] > 0
