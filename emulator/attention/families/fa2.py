"""Family ``fa2``: FlashAttention-2 / Triton-tutorial forward (docs/recipes.md, "fa2").

fp32 S on tensor cores, the scale folded into exp2 (log2 domain), fp32 m and l,
P̄ cast to bf16 for P̄·V, an fp32 running output rescaled by α = exp2(m_old −
m_new), one final division and cast.  GPU kernel: ``flashbits.gpu.kernels.fa2``.
"""

from __future__ import annotations

from . import Family
from ..stages import CASTS, ROUNDINGS, StageSpec, stage_table

FA2_STAGES = stage_table(
    StageSpec("S", "S = Q·Kᵀ on tensor cores (wgmma chain, fp32 accumulator from +0)", "tensor_core"),
    StageSpec("m_scale", "t = fl32(rowmax(S) · c), c = fl32(scale·log2 e)"),
    StageSpec("x", "x = fma(S, c, −m_new): the exp2 argument (one fp32 rounding)"),
    StageSpec("P", "P̄ = ex2.approx.ftz(x) (MUFU.EX2)", "approx"),
    StageSpec("l_blk", "l_blk = rowsum(P̄): fp32 additions in the wgmma lane-tree order", "sum"),
    StageSpec("alpha_arg", "m_old − m_new (fp32)"),
    StageSpec("alpha", "α = ex2.approx.ftz(m_old − m_new)", "approx"),
    StageSpec("l", "l = fma(l, α, l_blk)"),
    StageSpec("acc_scale", "acc = fl32(acc · α)"),
    # no fp32 here: P̄·V runs on tensor cores, whose operands are 16- or 8-bit
    StageSpec("P_cast", "P̄ → the P̄V operand format (bf16; fp8 as FlashAttention-3)",
              format="bf16", formats=("bf16", "fp16", "fp8_e4m3", "fp8_e5m2"), roundings=ROUNDINGS),
    StageSpec("V_cast", "V → fp8 (only when P_cast is fp8: satfinite RNE, as cvt.rn.satfinite)",
              format="same_as_P", roundings=()),
    StageSpec("PV", "acc = P̄·V + acc on tensor cores (wgmma chain)", "tensor_core"),
    StageSpec("div", "O = acc / l (div.rn.f32, IEEE)"),
    StageSpec("O_cast", "O → output format", format="bf16", formats=CASTS, roundings=ROUNDINGS),
)


def emulate(run):
    """Fill ``run``'s outputs (api.EmulatorRun) with the fa2 op sequence, every row."""
    from .. import kernel as K

    sc = run.scalars
    K.fa2_rows(run.q, run.q_sig, run.q_exp, run.q_spec, run.kT, run.kT_sig, run.kT_exp, run.kT_spec,
               run.v, run.v_sig, run.v_exp, run.v_spec, run.Nk, run.causal, run.recipe.block_m,
               run.recipe.block_n, sc.qk_scale, run.fix_kind, sc.eps, sc.beta, sc.delta,
               run.plan, run.tc_qk, run.tc_pv, run.p_mant, run.p_emin, run.ex2_pos, run.ex2_neg, run.ex2_params,
               run.hw, run.record, run.keep, run.arith, run.out, run.m, run.l, run.acc, run.m_blocks,
               run.l_blocks, run.ledgers)


FAMILY = Family(name="fa2", doc="FlashAttention-2 / Triton tutorial: fp32 S, m, l and running output, "
                "exp2 with the scale folded in, P̄ cast to bf16 for P̄·V",
                domain="log2", stages=FA2_STAGES, block_m=128, block_n=64, num_warps=8, emulate=emulate,
                gpu_module="flashbits.gpu.kernels.fa2")
