"""The Triton kernels (gpu.flash_attention) under the Triton interpreter, on the CPU.

Semantics only: the interpreter's arithmetic is numpy's, not the hardware's
(docs/hardware.md, "Never trust the interpreter for bits": tl.dot is a float32
matmul, exp2 is np.exp2, fma rounds twice, ``.to(tl.bfloat16)`` truncates).
So the outputs are compared with the float64 reference within an a-priori
bound for bf16 casts that err by less than one ulp (tests/attention_bounds.py
with u = 2^-7: truncation, and stochastic rounding, err by < 1 ulp, twice RNE's
half ulp); what must match exactly is everything that is not arithmetic:

* which key blocks each row visits: the dump tensors m_blocks, l_blocks have
  NaN exactly where the emulator's (dump=True) do;
* the production launch (DUMP=False) and the dump launch give the same bits;
* shapes, masks, odd lengths, head dims 64 and 128, both recipes, causal or not,
  fix None / paper, rne / sr.

TRITON_INTERPRET must be set before triton and gpu.kernels (the package and its
family modules) are imported: tests/interpreted_triton.py, imported first, sets it
and reimports them when another test module imported them first.
"""

from __future__ import annotations

from interpreted_triton import interpret, torch, triton  # noqa: F401 (first: sets TRITON_INTERPRET)

import numpy as np
import pytest
import triton.language as tl

import flashbits.gpu as gpu
from attention_bounds import U, error_bound
from flashbits.emulator import flash_attention as emu_flash_attention
from flashbits.emulator import quantize, reference_attention

# (Nq, Nk, D): odd lengths, one-row and one-key problems, more key blocks than a causal row visits
# (150, 200): causal row tiles past the first, whose blocks below the diagonal take the
# unmasked loop
SHAPES = [(1, 1, 64), (17, 33, 128), (70, 97, 64), (70, 130, 128), (1, 130, 64), (70, 1, 64), (150, 200, 64)]
CONFIGS = [(recipe, causal, fix, rounding) for recipe in ("fa2", "paper") for causal in (False, True)
           for fix in (None, "paper") for rounding in ("rne", "sr")]
# the unbiased fix (fa2 only) sets the P̄ and output casts itself
CONFIGS += [("fa2", causal, "unbiased", "rne") for causal in (False, True)]


def _inputs(Nq, Nk, D, seed, B=1, H=2):
    rng = np.random.default_rng(seed)
    # scores of a few nats: the paper recipe's bound grows with |score| (bf16 scores)
    q = quantize(rng.standard_normal((B, H, Nq, D)) * 0.5, "bf16")
    k = quantize(rng.standard_normal((B, H, Nk, D)), "bf16")
    v = quantize(rng.standard_normal((B, H, Nk, D)), "bf16")
    if Nk > 3:  # a tied pair of keys, so the fix acts
        k[:, :, 3] = k[:, :, 1]
    return q, k, v


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16)


def _np(t):
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _bits(t):
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy()
    return t.contiguous().view(torch.int32).numpy()


@pytest.mark.parametrize("recipe,causal,fix,rounding", CONFIGS,
                         ids=[f"{r}-{'causal' if c else 'full'}-{f or 'nofix'}-{rd}" for r, c, f, rd in CONFIGS])
