"""Compiling the kernels for sm_90 on the CPU, and reading what came out.

No GPU needed: ``triton.compile`` for ``GPUTarget("cuda", 90, 32)`` runs ptxas
locally.  Used by the PTX tests (tests/test_kernel_ptx.py), the resource report
(benchmarks/kernel_resources.py), the PTX snapshot of a refactor
(benchmarks/ptx_snapshot.py) and the kernel experiments (benchmarks/kernel_experiments/).
Unset TRITON_INTERPRET first: the interpreter cannot compile.
"""

from __future__ import annotations

import inspect
import os
import re

__all__ = ["compile_kernel", "compile_with", "runtime_params", "ptxas_report", "wgmma_serialised", "sass_text", "sass_loops",
           "UNIT_STRIDES"]

PTR_BF16 = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}
PTR_F32 = {"M", "L", "MB", "LB", "ACC", "LSE2", "DELTA", "PD", "DSD"}
FLOAT_ARGS = {"qk_scale", "eps2", "beta", "scale", "eps", "delta", "delta2"}


# How flashbits.gpu.flash_attention's launch specialises the kernels for contiguous
# (B, H, N, D) tensors, mirrored so that what is compiled here is what runs:
# Triton's JIT turns an int argument equal to 1 into a constexpr (the last-dim
# strides) and marks pointers and ints divisible by 16 (the other strides; every
# torch allocation is 16-byte aligned) with tt.divisibility.  Lengths, flags and
# seeds are exempt (flashbits.gpu.kernels.common._NO_SPEC, fa2_bwd._NO_SPEC); the
# backward kernels' strides of dO, dQ, dK, dV follow the same rule.  Without this the loads compile to
# 2-byte scalar accesses and the register counts are those of a kernel that
# never runs.
UNIT_STRIDES = ("sqd", "skd", "svd", "sod", "sdod", "sdqd", "sdkd", "sdvd")
_DIV16_STRIDE = re.compile(r"s(?:[qkvo]|d[oqkv])[bhmn]")


def _kernel(kernel):
    """A Triton kernel given as itself or by its name in flashbits.gpu.kernels.KERNELS."""
    if isinstance(kernel, str):
        from flashbits.gpu.kernels import KERNELS

        try:
            return KERNELS[kernel]
        except KeyError:
            raise ValueError(f"no production kernel {kernel!r}; kernels: {', '.join(KERNELS)}") from None
    return kernel


def runtime_params(kernel):
    """The kernel's arguments that stay runtime parameters under that specialisation,
    in order (the .param list of its PTX).  ``kernel``: a name or a Triton kernel."""
    return [p.name for p in _kernel(kernel).params if not p.is_constexpr and p.name not in UNIT_STRIDES]


def compile_kernel(kernel, D, BM, BN, warps, stages, fix=False, psr=False, osr=False, dump=False, extra=None):
    """The compiled kernel (triton CompiledKernel) for sm_90 of ``kernel`` (a name in
    flashbits.gpu.kernels.KERNELS, or any Triton kernel with the production
    kernels' arguments, e.g. an experiment's), specialised as a launch on
    contiguous tensors specialises it (UNIT_STRIDES).  ``extra``: values of further
    constexprs (those with defaults may be left out)."""
    consts = dict(HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, FIX=fix, P_SR=psr, O_SR=osr, DUMP=dump, **(extra or {}))
    return compile_with(kernel, consts, warps, stages)


def compile_with(kernel, consts, warps, stages):
    """:func:`compile_kernel` with the constexprs given as a dict (any kernel of
    flashbits.gpu.kernels.KERNELS, e.g. the backward kernels, whose tiles have other
    names); constexprs with defaults may be left out."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter cannot compile for sm_90")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernel(kernel)
    name = getattr(fn, "__name__", str(kernel))
    consts = dict(consts)
    sig = {}
    attrs = {}
    for i, p in enumerate(fn.params):
        a = p.name
        if p.is_constexpr:
            if a not in consts:
                if p.default is inspect.Parameter.empty:
                    raise ValueError(f"kernel {name} has a constexpr {a} that compile_kernel does not set")
                consts[a] = p.default
            sig[a] = "constexpr"
        elif a in UNIT_STRIDES:
            consts[a] = 1
            sig[a] = "constexpr"
        elif a in PTR_BF16 or a in PTR_F32:
            sig[a] = "*bf16" if a in PTR_BF16 else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif a in FLOAT_ARGS:
            sig[a] = "fp32"
        elif a.startswith("seed"):
            sig[a] = "i64"
        else:
            sig[a] = "i32"
            if _DIV16_STRIDE.fullmatch(a):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def ptxas_report(ptx, messages=False):
    """(registers, spill stores + loads in bytes) from ``ptxas -v`` (Triton's bundled ptxas);
    with ``messages``, also ptxas's full output (its performance notes, e.g. C7515)."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-arch=sm_90a", "-v", src, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True, check=True)
    text = r.stderr + r.stdout
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return (regs, spill, text) if messages else (regs, spill)


def wgmma_serialised(ptxas_text):
    """Whether ptxas reports that it serialised the wgmmas (performance notes C7514,
    C7515, ...: a wgmma's accumulator touched by other instructions while in flight)."""
    return "wgmma.mma_async instructions are serialized" in ptxas_text


def sass_text(cubin):
    """nvdisasm's listing (bundled with Triton) of a cubin."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    nvdisasm = os.path.join(os.path.dirname(get_ptxas(90).path), "nvdisasm")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout


def sass_loops(cubin):
    """[(instructions, Counter of opcodes)] for every loop of the kernel's SASS
    (nvdisasm, bundled with Triton), in code order.  A loop is the span from a
    backward branch's target to the branch.  Opcodes are counted with their
    modifiers (``FMNMX.NAN`` is not ``FMNMX``), predicates dropped."""
    import collections

    text = sass_text(cubin)
    insns, labels, pending = [], {}, []
    for line in text.splitlines():
        lab = re.match(r"\s*\.(L_x_\d+):", line)
        if lab:
            pending.append(lab.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                labels[name] = addr
            pending = []
            insns.append((addr, re.sub(r"^@!?U?P\w+\s+", "", m.group(2))))
    loops = []
    for addr, text_ in insns:
        b = re.match(r"BRA\s+`?\(?\.?(L_x_\d+)", text_)
        if b and labels.get(b.group(1), addr) < addr:
            lo = labels[b.group(1)]
            ops = collections.Counter(t.split()[0] for a, t in insns if lo <= a <= addr)
            loops.append((sum(ops.values()), ops))
    return loops
