"""The emulator's backward pass (docs/recipes.md, "The backward pass").

* float64 mode equals torch float64 autograd of exact attention (1e-10 relative), for
  lengths that are no multiple of any block, Nq != Nk, causal, with and without a fix;
* the fa2 backward's hardware mode equals, bit for bit, an independent whole-matrix
  restatement of its op table built from the public units (``tensor_core_dot`` over
  all query rows or keys in one chain, ``sfu_exp2``, ``quantize``, numpy float32
  arithmetic): this checks the blocking, the chaining of the accumulators across
  blocks, the masks and the sr words, which the emulator's numba loops implement;
* the ledger's operation counts, the seeds, and the errors a user can act on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flashbits as fb
from flashbits.emulator import quantize, sfu_exp2, tensor_core_dot
from flashbits.emulator.attention import stage_seed
from flashbits.emulator.attention.families import LOG2E


def bf16(x):
    return quantize(np.asarray(x, np.float32), "bf16", "rne")


def inputs(rng, B, H, Nq, Nk, D, spread=1.0):
    q = bf16(rng.standard_normal((B, H, Nq, D)) * spread)
    k = bf16(rng.standard_normal((B, H, Nk, D)))
    v = bf16(rng.standard_normal((B, H, Nk, D)))
    do = bf16(rng.standard_normal((B, H, Nq, D)))
    return q, k, v, do


def torch_grads(q, k, v, do, causal, scale):
    """float64 autograd of softmax(Q·Kᵀ·scale)·V (top-left causal mask)."""
    qt, kt, vt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v))
    s = qt @ kt.transpose(-1, -2) * scale
    if causal:
        Nq, Nk = q.shape[-2], k.shape[-2]
        s = s.masked_fill(torch.ones(Nq, Nk, dtype=torch.bool).triu(1), -math.inf)
    out = torch.softmax(s, -1) @ vt
    out.backward(torch.tensor(do, dtype=torch.float64))
    return qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy()


def rel_err(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


# ---------------------------------------------------------------------------------------
# float64 mode against torch autograd
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["fa2", "paper"])
@pytest.mark.parametrize("Nq,Nk,causal", [(1, 1, False), (17, 17, True), (70, 90, False), (130, 70, True),
                                          (90, 130, True)])
def test_fp64_equals_torch_autograd(recipe, Nq, Nk, causal):
    rng = np.random.default_rng(Nq * 1000 + Nk)
    D = 32
    q, k, v, do = inputs(rng, 1, 2, Nq, Nk, D)
    scale = 0.3
    out, lse = fb.reference_attention(q, k, v, causal=causal, scale=scale)
    g = fb.flash_attention_backward(q, k, v, out, lse, do, recipe=recipe, causal=causal, scale=scale,
                                    precision="fp64")
    for got, want in zip((g.dq, g.dk, g.dv), torch_grads(q, k, v, do, causal, scale)):
        assert got.dtype == np.float64
        assert rel_err(got, want) < 1e-10
    # δ = rowsum(dO ∘ O)
    assert rel_err(g.delta, (do.astype(np.float64) * out).sum(-1)) < 1e-12


@pytest.mark.parametrize("recipe,tiles", [("paper", (16, 16)), ("paper", (32, 128)), ("paper_code", None)])
def test_fp64_paper_backward_any_tiles(recipe, tiles):
    """The paper backward's blocks are the forward recipe's (paper_code: 512×512): in float64
    mode no tiling changes the gradients."""
    rng = np.random.default_rng(9)
    q, k, v, do = inputs(rng, 1, 2, 150, 130, 16)
    rec = fb.get_recipe(recipe)
    if tiles:
        rec = rec.configured(block_m=tiles[0], block_n=tiles[1])
    out, lse = fb.reference_attention(q, k, v, causal=True)
    g = fb.flash_attention_backward(q, k, v, out, lse, do, recipe=rec, causal=True, precision="fp64")
    for got, want in zip((g.dq, g.dk, g.dv), torch_grads(q, k, v, do, True, 0.25)):
        assert rel_err(got, want) < 1e-10


@pytest.mark.parametrize("recipe", ["fa2", "paper"])
@pytest.mark.parametrize("fix", [None, "paper", "offset"])
def test_fp64_fix_leaves_gradients_unchanged(recipe, fix):
    """The forward's fix changes m only; through the float64 forward's out and lse the
    gradients stay those of exact attention, tied maxima included."""
    rng = np.random.default_rng(5)
    q, k, v, do = inputs(rng, 1, 1, 40, 40, 16)
    k[..., 3, :] = k[..., 7, :]          # tied maxima in many rows
    f = fb.flash_attention(q, k, v, recipe=recipe, fix=fix, causal=True, block_n=16, precision="fp64")
    g = fb.flash_attention_backward(q, k, v, f.out, f.lse, do, recipe=recipe, fix=fix, causal=True,
                                    precision="fp64")
    for got, want in zip((g.dq, g.dk, g.dv), torch_grads(q, k, v, do, True, 0.25)):
        assert rel_err(got, want) < 1e-10


# ---------------------------------------------------------------------------------------
# fa2, hardware mode: an independent restatement of the op table
# ---------------------------------------------------------------------------------------
def _pad16(x, axis):
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, -(-n // 16) * 16 - n)
    return np.pad(x, pad)


def fa2_backward_by_table(q, k, v, out, lse, do, causal, scale, rounding, seed):
    """docs/recipes.md's fa2 backward table, one (batch·head) at a time, whole matrices.

    Each gradient is ONE tensor-core chain over all query rows (dV, dK) or all keys (dQ),
    zero-padded to a multiple of 16: the emulator runs it block by block with the
    accumulator carried over, so equality here is its chaining claim.  fp32 roundings of
    exact float64 values: S·c − lse2 in float64 is exact unless it needs more than 53
    bits (|x| is then far below a float32 rounding boundary: never met by these inputs).
    """
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    c = np.float32(scale * LOG2E)
    s32 = np.float32(scale)
    lse2 = (np.asarray(lse, np.float64) * LOG2E).astype(np.float32)
    sr = rounding == "sr"
    dq, dk, dv = np.zeros(q.shape, np.float32), np.zeros(k.shape, np.float32), np.zeros(v.shape, np.float32)
    delta = np.zeros(q.shape[:3], np.float32)
    valid = np.ones((Nq, Nk), bool)
    if causal:
        valid = np.arange(Nk)[None, :] <= np.arange(Nq)[:, None]

    def cast(x, stage, offset):
        if not sr:
            return quantize(x, "bf16", "rne")
        return quantize(x, "bf16", "sr", seed=stage_seed(seed, "backward." + stage), rand_bits=16, offset=offset)

    for b in range(B):
        for h in range(H):
            bh = b * H + h
            o64, do64 = out[b, h].astype(np.float64), do[b, h].astype(np.float64)
            dl = np.zeros(Nq, np.float32)
            for d in range(D):       # the fma chain: o·dO (16 bits) + δ, exact in float64 here
                dl = (o64[:, d] * do64[:, d] + dl).astype(np.float32)
            delta[b, h] = dl
            S = tensor_core_dot(q[b, h], k[b, h].T)
            x = (S.astype(np.float64) * np.float64(c) - lse2[b, h][:, None]).astype(np.float32)
            P = np.where(valid, sfu_exp2(x, ftz=True), np.float32(0))
            Pc = cast(np.ascontiguousarray(P), "P_cast", bh * Nq * Nk)
            dP = tensor_core_dot(do[b, h], v[b, h].T)
            u = dP - dl[:, None]
            dS = np.where(valid, P * u, np.float32(0)).astype(np.float32)
            dSc = cast(np.ascontiguousarray(dS), "dS_cast", bh * Nq * Nk)
            acc_dv = tensor_core_dot(_pad16(Pc.T, 1), _pad16(do[b, h], 0))
            acc_dk = tensor_core_dot(_pad16(dSc.T, 1), _pad16(q[b, h], 0))
            acc_dq = tensor_core_dot(_pad16(dSc, 1), _pad16(k[b, h], 0))
            dk[b, h] = cast(np.ascontiguousarray(acc_dk * s32), "dK_cast", bh * Nk * D)
            dv[b, h] = cast(np.ascontiguousarray(acc_dv), "dV_cast", bh * Nk * D)
            dq[b, h] = cast(np.ascontiguousarray(acc_dq * s32), "dQ_cast", bh * Nq * D)
    return dq, dk, dv, delta


def same_bits(a, b):
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a32.shape == b32.shape and np.array_equal(a32.view(np.uint32), b32.view(np.uint32))


@pytest.mark.parametrize("Nq,Nk,causal,rounding", [(70, 70, False, "rne"), (80, 47, True, "rne"),
                                                   (33, 150, True, "sr"), (129, 64, False, "sr")])
def test_fa2_hw_equals_its_op_table(Nq, Nk, causal, rounding):
    rng = np.random.default_rng(Nq + 7 * Nk)
    D = 64
    q, k, v, do = inputs(rng, 1, 2, Nq, Nk, D, spread=2.0)
    seed = 1234 if rounding == "sr" else None
    f = fb.flash_attention(q, k, v, causal=causal)
    g = fb.flash_attention_backward(q, k, v, f.out, f.lse, do, causal=causal, rounding=rounding, seed=seed,
                                    dump=True)
    want = fa2_backward_by_table(q, k, v, f.out, f.lse, do, causal, 1 / 8, rounding, seed)
    for name, got, w in zip(("dq", "dk", "dv", "delta"), (g.dq, g.dk, g.dv, g.delta), want):
        assert same_bits(got, w), f"{name}: {int((np.asarray(got, np.float32).view(np.uint32) != w.view(np.uint32)).sum())} elements differ"
    # and it is a gradient: bf16-level agreement with float64 autograd
    for got, w in zip((g.dq, g.dk, g.dv), torch_grads(q, k, v, do, causal, 1 / 8)):
        assert rel_err(got, w) < 3e-2


# ---------------------------------------------------------------------------------------
# paper, hardware mode: the paper's loops restated block by block
# ---------------------------------------------------------------------------------------
def paper_backward_by_table(q, k, v, out, lse, do, causal, scale, block_m, block_n):
    """docs/recipes.md's paper backward table as the paper's loops run it: query blocks
    outside, key blocks inside, every block; bf16(fl32(a op b)) by numpy float32
    arithmetic and quantize, each einsum one tensor_core_dot from +0, cast."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    s32 = np.float32(scale)
    l2e = np.float32(LOG2E)
    lse_b = bf16(np.asarray(lse, np.float64))
    dq, dk, dv = np.zeros(q.shape, np.float32), np.zeros(k.shape, np.float32), np.zeros(v.shape, np.float32)
    delta = np.zeros(q.shape[:3], np.float32)
    for b in range(B):
        for h in range(H):
            t = bf16(do[b, h] * out[b, h])
            acc = np.zeros(Nq, np.float32)
            for d in range(D):
                acc = (acc + t[:, d]).astype(np.float32)
            dl = bf16(acc)
            delta[b, h] = dl
            for i0 in range(0, Nq, block_m):
                i1 = min(Nq, i0 + block_m)
                for j0 in range(0, Nk, block_n):
                    j1 = min(Nk, j0 + block_n)
                    s = bf16(bf16(tensor_core_dot(q[b, h, i0:i1], k[b, h, j0:j1].T)) * s32)
                    if causal:
                        s = np.where(np.arange(j0, j1)[None, :] > np.arange(i0, i1)[:, None], -np.inf, s)
                    x = bf16(s - lse_b[b, h, i0:i1, None])
                    with np.errstate(invalid="ignore"):
                        p = bf16(sfu_exp2((x * l2e).astype(np.float32)))
                    dvb = bf16(tensor_core_dot(_pad16(p.T, 1), _pad16(do[b, h, i0:i1], 0)))
                    dp = bf16(tensor_core_dot(do[b, h, i0:i1], v[b, h, j0:j1].T))
                    ds = bf16(bf16(p * s32) * bf16(dp - dl[i0:i1, None]))
                    dqb = bf16(tensor_core_dot(_pad16(ds, 1), _pad16(k[b, h, j0:j1], 0)))
                    dkb = bf16(tensor_core_dot(_pad16(ds.T, 1), _pad16(q[b, h, i0:i1], 0)))
                    dq[b, h, i0:i1] = bf16(dq[b, h, i0:i1] + dqb)
                    dk[b, h, j0:j1] = bf16(dk[b, h, j0:j1] + dkb)
                    dv[b, h, j0:j1] = bf16(dv[b, h, j0:j1] + dvb)
    return dq, dk, dv, delta


