"""The data regimes of the bias study (issue 6, docs/mechanism.md).

Each regime is a recipe for one attention problem of 2^18 output samples:
4096 query rows × 64 features, 64 keys (one key block, as in docs/paper.md's
example), fixed seed.  ``realistic`` is our attempt at what a trained layer
shows (the paper: similar low-rank keys, a few near-equal maxima, V features of
one sign on average): 1–3 exactly tied maxima, the other scores spread 3–15
nats below, V ~ N(−0.3, 0.5).  ``repeated`` and ``same-tie`` go beyond the paper:
rows alike enough that a deterministic rounding of P̄ errs the same way in every row
(a repeated token, over 128 keys: two key blocks; a tied maximum of one value everywhere).
"""

from __future__ import annotations

import math

import numpy as np

from flashbits.emulator import quantize

from .cases import Case, generate

ROWS, KEYS, DIM = 4096, 64, 64

REGIMES = {
    "random": ("benign: q, k, v ~ N(0, 1)", dict(kind="random")),
    "ties-4": ("two tied maxima, the rest 4 nats lower, V < 0", dict(kind="ties", gap=4.0)),
    "ties-10": ("two tied maxima, the rest 10 nats lower, V < 0", dict(kind="ties", gap=10.0)),
    "ties-12": ("two tied maxima, the rest 12 nats lower, V < 0", dict(kind="ties", gap=12.0)),
    "ties-15": ("two tied maxima, the rest 15 nats lower, V < 0", dict(kind="ties", gap=15.0)),
    "ties3-12": ("three tied maxima, the rest 12 nats lower, V < 0", dict(kind="ties", gap=12.0, ties=3)),
    "lowrank-v": ("similar keys, same-sign rank-1 V", dict(kind="lowrank_v")),
    "realistic": ("1-3 tied maxima, others 3-15 nats lower, V ~ N(-0.3, 0.5)", dict(kind="realistic")),
    # beyond the paper's regimes: where a deterministic rounding of P̄ errs alike in every row
    "repeated": ("one query repeated in every row (a repeated token), 128 random keys, V ~ N(-0.3, 0.5)",
                 dict(kind="repeated")),
    "same-tie": ("a tied maximum of the same value (2) in every row, the rest ~N(0, 0.25) lower, V < 0",
                 dict(kind="same_tie")),
}
# the regimes built here rather than by cases.generate
_BUILT_HERE = ("realistic", "repeated", "same_tie")


def regime_case(name: str, seed: int = 1, rows: int = ROWS) -> Case | None:
    doc, spec = REGIMES[name]
    if spec["kind"] in _BUILT_HERE:
        return None
    return Case(B=1, H=1, Nq=rows, Nk=KEYS, D=DIM, causal=False, seed=seed, **spec)


def regime_inputs(name: str, seed: int = 1, rows: int = ROWS):
    """(q, k, v) float32 arrays of bf16 values, shape (1, 1, rows, 64), for a regime."""
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}; accepted: {', '.join(REGIMES)}")
    c = regime_case(name, seed, rows)
    if c is not None:
        return generate(c)
    rng = np.random.default_rng(seed)
    f = lambda x: quantize(np.asarray(x, np.float64), "bf16", "rne")  # noqa: E731
    kind = REGIMES[name][1]["kind"]
    if kind == "repeated":
        q = np.repeat(2.0 * rng.standard_normal((1, DIM)), rows, axis=0)
        k = rng.standard_normal((2 * KEYS, DIM))
        v = rng.normal(-0.3, 0.5, size=(2 * KEYS, DIM))
        return f(q[None, None]), f(k[None, None]), f(v[None, None])
    if kind == "same_tie":
        # keys 0 and 1 identical along feature 0 only; every q has the same feature 0,
        # so every row's two largest scores are exactly 4·4/8 = 2 (scale 1/8)
        k = np.zeros((KEYS, DIM))
        k[:2, 0] = 4.0
        k[2:, 1:] = 0.5 * rng.standard_normal((KEYS - 2, DIM - 1))
        q = np.zeros((rows, DIM))
        q[:, 0] = 4.0
        q[:, 1:] = 0.5 * rng.standard_normal((rows, DIM - 1))
        v = -np.abs(rng.standard_normal((KEYS, DIM))) - 0.1
        return f(q[None, None]), f(k[None, None]), f(v[None, None])
    sc = 1.0 / math.sqrt(DIM)
    e = rng.standard_normal(DIM)
    e /= np.linalg.norm(e)
    a, b_top = 8.0, 2.0
    q = a * e + 0.05 * rng.standard_normal((1, 1, rows, DIM))
    drops = rng.uniform(3.0, 15.0, size=KEYS) / (sc * a)
    k = (b_top - drops)[:, None] * e + 0.002 * rng.standard_normal((KEYS, DIM))
    nt = int(rng.integers(1, 4))
    for t in rng.choice(KEYS, size=nt, replace=False):
        k[t] = b_top * e
    v = rng.normal(-0.3, 0.5, size=(1, 1, KEYS, DIM))
    return f(q), f(k[None, None]), f(v)
