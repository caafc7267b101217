"""The backward crosscheck's two sides: one case's gradients as raw bits from the emulator
(CPU) and from the kernels (GPU), on the same forward outputs.

Both backward sides read the same ``out`` and ``lse`` (the runner: the GPU forward's,
carried to the emulator side; :func:`forward_inputs` gives the emulator's, which the
H200 showed bit-identical, tests/data/hw/crosscheck/), so a mismatch is the backward's
own.  The upstream gradient dO is N(0, 1) in bf16, seeded by the case.
The compared tensors are the family's (``Family.backward.compared``): δ, dV, dK, dQ,
and with the dump launch P and dS before their casts, earliest stage first.
"""

from __future__ import annotations

import numpy as np

from flashbits.emulator import flash_attention, flash_attention_backward, quantize, to_bits
from flashbits.emulator.attention.recipes import get_recipe

from .sides import Config, _f32bits, _launch, device_bf16, raw_bits

# 16-bit tensors (the gradients, in their cast's format); every other tensor is fp32
GRADIENTS = ("dq", "dk", "dv")


def compared(cfg: Config, launch: str) -> tuple:
    """The backward tensors the crosscheck compares for ``launch``, in mismatch-locating order."""
    bwd = get_recipe(cfg.recipe).spec.backward
    if bwd is None:
        raise ValueError(f"recipe {cfg.recipe!r} has no backward pass")
    if launch not in bwd.compared:
        raise ValueError(f"unknown launch kind {launch!r}; accepted: {', '.join(bwd.compared)}")
    return tuple(bwd.compared[launch])


def upstream_gradient(shape, seed: int) -> np.ndarray:
    """dO of a case: N(0, 1) rounded to bf16, from the case's seed."""
    return quantize(np.random.default_rng([seed, 0xD0]).standard_normal(shape), "bf16", "rne")


def backward_kwargs(cfg: Config) -> dict:
    kw = {"recipe": cfg.recipe, "rounding": cfg.rounding, "seed": cfg.seed if cfg.rounding == "sr" else None}
    if cfg.fix:
        kw["fix"] = cfg.fix
    return kw


def forward_inputs(q, k, v, causal: bool, cfg: Config, seed: int):
    """(out, lse, dO) the two backward sides share: the emulator's forward of the case."""
    f = flash_attention(q, k, v, causal=causal, **cfg.kwargs())
    return f.out, f.lse, upstream_gradient(q.shape, seed)


def emulator_backward_side(q, k, v, out, lse, do, causal: bool, cfg: Config, dump: bool = True) -> dict:
    """The compared backward tensors of an emulator run, as raw bits."""
    g = flash_attention_backward(q, k, v, out, lse, do, causal=causal, dump=dump, **backward_kwargs(cfg))
    # the backward takes no format overrides: its gradients are bf16
    return {name: to_bits(getattr(g, name), "bf16") if name in GRADIENTS else _f32bits(getattr(g, name))
            for name in compared(cfg, _launch(dump))}


def gpu_backward_side(q, k, v, out, lse, do, causal: bool, cfg: Config, dump: bool) -> dict:
    """The same tensors of the backward kernels' launch, as raw bits of the dtype they wrote."""
    import torch

    from flashbits.gpu.backward import flash_attention_backward as gpu_backward

    tq, tk, tv, tout, tdo = device_bf16(q, k, v, out, do)
    r = gpu_backward(tq, tk, tv, tout, torch.from_numpy(np.asarray(lse, np.float64)).to(tq.device), tdo,
                     causal=causal, dump=dump, **backward_kwargs(cfg))
    return {name: raw_bits(getattr(r, name)) for name in compared(cfg, _launch(dump))}


def gpu_forward_inputs(q, k, v, causal: bool, cfg: Config, seed: int):
    """(out, lse, dO) from the GPU forward (numpy; out as float32 bf16 values, lse float64
    from the kernel's float32): what both backward sides read in a large crosscheck."""
    from flashbits.gpu import flash_attention as gpu_flash_attention

    r = gpu_flash_attention(*device_bf16(q, k, v), causal=causal, **cfg.kwargs("gpu"))
    return (r.out.float().cpu().numpy(), r.lse.double().cpu().numpy(), upstream_gradient(q.shape, seed))


def _gpu_pass(case, q, k, v, cfg, dump_launch):
    """The runner's GPU side of the backward: the case's GPU forward and dO, then the
    backward kernels; the carry takes the same forward to the emulator side."""
    carry = gpu_forward_inputs(q, k, v, case.causal, cfg, case.seed)
    prod = gpu_backward_side(q, k, v, *carry, case.causal, cfg, dump=False)
    dump = gpu_backward_side(q, k, v, *carry, case.causal, cfg, dump=True) if dump_launch else None
    return prod, dump, carry


def _emulate_pass(case, q, k, v, cfg, carry):
    return emulator_backward_side(q, k, v, *carry, case.causal, cfg, dump=True)


def _make_pass():
    from .runner import Pass

    return Pass("backward", _gpu_pass, _emulate_pass, compared)


BACKWARD = _make_pass()
