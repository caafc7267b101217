"""The fa2 backward kernels (gpu.flash_attention_backward, gpu/kernels/fa2_bwd.py) under
the Triton interpreter, on the CPU.

Semantics only, never bits: the interpreter's arithmetic is numpy's (tl.dot is a
float32 matmul, exp2 is np.exp2, tl.fma rounds twice, ``.to(tl.bfloat16)`` truncates;
docs/hardware.md, "Never trust the interpreter for bits").  The bits are checked on
the H200 against the emulator (tests/gpu/test_backward_kernel.py).  Here:

* dQ, dK, dV and δ against torch's float64 autograd of exact softmax attention, within
  an a-priori bound built from the bf16 roundings (``_bounds``), causal and not,
  Nq != Nk, one-row and one-key problems, default and small tiles (several key and
  query blocks, causal key blocks that start past the first query block);
* the dumps: P = exp(S·scale − lse) within fp32 rounding, dS = P·(dP − δ) within fp32
  rounding, both exactly +0 on masked entries; the dQ kernel's P and dS as the dK/dV
  kernel's; the production launch (DUMP=False) gives the dump launch's bits;
* sr: the same seed gives the same bits, another seed other bits;
* every refusal says what was given and what is accepted.
"""

from __future__ import annotations

from interpreted_triton import interpret, torch  # noqa: F401 (first: sets TRITON_INTERPRET)

import math

import numpy as np
import pytest

import flashbits.gpu as gpu

# (Nq, Nk, D): one row / one key, Nq < Nk and Nq > Nk (causal rows past the last key see them all)
SHAPES = [(1, 1, 64), (17, 80, 64), (80, 17, 64), (80, 80, 64), (1, 80, 64), (33, 40, 128)]
# the defaults (one block per kernel at these lengths), and tiles small enough for several
# blocks of every kind: block_m1 16 < block_n1 32, so a causal key block starts at query block 2·pid
TILES = {"default": {}, "small": dict(block_m1=16, block_n1=32, block_m2=32, block_n2=16)}

U_CAST = 2.0 ** -7     # one bf16 cast in the interpreter (truncation) or sr: < 1 ulp, relative 2^-7
U_OUT = 2.0 ** -8      # out rounded to bf16 by torch (rne): half an ulp
F32 = 2.0 ** -14       # every fp32 operation of a problem this small together, relative (see _bounds)