def test_interpreted_kernel_semantics(recipe, causal, fix, rounding):
    kw = dict(recipe=recipe, causal=causal, fix=fix, rounding=rounding, seed=5 if rounding == "sr" or fix == "unbiased" else None)
    worst = 0.0
    for n, (Nq, Nk, D) in enumerate(SHAPES):
        q, k, v = _inputs(Nq, Nk, D, seed=100 + n)
        tq, tk, tv = _t(q), _t(k), _t(v)
        dump = gpu.flash_attention(tq, tk, tv, dump=True, **kw)
        prod = gpu.flash_attention(tq, tk, tv, dump=False, **kw)
        what = f"{recipe} causal={causal} fix={fix} {rounding} q{Nq} k{Nk} d{D}"
        # production launch == dump launch, bit for bit
        for name in ("out", "m", "l"):
            np.testing.assert_array_equal(_bits(getattr(prod, name)), _bits(getattr(dump, name)),
                                          err_msg=f"{what}: {name} of production vs dump launch")
        assert dump.out.shape == (1, 2, Nq, D) and dump.out.dtype == torch.bfloat16
        out = _np(dump.out)
        # the visited blocks: NaN padding of the dumps exactly as the emulator's
        emu = emu_flash_attention(q, k, v, dump=True, **kw)
        assert tuple(dump.m_blocks.shape) == emu.m_blocks.shape
        np.testing.assert_array_equal(np.isnan(_np(dump.m_blocks)), np.isnan(emu.m_blocks), err_msg=what)
        np.testing.assert_array_equal(np.isnan(_np(dump.l_blocks)), np.isnan(emu.l_blocks), err_msg=what)
        assert not np.isnan(_np(dump.acc)).any()
        # the final m equals the last visited block's dump entry
        nv = (~np.isnan(emu.m_blocks)).sum(-1)
        last = np.take_along_axis(_np(dump.m_blocks), (nv - 1)[..., None], -1)[..., 0]
        np.testing.assert_array_equal(last, _np(dump.m), err_msg=what)
        # against the reference: the bound for casts erring by < 1 ulp (u = 2U)
        ref, ref_lse = reference_attention(q, k, v, causal=causal)
        assert np.isfinite(out).all(), what
        tol = error_bound(recipe, q, k, v, causal, emu.recipe.block_m, emu.recipe.block_n,
                          beta=2.0 if fix else 1.0, u=2 * U)
        err = np.abs(out - ref)
        assert np.all(err <= tol), f"{what}: max error / bound {np.max(err / tol):.3f}"
        worst = max(worst, float(np.max(err / tol)))
        # lse = m + ln l (fa2: m·ln 2 + ln l) within the bound of ln l's error
        tol_lse = error_bound(recipe, q, k, v, causal, emu.recipe.block_m, emu.recipe.block_n,
                              beta=2.0 if fix else 1.0, u=2 * U, lse=True)
        if fix == "unbiased":
            # l sums the rounded weights P̃ = P̄(1 + θ), |θ| < 2U: ln l moves by < 2U(1 + 2U)
            tol_lse = tol_lse + 2 * U * (1 + 2 * U)
        err_lse = np.abs(_np(dump.lse) - ref_lse)
        assert np.all(err_lse <= tol_lse), f"{what}: lse error / bound {np.max(err_lse / tol_lse):.3f}"
    print(f"\n{recipe} causal={causal} fix={fix} {rounding}: largest error / bound {worst:.3f}")


@triton.jit
def _fix_decisions(X, COUNT, TOP2, c, eps2, BLOCK: tl.constexpr):
    """Per row of X: the paper fix's "n > 1" as the masked loop decides it (count
    scores with fl(s·c) >= thr) and as the unmasked loop does (second largest)."""
    r = tl.program_id(0)
    s = tl.load(X + r * BLOCK + tl.arange(0, BLOCK))[None, :]
    thr = tl.max(s, 1) * c - eps2
    n = tl.sum(((s * c) >= thr[:, None]).to(tl.int32), 1)
    q1, q2 = tl.reduce((s, tl.full(s.shape, float("nan"), tl.float32)), 1, gpu.kernels.fa2._top2_combine)
    thr2 = q1 * c - eps2
    tl.store(COUNT + r + tl.arange(0, 1), (n > 1).to(tl.int32))
    tl.store(TOP2 + r + tl.arange(0, 1), ((q2 * c) >= thr2).to(tl.int32))


