"""Attention recipes: a family's exact sequence of rounding operations with its tiles.

A :class:`Recipe` is what both the emulator (``emulator.flash_attention``) and
the Triton kernels (``gpu.flash_attention``) read: tile sizes, and for every
rounding *stage* its output format, rounding mode and accumulation.  The op
sequence of each family is written out in docs/recipes.md; its stage table
(``families/<family>.py``) gives the ledger's rows.

Stage overrides (``recipe.with_overrides({"P_cast": {"rounding": "sr"}})``)
are the tool for stage ablation: switch one stage to fp32, to stochastic
rounding, to compensated accumulation, and measure again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..formats import get_format
from ..rounding import RoundMode
from .stages import StageSpec

__all__ = ["StageSpec", "Recipe", "Fix", "RECIPES", "get_recipe", "get_fix", "FIXES", "NUM_WARPS", "BLOCKS"]


# warps per program a recipe may name (the kernels' warpgroups: one or two)
NUM_WARPS = (4, 8)
# the tiles (block_m, block_n) the emulator takes; the GPU kernels take fewer
# (gpu.attention.KERNEL_BLOCK_M, KERNEL_BLOCK_N); 512 is the paper code's bucket size
BLOCKS = (16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Fix:
    """A softmax fix applied per query row and key block.

    ``paper`` (docs/paper.md): bm = block max; n = #valid scores >= bm − ε; if
    n > 1 and bm > 0: bm = β·bm; if n > 1 and bm < 0: bm = 0;
    m_new = max(bm, m_old).
    ``offset`` (flashbits): bm = block max + δ for every block (δ > 0, natural-log
    units; default ln 2 / 2, i.e. exactly 0.5 in the log2 domain), so the largest
    P̄ of a row is e^−δ ≈ 0.707 instead of 1: the products P̄·V of tied maxima
    are no longer exact copies of V with a regular tail, and no β needs tuning
    (nothing underflows: the shift is constant).
    ``unbiased`` (flashbits, fa2 family; docs/mechanism.md, "The unbiased fix"): no
    shift of m; instead (1) P̄ is cast to bf16 stochastically with one random word per
    (row, key block) shared by the block's scores (units.shared_word: Philox once per
    row, a Weyl step per block; each score's rounding is unbiased, the scores of a block
    share their offset), (2) the row sum l adds those rounded weights P̃ instead of P̄,
    so O = Σ P̃·V / Σ P̃ is a weighted mean (the shared offsets' common error cancels in
    the ratio), and (3) the output cast rounds stochastically (Philox per element:
    N·d words, not N²).  It takes no parameters and needs a seed; it sets the P_cast
    and O_cast roundings itself (16 random bits, as the kernels), over ``rounding=``.
    Exact-arithmetic softmax is unchanged by any m >= the row max, and by either change.

    The paper fix can make a row NaN where the float64 reference is finite: the row's
    final m is the max over its blocks of β·bm (tied block, bm > 0), 0 (tied, bm < 0)
    or bm, and its largest P̄ is e^(M − m), M the row max; when M − m < −134·ln 2 ≈
    −92.9 nats every P̄ rounds to 0 in bf16, l = 0 and O = 0/0 = NaN (both sides; e.g.
    scale 10 on N(0, 1) inputs, where bf16 scores of ~100 tie often).  docs/recipes.md,
    "The fix"; tests/test_fix_underflow.py.
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
        if self.name == "unbiased":
            return "unbiased"
        return f"offset(δ={self.delta:.4g})"

    @property
    def stage_overrides(self) -> dict:
        """The stage changes the fix brings with it (applied over the caller's rounding)."""
        return {name: dict(ov) for name, ov in FIX_STAGE_OVERRIDES.get(self.name, {}).items()}

    @property
    def needs_seed(self) -> bool:
        """Whether the fix rounds a stage stochastically itself (then a call needs a seed)."""
        return any(ov.get("rounding") == "sr" for ov in FIX_STAGE_OVERRIDES.get(self.name, {}).values())


