"""Run one case on one side and return raw bits: the emulator (CPU) or the kernel (GPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from emulator import flash_attention as emu_flash_attention
from emulator import to_bits


@dataclass(frozen=True)
class Config:
    """Which arithmetic: recipe, fix (None or 'paper' with eps/beta), rounding of the P̄ and
    output casts, Philox seed."""

    recipe: str = "fa2"
    fix: str | None = None
    rounding: str = "rne"
    seed: int = 0
    eps: float = 1e-3
    beta: float = 2.0

    @property
    def name(self) -> str:
        f = f"fix={self.fix}(eps={self.eps:g},beta={self.beta:g})" if self.fix else "nofix"
        return f"{self.recipe}/{f}/{self.rounding}"

    def kwargs(self) -> dict:
        kw = {"recipe": self.recipe, "rounding": self.rounding, "seed": self.seed if self.rounding == "sr" else None}
        if self.fix:
            kw.update(fix=self.fix, eps=self.eps, beta=self.beta)
        return kw

    def to_dict(self):
        return asdict(self)


def _f32bits(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, np.float64).astype(np.float32)).view(np.uint32)


def emulator_side(q, k, v, causal: bool, cfg: Config, dump: bool = True) -> dict:
    r = emu_flash_attention(q, k, v, causal=causal, dump=dump, **cfg.kwargs())
    side = {"out": to_bits(r.out, "bf16"), "m": _f32bits(r.m), "l": _f32bits(r.l)}
    if dump:
        side.update(m_blocks=_f32bits(r.m_blocks), l_blocks=_f32bits(r.l_blocks), acc=_f32bits(r.acc))
    return side


def gpu_side(q, k, v, causal: bool, cfg: Config, dump: bool) -> dict:
    import torch

    from gpu import flash_attention as gpu_flash_attention

    dev = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only under TRITON_INTERPRET=1
    t = [torch.from_numpy(np.ascontiguousarray(x)).to(dev).to(torch.bfloat16) for x in (q, k, v)]
    r = gpu_flash_attention(*t, causal=causal, dump=dump, **cfg.kwargs())

    def b32(x):
        return x.contiguous().view(torch.int32).cpu().numpy().view(np.uint32)

    side = {"out": r.out.contiguous().view(torch.int16).cpu().numpy().view(np.uint16), "m": b32(r.m), "l": b32(r.l)}
    if dump:
        side.update(m_blocks=b32(r.m_blocks), l_blocks=b32(r.l_blocks), acc=b32(r.acc))
    return side
