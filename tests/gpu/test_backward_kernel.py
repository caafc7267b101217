"""The fa2 backward kernels (gpu.flash_attention_backward) against the emulator's backward
(flashbits.emulator.flash_attention_backward) on the GPU: every bit of dQ, dK, dV and δ
(marked ``gpu``; skipped without CUDA by tests/conftest.py).

* every shape below (odd lengths, Nq != Nk, one row / one key, both head dims, causal
  and not, B·H > 1) × fix None / paper (the fix changes the forward's out and lse, which
  the backward reads) × rne / sr: the raw bits of every element equal (NaN payloads
  aside: NaN matches NaN), and with both dump launches the fp32 P and dS before their
  casts (the emulator's ``dump=True``: +0 where masked, as the kernels' zero-filled dumps);
* the bits do not depend on the launch: the dump launch, other tiles, warps and
  pipelining depths give the production launch's bits (docs/recipes.md: a chain split
  over several ``tl.dot`` calls is the same chain), and the dQ kernel recomputes the
  dK/dV kernel's P and dS bit for bit.

The forward's out and lse come from the GPU forward (gpu.flash_attention, itself
crosschecked by test_crosscheck.py); both backward sides take the same tensors.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

# (B, H, Nq, Nk, D, causal)
SHAPES = [(1, 2, 1, 1, 64, False), (1, 2, 17, 80, 64, True), (2, 3, 80, 17, 64, True),
          (1, 2, 130, 200, 128, False), (1, 2, 200, 130, 128, True), (1, 1, 256, 256, 64, True),
          (1, 2, 97, 97, 128, False), (1, 1, 1, 300, 128, True)]
CONFIGS = [(fix, rounding) for fix in (None, "paper") for rounding in ("rne", "sr")]
SEED = 7
GRADS = ("dq", "dk", "dv", "delta")
DUMPS = ("p", "ds")   # fp32 (B, H, Nq, Nk)


def _problem(B, H, Nq, Nk, D, causal, fix, rounding, seed):
    """bf16 q, k, v, dout on the GPU and the GPU forward's out and lse."""
    import torch

    from flashbits.gpu import flash_attention

    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(B, H, n, D, generator=g).to(torch.bfloat16).cuda() for n in (Nq, Nk, Nk, Nq))
    fwd = flash_attention(q, k, v, recipe="fa2", fix=fix, causal=causal, rounding=rounding,
                          seed=SEED if rounding == "sr" else None)
    return dict(q=q, k=k, v=v, out=fwd.out, lse=fwd.lse, dout=dout)


def _gpu_bits(t):
    """Raw bits of a torch bf16 (uint16) or fp32 (uint32) tensor."""
    import torch

    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    assert t.dtype == torch.float32, t.dtype
    return t.view(torch.int32).numpy().view(np.uint32)


def _emulator_bits(a, bf16):
    """Raw bits of the emulator's float32 array; bf16 values as their 16-bit code."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    if not bf16:
        return u
    low = (u & 0xFFFF) != 0
    assert not (low & ~np.isnan(a)).any(), "the emulator's bf16 output holds a value that is not bf16"
    return (u >> 16).astype(np.uint16)


def _is_nan(bits):
    f = (bits.astype(np.uint32) << 16).view(np.float32) if bits.dtype == np.uint16 else bits.view(np.float32)
    return np.isnan(f)


def _mismatch(name, got, want, sides=("kernel", "emulator")):
    """None, or where and how raw bits differ (NaN matches NaN whatever its payload)."""
    bad = (got != want) & ~(_is_nan(got) & _is_nan(want))
    if not bad.any():
        return None
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{name}: {int(bad.sum())} of {bad.size} elements differ; first at {idx}: "
            f"{sides[0]} 0x{int(got[idx]):x}, {sides[1]} 0x{int(want[idx]):x}")


def _on_cpu(t):
    return t.detach().float().cpu().numpy()


@pytest.mark.parametrize("fix,rounding", CONFIGS, ids=[f"{f or 'nofix'}-{r}" for f, r in CONFIGS])
def test_backward_matches_the_emulator_bit_for_bit(fix, rounding):
    from flashbits.emulator import flash_attention_backward as emu_backward
    from flashbits.gpu import flash_attention_backward

    failures, elements = [], 0
    for n, (B, H, Nq, Nk, D, causal) in enumerate(SHAPES):
        pb = _problem(B, H, Nq, Nk, D, causal, fix, rounding, seed=100 + n)
        kw = dict(recipe="fa2", fix=fix, causal=causal, scale=None, rounding=rounding, seed=SEED)
        got = flash_attention_backward(pb["q"], pb["k"], pb["v"], pb["out"], pb["lse"], pb["dout"], dump=True,
                                       **kw)
        want = emu_backward(*(_on_cpu(pb[x]) for x in ("q", "k", "v", "out", "lse", "dout")), record=False,
                            dump=True, **kw)
        for name in ("delta",) + DUMPS + ("dv", "dk", "dq"):   # earliest stage first
            g = _gpu_bits(getattr(got, name))
            w = _emulator_bits(getattr(want, name), bf16=name in ("dq", "dk", "dv"))
            assert g.shape == w.shape, (name, g.shape, w.shape)
            elements += g.size
            bad = _mismatch(name, g, w)
            if bad:
                failures.append(f"B{B} H{H} q{Nq} k{Nk} d{D} causal={causal}: {bad}")
    assert elements > 0
    assert not failures, f"{len(failures)} tensors differ; " + "; ".join(failures[:4])


# tiles, warps and depths other than the defaults (fa2_bwd.BLOCK_M1, ...): none changes a bit
LAUNCHES = [dict(block_m1=16, block_n1=16, block_m2=16, block_n2=16, num_warps=4),
            dict(block_m1=64, block_n1=64, block_m2=64, block_n2=64, num_warps=4, num_stages=2),
            dict(block_m1=128, block_n1=32, block_m2=32, block_n2=128, num_warps=8, num_stages=4)]


@pytest.mark.parametrize("rounding", ["rne", "sr"])
def test_bits_do_not_depend_on_the_launch(rounding):
    from flashbits.gpu import flash_attention_backward

    for n, (B, H, Nq, Nk, D, causal) in enumerate(SHAPES):
        pb = _problem(B, H, Nq, Nk, D, causal, None, rounding, seed=200 + n)
        args = [pb[x] for x in ("q", "k", "v", "out", "lse", "dout")]
        kw = dict(causal=causal, rounding=rounding, seed=SEED)
        what = f"B{B} H{H} q{Nq} k{Nk} d{D} causal={causal} {rounding}"
        prod = flash_attention_backward(*args, **kw)
        dump = flash_attention_backward(*args, dump=True, **kw)
        for name in GRADS:
            bad = _mismatch(name, _gpu_bits(getattr(dump, name)), _gpu_bits(getattr(prod, name)),
                            ("dump launch", "production launch"))
            assert bad is None, f"{what}: {bad}"
        for a, b in (("p_dq", "p"), ("ds_dq", "ds")):
            bad = _mismatch(a, _gpu_bits(getattr(dump, a)), _gpu_bits(getattr(dump, b)), ("dQ kernel", "dK/dV kernel"))
            assert bad is None, f"{what}: the dQ kernel's {b} is not the dK/dV kernel's: {bad}"
        for launch in LAUNCHES:
            other = flash_attention_backward(*args, **kw, **launch)
            for name in GRADS:
                bad = _mismatch(name, _gpu_bits(getattr(other, name)), _gpu_bits(getattr(prod, name)),
                                ("this launch", "default launch"))
                assert bad is None, f"{what}: {launch} against the default launch: {bad}"