def test_fix_second_largest_decides_like_the_count():
    """The unmasked loop's shortcut (gpu.kernels.fa2._top2_combine) against the
    definition, on rows built to break it: NaN, ±inf, ±0, duplicated maxima, one
    score just inside and just outside ε, all-NaN rows and single finite scores.
    (The interpreter's arithmetic is numpy's; the decision logic is what is tested
    here; its bits on the H200 are checked by crosscheck.)"""
    rng = np.random.default_rng(7)
    B = 64
    c, eps2 = np.float32(0.18033688), np.float32(1.4426950e-3)
    rows = []
    for _ in range(400):
        x = (rng.standard_normal(B) * rng.choice([1.0, 30.0])).astype(np.float32)
        kind = rng.integers(0, 9)
        j, k = rng.choice(B, 2, replace=False)
        if kind == 1:
            x[k] = x[j]
        elif kind == 2:  # second score eps/c away from the first, ± an ulp or two
            x[j] = np.float32(x.max() + 1)
            x[k] = np.float32(x[j] - eps2 / c) + np.float32(rng.integers(-3, 4)) * np.spacing(x[j])
        elif kind == 3:
            x[rng.random(B) < 0.5] = np.nan
        elif kind == 4:
            x[:] = np.nan
            x[j] = rng.choice([-np.inf, np.inf, 0.0, 1.0])
            if rng.random() < 0.5:
                x[k] = x[j] if rng.random() < 0.5 else -x[j]
        elif kind == 5:
            x[:] = -np.inf
            x[rng.random(B) < 0.3] = np.nan
        elif kind == 6:
            x[:] = rng.choice([0.0, -0.0], B)
        elif kind == 7:
            x[j] = rng.choice([np.inf, -np.inf])
            x[k] = rng.choice([np.inf, -np.inf, np.nan])
        elif kind == 8:
            x[:] = np.float32(-1e30)
            x[j] = np.float32(-1e30 + 1e24)
        rows.append(x)
    gpu.interpreter_compat.apply()  # maxnum as the GPU's max.f32: NaN-ignoring
    X = torch.from_numpy(np.stack(rows))
    count = torch.zeros(len(rows), dtype=torch.int32)
    top2 = torch.zeros(len(rows), dtype=torch.int32)
    _fix_decisions[(len(rows),)](X, count, top2, float(c), float(eps2), BLOCK=B)
    assert count.sum() > 50 and (count == 0).sum() > 50, "the rows should exercise both decisions"
    bad = np.nonzero(count.numpy() != top2.numpy())[0]
    assert bad.size == 0, [(rows[i].tolist(), int(count[i]), int(top2[i])) for i in bad[:3]]


def test_interpreter_sr_is_seeded():
    q, k, v = _inputs(40, 70, 64, seed=3)
    tq, tk, tv = _t(q), _t(k), _t(v)
    a = gpu.flash_attention(tq, tk, tv, recipe="fa2", rounding="sr", seed=11)
    b = gpu.flash_attention(tq, tk, tv, recipe="fa2", rounding="sr", seed=11)
    c = gpu.flash_attention(tq, tk, tv, recipe="fa2", rounding="sr", seed=12)
    np.testing.assert_array_equal(_bits(a.out), _bits(b.out))
    assert (_bits(a.out) != _bits(c.out)).any()


def test_kernel_wrapper_refuses_what_it_cannot_do():
    q, k, v = (_t(x) for x in _inputs(8, 8, 64, seed=1))
    with pytest.raises(ValueError, match="head dim 32"):
        gpu.flash_attention(*(_t(x) for x in _inputs(8, 8, 32, seed=1)))
    with pytest.raises(ValueError, match="seed"):
        gpu.flash_attention(q, k, v, rounding="sr")
    with pytest.raises(ValueError, match="rne or sr"):
        gpu.flash_attention(q, k, v, recipe="paper", rounding="rz")
    with pytest.raises(TypeError, match="bfloat16"):
        gpu.flash_attention(q.float(), k, v)
    for bad in (0, 1, 5, 3.0, True, "3"):
        with pytest.raises(ValueError, match="num_stages must be one of"):
            gpu.flash_attention(q, k, v, num_stages=bad)
    for bad in (0.0, -0.125, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            gpu.flash_attention(q, k, v, scale=bad)
