"""``gpu.flash_attention``: launch the recipe kernels on torch tensors.

The recipe object (``emulator.get_recipe``) decides tiles and which casts
round stochastically, exactly as it does for the emulator; the kernels
support the subset of overrides a GPU kernel implements (bf16 in and out, P̄
and output casts rne or sr with 16 random bits, fix None or paper); anything
else is refused with a message saying what is supported.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass

from flashbits.emulator.attention.api import stage_seed
from flashbits.emulator.attention.recipes import Recipe, get_fix, get_recipe

SUPPORTED_HEAD_DIMS = (64, 128)
# the tiles the kernels take (num_warps: emulator.attention.recipes.NUM_WARPS);
# gpu/probes/tile_checks.sh crosschecks every one on the H200
KERNEL_BLOCK_M = (64, 128)
KERNEL_BLOCK_N = (32, 64, 128)
# software pipelining depths the H200 crosscheck ran, and the default
CROSSCHECKED_STAGES = (2, 3, 4)
DEFAULT_STAGES = 3


@dataclass
class GpuAttentionResult:
    """out: bf16 (B, H, Nq, D); m, l: fp32 (B, H, Nq) final running max and sum;
    lse: float32 nats; with dump: m_blocks, l_blocks (B, H, Nq, blocks), acc (fp32)."""

    out: object
    m: object
    l: object
    lse: object
    m_blocks: object = None
    l_blocks: object = None
    acc: object = None


def _require_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gpu.flash_attention needs torch and triton: pip install 'flashbits[gpu]'") from e
    return torch


def check_kernel_recipe(rec: Recipe, fix) -> dict:
    """The kernel constexprs for a recipe, or ValueError naming what the kernels cannot do."""
    supported = {"P_cast", "O_cast"}
    base = get_recipe(rec.name)
    for name, st in rec.stages.items():
        b = base.stages[name]
        if (st.format, st.accumulation) != (b.format, b.accumulation) or (
                st.rounding != b.rounding and name not in supported):
            raise ValueError(
                f"the GPU kernel of recipe {rec.name!r} implements stage {name!r} only as "
                f"{b.format}/{b.rounding}/{b.accumulation}; got {st.format}/{st.rounding}/{st.accumulation}. "
                "Use the emulator (emulator.flash_attention) for other stage plans.")
    if fix is not None and fix.name != "paper":
        raise ValueError(f"the GPU kernels implement fix=None and fix='paper'; fix={fix.name!r} runs in the "
                         "emulator only (emulator.flash_attention)")
    for name, st in rec.stages.items():
        if st.exact:
            raise ValueError(f"stage {name!r} is set to exact (an emulator-only ablation)")
    for name in supported:
        st = rec.stages[name]
        if st.rounding not in ("rne", "sr"):
            raise ValueError(f"the GPU kernels round {name} with rne or sr only, got {st.rounding!r}")
        if st.rounding == "sr" and st.rand_bits != 16:
            raise ValueError(f"the GPU kernels use 16 random bits for sr, got rand_bits={st.rand_bits}")
    if rec.block_n not in KERNEL_BLOCK_N or rec.block_m not in KERNEL_BLOCK_M:
        raise ValueError(f"kernel tiles: block_m in {KERNEL_BLOCK_M}, block_n in {KERNEL_BLOCK_N}; "
                         f"got {rec.block_m}, {rec.block_n}")
    return {"P_SR": rec.stages["P_cast"].rounding == "sr", "O_SR": rec.stages["O_cast"].rounding == "sr",
            "FIX": fix is not None}


def flash_attention(q, k, v, *, recipe="fa2", fix=None, causal=False, scale=None, rounding=None,
                    seed=None, dump=False, eps=None, beta=None, block_m=None, block_n=None,
                    num_warps=None, num_stages=DEFAULT_STAGES) -> GpuAttentionResult:
    """Forward attention on the GPU with the recipe's arithmetic (bit-identical to the emulator).

    q, k, v: CUDA bf16 tensors (batch, heads, seq, dim), dim 64 or 128; q and
    k lengths may differ.  Other arguments as :func:`emulator.flash_attention`;
    ``num_stages`` (software pipelining depth, 2 to 4) changes speed, never bits; 3 is
    the fastest fa2 setting measured on the H200 (benchmarks/results/h200_attention_bench.json).
    Every tile the kernels accept (block_m 64 or 128, block_n 32, 64 or 128,
    num_warps 4 or 8, num_stages 2 to 4) is crosschecked against the emulator on the
    H200 (tests/data/hw/crosscheck/tiles_*.md).
    """
    torch = _require_torch()
    import triton

    from . import kernels

    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.bfloat16:
            raise TypeError(f"{name} must be bfloat16, got {t.dtype}; cast with .to(torch.bfloat16)")
        if t.dim() != 4:
            raise ValueError(f"{name} must be (batch, heads, seq, dim), got shape {tuple(t.shape)}")
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    if k.shape[:2] != (B, H) or v.shape[:2] != (B, H) or v.shape[2] != Nk:
        raise ValueError(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != D or v.shape[3] != D:
        raise ValueError(f"head dims disagree: q {D}, k {k.shape[3]}, v {v.shape[3]}")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim {D} is not supported by the kernels; supported: {SUPPORTED_HEAD_DIMS} "
                         "(the emulator takes any head dim up to 256)")
    try:
        stages = operator.index(num_stages)   # ints and numpy ints, not 3.0
    except TypeError:
        stages = None
    if isinstance(num_stages, bool) or stages not in CROSSCHECKED_STAGES:
        raise ValueError(f"num_stages must be one of {CROSSCHECKED_STAGES} (software pipelining depth: speed "
                         f"only, and these are the depths crosschecked bit for bit on the H200), "
                         f"got {num_stages!r}")
    if Nq < 1 or Nk < 1:
        raise ValueError(f"sequence lengths must be >= 1, got {Nq}, {Nk}")
    rec = get_recipe(recipe)
    ov = {}
    if rounding is not None:
        ov = {"P_cast": {"rounding": rounding}, "O_cast": {"rounding": rounding}}
    tiles = {kk: vv for kk, vv in (("block_m", block_m), ("block_n", block_n), ("num_warps", num_warps))
             if vv is not None}
    if ov or tiles:
        rec = rec.with_overrides(ov, **tiles)
    fx = get_fix(fix, eps, beta)
    flags = check_kernel_recipe(rec, fx)
    if (flags["P_SR"] or flags["O_SR"]) and seed is None:
        raise ValueError("stochastic rounding needs seed=<int> (the Philox key shared with the emulator)")
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not (math.isfinite(sc) and sc > 0):
        # the kernels take the block max of the unscaled scores (max(s)·c is the
        # max of s·c only for c > 0), and the emulator refuses the same values
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{name} is on {t.device}; the kernels need a CUDA GPU. Without one, run "
                               "the same recipe in the emulator (emulator.flash_attention) or replay a "
                               "golden record (crosscheck --replay FILE)")
    import numpy as np

    dev = q.device
    out = torch.empty_like(q)
    m = torch.empty((B, H, Nq), device=dev, dtype=torch.float32)
    l = torch.empty((B, H, Nq), device=dev, dtype=torch.float32)
    nblk = triton.cdiv(Nk, rec.block_n)
    if dump:
        mb = torch.full((B, H, Nq, nblk), float("nan"), device=dev, dtype=torch.float32)
        lb = torch.full((B, H, Nq, nblk), float("nan"), device=dev, dtype=torch.float32)
        acc = torch.full((B, H, Nq, D), float("nan"), device=dev, dtype=torch.float32)
    else:
        mb = lb = acc = m  # never written (DUMP=False)
    seed_p = stage_seed(seed, "P_cast") if flags["P_SR"] else 0
    seed_o = stage_seed(seed, "O_cast") if flags["O_SR"] else 0
    if rec.name == "fa2":
        kern = kernels._fa2_fwd
        a0 = float(np.float32(sc * 1.4426950408889634))
        a1 = float(np.float32(fx.eps * 1.4426950408889634)) if fx else 0.0
    else:
        kern = kernels._paper_fwd
        a0 = float(np.float32(sc))
        a1 = float(np.float32(fx.eps)) if fx else 0.0
    a2 = float(np.float32(fx.beta)) if fx else 1.0
    grid = (triton.cdiv(Nq, rec.block_m), B * H)
    if os.environ.get("TRITON_INTERPRET") == "1":
        from . import interpreter_compat

        interpreter_compat.apply()
    kern[grid](q, k, v, out, m, l, mb, lb, acc,
               *q.stride(), *k.stride(), *v.stride(), *out.stride(),
               H, Nq, Nk, nblk, a0, a1, a2, seed_p, seed_o,
               HEAD_DIM=D, BLOCK_M=rec.block_m, BLOCK_N=rec.block_n, CAUSAL=int(bool(causal)),
               FIX=flags["FIX"], P_SR=flags["P_SR"], O_SR=flags["O_SR"], DUMP=bool(dump),
               num_warps=rec.num_warps, num_stages=stages)
    if rec.name == "fa2":
        lse = m * math.log(2.0) + torch.log(l)
    else:
        lse = m + torch.log(l)
    res = GpuAttentionResult(out=out, m=m, l=l, lse=lse)
    if dump:
        res.m_blocks, res.l_blocks, res.acc = mb, lb, acc
    return res