def _problem(Nq, Nk, D, causal, seed, B=1, H=2):
    """bf16 q, k, v, dout; the float64 forward (out rounded to bf16 for the kernel, lse)
    and torch's float64 autograd gradients of exact softmax attention (and the exact
    δ = Σ_d O·dO)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(B, H, n, D, generator=g).to(torch.bfloat16) for n in (Nq, Nk, Nk, Nq))
    scale = 1.0 / math.sqrt(D)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    s = q64 @ k64.transpose(-1, -2) * scale
    mask = torch.ones(Nq, Nk, dtype=torch.bool)
    if causal:
        mask = mask.tril()   # top-left aligned: key j visible iff j <= i
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    out = p @ v64
    out.backward(dout.double())
    return dict(q=q, k=k, v=v, dout=dout, out=out.detach().to(torch.bfloat16), lse=lse.detach(),
                scale=scale, mask=mask, p=p.detach(), v64=v64.detach(),
                ref=dict(dq=q64.grad, dk=k64.grad, dv=v64.grad, delta=(out.detach() * dout.double()).sum(-1)))


def _bounds(pb):
    """Per-element error bounds of the kernel's dq, dk, dv, delta against float64 autograd.

    Every error is a sum of bf16 roundings (relative < u = 2^-7 in the interpreter, which
    truncates, and for sr; torch's rne of out: 2^-8) and fp32 roundings (relative
    F32 = 2^-14 covers them all: the D ≤ 128 products of a score or dP in fp32, x and
    exp2 in fp32, the δ chain, at most ~2^-16 together at these magnitudes).  With the
    exact values P, O, dO, V, Q, K, dS = P∘(dO·Vᵀ − δ):

    * δ_i from bf16 out: |Δδ_i| ≤ (2^-8 + F32)·M_i, M_i = Σ_d |O_id||dO_id|;
    * dV_jd = Σ_i P̃_ij dO_id, then cast: ≤ (2u + F32)·Σ_i P_ij |dO_id| (P's cast, dV's cast);
    * the kernel's dS before its cast: ≤ E_ij = (2^-8 + F32)·P_ij·M_i (δ) + F32·A_ij (fp32 P,
      dP), A_ij = P_ij (Σ_d |dO_id||V_jd| + M_i) bounding P·|dP − δ| and its fp32 errors;
      its cast adds u·(|dS| + E); so Σ_i dS̃_ij Q_id errs by G_jd = Σ_i ((1 + u)E + u|dS|)_ij |Q_id|
      (and the chain's fp32 F32·Σ_i (|dS| + 2E)|Q|); dK = s·that sum, then cast: adds
      u·(|dK| + s·G).  dQ alike with K.
    """
    P, mask = pb["p"], pb["mask"]
    o, do = pb["out"].double(), pb["dout"].double()
    q, k, v = (pb[n].double() for n in "qkv")
    ref = pb["ref"]
    M = (o.abs() * do.abs()).sum(-1)
    A = P * ((do.abs() @ v.abs().transpose(-1, -2)) + M[..., None]) * mask
    dS = (P * (do @ v.transpose(-1, -2) - ref["delta"][..., None])).abs()
    E = (U_OUT + F32) * P * M[..., None] + F32 * A
    s, u = pb["scale"], U_CAST
    per_score = (1 + u) * E + u * dS

    def grad(name, lhs, rhs):   # the bound of s·Σ lhs·rhs, then cast
        return s * ((1 + u) * (lhs(per_score) @ rhs) + F32 * (lhs(dS + 2 * E) @ rhs)) + u * ref[name].abs()

    return dict(M=M, delta=(U_OUT + F32) * M, dv=(2 * U_CAST + F32) * (P.transpose(-1, -2) @ do.abs()),
                dk=grad("dk", lambda x: x.transpose(-1, -2), q.abs()), dq=grad("dq", lambda x: x, k.abs()))


def _bits(t):
    return t.contiguous().view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32).numpy()


def _run(pb, causal, **kw):
    return gpu.flash_attention_backward(pb["q"], pb["k"], pb["v"], pb["out"], pb["lse"], pb["dout"],
                                        causal=causal, **kw)


@pytest.mark.parametrize("tiles", list(TILES))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradients_against_float64_autograd(causal, tiles):
    worst = 0.0
    for n, (Nq, Nk, D) in enumerate(SHAPES):
        pb = _problem(Nq, Nk, D, causal, seed=10 + n)
        r = _run(pb, causal, **TILES[tiles])
        what = f"causal={causal} tiles={tiles} q{Nq} k{Nk} d{D}"
        bound = _bounds(pb)
        assert r.delta.dtype == torch.float32 and tuple(r.delta.shape) == (1, 2, Nq)
        # δ of the bf16 out the kernel got: D fp32 fmas, each rounding (twice, in numpy) by 2^-24
        chain = (r.delta.double() - (pb["out"].double() * pb["dout"].double()).sum(-1)).abs()
        assert bool((chain <= 2 * D * 2.0 ** -24 * bound["M"] + 1e-30).all()), what
        assert all(getattr(r, n).dtype == torch.bfloat16 for n in ("dq", "dk", "dv")), what
        for name in ("delta", "dq", "dk", "dv"):
            got, ref = getattr(r, name), pb["ref"][name]
            assert got.shape == ref.shape, (what, name)
            err = (got.double() - ref).abs()
            tol = bound[name] + 1e-30
            assert bool((err <= tol).all()), f"{what}: {name} error / bound {float((err / tol).max()):.3f}"
            worst = max(worst, float((err / tol).max()))
        if causal and Nq > 1 and Nk > 1:
            # the bound has teeth: the non-causal gradients do not pass it
            other = _problem(Nq, Nk, D, False, seed=10 + n)["ref"]["dk"]
            assert not bool(((r.dk.double() - other).abs() <= bound["dk"]).all()), what
    print(f"\ncausal={causal} tiles={tiles}: largest error / bound {worst:.3f}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dumps_and_production_launch(causal):
    for n, (Nq, Nk, D) in enumerate(SHAPES[:5]):
        pb = _problem(Nq, Nk, D, causal, seed=40 + n)
        kw = TILES["small"]
        dump = _run(pb, causal, dump=True, **kw)
        prod = _run(pb, causal, dump=False, **kw)
        what = f"causal={causal} q{Nq} k{Nk} d{D}"
        for name in ("dq", "dk", "dv", "delta"):
            np.testing.assert_array_equal(_bits(getattr(prod, name)), _bits(getattr(dump, name)),
                                          err_msg=f"{what}: {name} of production vs dump launch")
        assert prod.p is None and prod.ds is None
        mask = pb["mask"].expand(1, 2, Nq, Nk)
        # P = exp(S·scale − lse): fp32 scores, x and exp2 err by < 2^-16 relative here (see _bounds)
        for p in (dump.p, dump.p_dq):
            assert p.dtype == torch.float32 and tuple(p.shape) == (1, 2, Nq, Nk)
            assert bool((_bits(p)[~mask.numpy()] == 0).all()), f"{what}: P on masked entries is +0"
            np.testing.assert_allclose(p.double().numpy(), pb["p"].numpy(), rtol=F32, atol=1e-30, err_msg=what)
        # dS = P·(dP − δ) with the kernel's δ: fp32 roundings only, relative to its magnitude A
        do, v64 = pb["dout"].double(), pb["v64"]
        dp = do @ v64.transpose(-1, -2)
        ds_ref = pb["p"] * (dp - dump.delta.double()[..., None])
        A = pb["p"] * (do.abs() @ v64.abs().transpose(-1, -2) + dump.delta.double().abs()[..., None])
        for ds in (dump.ds, dump.ds_dq):
            assert bool((_bits(ds)[~mask.numpy()] == 0).all()), f"{what}: dS on masked entries is +0"
            assert bool(((ds.double() - ds_ref).abs() <= F32 * A + 1e-30).all()), what
        # the two kernels recompute the same P and dS (bits on the GPU; here within fp32)
        np.testing.assert_allclose(dump.p_dq.numpy(), dump.p.numpy(), rtol=F32, atol=1e-30, err_msg=what)


def test_sr_is_seeded():
    pb = _problem(40, 50, 64, True, seed=3)
    a, b, c = (_run(pb, True, rounding="sr", seed=s) for s in (11, 11, 12))
    rne = _run(pb, True)
    for name in ("dq", "dk", "dv"):
        np.testing.assert_array_equal(_bits(getattr(a, name)), _bits(getattr(b, name)), err_msg=name)
        assert (_bits(getattr(a, name)) != _bits(getattr(c, name))).any(), name
        assert (_bits(getattr(a, name)) != _bits(getattr(rne, name))).any(), name
    np.testing.assert_array_equal(_bits(a.delta), _bits(rne.delta))   # δ has no cast


def _bf16(*shape):
    return torch.zeros(*shape, dtype=torch.bfloat16)


def _args(Nq=8, Nk=8, D=64, **over):
    a = dict(q=_bf16(1, 2, Nq, D), k=_bf16(1, 2, Nk, D), v=_bf16(1, 2, Nk, D), out=_bf16(1, 2, Nq, D),
             lse=torch.zeros(1, 2, Nq), dout=_bf16(1, 2, Nq, D))
    a.update(over)
    return a


@pytest.mark.parametrize("what, args, kw, error, says", [
    ("the paper recipe", {}, dict(recipe="paper"), ValueError,
     "the paper recipe's backward runs in the emulator only: flashbits.emulator.flash_attention_backward"),
    ("an unknown recipe", {}, dict(recipe="nope"), ValueError, "unknown recipe 'nope'; accepted: fa2, paper"),
    ("head dim 96", dict(q=_bf16(1, 2, 8, 96), k=_bf16(1, 2, 8, 96), v=_bf16(1, 2, 8, 96)), {}, ValueError,
     "head dim 96 is not supported by the kernels; supported: (64, 128)"),
    ("float32 q", dict(q=torch.zeros(1, 2, 8, 64)), {}, TypeError, "q must be bfloat16, got torch.float32"),
    ("float32 out", dict(out=torch.zeros(1, 2, 8, 64)), {}, TypeError,
     "out must be torch.bfloat16 (the forward's output, shaped as q), got torch.float32"),
    ("float16 lse", dict(lse=torch.zeros(1, 2, 8, dtype=torch.float16)), {}, TypeError,
     "lse must be torch.float32 or torch.float64 (the forward's log-sum-exp per row, in nats), got torch.float16"),
    ("k and v lengths differ", dict(v=_bf16(1, 2, 9, 64)), {}, ValueError, "shapes disagree"),
    ("dout shaped as k", dict(dout=_bf16(1, 2, 9, 64)), {}, ValueError,
     "dout must have shape (1, 2, 8, 64) (the gradient of out, shaped as q), got (1, 2, 9, 64)"),
    ("lse with a head dim", dict(lse=torch.zeros(1, 2, 8, 64)), {}, ValueError,
     "lse must have shape (1, 2, 8) (the forward's log-sum-exp per row, in nats), got (1, 2, 8, 64)"),
    ("lse not a tensor", dict(lse=np.zeros((1, 2, 8))), {}, TypeError, "lse must be a torch.Tensor, got ndarray"),
    ("rounding rz", {}, dict(rounding="rz"), ValueError,
     "rounding must be one of ('rne', 'sr') (for the backward's casts P_cast, dS_cast, dQ_cast, dK_cast, "
     "dV_cast together), got 'rz'"),
    ("sr without a seed", {}, dict(rounding="sr"), ValueError, "stochastic rounding needs seed=<int>"),
    ("an emulator-only fix", {}, dict(fix="offset"), ValueError, "fix='offset' runs in the emulator only"),
    ("a tile of 24", {}, dict(block_n1=24), ValueError, "block_n1 must be one of (16, 32, 64, 128)"),
    ("a negative scale", {}, dict(scale=-1.0), ValueError, "scale must be a positive finite number"),
    ("an uncrosschecked depth", {}, dict(num_stages=7), ValueError, "num_stages must be one of"),
], ids=lambda x: x.replace(" ", "-") if isinstance(x, str) and " " in x else None)
def test_refusals_say_what_is_wrong(what, args, kw, error, says):
    a = _args(**args)
    with pytest.raises(error) as e:
        gpu.flash_attention_backward(a["q"], a["k"], a["v"], a["out"], a["lse"], a["dout"], **kw)
    assert says in str(e.value), f"{what}: {e.value}"


def test_fix_and_forward_overrides_do_not_enter_and_cpu_tensors_are_refused(monkeypatch):
    from flashbits.emulator import get_recipe

    pb = _problem(20, 30, 64, True, seed=5)
    base = _run(pb, True)
    rec = get_recipe("fa2").with_overrides({"P_cast": {"format": "fp16"}}, block_n=32)   # a forward plan
    for kw in (dict(fix="paper"), dict(recipe=rec), dict(rounding="rne")):
        other = _run(pb, True, **kw)
        for name in ("dq", "dk", "dv", "delta"):
            np.testing.assert_array_equal(_bits(getattr(other, name)), _bits(getattr(base, name)), err_msg=str(kw))
    a = _args()
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="q is on cpu; the kernels need a CUDA GPU.*flash_attention_backward"):
        gpu.flash_attention_backward(*a.values())
