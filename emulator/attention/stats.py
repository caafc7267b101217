"""Signed output error in ulps and its statistics: the measure of bias."""

from __future__ import annotations

import math

import numpy as np

from ..formats import get_format


def ulp_at(ref: np.ndarray, fmt="bf16") -> np.ndarray:
    """The format's ulp at each reference value's binade (subnormal ulp below the normal range)."""
    f = get_format(fmt)
    a = np.abs(np.asarray(ref, np.float64))
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.maximum(e, f.emin)
    return np.ldexp(1.0, (e - f.mant_bits).astype(np.int64))


def signed_error_ulps(out, ref, fmt="bf16") -> np.ndarray:
    """(out − ref) / ulp_fmt(ref), elementwise, float64; NaN where either is not finite."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    err = (out - ref) / ulp_at(ref, fmt)
    return np.where(np.isfinite(out) & np.isfinite(ref), err, np.nan)


def bias_stats(err) -> dict:
    """n, mean, standard error of the mean, and t = mean / sem over the finite errors."""
    e = np.asarray(err, np.float64).ravel()
    e = e[np.isfinite(e)]
    n = int(e.size)
    if n == 0:
        return {"n": 0, "mean_ulp": math.nan, "sem_ulp": math.nan, "t": math.nan}
    mean = float(e.mean())
    sem = float(e.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    t = mean / sem if sem and sem > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {"n": n, "mean_ulp": mean, "sem_ulp": sem, "t": t}