@pytest.mark.parametrize("Nq,Nk,causal,tiles", [(70, 70, False, (64, 64)), (80, 47, True, (32, 16)),
                                                (33, 100, True, (16, 64))])
def test_paper_hw_equals_its_op_table(Nq, Nk, causal, tiles):
    rng = np.random.default_rng(Nq + 3 * Nk)
    D = 32
    q, k, v, do = inputs(rng, 1, 2, Nq, Nk, D, spread=2.0)
    rec = fb.get_recipe("paper").configured(block_m=tiles[0], block_n=tiles[1])
    f = fb.flash_attention(q, k, v, recipe=rec, causal=causal)
    g = fb.flash_attention_backward(q, k, v, f.out, f.lse, do, recipe=rec, causal=causal)
    want = paper_backward_by_table(q, k, v, f.out, f.lse, do, causal, D ** -0.5, *tiles)
    for name, got, w in zip(("dq", "dk", "dv", "delta"), (g.dq, g.dk, g.dv, g.delta), want):
        n_diff = int((np.asarray(got, np.float32).view(np.uint32) != w.view(np.uint32)).sum())
        assert same_bits(got, w), f"{name}: {n_diff} elements differ"
    for got, w in zip((g.dq, g.dk, g.dv), torch_grads(q, k, v, do, causal, D ** -0.5)):
        assert rel_err(got, w) < 6e-2


