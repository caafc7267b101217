"""The registry of recipe families: one module per family, one line each here.

A *family* is one op sequence of flash attention (``fa2``: FlashAttention-2 /
the Triton tutorial; ``paper``: the paper's every-tensor-bf16 reference); a
*recipe* (:class:`~flashbits.emulator.attention.recipes.Recipe`) is a family
with its tiles and per-stage rounding plan, possibly overridden.  What both
sides need to know about a family lives on its :class:`Family` object, so no
code outside the family modules and this registry branches on a recipe's
name:

* ``stages`` (the rounding plan, the ledger's rows), tile defaults;
* ``domain``: ``log2`` (scores scaled by scale·log2 e, exp2 units) or ``ln``
  (natural-log domain, exp = exp2 of x·log2 e);
* :meth:`Family.scalars`: the fp32 constants the kernels take (scale, the
  fix's ε, β, δ in the family's domain), derived once for both sides;
* :meth:`Family.lse`: log-sum-exp in nats from the final m and l (in float64, or
  rounded as the family's reference computes it: ``lse_format``);
* ``modes``: the recipe options its kernel implements (``paper_code``), and
  ``recipes``: the further recipes registered under the family (recipes.RECIPES);
* ``compared``: the tensors the crosscheck compares per launch kind;
* ``kernel``: the family's cached numba kernel (:meth:`Family.emulate` runs it);
  ``gpu_module``: the module of
  ``flashbits.gpu`` that holds the family's Triton kernel (imported only by
  the GPU side, so the emulator never needs torch).

Adding a family = a module here that builds a :class:`Family` and registers it
(a line in ``_MODULES``), and a kernel module under ``gpu/kernels/``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["Family", "Backward", "KernelScalars", "FAMILIES", "get_family", "rounded_lse", "DOMAINS", "LOG2E",
           "LN2"]

LOG2E = 1.4426950408889634   # log2 e as a float64 (rounded to fp32 where a kernel uses it)
LN2 = math.log(2.0)
DOMAINS = ("log2", "ln")

# tensors of one attention run as the crosscheck compares them, in the order a
# mismatch is located (earliest stage first)
PRODUCTION_TENSORS = ("m", "l", "out")
DUMP_TENSORS = ("m_blocks", "l_blocks", "acc", "m", "l", "out")
BACKWARD_PRODUCTION_TENSORS = ("delta", "dv", "dk", "dq")
BACKWARD_DUMP_TENSORS = ("delta", "p", "ds", "dv", "dk", "dq")


def _fl32(x: float) -> float:
    return float(np.float32(x))


@dataclass(frozen=True)
class KernelScalars:
    """The scalar constants a family's kernel takes, as both sides pass them.

    ``qk_scale`` multiplies the fp32 scores S: fl32(scale·log2 e) in the log2
    domain, fl32(scale) in the ln domain.  ``eps`` and ``delta`` are the paper
    fix's threshold ε and the offset fix's shift δ in the same domain (fl32 of
    ε·log2 e, resp. ε), ``beta`` is fl32(β).  Without a fix: eps = delta = 0,
    beta = 1.  With ``fp64`` (the emulator's every-stage-in-float64 mode)
    nothing is rounded to fp32.
    """

    qk_scale: float
    eps: float
    beta: float
    delta: float


@dataclass(frozen=True, eq=False)
class Backward:
    """A family's backward pass (docs/recipes.md, "The backward pass").

    ``stages``: its stage table (the backward ledger's rows); ``rounding_stages``: the
    stages the ``rounding=`` shorthand sets; ``run(job)``: fill a
    ``backward.BackwardJob``'s outputs; ``lse_operand(lse, fp64)``: the per-row
    constant the kernels subtract before the exp, from the forward's lse in nats
    (float64), computed the same way on both sides; ``gpu_module``: the module of
    ``flashbits.gpu.kernels`` with its Triton kernels, or None (emulator only);
    ``compared``: the tensors the crosscheck compares per launch kind, earliest stage first.
    """

    stages: dict
    rounding_stages: tuple
    run: Callable
    lse_operand: Callable
    gpu_module: str | None = None
    compared: dict = field(default_factory=lambda: {"production": BACKWARD_PRODUCTION_TENSORS,
                                                    "dump": BACKWARD_DUMP_TENSORS})


@dataclass(frozen=True, eq=False)
class Family:
    """Everything the emulator, the GPU side and the crosscheck need to know about
    one recipe family (module docstring)."""

    name: str
    doc: str
    domain: str
    stages: dict
    block_m: int
    block_n: int
    num_warps: int
    kernel: Callable
    gpu_module: str
    compared: dict = field(default_factory=lambda: {"production": PRODUCTION_TENSORS, "dump": DUMP_TENSORS})
    backward: Backward | None = None
    # the format the reference rounds its lse to (None: float64 m + ln l); ln domain only
    lse_format: str | None = None
    # the fixes (recipes.FIXES names) this family's op sequence defines (Recipe.with_fix)
    fixes: tuple = ("paper", "offset")
    # recipe options (Recipe fields) the family's emulator kernel implements, e.g. ("paper_code",)
    modes: tuple = ()
    # further recipes of the family: {name: Recipe field values over the family's defaults}
    recipes: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"family {self.name!r}: domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.lse_format is not None and self.domain != "ln":
            raise ValueError(f"family {self.name!r}: a rounded lse (lse_format) needs the ln domain")

    def scalars(self, scale: float, fix=None, fp64: bool = False) -> KernelScalars:
        """The kernel constants for softmax ``scale`` and ``fix`` (a recipes.Fix or None)."""
        to_kernel = (lambda x: float(x)) if fp64 else _fl32
        k = LOG2E if self.domain == "log2" else 1.0
        if fix is None or fix.name == "unbiased":   # the unbiased fix shifts no maximum
            return KernelScalars(to_kernel(scale * k), 0.0, 1.0, 0.0)
        return KernelScalars(to_kernel(scale * k), to_kernel(fix.eps * k), to_kernel(fix.beta),
                             to_kernel(fix.delta * k))

    def lse(self, m, l, log=np.log, fp64: bool = False):
        """log-sum-exp per row in nats from the final running max m (in the family's
        domain) and row sum l; ``log`` is the array library's log (np.log, torch.log).

        With ``lse_format`` (paper: bf16) and not ``fp64``, the reference's rounded
        formula ``fmt(fl32(fmt(fl32(ln l)) + m))`` instead (:func:`rounded_lse`, on the
        host, numpy or torch inputs alike); ``fp64`` (the emulator's float64 mode) keeps
        ``m + ln l`` unrounded.
        """
        if self.domain == "log2":
            return m * LN2 + log(l)
        if self.lse_format is None or fp64:
            return m + log(l)
        return rounded_lse(m, l, self.lse_format)

    def emulate(self, job):
        """Fill ``job``'s outputs (a rows.Job) with the family's op sequence, every row."""
        from ..rows import kernel_args

        self.kernel(*kernel_args(job))

    def gpu_kernels(self):
        """The family's module of ``flashbits.gpu.kernels`` (needs torch + triton)."""
        return importlib.import_module(self.gpu_module)


def rounded_lse(m, l, fmt: str):
    """lse = fmt(fl32(fmt(fl32(ln l)) + m)) per row: a log and an add on tensors of format
    ``fmt``, as PyTorch computes them (each op in fp32, its result rounded once to fmt).

    fl32(ln l) is the float64 log rounded to fp32, i.e. a correctly rounded logf
    (CUDA's logf is within 1 ulp, not correctly rounded: where the two differ, the fmt
    rounding after it hides the difference unless fl32(ln l) lies next to a fmt rounding
    boundary).  fl32(L + m) rounds the float64 sum of two fp32 values, which equals
    rounding their exact sum once (53 ≥ 2·24 + 2).  numpy inputs give a float64 array,
    torch tensors a float32 tensor on their device (computed on the host, the same bits).
    """
    from ...rounding import quantize

    torch_in = type(m).__module__.startswith("torch")
    if torch_in:
        device = m.device
        m, l = (t.detach().cpu().double().numpy() for t in (m, l))
    m64 = np.asarray(m, np.float64)
    l64 = np.asarray(l, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ln = quantize(np.log(l64).astype(np.float32), fmt, "rne")
        out = quantize((ln.astype(np.float64) + m64).astype(np.float32), fmt, "rne").astype(np.float64)
    if torch_in:
        import torch

        return torch.from_numpy(out.astype(np.float32)).to(device)
    return out


# the family modules, in the order recipes are listed
_MODULES = ("fa2", "paper")

FAMILIES: dict[str, Family] = {}
for _name in _MODULES:
    _fam = importlib.import_module(f"{__name__}.{_name}").FAMILY
    if _fam.name != _name:
        raise RuntimeError(f"family module {_name} defines family {_fam.name!r}")
    FAMILIES[_name] = _fam


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown recipe family {name!r}; accepted: {', '.join(FAMILIES)}") from None
