"""``gpu.flash_attention``: launch the recipe kernels on torch tensors.

The recipe object (``emulator.get_recipe``) decides tiles and which casts
round stochastically, exactly as it does for the emulator; the kernels
support the subset of overrides a GPU kernel implements (bf16 in and out, P̄
and output casts rne or sr with 16 random bits, fix None or paper); anything
else is refused with a message saying what is supported.

One call is three steps, each a function (a torch autograd Function and the
backward kernels build on the same seam):

* ``check_inputs`` / ``check_kernel_recipe``: validate the tensors and the recipe
  against what the family's kernel module implements;
* ``plan_launch``: translate the recipe into a :class:`KernelLaunch` (the kernel,
  its constexprs, its fp32 constants ``rec.scalars`` and Philox seeds);
* ``launch``: allocate the outputs, run the kernel, and return m, l and the lse
  (``rec.lse``).

No code here branches on a recipe's name: the family (``rec.spec``) names its
kernel module (``rec.spec.gpu_kernels()``: ``KERNEL``, ``SR_STAGES``, ``FIXES``).
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass, field

from flashbits.emulator.attention.api import stage_seed
from flashbits.emulator.attention.recipes import RECIPES, Recipe, get_fix, get_recipe
from flashbits.emulator.attention.units import FIX_KINDS

SUPPORTED_HEAD_DIMS = (64, 128)
# the tiles the kernels take (num_warps: emulator.attention.recipes.NUM_WARPS);
# the records' tiles step (crosscheck.records regenerate --only tiles) crosschecks every one on the H200
KERNEL_BLOCK_M = (64, 128)
KERNEL_BLOCK_N = (32, 64, 128)
# software pipelining depths the H200 crosscheck ran, and the default
CROSSCHECKED_STAGES = (2, 3, 4)
DEFAULT_STAGES = 3
# the fixes each family's kernel implements (the others run in the emulator only); here, not
# in gpu/kernels/, so that the CLI can check arguments without importing triton
KERNEL_FIXES_OF = {"fa2": ("paper", "unbiased"), "paper": ("paper",)}
KERNEL_FIXES = tuple(dict.fromkeys(f for fixes in KERNEL_FIXES_OF.values() for f in fixes))   # any kernel's
# the registered recipes the kernels implement: all but the paper-code mode (Recipe.paper_code,
# the paper's published code exactly: emulator only)
KERNEL_RECIPES = tuple(name for name, r in RECIPES.items() if not r.paper_code)


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


def kernel_fixes(recipe) -> tuple:
    """(None, ...) the fixes the kernel of ``recipe``'s family implements."""
    return (None,) + KERNEL_FIXES_OF.get(get_recipe(recipe).family, ())


def check_kernel_recipe(rec: Recipe, fix) -> dict:
    """The kernel's rounding constexprs for a recipe ({"P_SR": bool, ..., "FIX": bool}),
    or ValueError naming what the family's kernel cannot do: every stage as the
    family's own recipe (RECIPES[rec.family]) plans it, except the rounding of the
    stages the kernel module switches (``SR_STAGES``: rne or sr with its
    ``SR_RAND_BITS``), and a fix among its ``FIXES``; never the paper-code mode."""
    if rec.paper_code:
        raise ValueError(f"recipe {rec.name!r} is the paper-code mode (Recipe.paper_code: the paper's published "
                         "code exactly: every key block visited, masked scores −max(bf16), row sums clamped to "
                         "1e-10), which the GPU kernels do not implement; run it in the emulator "
                         "(emulator.flash_attention, flashbits emulate --recipe paper_code)")
    kmod = rec.spec.gpu_kernels()
    switchable = kmod.SR_STAGES
    base = RECIPES[rec.family]
    for name, st in rec.stages.items():
        b = base.stages[name]
        if (st.format, st.accumulation) != (b.format, b.accumulation) or (
                st.rounding != b.rounding and name not in switchable):
            raise ValueError(
                f"the GPU kernel of recipe {rec.name!r} implements stage {name!r} only as "
                f"{b.format}/{b.rounding}/{b.accumulation}; got {st.format}/{st.rounding}/{st.accumulation}. "
                "Use the emulator (emulator.flash_attention) for other stage plans.")
    if fix is not None and fix.name not in kmod.FIXES:
        fixes = " and ".join(["fix=None"] + [f"fix={f!r}" for f in kmod.FIXES])
        raise ValueError(f"the GPU kernels implement {fixes}; fix={fix.name!r} runs in the "
                         "emulator only (emulator.flash_attention)")
    for name, st in rec.stages.items():
        if st.exact:
            raise ValueError(f"stage {name!r} is set to exact (an emulator-only ablation)")
    for name in switchable:
        st = rec.stages[name]
        if st.rounding not in ("rne", "sr"):
            raise ValueError(f"the GPU kernels round {name} with rne or sr only, got {st.rounding!r}")
        if st.rounding == "sr" and st.rand_bits != kmod.SR_RAND_BITS:
            raise ValueError(f"the GPU kernels use {kmod.SR_RAND_BITS} random bits for sr, "
                             f"got rand_bits={st.rand_bits}")
    if rec.block_n not in KERNEL_BLOCK_N or rec.block_m not in KERNEL_BLOCK_M:
        raise ValueError(f"kernel tiles: block_m in {KERNEL_BLOCK_M}, block_n in {KERNEL_BLOCK_N}; "
                         f"got {rec.block_m}, {rec.block_n}")
    flags = {flag: rec.stages[name].rounding == "sr" for name, (flag, _) in switchable.items()}
    flags["FIX"] = FIX_KINDS[fix.name if fix is not None else None]
    return flags


