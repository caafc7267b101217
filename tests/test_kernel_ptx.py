"""The PTX of the Triton kernels contains exactly the arithmetic the emulator models.

The kernels (gpu/kernels/: fa2.py, paper.py) are compiled for sm_90 on the CPU — no
GPU needed (``flashbits.gpu.compile.compile_kernel``: ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``, specialised as a launch on contiguous tensors is,
in one child process: see ``ptx_of``) — and their PTX is read instruction by
instruction, following registers from use to definition where the order of
operations matters.  What docs/recipes.md
states, and the checks:

fa2 (BLOCK_M = 128, BLOCK_N = 64, 8 warps; the wgmma layout gives each thread
E = BLOCK_M·BLOCK_N/(32·warps) = 32 score elements in R = BLOCK_M/(8·warps) = 2
rows; the block loop is compiled twice, LOOPS = 2: the unmasked blocks, then the
masked tail and diagonal blocks, so every per-block count below is per loop):
* S = Q·Kᵀ and acc += P̄·V on ``wgmma.mma_async … k16.f32.bf16.bf16``:
  D/16 + BLOCK_N/16 instructions;
* P̄ and α with ``ex2.approx.ftz.f32`` (E + R per thread), never ``ex2.approx.f32``;
* x = S·c − m_new contracted to ``fma.rn.f32``: exactly E fmas multiply by the
  scale register c (the qk_scale parameter), each adding a ``neg.f32`` of m_new;
  the other fmas are l = l·α + l_blk, R of them.  With FIX the threshold
  max·c − ε' is an fma too: R more fmas by c, adding the negated ε' parameter;
  the unmasked loop decides "two scores pass" from the second largest score
  (``_top2_combine``: a NaN-propagating ``min.NaN.f32`` per score), the masked
  loop by counting;
* O = acc / l with ``div.rn.f32`` (IEEE), never ``div.full.f32`` / ``div.approx``;
* casts ``cvt.rn.bf16x2.f32`` / ``cvt.rn.bf16.f32`` (round to nearest even);
* row reductions by ``shfl.sync.bfly`` with lane offsets 2 then 1: each
  offset-1 shuffle reads a value that already combined an offset-2 shuffle —
  the tree (t0 + t2) + (t1 + t3) of the emulator's ``row_tree_sum``.

paper (BLOCK_M = 64, 4 warps):
* every ``ex2.approx.f32`` (non-FTZ, E + R per thread) takes the product of a
  ``mul.f32`` by 0f3FB8AA3B (fl32(log2 e), ``tl.exp``), whose other factor is a
  bf16 value (``cvt.f32.bf16``): exp of the bf16 d and of the bf16 m_old − m_new;
* no ``fma`` of any kind: the bf16 casts between the operations leave nothing
  to contract;
* ``div.rn.f32``; the compiler turns some fp32-add-then-bf16-cast pairs into
  ``add.rn.bf16x2`` — the same result, since a correctly rounded fp32 sum of
  bf16 values rounded again to bf16 is the correctly rounded bf16 sum
  (double rounding is innocuous for + when 24 ≥ 2·8 + 2, Figueroa 1995).

DUMP: the production kernel (DUMP=False) never loads the MB, LB, ACC pointers
and has fewer ``st.global``; its arithmetic (fma, ex2, div, mul, add, sub, max,
bf16 conversions) is instruction for instruction the same count as the dump
kernel's — no store changed a contraction.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import re

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from compiler_child import child_stdout

LOG2E_F32_HEX = "0f3FB8AA3B"


def _variant(name, D=64, fix=False, psr=False, osr=False, dump=False):
    return (name, D, fix, psr, osr, dump)


# every kernel variant the tests read (compiled once, in one subprocess)
VARIANTS = [_variant("_fa2_fwd", D=D) for D in (64, 128)] + [
    _variant(n, fix=f, dump=d) for n in ("_fa2_fwd", "_paper_fwd") for f in (False, True) for d in (False, True)
    if (f, d) != (False, False)] + [_variant("_paper_fwd")] + [
    _variant(n, psr=True, osr=True) for n in ("_fa2_fwd", "_paper_fwd")] + [
    _variant("_fa2_fwd", fix=3, psr=True, osr=True, dump=d) for d in (False, True)] + [_variant("_fa2_fwd", osr=True)]


def _compile_variants(variants):
    """{variant: (ptx, argument names)}: gpu/kernels/ compiled for sm_90 (run in a
    fresh process without TRITON_INTERPRET, see ``ptx_of``)."""
    from flashbits.gpu.compile import compile_kernel, runtime_params

    out = {}
    for name, D, fix, psr, osr, dump in variants:
        fa2 = name == "_fa2_fwd"
        BM, BN, nw = (128, 64, 8) if fa2 else (64, 64, 4)
        k = compile_kernel(name, D, BM, BN, nw, 3, fix=fix, psr=psr, osr=osr, dump=dump)
        out[json.dumps([name, D, fix, psr, osr, dump])] = (k.asm["ptx"], runtime_params(name))
    return out


@pytest.fixture(scope="module")
def ptx_of():
    """Compile every variant in one child process (compiler_child: the interpreter
    tests make this process's triton interpreter-mode)."""
    code = ("import json, sys; from test_kernel_ptx import _compile_variants; "
            "v = [tuple(x) for x in json.load(sys.stdin)]; json.dump(_compile_variants(v), sys.stdout)")
    out = child_stdout(["-c", code], stdin=json.dumps(VARIANTS))
    raw = json.loads(out)

    def get(name, D=64, fix=False, psr=False, osr=False, dump=False):
        text, args = raw[json.dumps([name, D, fix, psr, osr, dump])]
        return Ptx(text, args, name)

    return get


_INSN = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)\s*(.*?);\s*(?://.*)?$")


class Ptx:
    """The instructions of a PTX kernel: (opcode, operands); defs maps a register to
    the instruction that writes it."""

    def __init__(self, text, arg_names, kname):
        self.text = text
        self.insns = []
        self.defs = {}
        for line in text.splitlines():
            m = _INSN.match(line)
            if not m or m.group(1).startswith("."):
                continue
            op, rest = m.group(1), m.group(2)
            ops = [o.strip() for o in rest.split(",")] if rest else []
            self.insns.append((op, ops))
            if ops and ops[0].startswith("%") and "{" not in rest:
                self.defs[ops[0]] = (op, ops)
        self.params = {a: f"{kname}_param_{i}" for i, a in enumerate(arg_names)}

    def count(self, pattern):
        return sum(1 for op, _ in self.insns if re.fullmatch(pattern, op))

    def ops(self, pattern):
        return [(op, o) for op, o in self.insns if re.fullmatch(pattern, op)]

    def histogram(self):
        return collections.Counter(op for op, _ in self.insns)

    def param_reg(self, arg):
        """The register an argument is loaded into (None if the kernel never loads it)."""
        p = self.params[arg]
        for op, o in self.insns:
            if op.startswith("ld.param") and len(o) == 2 and o[1] == f"[{p}]":
                return o[0]
        return None

    def loads_param(self, arg):
        return f"[{self.params[arg]}]" in self.text

    def def_op(self, reg):
        return self.defs.get(reg, (None, None))


LOOPS = 2  # fa2: the unmasked and the masked copy of the block loop


def _geometry(BM, BN, nw):
    return BM * BN // (32 * nw), BM // (8 * nw)  # E (score elements per thread), R (rows per thread)


# ---------------------------------------------------------------------------------- fa2 -----

@pytest.mark.parametrize("D", [64, 128])
def test_fa2_units(D, ptx_of):
    p = ptx_of("_fa2_fwd", D=D)
    E, R = _geometry(128, 64, 8)
    wg = p.ops(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16")
    assert len(wg) == LOOPS * (D // 16 + 64 // 16), p.histogram()
    assert p.count(r"wgmma\.mma_async.*") == len(wg)
    assert p.count(r"ex2\.approx\.ftz\.f32") == LOOPS * (E + R)
    assert p.count(r"ex2\.approx\.f32") == 0
    assert p.count(r"div\.rn\.f32") == 128 * D // (32 * 8)
    assert p.count(r"div\.(full|approx).*") == 0
    assert p.count(r"cvt\.rn\.bf16x2\.f32") + p.count(r"cvt\.rn\.bf16\.f32") > 0
    assert p.count(r"cvt\.r[zmp]\.bf16.*") == 0
    assert p.count(r"mul\.rn\.f32") == 0 and p.count(r"fma\.rn\.ftz.*") == 0


@pytest.mark.parametrize("fix", [False, True])
def test_fa2_exp2_argument_is_one_fma(fix, ptx_of):
    p = ptx_of("_fa2_fwd", fix=fix)
    E, R = _geometry(128, 64, 8)
    c = p.param_reg("qk_scale")
    assert c is not None
    fmas = p.ops(r"fma\.rn\.f32")
    by_c = [o for _, o in fmas if c in (o[1], o[2])]
    others = [o for _, o in fmas if c not in (o[1], o[2])]
    assert len(others) == LOOPS * R, "l = l·α + l_blk: one fma per thread-row"
    x_fmas = [o for o in by_c if p.def_op(o[3])[0] == "neg.f32" and p.def_op(o[3])[1][1] != p.param_reg("eps2")]
    assert len(x_fmas) == LOOPS * E, "x = S·c − m_new: one fma per score element"
    if fix:
        eps = p.param_reg("eps2")
        assert eps is not None
        thr = [o for o in by_c if p.def_op(o[3])[0] == "neg.f32" and p.def_op(o[3])[1][1] == eps]
        assert len(thr) == LOOPS * R, "the fix's threshold max·c − ε': one fma per thread-row"
        assert len(by_c) == LOOPS * (E + R)
        # unmasked loop: the second largest score by NaN-propagating mins: E − R
        # in-thread combines, then 2 butterfly steps per row
        assert p.count(r"min\.NaN\.f32") == E - R + 2 * R
    else:
        assert len(by_c) == LOOPS * E
        assert p.count(r"min\.NaN\.f32") == 0
        assert not p.loads_param("eps2") and not p.loads_param("beta")
    n0 = ptx_of("_fa2_fwd", fix=False).count(r"fma\.rn\.f32")
    assert p.count(r"fma\.rn\.f32") == n0 + (LOOPS * R if fix else 0)


@pytest.mark.parametrize("name", ["_fa2_fwd", "_paper_fwd"])
def test_row_reductions_are_butterflies_2_then_1(name, ptx_of):
    p = ptx_of(name)
    sh = p.ops(r"shfl\.sync\.bfly\.b32")
    assert sh, "no butterfly shuffles"
    offsets = [int(o[2]) for _, o in sh]
    assert set(offsets) == {1, 2} and offsets.count(1) == offsets.count(2)
    shuffled_by_2 = {o[0] for _, o in sh if o[2] == "2"}
    for _, o in sh:
        if o[2] != "1":
            continue
        op, args = p.def_op(o[1])
        assert op in ("add.f32", "max.f32", "add.s32"), (o, op)
        assert any(a in shuffled_by_2 for a in args[1:]), f"offset-1 shuffle of {o[1]} = {op} {args}"


# -------------------------------------------------------------------------------- paper -----

def test_paper_exp_is_mul_by_log2e_then_non_ftz_ex2(ptx_of):
    p = ptx_of("_paper_fwd")
    E, R = _geometry(64, 64, 4)
    ex2 = p.ops(r"ex2\.approx\.f32")
    assert len(ex2) == E + R
    assert p.count(r"ex2\.approx\.ftz\.f32") == 0
    for _, o in ex2:
        op, args = p.def_op(o[1])
        assert op == "mul.f32" and args[2].upper() == LOG2E_F32_HEX.upper(), (o, op, args)
        assert p.def_op(args[1])[0] == "cvt.f32.bf16", (args, p.def_op(args[1]))


@pytest.mark.parametrize("fix", [False, True])
def test_paper_has_no_contraction(fix, ptx_of):
    p = ptx_of("_paper_fwd", fix=fix)
    assert p.count(r"fma.*") == 0, [op for op in p.histogram() if op.startswith("fma")]
    assert p.count(r"div\.rn\.f32") == 64 * 64 // (32 * 4)
    assert p.count(r"div\.(full|approx).*") == 0
    assert p.count(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16") == 64 // 16 + 64 // 16
    # bf16 arithmetic the compiler may form: only round-to-nearest adds (see the module docstring)
    bf16_arith = [op for op in p.histogram() if re.fullmatch(r"(add|sub|mul|fma)(\.\w+)*\.bf16(x2)?", op)]
    assert all(re.fullmatch(r"add(\.rn)?\.bf16(x2)?", op) for op in bf16_arith), bf16_arith
    assert p.count(r"cvt\.r[zmp]\.bf16.*") == 0


# --------------------------------------------------------------------------------- dump -----

ARITH = (r"fma\.rn\.f32", r"ex2\.approx\.ftz\.f32", r"ex2\.approx\.f32", r"div\.rn\.f32", r"mul\.f32", r"add\.f32",
         r"sub\.f32", r"max\.f32", r"neg\.f32", r"wgmma\.mma_async.*")


def _bf16_conversions(p):
    """fp32 → bf16 conversions, counted per element (a bf16x2 instruction converts two)."""
    return p.count(r"cvt\.rn\.bf16\.f32") + 2 * p.count(r"cvt\.rn\.bf16x2\.f32")


def _bf16_adds(p):
    """bf16 additions, counted per element."""
    return p.count(r"add(\.rn)?\.bf16") + 2 * p.count(r"add(\.rn)?\.bf16x2")


@pytest.mark.parametrize("name", ["_fa2_fwd", "_paper_fwd"])
@pytest.mark.parametrize("fix", [False, True])
def test_production_kernel_stores_nothing_extra_and_computes_the_same(name, fix, ptx_of):
    prod = ptx_of(name, fix=fix, dump=False)
    dump = ptx_of(name, fix=fix, dump=True)
    for arg in ("MB", "LB", "ACC"):
        assert not prod.loads_param(arg), f"DUMP=False loads {arg}"
        assert dump.loads_param(arg), f"DUMP=True does not load {arg}"
    assert prod.count(r"st\.global.*") < dump.count(r"st\.global.*")
    for pat in ARITH:
        assert prod.count(pat) == dump.count(pat), (pat, prod.count(pat), dump.count(pat))
    assert _bf16_conversions(prod) == _bf16_conversions(dump)
    assert _bf16_adds(prod) == _bf16_adds(dump)


@pytest.mark.parametrize("name", ["_fa2_fwd", "_paper_fwd"])
def test_stochastic_rounding_variant(name, ptx_of):
    """With P_SR and O_SR the casts add Philox bits (``tl.randint``: mul.hi.u32 rounds)
    to the fp32 bits and truncate, with a NaN guard (setp.nan); the other
    arithmetic is unchanged: the same fmas, exp2s and divisions."""
    rne = ptx_of(name)
    sr = ptx_of(name, psr=True, osr=True)
    assert rne.count(r"mul\.hi\.u32") == 0 and sr.count(r"mul\.hi\.u32") > 0
    assert rne.count(r"setp\.nan\.f32") == 0 and sr.count(r"setp\.nan\.f32") > 0
    for pat in (r"fma\.rn\.f32", r"ex2\.approx\.ftz\.f32", r"ex2\.approx\.f32", r"div\.rn\.f32",
                r"wgmma\.mma_async.*"):
        assert sr.count(pat) == rne.count(pat), pat


def test_unbiased_fix_variant(ptx_of):
    """FIX=3 (the unbiased fix): one Philox word per row outside the key loop, not one per
    score: beyond the output cast's Philox (the O_SR-only variant), its P̄ cast adds far
    fewer Philox rounds (mul.hi.u32) than the per-score P_SR cast does; the
    same fmas (no paper-fix threshold), exp2s, divisions and tensor-core steps as the
    plain kernel; the production launch computes what the dump launch does."""
    plain = ptx_of("_fa2_fwd")
    per_score = ptx_of("_fa2_fwd", psr=True, osr=True)
    prod = ptx_of("_fa2_fwd", fix=3, psr=True, osr=True)
    dump = ptx_of("_fa2_fwd", fix=3, psr=True, osr=True, dump=True)
    o_only = ptx_of("_fa2_fwd", osr=True).count(r"mul\.hi\.u32")
    p_unbiased = prod.count(r"mul\.hi\.u32") - o_only
    p_per_score = per_score.count(r"mul\.hi\.u32") - o_only
    assert 0 < p_unbiased < p_per_score / 4, (p_unbiased, p_per_score)
    for pat in (r"fma\.rn\.f32", r"ex2\.approx\.ftz\.f32", r"ex2\.approx\.f32", r"div\.rn\.f32",
                r"wgmma\.mma_async.*"):
        assert prod.count(pat) == plain.count(pat), pat
    for pat in ARITH:
        assert prod.count(pat) == dump.count(pat), (pat, prod.count(pat), dump.count(pat))
