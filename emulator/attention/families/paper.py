"""Family ``paper``: the paper's pure-PyTorch bf16 reference (docs/recipes.md, "paper").

Every tensor bf16: each block's einsum output (fp32 accumulate) cast to bf16,
bf16 running output and row sums updated per block, natural-log domain
(exp = ex2.approx of x·fl32(log2 e), as ``tl.exp``).  GPU kernel:
``flashbits.gpu.kernels.paper``.
"""

from __future__ import annotations

from . import Family
from ..stages import CASTS, ROUNDINGS, StageSpec, stage_table

PAPER_STAGES = stage_table(
    StageSpec("S", "S = Q·Kᵀ on tensor cores (fp32 accumulator from +0)", "tensor_core"),
    StageSpec("S_cast", "einsum output → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("s", "s = fl32(S · scale)"),
    StageSpec("s_cast", "s → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("thr", "fix threshold bm − ε (fp32, then bf16)", format="bf16", formats=CASTS),
    StageSpec("d", "d = s − m_new (fp32)"),
    StageSpec("d_cast", "d → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("e_arg", "d · log2e (fp32; tl.exp's multiply)"),
    StageSpec("P", "P̄ = ex2.approx.f32(d · log2e) (non-FTZ)", "approx"),
    StageSpec("P_cast", "P̄ → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("l_blk", "rowsum(P̄) in fp32, lane-tree order", "sum"),
    StageSpec("l_blk_cast", "rowsum → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("a_arg", "m_old − m_new (fp32)"),
    StageSpec("a_arg_cast", "→ bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("a_e_arg", "· log2e (fp32)"),
    StageSpec("alpha", "α = ex2.approx.f32 (non-FTZ)", "approx"),
    StageSpec("alpha_cast", "α → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("l_mul", "α · l (fp32)"),
    StageSpec("l_mul_cast", "→ bf16 (running row sum)", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("l_add", "α·l + l_blk (fp32)"),
    StageSpec("l_add_cast", "→ bf16 (running row sum)", format="bf16", formats=CASTS, roundings=ROUNDINGS,
              accumulations=("plain", "compensated")),
    StageSpec("PV", "P̄·V on tensor cores (fp32 accumulator from +0)", "tensor_core"),
    StageSpec("PV_cast", "einsum output Ō_blk → bf16", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("O_mul", "α · O (fp32)"),
    StageSpec("O_mul_cast", "→ bf16 (running output)", format="bf16", formats=CASTS, roundings=ROUNDINGS),
    StageSpec("O_add", "α·O + Ō_blk (fp32)"),
    StageSpec("O_add_cast", "→ bf16 (running output)", format="bf16", formats=CASTS, roundings=ROUNDINGS,
              accumulations=("plain", "compensated")),
    StageSpec("comp", "compensation terms of compensated accumulation (fp32, then the accumulator's format)",
              format="same_as_acc"),
    StageSpec("div", "O / l (div.rn.f32)"),
    StageSpec("O_cast", "O → output format", format="bf16", formats=CASTS, roundings=ROUNDINGS),
)


def emulate(run):
    """Fill ``run``'s outputs (api.EmulatorRun) with the paper op sequence, every row."""
    from .. import kernel as K

    sc = run.scalars
    rec = run.recipe
    K.paper_rows(run.q, run.q_sig, run.q_exp, run.q_spec, run.kT, run.kT_sig, run.kT_exp, run.kT_spec,
                 run.v, run.v_sig, run.v_exp, run.v_spec, run.Nk, run.causal, rec.block_m, rec.block_n,
                 sc.qk_scale, run.fix_kind, sc.eps, sc.beta, sc.delta,
                 run.plan, run.tc_qk, run.tc_pv, run.p_mant, run.p_emin, run.ex2_pos, run.ex2_neg, run.ex2_params,
                 run.hw, run.record, run.keep, run.arith, rec.stages["l_add_cast"].accumulation == "compensated",
                 rec.stages["O_add_cast"].accumulation == "compensated",
                 run.out, run.m, run.l, run.acc, run.m_blocks, run.l_blocks, run.ledgers)


FAMILY = Family(name="paper", doc="the paper's reference: every tensor bf16, block outputs cast to bf16, "
                "bf16 running output and row sums, natural-log domain",
                domain="ln", stages=PAPER_STAGES, block_m=64, block_n=64, num_warps=4, emulate=emulate,
                gpu_module="flashbits.gpu.kernels.paper")