def test_all_zero_chain_steps_are_neutral():
    """What the backward's tile independence rests on (families/fa2_backward.py): a k16
    step whose products are all zero (+0 or −0) returns a nonzero fp32 accumulator bit for
    bit, subnormals included, and a zero one as +0."""
    rng = np.random.default_rng(0)
    c = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-40, 38, 2000),
                        np.float32(2.0 ** -149) * rng.integers(1, 2 ** 23, 500)]).astype(np.float32)
    c = c[np.isfinite(c)].reshape(-1, 1)
    for sign in (1.0, -1.0):
        a = np.zeros((c.shape[0], 32), np.float32)
        b = np.zeros((32, 1), np.float32)
        a[:, 0] = sign * 0.0
        b[0, 0] = 1.0
        assert same_bits(tensor_core_dot(a, b, c), c)
        z = tensor_core_dot(a[:2], b, np.array([[0.0], [-0.0]], np.float32))
        assert (z.view(np.uint32) == 0).all()


def test_fa2_dump_and_ledger_counts():
    rng = np.random.default_rng(3)
    Nq, Nk, D = 50, 37, 16
    q, k, v, do = inputs(rng, 1, 1, Nq, Nk, D)
    f = fb.flash_attention(q, k, v, causal=True)
    g = fb.flash_attention_backward(q, k, v, f.out, f.lse, do, causal=True, record=True)
    valid = np.arange(Nk)[None, :] <= np.arange(Nq)[:, None]
    n_valid = int(valid.sum())
    L = g.ledger
    for stage in ("S", "x", "P", "P_cast", "dP", "dP_sub", "dS", "dS_cast"):
        assert L[stage]["ops"] == n_valid, stage
    assert L["delta"]["ops"] == Nq * D
    assert L["dQ_cast"]["ops"] == Nq * D and L["dK_cast"]["ops"] == Nk * D and L["dV_cast"]["ops"] == Nk * D
    p, ds = g.p[0, 0], g.ds[0, 0]
    assert (p[~valid] == 0).all() and (ds[~valid] == 0).all()
    # P is the normalised softmax: each row sums to 1 within the exp2 unit's and fp32's error
    assert np.abs(p.sum(-1) - 1).max() < 1e-4


