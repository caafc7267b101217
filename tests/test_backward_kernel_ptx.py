"""The PTX of the fa2 backward kernels (gpu/kernels/fa2_bwd.py) holds exactly the
operations of docs/recipes.md's fa2 backward table, compiled for sm_90 on the CPU (no GPU
needed; one child process, as tests/test_kernel_ptx.py, whose PTX reader this uses).

At the default tiles (dK/dV: BLOCK_N1 × BLOCK_M1 = 128 × 32, dQ: BLOCK_M2 × BLOCK_N2 =
128 × 32, 8 warps: E = 16 score elements per thread in either kernel):

* ``_bwd_delta``: δ is one chain of D ``fma.rn.f32`` per row, from +0, each adding the
  previous one's result (no ``add.f32``: nothing was turned into a reduction tree);
* x = fma(S, c, −lse2): exactly E ``fma.rn.f32`` per block, each multiplying by the
  qk_scale parameter and adding 0 − lse2 (Triton's negation: ``sub.f32`` from +0; it
  differs from −lse2 only in the sign of a zero, which no exp2 argument can tell);
  no other fma anywhere: dP − δ, P·u and dK·s stay single ``sub.f32`` / ``mul.f32``;
* P with E ``ex2.approx.ftz.f32`` (the forward's exp2), never ``ex2.approx.f32``;
* no ``add.f32``: every gradient chain is accumulated inside the wgmmas (the
  accumulator passed into ``tl.dot``), and the wgmma counts are those of the chains
  (k16 steps over d for S and dP, over the block's rows / keys for the gradients);
* casts ``cvt.rn.bf16``, counted per element: P̃ and dS̃ (dQ kernel: dS̃ only) and the
  stored gradients; with sr the Philox rounds (``mul.hi.u32``) and the NaN guard appear
  and the fp32 arithmetic is unchanged;
* DUMP=False never loads the dump pointers and computes the same arithmetic.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from compiler_child import child_stdout
from test_kernel_ptx import Ptx

WARPS = 8
M1, N1, M2, N2 = 32, 128, 128, 32   # fa2_bwd's defaults (checked below against the module)
E = 16                              # N1·M1 / (32·WARPS) = M2·N2 / (32·WARPS)
ARITH = (r"fma\.rn\.f32", r"ex2\.approx\.ftz\.f32", r"ex2\.approx\.f32", r"mul\.f32", r"add\.f32", r"sub\.f32",
         r"wgmma\.mma_async.*")


def _variants():
    out = [("_bwd_delta", D, dict(HEAD_DIM=D, BLOCK_M=64)) for D in (64, 128)]
    for D in (64, 128):
        for sr, dump in ((False, False), (False, True), (True, False)):
            out.append(("_bwd_dkdv", D, dict(HEAD_DIM=D, BLOCK_M1=M1, BLOCK_N1=N1, P_SR=sr, DS_SR=sr, DK_SR=sr,
                                             DV_SR=sr, DUMP=dump)))
            out.append(("_bwd_dq", D, dict(HEAD_DIM=D, BLOCK_M2=M2, BLOCK_N2=N2, DS_SR=sr, DQ_SR=sr, DUMP=dump)))
    return out


def _compile_variants(variants):
    """{json key: (ptx, argument names)} (run in a child process without TRITON_INTERPRET)."""
    from flashbits.gpu.compile import compile_with, runtime_params
    from flashbits.gpu.kernels import fa2_bwd

    assert (fa2_bwd.BLOCK_M1, fa2_bwd.BLOCK_N1, fa2_bwd.BLOCK_M2, fa2_bwd.BLOCK_N2, fa2_bwd.NUM_WARPS) == (
        M1, N1, M2, N2, WARPS), "the tiles read here are not the module's defaults"
    return {json.dumps([n, c]): (compile_with(n, c, WARPS, 3).asm["ptx"], runtime_params(n)) for n, _, c in variants}


@pytest.fixture(scope="module")
def ptx_of():
    code = ("import json, sys; from test_backward_kernel_ptx import _compile_variants; "
            "json.dump(_compile_variants(json.load(sys.stdin)), sys.stdout)")
    variants = _variants()
    raw = json.loads(child_stdout(["-c", code], stdin=json.dumps(variants)))

    def get(name, D=64, sr=False, dump=False):
        for n, d, c in variants:
            if n == name and d == D and c.get("DUMP", False) == dump and c.get("DS_SR", False) == sr:
                text, args = raw[json.dumps([n, c])]
                return Ptx(text, args, name)
        raise KeyError((name, D, sr, dump))

    return get


@pytest.mark.parametrize("D", [64, 128])
def test_delta_is_one_fma_chain_from_zero(D, ptx_of):
    p = ptx_of("_bwd_delta", D)
    fmas = p.ops(r"fma\.rn\.f32")
    assert len(fmas) == D and p.count(r"add\.f32") == 0 and p.count(r"mul\.f32") == 0
    chained = {o[0] for _, o in fmas}
    starts = [o for _, o in fmas if o[3] not in chained]
    assert len(starts) == 1, "one chain"
    start = p.def_op(starts[0][3])
    assert starts[0][3] == "0f00000000" or start == ("mov.b32", [starts[0][3], "0f00000000"]), start
    assert sum(o[3] in chained for _, o in fmas) == D - 1


def _x_fmas_and_scale_muls(p, D, rows):
    c, s = p.param_reg("qk_scale"), p.param_reg("scale")
    fmas = p.ops(r"fma\.rn\.f32")
    assert len(fmas) == E, "x = fma(S, c, −lse2) and no other fma"
    for _, o in fmas:
        assert o[2] == c, o
        op, args = p.def_op(o[3])
        assert op == "sub.f32" and p.def_op(args[1]) == ("mov.b32", [args[1], "0f00000000"]), (o, op, args)
    muls = p.ops(r"mul\.f32")
    by_s = [o for _, o in muls if s in o[1:]]
    assert len(by_s) == rows * D // (32 * WARPS), "the gradient's ·fl32(scale), one per element"
    assert len(muls) == E + len(by_s), "P·u and the scale: no other multiply"
    zero_subs = sum(1 for _, o in p.ops(r"sub\.f32") if p.def_op(o[1]) == ("mov.b32", [o[1], "0f00000000"]))
    assert p.count(r"sub\.f32") - zero_subs == E, "u = dP − δ, one per score element"


def _bf16_casts(p):
    return p.count(r"cvt\.rn\.bf16\.f32") + 2 * p.count(r"cvt\.rn\.bf16x2\.f32")


def _units(p, D, rows, wgmmas, casts):
    """What both gradient kernels share: x and the scale (above), E exp2s of the FTZ
    kind, no add / division / FTZ fma, ``wgmmas`` k16 wgmmas (each warpgroup runs them
    on its 64 rows), ``casts`` bf16 conversions, all round to nearest even."""
    _x_fmas_and_scale_muls(p, D, rows)
    assert p.count(r"ex2\.approx\.ftz\.f32") == E and p.count(r"ex2\.approx\.f32") == 0
    assert p.count(r"add\.f32") == 0 and p.count(r"div\..*\.f32") == 0 and p.count(r"fma\.rn\.ftz.*") == 0
    assert p.count(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16") == wgmmas
    assert p.count(r"wgmma\.mma_async.*") == wgmmas
    assert _bf16_casts(p) == casts
    assert p.count(r"cvt\.r[zmp]\.bf16.*") == 0


@pytest.mark.parametrize("D", [64, 128])
def test_dkdv_units(D, ptx_of):
    # S and dP over d (D/16 steps each), dV and dK over the block's rows (M1/16 each);
    # casts: P̃, dS̃ (E each), dK, dV
    _units(ptx_of("_bwd_dkdv", D), D, N1, wgmmas=2 * (D // 16 + M1 // 16), casts=2 * E + 2 * N1 * D // (32 * WARPS))


@pytest.mark.parametrize("D", [64, 128])
def test_dq_units(D, ptx_of):
    # S and dP over d, dQ over the block's keys; casts: dS̃ (E), dQ
    _units(ptx_of("_bwd_dq", D), D, M2, wgmmas=2 * D // 16 + N2 // 16, casts=E + M2 * D // (32 * WARPS))


@pytest.mark.parametrize("name", ["_bwd_dkdv", "_bwd_dq"])
@pytest.mark.parametrize("D", [64, 128])
def test_dump_and_sr_change_no_arithmetic(name, D, ptx_of):
    prod, dump, sr = ptx_of(name, D), ptx_of(name, D, dump=True), ptx_of(name, D, sr=True)
    for arg in ("PD", "DSD"):
        assert not prod.loads_param(arg) and dump.loads_param(arg), arg
    assert prod.count(r"st\.global.*") < dump.count(r"st\.global.*")
    for pat in ARITH:
        assert prod.count(pat) == dump.count(pat), (pat, prod.count(pat), dump.count(pat))
        assert prod.count(pat) == sr.count(pat), (pat, prod.count(pat), sr.count(pat))
    assert _bf16_casts(prod) == _bf16_casts(dump)
    assert prod.count(r"mul\.hi\.u32") == 0 and sr.count(r"mul\.hi\.u32") > 0
    assert prod.count(r"setp\.nan\.f32") == 0 and sr.count(r"setp\.nan\.f32") > 0