FIXES = ("paper", "offset", "unbiased")
# what a fix changes in the stage plan besides its kernel arithmetic
FIX_STAGE_OVERRIDES = {"unbiased": {"P_cast": {"rounding": "sr", "rand_bits": 16},
                                    "O_cast": {"rounding": "sr", "rand_bits": 16}}}


@dataclass(frozen=True)
class Recipe:
    """An attention recipe: a family's op sequence, its tiles and per-stage rounding plan.

    ``family``: the op sequence (``fa2``, ``paper``: families/), which decides
    which kernel runs on either side, the domain, the kernel constants and the
    lse formula (the properties below).  ``block_m``: query rows per program (GPU layout only; it also decides
    which key blocks a causal row visits); ``block_n``: keys per online-softmax
    step (changes the arithmetic); ``num_warps``: warps per program (decides the
    reduction tree of row sums, with the wgmma layout: 16 rows per warp).

    ``paper_code`` (family ``paper`` only; the registered recipe ``paper_code``): the
    exact behaviour of the paper's published attention code where our ``paper``
    recipe differs from it (docs/recipes.md, "paper_code"): every row visits every
    key block, also those above the causal diagonal; causally masked keys hold the
    score −max(bf16) (finite: they count for the fix's n, exp gives 0) and the
    running max starts there; each block's row sum is clamped to at least 1e-10 (in
    the row sum's format).  Emulator only (the GPU kernels refuse it).
    """

    name: str
    family: str
    block_m: int
    block_n: int
    num_warps: int
    stages: dict = field(default_factory=dict)
    paper_code: bool = False

    # -- what the family says (families/__init__.py): both sides read these ------------
    @property
    def spec(self):
        """The :class:`~flashbits.emulator.attention.families.Family` this recipe belongs to."""
        from .families import get_family

        return get_family(self.family)

    @property
    def domain(self) -> str:
        """``log2`` or ``ln``: the domain of the running max m and of the fix's ε, δ."""
        return self.spec.domain

    def scalars(self, scale: float, fix=None, fp64: bool = False):
        """The fp32 kernel constants (families.KernelScalars) for ``scale`` and ``fix``."""
        return self.spec.scalars(scale, fix, fp64)

    def lse(self, m, l, log=None, fp64: bool = False):
        """log-sum-exp in nats from the final m and l (``log``: np.log or torch.log; numpy or
        torch inputs): fa2 m·ln 2 + ln l, paper bf16(fl32(bf16(fl32(ln l)) + m)) as the
        paper's code computes it (float64 m + ln l with ``fp64``; families.Family.lse)."""
        return self.spec.lse(m, l, fp64=fp64) if log is None else self.spec.lse(m, l, log, fp64)

    def check_problem(self, Nq: int, Nk: int, causal: bool):
        """ValueError for a problem the recipe's arithmetic does not describe: the paper
        code (``paper_code``) aligns its causal mask as key j ≤ i − (Nk − Nq) when Nk > Nq
        (bottom-left), not j ≤ i as torch's ``is_causal`` and the emulator do."""
        if self.paper_code and causal and Nk > Nq:
            raise ValueError(f"recipe {self.name!r} (paper_code) with causal=True needs Nk <= Nq: for Nk > Nq the "
                             f"paper's code masks keys j > i − (Nk − Nq), which the emulator does not model "
                             f"(got Nq={Nq}, Nk={Nk}); use causal=False or recipe 'paper'")

    @property
    def compared_tensors(self) -> dict:
        """{launch kind: tensors the crosscheck compares}, production and dump."""
        return dict(self.spec.compared)

    @property
    def rounding_stages(self) -> tuple:
        """The stages the ``rounding=`` shorthand sets (the P̄ and output casts)."""
        return ("P_cast", "O_cast")

    def configured(self, overrides=None, rounding=None, **tiles) -> "Recipe":
        """This recipe with stage ``overrides``, the ``rounding`` shorthand applied to
        :attr:`rounding_stages` (it wins over an override's rounding there), and tile
        changes (block_m=, block_n=, num_warps=; None means unchanged)."""
        ov = {k: dict(v) if isinstance(v, dict) else v for k, v in (overrides or {}).items()}
        if rounding is not None:
            for st in self.rounding_stages:
                base = ov.get(st, {})
                ov[st] = {**base, "rounding": rounding} if isinstance(base, dict) else base
        tiles = {k: int(v) for k, v in tiles.items() if v is not None}
        return self.with_overrides(ov, **tiles) if (ov or tiles) else self

    def with_fix(self, fix) -> "Recipe":
        """This recipe as ``fix`` (a Fix or None) runs it: ValueError if the family does not
        implement the fix (``Family.fixes``); the fix's stage overrides
        (``Fix.stage_overrides``: unbiased → P_cast and O_cast sr, 16 random bits) applied where the stage rounds to
        a low-precision format (an fp32 or fp64 output needs no rounding)."""
        if fix is None:
            return self
        if fix.name not in self.spec.fixes:
            raise ValueError(f"fix {fix.name!r} is not defined for recipe {self.name!r} (family {self.family!r}: "
                             f"fixes {', '.join(self.spec.fixes)}); the unbiased fix is the fa2 family's")
        ov = {name: change for name, change in fix.stage_overrides.items()
              if name in self.stages and self.stages[name].format not in ("fp32", "fp64")}
        return self.with_overrides(ov) if ov else self

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
        self.spec  # noqa: B018 - an unknown family raises here, naming the known ones
        for v, what in ((self.block_m, "block_m"), (self.block_n, "block_n")):
            if v not in BLOCKS:
                raise ValueError(f"{what} must be one of {', '.join(map(str, BLOCKS))} in the emulator, got {v} "
                                 "(the GPU kernels: gpu.attention.KERNEL_BLOCK_M, KERNEL_BLOCK_N)")
        if self.paper_code and "paper_code" not in self.spec.modes:
            raise ValueError(f"recipe {self.name!r}: paper_code (the paper code's exact behaviour) is an option of "
                             f"family {', '.join(repr(n) for n, f in _families().items() if 'paper_code' in f.modes)}, "
                             f"not of family {self.family!r}")
        if self.num_warps not in NUM_WARPS:
            raise ValueError(f"num_warps must be 4 or 8, got {self.num_warps}")
        p = self.stages.get("P_cast")
        if p is not None and p.format.startswith("fp8") and self.block_n % 32:
            raise ValueError("fp8 P̄·V needs block_n a multiple of 32 (k32 wgmma steps)")

    def describe(self) -> list[dict]:
        return [{"stage": s.name, "kind": s.kind, "format": s.format, "rounding": s.rounding,
                 "accumulation": s.accumulation, "what": s.doc} for s in self.stages.values()]


def _families() -> dict:
    from .families import FAMILIES

    return FAMILIES


def _family_recipes() -> dict:
    recipes = {}
    for name, f in _families().items():
        base = Recipe(name, family=name, block_m=f.block_m, block_n=f.block_n, num_warps=f.num_warps,
                      stages=f.stages)
        recipes[name] = base
        for variant, fields in f.recipes.items():
            r = replace(base, name=variant, **fields)
            r.validate()
            recipes[variant] = r
    return recipes


# one recipe per family, named as the family, with the family's stage plan and tiles; then
# the family's further recipes (Family.recipes: paper_code)
RECIPES = _family_recipes()


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
        if fix == "unbiased" and (eps is not None or beta is not None or delta is not None):
            raise ValueError("fix='unbiased' takes no eps, beta or delta (it shifts no maximum)")
        kw = {}
        if eps is not None:
            kw["eps"] = float(eps)
        if beta is not None:
            kw["beta"] = float(beta)
        if delta is not None:
            kw["delta"] = float(delta)
        return Fix(fix, **kw)
    raise TypeError(f"fix must be None, a name ({', '.join(FIXES)}) or a Fix, got {type(fix).__name__}")
