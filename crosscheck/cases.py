"""Attention test cases: random, the bias regimes of docs/paper.md, adversarial inputs.

A :class:`Case` is a small frozen description; :func:`generate` turns it into
q, k, v (float32 arrays of bf16 values, shape (B, H, Nq|Nk, D)) from its seed
alone, so a case can be named in a report and regenerated anywhere.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from flashbits.emulator import quantize

KINDS = ("random", "ties", "concentrated", "lowrank_v", "inf_inputs", "huge", "subnormal", "odd")

KIND_DOCS = {
    "random": "q, k, v ~ N(0, 1)",
    "ties": "`ties` (default two) tied maxima per row (identical keys, one key block), the rest `gap` "
            "nats lower; V mostly negative (−|N(0.5, 0.3)|)",
    "concentrated": "one key dominates each row by ~gap nats; V same-sign",
    "lowrank_v": "same-sign rank-1 V plus small noise; keys similar (low rank)",
    "inf_inputs": "a few ±inf entries in q and k: scores of ±inf and NaN",
    "huge": "large logits (scores ~1e3..1e6, some overflow to inf)",
    "subnormal": "bf16 subnormal values in v and tiny q",
    "odd": "lengths 1, 2, 3, 17, 63, 65, 97, 127, 129, 255 (not multiples of any tile)",
}

ODD_LENGTHS = (1, 2, 3, 17, 63, 65, 97, 127, 129, 255)


@dataclass(frozen=True)
class Case:
    """One attention problem: shapes, mask, kind, regime parameter, seed."""

    kind: str
    B: int
    H: int
    Nq: int
    Nk: int
    D: int
    causal: bool
    seed: int
    gap: float = 10.0
    ties: int = 2

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown case kind {self.kind!r}; accepted: {', '.join(KINDS)}")

    @property
    def name(self) -> str:
        c = "causal" if self.causal else "full"
        g = f"-gap{self.gap:g}" if self.kind in ("ties", "concentrated") else ""
        if self.kind == "ties" and self.ties != 2:
            g += f"-ties{self.ties}"
        return f"{self.kind}{g}-B{self.B}H{self.H}-q{self.Nq}k{self.Nk}d{self.D}-{c}-s{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)


def _bf16(x) -> np.ndarray:
    return quantize(np.asarray(x, np.float64), "bf16", "rne")


def _neg_v(rng, shape):
    return -np.abs(rng.normal(0.5, 0.3, size=shape))


def generate(case: Case):
    """(q, k, v) float32 arrays of bf16 values, shape (B, H, N, D)."""
    rng = np.random.default_rng(case.seed)
    B, H, Nq, Nk, D = case.B, case.H, case.Nq, case.Nk, case.D
    sc = 1.0 / math.sqrt(D)
    kind = case.kind
    if kind in ("random", "odd"):
        q = rng.standard_normal((B, H, Nq, D))
        k = rng.standard_normal((B, H, Nk, D))
        v = rng.standard_normal((B, H, Nk, D))
    elif kind in ("ties", "concentrated", "lowrank_v"):
        # a shared direction e: q ≈ a·e, keys ≈ b·e (similar low-rank keys, as the paper finds)
        e = rng.standard_normal(D)
        e /= np.linalg.norm(e)
        a = 8.0
        q = a * e + 0.05 * rng.standard_normal((B, H, Nq, D))
        # score of key j ≈ sc·a·b_j: the top keys get b_top, the rest b_top − gap/(sc·a)
        b_top = 2.0
        drop = case.gap / (sc * a) if kind != "lowrank_v" else rng.uniform(0, 3.0, size=(B, H, Nk)) / (sc * a)
        k = (b_top - np.broadcast_to(drop, (B, H, Nk)))[..., None] * e + 0.002 * rng.standard_normal((B, H, Nk, D))
        if kind == "ties" and Nk >= 2:
            # identical keys inside the first key block: exactly tied scores
            pos = rng.choice(min(Nk, 64), size=min(case.ties, min(Nk, 64)), replace=False)
            for t in pos:
                k[:, :, t] = b_top * e
        elif kind == "concentrated":
            t1 = int(rng.integers(0, Nk))
            k[:, :, t1] = b_top * e
        if kind == "lowrank_v":
            u = -np.abs(rng.normal(0.5, 0.3, size=D))
            v = rng.uniform(0.5, 1.5, size=(B, H, Nk, 1)) * u + 0.05 * rng.standard_normal((B, H, Nk, D))
        else:
            v = _neg_v(rng, (B, H, Nk, D))
    elif kind == "inf_inputs":
        q = rng.standard_normal((B, H, Nq, D))
        k = rng.standard_normal((B, H, Nk, D))
        v = rng.standard_normal((B, H, Nk, D))
        for arr in (q, k):
            hit = rng.random(arr.shape) < 0.002
            arr[hit] = rng.choice([np.inf, -np.inf], size=int(hit.sum()))
    elif kind == "huge":
        s = 2.0 ** rng.integers(4, 9)
        q = rng.standard_normal((B, H, Nq, D)) * s
        k = rng.standard_normal((B, H, Nk, D)) * s
        v = rng.standard_normal((B, H, Nk, D))
        big = rng.random((B, H, Nk)) < 0.02
        k[big] *= 2.0**100  # scores beyond float32: ±inf
    elif kind == "subnormal":
        q = rng.standard_normal((B, H, Nq, D)) * 2.0**-60
        k = rng.standard_normal((B, H, Nk, D))
        v = rng.standard_normal((B, H, Nk, D)) * 2.0 ** rng.integers(-135, -120, size=(B, H, Nk, D))
    else:  # pragma: no cover - guarded by Case
        raise AssertionError(kind)
    return _bf16(q), _bf16(k), _bf16(v)


def suite(n: int, seed: int = 0, kinds=KINDS, dims=(64, 128), max_len: int = 260) -> list[Case]:
    """``n`` cases cycling through ``kinds``, causal and not, odd lengths, both head dims."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        D = int(dims[(i // len(kinds)) % len(dims)])
        causal = bool((i // (len(kinds) * len(dims))) % 2)
        if kind == "odd":
            Nq = int(rng.choice(ODD_LENGTHS))
            Nk = int(rng.choice(ODD_LENGTHS))
        else:
            Nq = int(rng.integers(1, max_len))
            Nk = int(rng.integers(1, max_len)) if rng.random() < 0.5 else Nq
        if kind in ("ties",) and Nk < 2:
            Nk = 2
        B = int(rng.integers(1, 3))
        H = int(rng.integers(1, 3))
        gap = float(rng.choice([4.0, 10.0, 12.0, 15.0]))
        s = zlib.crc32(f"{seed}/{i}".encode())
        out.append(Case(kind, B, H, Nq, Nk, D, causal, s, gap))
    return out