def test_sr_seeds_are_the_backwards_own():
    rng = np.random.default_rng(4)
    q, k, v, do = inputs(rng, 1, 1, 40, 40, 16)
    f = fb.flash_attention(q, k, v)
    a = fb.flash_attention_backward(q, k, v, f.out, f.lse, do, rounding="sr", seed=7)
    b = fb.flash_attention_backward(q, k, v, f.out, f.lse, do, rounding="sr", seed=7)
    c = fb.flash_attention_backward(q, k, v, f.out, f.lse, do, rounding="sr", seed=8)
    assert same_bits(a.dq, b.dq) and same_bits(a.dk, b.dk) and same_bits(a.dv, b.dv)
    assert not same_bits(a.dq, c.dq)
    assert stage_seed(7, "backward.P_cast") != stage_seed(7, "P_cast")


def test_backward_errors():
    rng = np.random.default_rng(1)
    q, k, v, do = inputs(rng, 1, 1, 8, 8, 16)
    f = fb.flash_attention(q, k, v)
    with pytest.raises(ValueError, match="shape of q"):
        fb.flash_attention_backward(q, k, v, f.out[..., :4, :], f.lse, do)
    with pytest.raises(ValueError, match="not representable in bf16"):
        fb.flash_attention_backward(q, k, v, f.out, f.lse, do + np.float32(1e-3))
    with pytest.raises(ValueError, match="lse must have the shape"):
        fb.flash_attention_backward(q, k, v, f.out, f.lse[..., :3], do)
    with pytest.raises(ValueError, match="seed"):
        fb.flash_attention_backward(q, k, v, f.out, f.lse, do, rounding="sr")
    with pytest.raises(ValueError, match="precision"):
        fb.flash_attention_backward(q, k, v, f.out, f.lse, do, precision="fp32")
    with pytest.raises(ValueError, match="unknown recipe"):
        fb.flash_attention_backward(q, k, v, f.out, f.lse, do, recipe="fa3")
    with pytest.raises(ValueError, match="unknown fix"):
        fb.flash_attention_backward(q, k, v, f.out, f.lse, do, fix="mine")


