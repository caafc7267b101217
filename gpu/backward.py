"""``gpu.flash_attention_backward``: the backward kernels on torch tensors.

The arithmetic is docs/recipes.md's backward table of the recipe's family (the
``fa2`` backward: gpu/kernels/fa2_bwd.py); the forward's tiles, its stage plan and
its fix do not enter it (the fix reaches the gradients only through ``out`` and
``lse``); a Recipe object selects its family, its forward overrides and tiles are
ignored, as the emulator's backward ignores them.  The family names the module of its backward kernels (``Family.backward.gpu_module``);
a family without one (``paper``) has its backward in the emulator only
(``flashbits.emulator.flash_attention_backward``).

Three launches: δ (``_bwd_delta``), dK and dV (``_bwd_dkdv``), dQ (``_bwd_dq``).
``lse2 = fl32(lse·log2 e)`` is the family's ``Backward.lse_operand`` of the given lse
(nats), the emulator's own function, on the host.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from flashbits.emulator.attention.api import stage_seed
from flashbits.emulator.attention.recipes import RECIPES, get_fix, get_recipe

from .attention import (DEFAULT_STAGES, KERNEL_FIXES, _check_device, _interpreter_shims, _require_torch,
                        check_inputs, softmax_scale)

BACKWARD_ROUNDINGS = ("rne", "sr")
EMULATOR_BACKWARD = "flashbits.emulator.flash_attention_backward"


@dataclass
class GpuBackwardResult:
    """dq, dk, dv: bf16, shaped as q, k, v; delta: fp32 (B, H, Nq), δ_i = Σ_d O_id·dO_id
    as the fma chain.  With dump (fp32 (B, H, Nq, Nk), flat index (bh·Nq + i)·Nk + j):
    p, ds, the P and dS (each before its bf16 cast) of the dK/dV kernel, and p_dq, ds_dq
    those the dQ kernel recomputed (the same bits on the GPU); masked entries are +0."""

    dq: object
    dk: object
    dv: object
    delta: object
    p: object = None
    ds: object = None
    p_dq: object = None
    ds_dq: object = None


def _backward_module_name(rec):
    """The family's backward kernel module (Family.backward.gpu_module), or None."""
    bwd = rec.spec.backward
    return None if bwd is None else bwd.gpu_module


def backward_module(recipe):
    """The module of the backward kernels of ``recipe``'s family (a name or a Recipe:
    only its family counts), or ValueError saying where that family's backward runs."""
    rec = get_recipe(recipe)
    name = _backward_module_name(rec)
    if name is None:
        have = [r for r, x in RECIPES.items() if _backward_module_name(x)]
        raise ValueError(f"the {rec.family} recipe's backward runs in the emulator only: {EMULATOR_BACKWARD}; "
                         f"the GPU backward kernels implement recipe {' and '.join(map(repr, have))}")
    return importlib.import_module(name)


def _check_like(name, t, torch, dtypes, shape, what):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        accepted = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must be {accepted} ({what}), got {t.dtype}; cast with .to({dtypes[0]})")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(t.shape)}")


def check_backward_inputs(q, k, v, out, lse, dout, num_stages):
    """(B, H, Nq, Nk, D, num_stages) as :func:`gpu.attention.check_inputs`, with
    ``out``, ``dout`` bf16 shaped as q and ``lse`` fp32/fp64 (B, H, Nq); else
    TypeError / ValueError saying what is wrong."""
    torch = _require_torch()
    B, H, Nq, Nk, D, stages = check_inputs(q, k, v, num_stages)
    _check_like("out", out, torch, (torch.bfloat16,), q.shape, "the forward's output, shaped as q")
    _check_like("dout", dout, torch, (torch.bfloat16,), q.shape, "the gradient of out, shaped as q")
    _check_like("lse", lse, torch, (torch.float32, torch.float64), (B, H, Nq),
                "the forward's log-sum-exp per row, in nats")
    return B, H, Nq, Nk, D, stages


def _tile(name, value, default, accepted):
    t = default if value is None else value
    if isinstance(t, bool) or t not in accepted:
        raise ValueError(f"{name} must be one of {accepted} (tiles change speed, never bits), got {value!r}")
    return int(t)


