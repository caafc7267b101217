"""Run one case on one side and return raw bits: the emulator (CPU) or the kernel (GPU)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from flashbits.emulator import flash_attention as emu_flash_attention
from flashbits.emulator import to_bits
from flashbits.emulator.attention.recipes import get_fix
from flashbits.gpu.attention import KERNEL_FIXES as _KERNEL_FIXES
from flashbits.gpu.attention import kernel_fixes


@dataclass(frozen=True)
class Config:
    """Which arithmetic: recipe, fix (None or 'paper' with eps/beta), rounding of the P̄ and
    output casts, Philox seed; and which kernel tile (None: the recipe's).  block_m and
    block_n reach both sides (block_n sets the online-softmax blocks, block_m the
    causal rows' last block); num_warps and num_stages only the kernel, whose bits
    must not depend on them."""

    recipe: str = "fa2"
    fix: str | None = None
    rounding: str = "rne"
    seed: int = 0
    eps: float = 1e-3
    beta: float = 2.0
    block_m: int | None = None
    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None

    @property
    def tile(self) -> str | None:
        """``BMxBNwWsS`` with the recipe's values filled in, or None if every tile
        field is the default."""
        if (self.block_m, self.block_n, self.num_warps, self.num_stages) == (None,) * 4:
            return None
        from flashbits.emulator.attention.recipes import get_recipe
        from flashbits.gpu.attention import DEFAULT_STAGES

        r = get_recipe(self.recipe)
        stages = self.num_stages or DEFAULT_STAGES
        return f"{self.block_m or r.block_m}x{self.block_n or r.block_n}w{self.num_warps or r.num_warps}s{stages}"

    @property
    def name(self) -> str:
        if self.fix == "paper":
            f = f"fix={self.fix}(eps={self.eps:g},beta={self.beta:g})"
        else:
            f = f"fix={self.fix}" if self.fix else "nofix"
        return f"{self.recipe}/{f}/{self.rounding}" + (f"/{self.tile}" if self.tile else "")

    def kwargs(self, side: str = "emulator") -> dict:
        """Keyword arguments of emulator.flash_attention (side="emulator") or
        gpu.flash_attention (side="gpu")."""
        random = self.rounding == "sr" or (self.fix is not None and get_fix(self.fix).needs_seed)
        kw = {"recipe": self.recipe, "rounding": self.rounding, "seed": self.seed if random else None}
        if self.fix == "paper":
            kw.update(fix=self.fix, eps=self.eps, beta=self.beta)
        elif self.fix:
            kw.update(fix=self.fix)   # a fix without parameters (unbiased)
        tiles = ("block_m", "block_n") + (("num_warps", "num_stages") if side == "gpu" else ())
        kw.update({t: getattr(self, t) for t in tiles if getattr(self, t) is not None})
        return kw

    def compared(self, launch: str) -> tuple:
        """The tensors the crosscheck compares for ``launch`` (``production`` or ``dump``),
        in the order a mismatch is located: the recipe's ``compared_tensors``."""
        from flashbits.emulator.attention.recipes import get_recipe

        tensors = get_recipe(self.recipe).compared_tensors
        if launch not in tensors:
            raise ValueError(f"unknown launch kind {launch!r}; accepted: {', '.join(tensors)}")
        return tuple(tensors[launch])

    def to_dict(self):
        return asdict(self)


# the fix settings the GPU kernels run: none, and those they implement
# (gpu.attention.KERNEL_FIXES; the others run in the emulator only)
KERNEL_FIXES = (None,) + _KERNEL_FIXES
def kernel_config(recipe, fix, rounding) -> bool:
    """Whether (recipe, fix, rounding) is a distinct configuration the kernels run: the
    fix is one the recipe's kernel implements (gpu.attention.kernel_fixes), and a fix that
    sets the casts itself (``Fix.stage_overrides``: unbiased) runs once, as rounding rne."""
    if fix not in kernel_fixes(recipe):
        return False
    return fix is None or rounding == "rne" or not get_fix(fix).stage_overrides


_TILE = re.compile(r"(\d+)x(\d+)w(\d+)(?:s(\d+))?")


def parse_tile(text: str) -> dict:
    """``BMxBNwW`` or ``BMxBNwWsS`` (e.g. ``64x64w4``, ``128x64w8s2``) as Config's
    tile fields; ``default`` is the recipe's own tile.  The kernel checks the
    values themselves when it launches."""
    if text == "default":
        return {}
    m = _TILE.fullmatch(text)
    if not m:
        raise ValueError(f"a tile is BMxBNwW or BMxBNwWsS (block_m x block_n, warps, stages), e.g. 64x64w4 "
                         f"or 128x64w8s2, or 'default'; got {text!r}")
    bm, bn, w, st = m.groups()
    out = {"block_m": int(bm), "block_n": int(bn), "num_warps": int(w)}
    if st is not None:
        out["num_stages"] = int(st)
    return out


def other_tiles(recipe: str) -> list[str]:
    """Every tile the kernels accept other than the recipe's own at the default
    depth, as ``BMxBNwWsS``: each block_m × block_n × num_warps at the default
    depth, then the recipe's own tile at the other crosschecked depths
    (the ``tiles`` part of ``python -m flashbits.crosscheck.records regenerate``)."""
    from flashbits.emulator.attention.recipes import NUM_WARPS, get_recipe
    from flashbits.gpu.attention import (
        CROSSCHECKED_STAGES,
        DEFAULT_STAGES,
        KERNEL_BLOCK_M,
        KERNEL_BLOCK_N,
    )

    r = get_recipe(recipe)
    own = f"{r.block_m}x{r.block_n}w{r.num_warps}"
    tiles = [f"{bm}x{bn}w{w}s{DEFAULT_STAGES}" for bm in KERNEL_BLOCK_M for bn in KERNEL_BLOCK_N for w in NUM_WARPS]
    tiles.remove(f"{own}s{DEFAULT_STAGES}")
    return tiles + [f"{own}s{st}" for st in CROSSCHECKED_STAGES if st != DEFAULT_STAGES]


def _f32bits(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, np.float64).astype(np.float32)).view(np.uint32)


def _launch(dump: bool) -> str:
    return "dump" if dump else "production"


def emulator_side(q, k, v, causal: bool, cfg: Config, dump: bool = True) -> dict:
    """The recipe's compared tensors (``Config.compared``) of an emulator run, as raw
    bits: the output in the recipe's output format, everything else fp32."""
    r = emu_flash_attention(q, k, v, causal=causal, dump=dump, **cfg.kwargs())
    out_fmt = r.recipe.stages["O_cast"].format
    return {name: to_bits(r.out, out_fmt) if name == "out" else _f32bits(getattr(r, name))
            for name in cfg.compared(_launch(dump))}


def device_bf16(*arrays):
    """numpy arrays of bf16 values as bf16 torch tensors on the GPU (on the CPU only under
    TRITON_INTERPRET=1)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return [torch.from_numpy(np.ascontiguousarray(x)).to(dev).to(torch.bfloat16) for x in arrays]


def raw_bits(x) -> np.ndarray:
    """A 16- or 32-bit torch tensor's raw bits as uint16 / uint32 numpy."""
    import torch

    as_int, as_uint = {2: (torch.int16, np.uint16), 4: (torch.int32, np.uint32)}[x.element_size()]
    return x.contiguous().view(as_int).cpu().numpy().view(as_uint)


def gpu_side(q, k, v, causal: bool, cfg: Config, dump: bool) -> dict:
    """The same tensors of a kernel launch, as raw bits of the dtype the kernel wrote."""
    from flashbits.gpu import flash_attention as gpu_flash_attention

    r = gpu_flash_attention(*device_bf16(q, k, v), causal=causal, dump=dump, **cfg.kwargs("gpu"))
    return {name: raw_bits(getattr(r, name)) for name in cfg.compared(_launch(dump))}