def test_grad_bias_cell_decomposes_delta(tmp_path):
    """The study's δ split is exact: mean δ error = mean of the part O carries + δ's own."""
    from flashbits.crosscheck.grad_bias import reference_gradients, run_cell, upstream_gradient
    from flashbits.crosscheck.regimes import regime_inputs

    q, k, v = regime_inputs("ties-12", rows=128)
    do = upstream_gradient("pos", q.shape)
    c = run_cell(q, k, v, do, reference_gradients(q, k, v, do), "paper", "none", "rne")
    assert c["delta"]["n"] == 128
    assert math.isclose(c["delta"]["mean_ulp"], c["delta_from_O"]["mean_ulp"] + c["delta_own"]["mean_ulp"],
                        rel_tol=1e-9, abs_tol=1e-12)
    # a tied regime with one-signed dO: O's bias reaches δ with O's sign
    assert c["O"]["t"] < -3 and c["delta_from_O"]["t"] < -3


def test_backward_record_round_trip_locates_a_planted_mismatch(tmp_path):
    """A backward golden record keeps the forward both sides read (out, lse, dO); its
    replay recomputes the emulator side and compares every bit.  Here the "GPU" bits are
    the emulator's own (the plumbing under test, not a hardware claim), one of them
    flipped: the replay must find exactly that element."""
    from flashbits.crosscheck.backward_sides import compared, emulator_backward_side, forward_inputs
    from flashbits.crosscheck.cases import generate, suite
    from flashbits.crosscheck.record import replay_record, save_record
    from flashbits.crosscheck.sides import Config

    case = suite(3, seed=2, max_len=90)[1]
    q, k, v = generate(case)
    cfg = Config(recipe="fa2", rounding="sr", seed=5)
    carry = forward_inputs(q, k, v, case.causal, cfg, case.seed)
    dump = emulator_backward_side(q, k, v, *carry, case.causal, cfg, dump=True)
    prod = {n: dump[n] for n in compared(cfg, "production")}
    entry = {"case": case, "cfg": cfg, "q": q, "k": k, "v": v, "prod": prod, "dump": dict(dump),
             "carry": carry, "pass": "backward"}
    path = str(tmp_path / "backward_golden.npz")
    save_record(path, [entry], {"note": "test"})
    res = replay_record(path, log=lambda *_: None)
    assert res["mismatches"] == 0 and res["elements"] > 0
    bad = dict(dump)
    bad["dk"] = dump["dk"].copy()
    bad["dk"].flat[7] ^= 1
    entry["dump"] = bad
    save_record(path, [entry], {"note": "test"})
    res = replay_record(path, log=lambda *_: None)
    assert res["mismatches"] == 1
    assert res["failures"][0]["tensor"] == "dk" and res["failures"][0]["launch"] == "dump"


def test_the_causal_chains_follow_the_kernels_default_tiles():
    """The emulator's causal dK/dV and dQ chains visit the masked lanes the kernels' default
    programs visit (a masked 0·inf is NaN, so for non-finite inputs the lanes decide the
    bits; fa2_backward's docstring): its constants are the kernel module's tiles."""
    pytest.importorskip("triton")
    from flashbits.emulator.attention.families import fa2_backward as emu
    from flashbits.gpu.kernels import fa2_bwd as kern

    assert (emu.KERNEL_DKDV_KEYS, emu.KERNEL_DQ_ROWS) == (kern.BLOCK_N1, kern.BLOCK_M2)


def test_a_masked_inf_key_reaches_dq_as_the_dq_tile_visits_it():
    """Causal, one inf in K at key 100: rows 0..99 never see it, but row i's dQ chain runs to
    the end of its 128-row dQ tile, so 0·inf = NaN reaches the dQ of rows 0..99 (as on
    the GPU), whose forward is finite."""
    rng = np.random.default_rng(3)
    q, k, v, do = (quantize(rng.standard_normal((1, 1, 130, 64)), "bf16") for _ in range(4))
    k[0, 0, 100, 3] = np.inf
    f = fb.flash_attention(q, k, v, causal=True)
    g = fb.flash_attention_backward(q, k, v, f.out, f.lse, do, causal=True)
    assert np.isfinite(f.out[0, 0, :100]).all()       # rows before key 100 never see it...
    assert np.isnan(g.dq[0, 0, :100, 3]).all()        # ...but their dQ chains do (masked 0·inf)
