"""Attention recipes: the exact sequence of rounding operations, one object per recipe.

A :class:`Recipe` is what both the emulator (``emulator.flash_attention``) and
the Triton kernels (``gpu.flash_attention``) read: tile sizes, and for every
rounding *stage* its output format, rounding mode and accumulation.  The op
sequence of each recipe is written out in docs/recipes.md; the stage names
below are the ledger's rows.

Stage overrides (``recipe.with_overrides({"P_cast": {"rounding": "sr"}})``)
are the tool for stage ablation: switch one stage to fp32, to stochastic
rounding, to compensated accumulation, and measure again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..formats import get_format
from ..rounding import RoundMode

__all__ = ["StageSpec", "Recipe", "Fix", "RECIPES", "get_recipe", "get_fix", "FIXES"]


@dataclass(frozen=True)
class StageSpec:
    """One rounding stage: what it computes, into which format, how it rounds.

    ``kind``: ``round`` (an IEEE-style rounding of an exactly computed value),
    ``approx`` (a hardware approximation, e.g. MUFU.EX2: the ledger records
    its error against the exact function), ``tensor_core`` (a wgmma chain: the
    error against the exact dot product), ``sum`` (a fixed-order fp32 tree of
    additions, each one a rounding).
    ``formats``: formats a user may choose for this stage (empty: fixed).
    ``roundings``: rounding modes a user may choose (empty: fixed).
    ``accumulations``: ``plain`` and, for running bf16 accumulators,
    ``compensated`` (Kahan–Neumaier with a compensation term in the same
    format).
    ``exact`` (ablation, emulator only): a ``tensor_core``/``approx``/``sum``
    stage computed exactly and rounded once to its format (IEEE fp32) instead of
    by the hardware unit.  A ``round`` stage is ablated with ``format="fp64"``.
    """

    name: str
    doc: str
    kind: str = "round"
    format: str = "fp32"
    rounding: str = "rne"
    accumulation: str = "plain"
    formats: tuple = ()
    roundings: tuple = ()
    accumulations: tuple = ("plain",)
    rand_bits: int = 16
    exact: bool = False


_CASTS = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp32")
_ROUNDINGS = ("rne", "rna", "rz", "ru", "rd", "sr")


def _stages(*specs):
    return {s.name: s for s in specs}


FA2_STAGES = _stages(
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
              format="bf16", formats=("bf16", "fp16", "fp8_e4m3", "fp8_e5m2"), roundings=_ROUNDINGS),
    StageSpec("V_cast", "V → fp8 (only when P_cast is fp8: satfinite RNE, as cvt.rn.satfinite)",
              format="same_as_P", roundings=()),
    StageSpec("PV", "acc = P̄·V + acc on tensor cores (wgmma chain)", "tensor_core"),
    StageSpec("div", "O = acc / l (div.rn.f32, IEEE)"),
    StageSpec("O_cast", "O → output format", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
)

PAPER_STAGES = _stages(
    StageSpec("S", "S = Q·Kᵀ on tensor cores (fp32 accumulator from +0)", "tensor_core"),
    StageSpec("S_cast", "einsum output → bf16", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("s", "s = fl32(S · scale)"),
    StageSpec("s_cast", "s → bf16", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("thr", "fix threshold bm − ε (fp32, then bf16)", format="bf16", formats=_CASTS),
    StageSpec("d", "d = s − m_new (fp32)"),
    StageSpec("d_cast", "d → bf16", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("e_arg", "d · log2e (fp32; tl.exp's multiply)"),
    StageSpec("P", "P̄ = ex2.approx.f32(d · log2e) (non-FTZ)", "approx"),
    StageSpec("P_cast", "P̄ → bf16", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("l_blk", "rowsum(P̄) in fp32, lane-tree order", "sum"),
    StageSpec("l_blk_cast", "rowsum → bf16", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("a_arg", "m_old − m_new (fp32)"),
    StageSpec("a_arg_cast", "→ bf16", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("a_e_arg", "· log2e (fp32)"),
    StageSpec("alpha", "α = ex2.approx.f32 (non-FTZ)", "approx"),
    StageSpec("alpha_cast", "α → bf16", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("l_mul", "α · l (fp32)"),
    StageSpec("l_mul_cast", "→ bf16 (running row sum)", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("l_add", "α·l + l_blk (fp32)"),
    StageSpec("l_add_cast", "→ bf16 (running row sum)", format="bf16", formats=_CASTS, roundings=_ROUNDINGS,
              accumulations=("plain", "compensated")),
    StageSpec("PV", "P̄·V on tensor cores (fp32 accumulator from +0)", "tensor_core"),
    StageSpec("PV_cast", "einsum output Ō_blk → bf16", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("O_mul", "α · O (fp32)"),
    StageSpec("O_mul_cast", "→ bf16 (running output)", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
    StageSpec("O_add", "α·O + Ō_blk (fp32)"),
    StageSpec("O_add_cast", "→ bf16 (running output)", format="bf16", formats=_CASTS, roundings=_ROUNDINGS,
              accumulations=("plain", "compensated")),
    StageSpec("comp", "compensation terms of compensated accumulation (fp32, then the accumulator's format)",
              format="same_as_acc"),
    StageSpec("div", "O / l (div.rn.f32)"),
    StageSpec("O_cast", "O → output format", format="bf16", formats=_CASTS, roundings=_ROUNDINGS),
)


# warps per program a recipe may name (the kernels' warpgroups: one or two)
NUM_WARPS = (4, 8)


@dataclass(frozen=True)
class Fix:
    """A softmax fix applied per query row and key block.

    ``paper`` (MISSION.md): bm = block max; n = #valid scores >= bm − ε; if
    n > 1 and bm > 0: bm = β·bm; if n > 1 and bm < 0: bm = 0;
    m_new = max(bm, m_old).
    ``offset`` (flashbits): bm = block max + δ for every block (δ > 0, natural-log
    units; default ln 2 / 2, i.e. exactly 0.5 in the log2 domain), so the largest
    P̄ of a row is e^−δ ≈ 0.707 instead of 1: the products P̄·V of tied maxima
    are no longer exact copies of V with a regular tail, and no β needs tuning
    (nothing underflows: the shift is constant).
    Exact-arithmetic softmax is unchanged by any m >= the row max.
    """

    name: str = "paper"
    eps: float = 1e-3
    beta: float = 2.0
    delta: float = 0.34657359027997264  # ln 2 / 2

    def __post_init__(self):
        if self.name not in FIXES:
            raise ValueError(f"unknown fix {self.name!r}; accepted: None, {', '.join(FIXES)}")
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"fix eps must be finite and >= 0, got {self.eps}")
        if not (self.beta >= 1 and math.isfinite(self.beta)):
            raise ValueError(f"fix beta must be finite and >= 1 (β < 1 would put m below the row max; "
                             f"β = inf makes every P̄ of a tied row 0), got {self.beta}")
        if not (0 < self.delta < 64):
            raise ValueError(f"fix delta must be in (0, 64) nats, got {self.delta}")

    @property
    def label(self) -> str:
        if self.name == "paper":
            return f"paper(β={self.beta:g}, ε={self.eps:g})"
        return f"offset(δ={self.delta:.4g})"


FIXES = ("paper", "offset")


@dataclass(frozen=True)
class Recipe:
    """An attention recipe: tiles and the per-stage rounding plan.

    ``block_m``: query rows per program (GPU layout only; it also decides
    which key blocks a causal row visits); ``block_n``: keys per online-softmax
    step (changes the arithmetic); ``num_warps``: warps per program (decides the
    reduction tree of row sums, with the wgmma layout: 16 rows per warp).
    """

    name: str
    block_m: int
    block_n: int
    num_warps: int
    stages: dict = field(default_factory=dict)

    def stage(self, name: str) -> StageSpec:
        try:
            return self.stages[name]
        except KeyError:
            raise ValueError(
                f"recipe {self.name!r} has no stage {name!r}; its stages: {', '.join(self.stages)}"
            ) from None

    def with_overrides(self, overrides=None, **tiles) -> "Recipe":
        """A copy with stage overrides {stage: {format, rounding, accumulation, rand_bits}}
        and/or tile changes (block_m=, block_n=, num_warps=); every value is checked."""
        stages = dict(self.stages)
        for name, ov in (overrides or {}).items():
            st = self.stage(name)
            if not isinstance(ov, dict):
                raise TypeError(f"override for stage {name!r} must be a dict, got {type(ov).__name__}")
            unknown = set(ov) - {"format", "rounding", "accumulation", "rand_bits", "exact"}
            if unknown:
                raise ValueError(f"unknown override keys {sorted(unknown)} for stage {name!r}; "
                                 "accepted: format, rounding, accumulation, rand_bits, exact")
            if "exact" in ov:
                if st.kind == "round":
                    raise ValueError(f"stage {name!r} is a rounding; ablate it with format='fp64', not exact")
                st = replace(st, exact=bool(ov["exact"]))
            if "format" in ov:
                fmt = get_format(ov["format"]).name
                if fmt == "fp64" and st.kind == "round":
                    st = replace(st, format=fmt)  # ablation: no rounding at this stage
                elif fmt not in st.formats:
                    raise ValueError(f"stage {name!r} cannot take format {fmt!r}; accepted: "
                                     f"{', '.join(st.formats) or 'none (fixed ' + st.format + ')'}")
                st = replace(st, format=fmt)
            if "rounding" in ov:
                mode = RoundMode.parse(ov["rounding"]).name
                if mode not in st.roundings:
                    raise ValueError(f"stage {name!r} cannot take rounding {mode!r}; accepted: "
                                     f"{', '.join(st.roundings) or 'none (fixed ' + st.rounding + ')'}")
                st = replace(st, rounding=mode)
            if "accumulation" in ov:
                acc = ov["accumulation"]
                if acc not in st.accumulations:
                    raise ValueError(f"stage {name!r} cannot take accumulation {acc!r}; accepted: "
                                     f"{', '.join(st.accumulations)}")
                st = replace(st, accumulation=acc)
            if "rand_bits" in ov:
                rb = ov["rand_bits"]
                if not isinstance(rb, int) or not 1 <= rb <= 32:
                    raise ValueError(f"rand_bits must be an integer in 1..32, got {rb!r}")
                st = replace(st, rand_bits=rb)
            stages[name] = st
        r = replace(self, stages=stages, **tiles)
        r.validate()
        return r

    def validate(self):
        for v, what in ((self.block_m, "block_m"), (self.block_n, "block_n")):
            if v not in (16, 32, 64, 128):
                raise ValueError(f"{what} must be 16, 32, 64 or 128, got {v}")
        if self.num_warps not in NUM_WARPS:
            raise ValueError(f"num_warps must be 4 or 8, got {self.num_warps}")
        p = self.stages.get("P_cast")
        if p is not None and p.format.startswith("fp8") and self.block_n % 32:
            raise ValueError("fp8 P̄·V needs block_n a multiple of 32 (k32 wgmma steps)")

    def describe(self) -> list[dict]:
        return [{"stage": s.name, "kind": s.kind, "format": s.format, "rounding": s.rounding,
                 "accumulation": s.accumulation, "what": s.doc} for s in self.stages.values()]


RECIPES = {
    "fa2": Recipe("fa2", block_m=128, block_n=64, num_warps=8, stages=FA2_STAGES),
    "paper": Recipe("paper", block_m=64, block_n=64, num_warps=4, stages=PAPER_STAGES),
}


def get_recipe(recipe) -> Recipe:
    if isinstance(recipe, Recipe):
        recipe.validate()
        return recipe
    if isinstance(recipe, str):
        try:
            return RECIPES[recipe]
        except KeyError:
            raise ValueError(f"unknown recipe {recipe!r}; accepted: {', '.join(RECIPES)}") from None
    raise TypeError(f"recipe must be a name ({', '.join(RECIPES)}) or a Recipe, got {type(recipe).__name__}")


def get_fix(fix, eps=None, beta=None, delta=None) -> Fix | None:
    if fix is None:
        if eps is not None or beta is not None or delta is not None:
            raise ValueError("eps/beta/delta given but fix=None; pass fix='paper' (eps, beta) or "
                             "fix='offset' (delta) to use them")
        return None
    if isinstance(fix, Fix):
        return fix
    if isinstance(fix, str):
        if fix not in FIXES:
            raise ValueError(f"unknown fix {fix!r}; accepted: None, {', '.join(FIXES)}")
        if fix == "paper" and delta is not None:
            raise ValueError("delta belongs to fix='offset'; the paper fix takes eps and beta")
        if fix == "offset" and (eps is not None or beta is not None):
            raise ValueError("eps/beta belong to fix='paper'; the offset fix takes delta")
        kw = {}
        if eps is not None:
            kw["eps"] = float(eps)
        if beta is not None:
            kw["beta"] = float(beta)
        if delta is not None:
            kw["delta"] = float(delta)
        return Fix(fix, **kw)
    raise TypeError(f"fix must be None, a name ({', '.join(FIXES)}) or a Fix, got {type(fix).__name__}")
