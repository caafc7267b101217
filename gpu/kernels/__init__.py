"""Triton kernels of the recipe families (docs/recipes.md), one module per family.

Each kernel is the recipe's op sequence, written so that the compiled code
performs exactly the roundings the emulator models:

* ``tl.dot`` → wgmma chains (bf16, fp32 accumulator);
* ``tl.math.exp2`` → ``ex2.approx.ftz.f32`` (fa2); ``tl.exp`` → multiply by
  fl32(log2 e) then ``ex2.approx.f32`` (paper);
* ``x * c - m`` → ``fma.rn.f32(x, c, −m)``; ``l * α + l_blk`` → fma; ``acc * α``
  → ``mul.rn.f32`` (NVPTX contraction, checked in the PTX by the tests);
* ``tl.sum`` over the wgmma accumulator layout → the lane-tree order;
* ``tl.math.div_rn`` → ``div.rn.f32`` (IEEE);
* ``.to(tl.bfloat16)`` → ``cvt.rn.bf16.f32``; stochastic rounding adds the top
  16 bits of ``tl.randint(seed, offset)`` below the kept bits and truncates.

``DUMP`` (constexpr) also stores m and l after every key block and the
accumulator before the division; the production launch (``DUMP=False``) must
give the same bits (crosscheck checks both).

Modules: ``common`` (the casts, row tile and epilogue both kernels share),
``fa2`` and ``paper`` (one family each: ``KERNEL``, the Triton kernel;
``SR_STAGES``, the stages whose rounding its constexprs switch; ``FIXES``), and
``fa2_bwd``, the fa2 family's backward kernels.  A family
(flashbits.emulator.attention.families) names its modules here (``gpu_module``, and
``backward.gpu_module`` where it has GPU backward kernels).
"""

from __future__ import annotations

import importlib

from flashbits.emulator.attention.families import FAMILIES

from .fa2 import _fa2_fwd
from .paper import _paper_fwd

# every production kernel by name (flashbits.gpu.compile, the PTX tests), from the one
# registry of families: a new family's kernel is found here without another line
KERNELS = {k.__name__: k for k in (f.gpu_kernels().KERNEL for f in FAMILIES.values())}
# and the backward kernels of the families that have them (Family.backward.gpu_module)
for _bwd in sorted({f.backward.gpu_module for f in FAMILIES.values() if f.backward} - {None}):
    KERNELS.update(importlib.import_module(_bwd).KERNELS)

__all__ = ["KERNELS", "_fa2_fwd", "_paper_fwd"]