def flash_attention_backward(q, k, v, out, lse, dout, *, recipe="fa2", fix=None, causal=False, scale=None,
                             rounding=None, seed=None, dump=False, block_m1=None, block_n1=None, block_m2=None,
                             block_n2=None, num_warps=None, num_stages=DEFAULT_STAGES) -> GpuBackwardResult:
    """dQ, dK, dV (and δ) of attention on the GPU with the recipe family's backward
    arithmetic (docs/recipes.md, "The backward pass"), the same op sequence as
    ``flashbits.emulator.flash_attention_backward``.

    q, k, v, out, dout: CUDA bf16 (batch, heads, seq, dim), dim 64 or 128, q and k
    lengths may differ; out and lse (nats, (B, H, Nq), float32 or float64) from the
    forward (``gpu.flash_attention`` or the emulator).  ``fix``: None or ``"paper"``,
    accepted and ignored (it does not enter the backward's arithmetic).
    ``rounding``: ``"rne"`` (or None, the table's plan) or ``"sr"``, for the casts P_cast,
    dS_cast, dQ_cast, dK_cast, dV_cast together; sr needs ``seed``, and its Philox key of
    stage X is ``stage_seed(seed, "backward." + X)`` (as the emulator's).
    ``dump``: also the fp32 P and dS of both kernels (:class:`GpuBackwardResult`).
    Tiles (``block_m1``, ``block_n1``: the dK/dV kernel's query rows × keys;
    ``block_m2``, ``block_n2``: the dQ kernel's; 16 to 128), ``num_warps`` (4, 8) and
    ``num_stages`` (2 to 4) change speed only, for finite inputs: with causal masking and
    a non-finite q, k or dO, a masked lane's 0·inf is NaN, so ``block_n1`` and
    ``block_m2`` decide which masked lanes the chains visit; the emulator follows the
    defaults (emulator/attention/families/fa2_backward.py).
    """
    torch = _require_torch()
    import triton

    B, H, Nq, Nk, D, stages = check_backward_inputs(q, k, v, out, lse, dout, num_stages)
    kmod = backward_module(recipe)
    rec = get_recipe(recipe)
    fx = get_fix(fix)
    if fx is not None and fx.name not in KERNEL_FIXES:
        accepted = " and ".join(["fix=None"] + [f"fix={f!r}" for f in KERNEL_FIXES])
        raise ValueError(f"the GPU kernels implement {accepted}; fix={fx.name!r} runs in the emulator only "
                         f"({EMULATOR_BACKWARD}); the fix does not enter the backward's arithmetic")
    rounding = "rne" if rounding is None else rounding
    if rounding not in BACKWARD_ROUNDINGS:
        raise ValueError(f"rounding must be one of {BACKWARD_ROUNDINGS} (for the backward's casts "
                         f"{', '.join(kmod.SR_STAGES)} together), got {rounding!r}")
    sr = rounding == "sr"
    if sr and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"stochastic rounding needs seed=<int> (the Philox key shared with the emulator), "
                         f"got {seed!r}")
    bm1 = _tile("block_m1", block_m1, kmod.BLOCK_M1, kmod.KERNEL_TILES)
    bn1 = _tile("block_n1", block_n1, kmod.BLOCK_N1, kmod.KERNEL_TILES)
    bm2 = _tile("block_m2", block_m2, kmod.BLOCK_M2, kmod.KERNEL_TILES)
    bn2 = _tile("block_n2", block_n2, kmod.BLOCK_N2, kmod.KERNEL_TILES)
    warps = _tile("num_warps", num_warps, kmod.NUM_WARPS, (4, 8))
    sc = softmax_scale(scale, D)
    qk_scale = rec.scalars(sc).qk_scale
    scale_f32 = float(np.float32(sc))
    seeds = {st: stage_seed(int(seed), "backward." + st) if sr else 0 for st in kmod.SR_STAGES}
    flags = {flag: sr for flag, _ in kmod.SR_STAGES.values()}
    _check_device({"q": q, "k": k, "v": v, "out": out, "lse": lse, "dout": dout}, EMULATOR_BACKWARD)

    dev = q.device
    BH = B * H
    # the family's lse operand (fa2: fl32(lse · log2 e), a float64 product rounded once),
    # computed by the same function as the emulator's, on the host
    lse2 = torch.from_numpy(rec.spec.backward.lse_operand(lse.detach().double().cpu().numpy()).astype("float32"))
    lse2 = lse2.to(q.device).reshape(BH, Nq).contiguous()
    delta = torch.empty((BH, Nq), device=dev, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if dump:
        p, ds, p_dq, ds_dq = (torch.zeros((BH, Nq, Nk), device=dev, dtype=torch.float32) for _ in range(4))
    else:
        p = ds = p_dq = ds_dq = delta  # never written (DUMP=False)
    _interpreter_shims()
    launch = dict(num_warps=warps, num_stages=stages)
    kmod._bwd_delta[(triton.cdiv(Nq, kmod.BLOCK_DELTA), BH)](
        out, dout, delta, *out.stride(), *dout.stride(), H, Nq, HEAD_DIM=D, BLOCK_M=kmod.BLOCK_DELTA, **launch)
    operands = (*q.stride(), *k.stride(), *v.stride(), *dout.stride())
    kmod._bwd_dkdv[(triton.cdiv(Nk, bn1), BH)](
        q, k, v, dout, lse2, delta, dk, dv, p, ds, *operands, *dk.stride(), *dv.stride(),
        H, Nq, Nk, qk_scale, scale_f32, seeds["P_cast"], seeds["dS_cast"], seeds["dK_cast"], seeds["dV_cast"],
        HEAD_DIM=D, BLOCK_M1=bm1, BLOCK_N1=bn1, CAUSAL=int(bool(causal)), P_SR=flags["P_SR"],
        DS_SR=flags["DS_SR"], DK_SR=flags["DK_SR"], DV_SR=flags["DV_SR"], DUMP=bool(dump), **launch)
    kmod._bwd_dq[(triton.cdiv(Nq, bm2), BH)](
        q, k, v, dout, lse2, delta, dq, p_dq, ds_dq, *operands, *dq.stride(),
        H, Nq, Nk, qk_scale, scale_f32, seeds["dS_cast"], seeds["dQ_cast"],
        HEAD_DIM=D, BLOCK_M2=bm2, BLOCK_N2=bn2, CAUSAL=int(bool(causal)), DS_SR=flags["DS_SR"],
        DQ_SR=flags["DQ_SR"], DUMP=bool(dump), **launch)
    res = GpuBackwardResult(dq=dq, dk=dk, dv=dv, delta=delta.reshape(B, H, Nq))
    if dump:
        res.p, res.ds, res.p_dq, res.ds_dq = (t.reshape(B, H, Nq, Nk) for t in (p, ds, p_dq, ds_dq))
    return res
