"""Signed output error in ulps and its statistics: the measure of bias.

Two units, for two kinds of input:

* **element ulps** (:func:`signed_error_ulps`): each output's error in the ulp of that
  output's own binade.  The bias study's unit: in its regimes (tied maxima, constructed
  rows) the outputs of a row have comparable magnitudes, and a bias of a cast is a
  fraction of exactly this ulp.  On random inputs it means little: an output near zero
  (softmax-weighted V of mixed signs cancels) has a tiny ulp, so an absolute error of
  1e-4 there reads as thousands of ulps, and the mean and its standard error are set by
  the few nearest-zero outputs ("−4.3 ± 3.9 ulp" beside a max error of 1e-3).
* **row-scale ulps** (:func:`signed_error_row_ulps`): each output's error in the ulp of
  max|ref| over its row (the last axis: the feature dimension of one query row), the
  scale the row's bf16 outputs are rounded at where it matters.  Every error of a row
  is measured in one unit, so near-zero outputs weigh no more than the rest; on random
  inputs its mean and standard error are a fraction of an ulp.

:func:`error_summary` reports both; ``flashbits emulate`` prints both, row-scale first.
"""

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


def row_scale_ulp(ref: np.ndarray, fmt="bf16") -> np.ndarray:
    """The format's ulp at max|ref| of each row (last axis, finite values only),
    broadcast to ref's shape; a row of zeros takes the format's smallest ulp."""
    a = np.abs(np.asarray(ref, np.float64))
    a = np.where(np.isfinite(a), a, 0.0)
    scale = a.max(axis=-1, keepdims=True) if a.ndim else a
    return ulp_at(np.broadcast_to(scale, a.shape), fmt)


def signed_error_row_ulps(out, ref, fmt="bf16") -> np.ndarray:
    """(out − ref) / ulp_fmt(max|ref| of the row), elementwise, float64; NaN where either
    is not finite.  The unit that stays meaningful when some outputs are near zero."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    with np.errstate(invalid="ignore"):  # inf − inf: NaN, dropped below
        err = (out - ref) / row_scale_ulp(ref, fmt)
    return np.where(np.isfinite(out) & np.isfinite(ref), err, np.nan)


def error_summary(out, ref, fmt="bf16") -> dict:
    """Both measures: ``row`` (row-scale ulps: the headline on any inputs) and
    ``element`` (each output's own ulp: the bias study's unit), each a
    :func:`bias_stats` dict, with the unit's name."""
    return {"row": {"unit": f"{fmt} ulp of max|O| of the row", **bias_stats(signed_error_row_ulps(out, ref, fmt))},
            "element": {"unit": f"{fmt} ulp of each output", **bias_stats(signed_error_ulps(out, ref, fmt))}}


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
