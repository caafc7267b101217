"""Inputs for tensor-core dot-product probes (numpy only, reproducible by seed).

Each case is one tile: A (64, K), B (K, 64), C (64, 64) float32 arrays whose
values are exactly representable in the input format (C in fp32).  Kinds:

random     normal values at a random per-tile scale
wide       random signs, exponents spread over most of the format's range
cancel     products that nearly cancel pairwise, and C ≈ −(sum of products)
subnormal  operands mixing the format's subnormals with small normals; tiny C
special    random values with sprinkled ±0, ±inf, NaN (and −0 accumulators)
zeros      only ±0 operands and ±0 / tiny accumulators: the sign of zero sums
negzero    every product −0 and the accumulator −0 (zero acc: +0): is −0 + −0 kept?
overflow   values near the top of the range: sums beyond fp32 max
sparse     each row of A has 2-3 nonzeros at random k: isolates how a few
           products of very different size combine (the alignment rule)
"""

from __future__ import annotations

import numpy as np

from flashbits.emulator import FORMATS, quantize

KINDS = ("random", "wide", "cancel", "subnormal", "special", "zeros", "negzero", "overflow", "sparse")
TILE = 64


def _q(x, fmt):
    return quantize(np.asarray(x, dtype=np.float64), fmt, "rne", saturate=fmt.startswith("fp8"))


def _wide(rng, shape, fmt, lo, hi):
    e = rng.integers(lo, hi + 1, size=shape).astype(np.float64)
    m = rng.uniform(1, 2, size=shape)
    s = rng.choice([-1.0, 1.0], size=shape)
    return _q(s * m * 2.0**e, fmt)


def make_case(kind: str, fmt: str, K: int, acc: bool, seed: int):
    """(A, B, C) for one tile; ``acc`` False gives C = +0."""
    f = FORMATS[fmt]
    rng = np.random.default_rng(seed)
    M = N = TILE
    emin, emax = f.emin, f.emax
    # product exponents must stay inside fp32 for most kinds
    lo, hi = max(emin, -60), min(emax, 60)
    c = np.zeros((M, N), np.float32)
    if kind == "random":
        s = float(rng.integers(-3, 4))
        a = _q(rng.standard_normal((M, K)) * 2.0**s, fmt)
        b = _q(rng.standard_normal((K, N)), fmt)
        if acc:
            c = quantize(rng.standard_normal((M, N)) * 2.0 ** (s + rng.integers(-4, 5)), "fp32")
    elif kind == "wide":
        a = _wide(rng, (M, K), fmt, lo, hi)
        b = _wide(rng, (K, N), fmt, lo, hi)
        if acc:
            c = quantize(_wide(rng, (M, N), "fp32", 2 * lo, 2 * hi).astype(np.float64), "fp32")
    elif kind == "cancel":
        a = _q(rng.standard_normal((M, K)), fmt)
        b = _q(rng.standard_normal((K, N)), fmt)
        a[:, 1::2] = -a[:, 0::2]
        b[1::2, :] = b[0::2, :]
        # perturb a few so the pairs cancel only nearly
        pert = rng.random((M, K)) < 0.25
        a = np.where(pert, _q(a * (1 + f.eps * rng.integers(-2, 3, size=(M, K))), fmt), a).astype(np.float32)
        if acc:
            exact = a.astype(np.float64) @ b.astype(np.float64)
            c = quantize(-exact * (1 + 2.0**-20 * rng.standard_normal((M, N))), "fp32")
    elif kind == "subnormal":
        sub = f.min_subnormal * rng.integers(1, 1 << f.mant_bits, size=(M, K))
        nor = _wide(rng, (M, K), fmt, emin, emin + 4)
        a = _q(np.where(rng.random((M, K)) < 0.5, sub * rng.choice([-1, 1], (M, K)), nor), fmt)
        b = _wide(rng, (K, N), fmt, emin, min(emax, emin + 20))
        bs = f.min_subnormal * rng.integers(1, 1 << f.mant_bits, size=(K, N))
        b = _q(np.where(rng.random((K, N)) < 0.3, bs, b), fmt)
        if acc:
            c = quantize(rng.standard_normal((M, N)) * 2.0 ** rng.integers(-149, -100, (M, N)), "fp32")
    elif kind == "special":
        a = _q(rng.standard_normal((M, K)), fmt)
        b = _q(rng.standard_normal((K, N)), fmt)
        specials = [0.0, -0.0, np.inf, -np.inf, np.nan]
        if not f.has_inf:
            specials = [0.0, -0.0, np.nan]
        for arr in (a, b):
            hit = rng.random(arr.shape) < 1.0 / 1024
            arr[hit] = rng.choice(specials, size=int(hit.sum()))
        if acc:
            c = quantize(rng.standard_normal((M, N)), "fp32")
            hit = rng.random((M, N)) < 1.0 / 64
            c[hit] = rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan], size=int(hit.sum()))
    elif kind == "zeros":
        a = rng.choice([0.0, -0.0], size=(M, K)).astype(np.float32)
        b = _q(rng.standard_normal((K, N)), fmt)
        b[rng.random((K, N)) < 0.5] = -0.0
        # a few rows with exactly cancelling nonzero products
        rows = rng.random(M) < 0.25
        a[rows, 0] = 1.0
        a[rows, 1] = -1.0
        b[1, :] = b[0, :]
        if acc:
            c = rng.choice([0.0, -0.0], size=(M, N)).astype(np.float32)
    elif kind == "negzero":
        a = np.full((M, K), -0.0, np.float32)
        b = np.abs(_q(rng.standard_normal((K, N)), fmt)) + np.float32(f.min_normal)
        b = _q(b, fmt)
        if acc:
            c = np.full((M, N), -0.0, np.float32)
    elif kind == "overflow":
        top = emax
        a = _wide(rng, (M, K), fmt, top - 3, top)
        b = _wide(rng, (K, N), fmt, max(top - 3, 0) if fmt != "bf16" else 60, top if fmt != "bf16" else 64)
        if acc:
            c = quantize(rng.choice([-1, 1], (M, N)) * 3.0e38 * rng.random((M, N)), "fp32")
    elif kind == "sparse":
        a = np.zeros((M, K), np.float32)
        for i in range(M):
            pos = rng.choice(K, size=int(rng.integers(2, 4)), replace=False)
            a[i, pos] = _wide(rng, pos.size, fmt, lo // 2, hi // 2)
        b = _wide(rng, (K, N), fmt, lo // 2, hi // 2)
        if acc:
            c = quantize(_wide(rng, (M, N), "fp32", lo, hi).astype(np.float64), "fp32")
    else:
        raise ValueError(f"unknown case kind {kind!r}; accepted: {', '.join(KINDS)}")
    return np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), np.ascontiguousarray(c, np.float32)
