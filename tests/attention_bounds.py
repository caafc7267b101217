"""Shared helpers of the attention tests: tiles visited by a row, visibility, and an
a-priori error bound of the recipes against the float64 reference."""

from __future__ import annotations

import math

import numpy as np

U = 2.0**-8  # unit roundoff of bf16 (half an ulp, relative): one RNE rounding errs by at most U·|x|


def visited_blocks(i, Nk, causal, block_m, block_n):
    """Key blocks the kernel's program of row i visits (docs/recipes.md, "Tiles and order")."""
    hi = min(Nk, (i // block_m + 1) * block_m) if causal else Nk
    return -(-hi // block_n)


def visible(Nq, Nk, causal):
    """(Nq, Nk) mask of the keys each row sees (top-left aligned causal mask)."""
    vis = np.ones((Nq, Nk), bool)
    if causal:
        vis &= np.arange(Nk)[None, :] <= np.arange(Nq)[:, None]
    return vis


def error_bound(recipe, q, k, v, causal, block_m, block_n, beta=1.0, extra_blocks=0, u=U, lse=False):
    """Per-element bound on |out − reference| for ``precision="hw"`` with RNE casts
    (``u`` = U).  With truncating or stochastic casts (error < 1 ulp) pass
    ``u = 2·U``: the Triton interpreter truncates ``.to(tl.bfloat16)``.
    With ``lse=True``: the bound on |lse − reference lse| per row instead.

    Write out = Σ w̃_j v_j / Σ w̃'_j with w̃ the computed weights.  Every bf16
    rounding errs by ≤ U relative (U = 2^-8), every fp32 one by ≤ 2^-24, a
    tensor-core k16 step by < (17·2^-25 + 2^-23) ≤ 2^-21.5 of the sum of the
    magnitudes it adds (docs/hardware.md), MUFU.EX2 by ≤ 2.05 fp32 ulp.  With
    W_d = Σ_j p_j |v_jd| (exact weights p), a relative weight error ≤ e^η − 1
    in numerator and denominator moves the result by ≤ (e^{2η} − 1)·W, and a
    relative error ε of the running sums (relative to the sums of magnitudes)
    by ≤ ε·W.  Hence |out − ref| ≤ (expm1(2η) + K·u·1.05 + T)·W + floor with

    fa2:   η = fp32-level score/exp errors, K = 2 (the P̄ cast and the output
           cast; everything else is fp32), T the tensor-core steps of P̄V;
    paper: the scores are cast twice (S_cast, s_cast: 2U|s|), s − m once
           (U|s − m|), the rescale α is computed from a bf16 difference of
           maxima (U·Σ|Δm| + U per block): η ≤ U·(4σ + 2M + nb) with σ the row's
           largest |score| and M ≥ |m| (σ, or β·σ with the fix), and
           K = 2 + 6·nb (P̄ and output casts; per block PV_cast, O_mul_cast,
           O_add_cast on the numerator, l_blk_cast, l_mul_cast, l_add_cast on
           the denominator).
    floor: bf16 subnormal spacing (2^-133) per rounding, fp32 spacing per
           tensor-core step — for subnormal V.
    """
    q64, k64, v64 = (np.asarray(a, np.float64) for a in (q, k, v))
    D = q64.shape[-1]
    Nq, Nk = q64.shape[-2], k64.shape[-2]
    sc = 1.0 / math.sqrt(D)
    s = np.einsum("...id,...jd->...ij", q64, k64) * sc
    A = np.einsum("...id,...jd->...ij", np.abs(q64), np.abs(k64)) * sc  # Σ|q_d k_d|·scale
    vis = visible(Nq, Nk, causal)
    s = np.where(vis, s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    W = np.einsum("...ij,...jd->...id", p, np.abs(v64))
    sigma = np.where(vis, np.abs(s), 0).max(axis=-1)
    amax = np.where(vis, A, 0).max(axis=-1)
    nb = np.array([visited_blocks(i, Nk, causal, block_m, block_n) for i in range(Nq)], np.float64)
    nb += extra_blocks
    steps = nb * block_n / 16 + math.ceil(D / 16)
    tc = math.ceil(D / 16) * 2.0**-20 * amax  # tensor-core error of the scores (nats), generous
    if recipe == "fa2":
        eta = 2.0**-20 * (2 * sigma + 1) + tc + nb * 2.0**-20
        K = 2.0
    else:
        M = max(beta, 1.0) * sigma
        eta = u * (4 * sigma + 2 * M + nb) * 1.05 + tc
        K = 2.0 + 6.0 * nb
    rel = np.expm1(2 * eta) + K * u * 1.05 + steps * 2.0**-21 + 2.0**-17
    floor = (K + 1) * 2.0**-133 + steps * 2.0**-148
    if lse:
        # lse = m + ln l with the kernel's own m: |Δ ln l| ≤ η + the roundings of l
        # (paper: the P̄ cast and l_blk_cast, l_mul_cast, l_add_cast per block;
        # fa2: l sums the uncast P̄ in fp32), plus fp32 evaluation of m·ln 2 + ln l;
        # paper: lse = bf16(fl32(bf16(fl32(ln l)) + m)) adds two bf16 roundings, of
        # |ln l| ≤ |lse| + |m| and of |lse|, with |m| ≤ M
        Kl = 0.0 if recipe == "fa2" else 1.0 + 3.0 * nb
        ref_lse = np.log(np.where(vis, np.exp(s - s.max(axis=-1, keepdims=True)), 0).sum(-1)) + s.max(axis=-1)
        cast = 0.0 if recipe == "fa2" else u * 1.05 * (2 * np.abs(ref_lse) + M + 2)
        return eta + Kl * u * 1.05 + steps * 2.0**-21 + 2.0**-20 * (1 + np.abs(ref_lse)) + cast
    return rel[..., None] * W + floor[..., None]