def check_inputs(q, k, v, num_stages):
    """(B, H, Nq, Nk, D, num_stages) of bf16 (batch, heads, seq, dim) tensors the
    kernels take, or TypeError / ValueError saying what is wrong."""
    torch = _require_torch()
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
    return B, H, Nq, Nk, D, stages


def _check_device(tensors: dict, emulator="emulator.flash_attention"):
    """RuntimeError unless every named tensor is on a CUDA GPU (or the Triton interpreter
    runs the kernels); ``emulator`` names the emulator function that runs without one."""
    for name, t in tensors.items():
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{name} is on {t.device}; the kernels need a CUDA GPU. Without one, run "
                               f"the same recipe in the emulator ({emulator}) or replay a "
                               "golden record (crosscheck --replay FILE)")


def _interpreter_shims():
    """Under TRITON_INTERPRET=1 (CPU semantics tests), the interpreter fixes of
    gpu/interpreter_compat.py; nothing on a GPU."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        from . import interpreter_compat

        interpreter_compat.apply()


def softmax_scale(scale, D: int) -> float:
    """The softmax scale as a float (None: 1/sqrt(D)), or ValueError unless positive and finite."""
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not (math.isfinite(sc) and sc > 0):
        # the kernels take the block max of the unscaled scores (max(s)·c is the
        # max of s·c only for c > 0), and the emulator refuses the same values
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return sc


@dataclass
class KernelLaunch:
    """A recipe translated for its family's kernel: ``kernel`` (the Triton kernel),
    the runtime constants ``scalars`` (qk_scale, ε', β' in the kernel's order) and
    ``seeds`` (one per SR stage, 0 where it rounds rne), and the ``constexprs``
    (tiles, rounding and fix flags); ``num_warps`` / ``num_stages`` as launched."""

    rec: Recipe
    kernel: object
    scalars: tuple
    seeds: tuple
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = DEFAULT_STAGES


def plan_launch(rec: Recipe, fix, D: int, scale, seed, num_stages=DEFAULT_STAGES) -> KernelLaunch:
    """Validate ``rec`` against its family's kernel (check_kernel_recipe) and translate it
    into a KernelLaunch for head dim ``D`` and softmax ``scale`` (None: 1/sqrt(D))."""
    flags = check_kernel_recipe(rec, fix)
    kmod = rec.spec.gpu_kernels()
    sr = [(stage, flags[flag]) for stage, (flag, _) in kmod.SR_STAGES.items()]
    if any(on for _, on in sr) and seed is None:
        raise ValueError("stochastic rounding needs seed=<int> (the Philox key shared with the emulator)"
                         + (f"; fix={fix.name!r} rounds P̄ and the output stochastically"
                            if fix is not None and fix.needs_seed else ""))
    ks = rec.scalars(softmax_scale(scale, D), fix)
    return KernelLaunch(rec=rec, kernel=kmod.KERNEL, scalars=(ks.qk_scale, ks.eps, ks.beta),
                        seeds=tuple(stage_seed(seed, stage) if on else 0 for stage, on in sr),
                        constexprs=dict(HEAD_DIM=D, BLOCK_M=rec.block_m, BLOCK_N=rec.block_n, **flags),
                        num_warps=rec.num_warps, num_stages=num_stages)


def launch(plan: KernelLaunch, q, k, v, causal=False, dump=False) -> GpuAttentionResult:
    """Allocate the outputs and run ``plan`` on contiguous-or-strided bf16 q, k, v."""
    torch = _require_torch()
    import triton

    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    rec = plan.rec
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
    grid = (triton.cdiv(Nq, rec.block_m), B * H)
    _interpreter_shims()
    plan.kernel[grid](q, k, v, out, m, l, mb, lb, acc,
                      *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                      H, Nq, Nk, nblk, *plan.scalars, *plan.seeds,
                      CAUSAL=int(bool(causal)), DUMP=bool(dump), **plan.constexprs,
                      num_warps=plan.num_warps, num_stages=plan.num_stages)
    res = GpuAttentionResult(out=out, m=m, l=l, lse=rec.lse(m, l, torch.log))
    if dump:
        res.m_blocks, res.l_blocks, res.acc = mb, lb, acc
    return res


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
    B, H, Nq, Nk, D, stages = check_inputs(q, k, v, num_stages)
    fx = get_fix(fix, eps, beta)
    rec = get_recipe(recipe).configured(rounding=rounding, block_m=block_m, block_n=block_n,
                                        num_warps=num_warps).with_fix(fx)
    plan = plan_launch(rec, fx, D, scale, seed, stages)
    _check_device({"q": q, "k": k, "v": v})
    return launch(plan, q, k, v, causal=causal, dump=dump)
