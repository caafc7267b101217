"""IEEE operations computed exactly, then rounded once into any format (numba).

Every operation here takes float64 values that hold the operands exactly
(fp32, bf16, fp16 and fp8 values all fit), forms the exact result as a
double-double ``hi + lo`` (error-free transformations: TwoSum, Dekker's
TwoProduct, the exact division residual), folds ``lo`` into a round-to-odd
53-bit value and rounds that once with :func:`emulator.rounding.round_bits_ledger`.
Round-to-odd to 53 bits followed by any rounding to at most 51 bits equals
rounding the exact value directly, ties and sticky bits included, so the
result *and* the ledger's classification (tie, tie decided by sticky bits) are
exact.  (The signed error in ulps is that of the 53-bit value: off by less
than 2^-27 ulp for fp32 targets.)

Results are float64 values; ``rnd_*`` functions also return the error and the
FLAG_* bits for the rounding ledger.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

from .formats import FORMATS
from .rounding import layout, round_bits_ledger

F64L = layout(FORMATS["fp64"])


@intrinsic
def f64_to_bits(typingctx, x):
    """Reinterpret a float64 as uint64 (no conversion)."""
    sig = types.uint64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def bits_to_f64(typingctx, x):
    """Reinterpret a uint64 as float64 (no conversion)."""
    sig = types.float64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@nb.njit(inline="always", error_model="numpy")
def two_sum(a, b):
    """s + e == a + b exactly, s = fl(a + b) (Knuth; no branch)."""
    s = a + b
    bp = s - a
    ap = s - bp
    return s, (a - ap) + (b - bp)


@nb.njit(inline="always", error_model="numpy")
def _split(a):
    c = 134217729.0 * a  # 2^27 + 1 (Veltkamp)
    hi = c - (c - a)
    return hi, a - hi


@nb.njit(inline="always", error_model="numpy")
def two_prod(a, b):
    """p + e == a · b exactly (Dekker; no overflow assumed)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


@nb.njit(inline="always", error_model="numpy")
def odd_bits(hi, lo):
    """Bits of the exact value hi + lo rounded to odd at 53 bits (|lo| <= ulp(hi)/2)."""
    b = f64_to_bits(hi)
    if lo == 0.0 or not math.isfinite(hi):
        return b
    if (lo < 0.0) != (hi < 0.0):
        b -= np.uint64(1)  # truncate toward zero: one encoding step down in magnitude
    return b | np.uint64(1)


@nb.njit(cache=True, error_model="numpy")
def rnd(hi, lo, tgt, mode, rword, rbits, saturate):
    """Round the exact value hi + lo into ``tgt``: (float64 result, err ulps, flags)."""
    code, err, flags = round_bits_ledger(odd_bits(hi, lo), F64L, tgt, F64L, mode, rword, rbits, saturate)
    return bits_to_f64(code), err, flags


@nb.njit(inline="always", error_model="numpy")
def zero_sum_sign(a, b, mode):
    """IEEE sign of an exact zero sum a + b: −0 if both are −0, else +0 (−0 when rounding down)."""
    if a == 0.0 and b == 0.0 and math.copysign(1.0, a) < 0 and math.copysign(1.0, b) < 0:
        return -0.0
    return -0.0 if mode == 4 else 0.0


@nb.njit(cache=True, error_model="numpy")
def rnd_add(a, b, tgt, mode, rword, rbits, saturate):
    """a + b rounded once."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return rnd(a + b, 0.0, tgt, mode, rword, rbits, saturate)
    s, e = two_sum(a, b)
    if s == 0.0 and e == 0.0:
        return zero_sum_sign(a, b, mode), 0.0, 0
    return rnd(s, e, tgt, mode, rword, rbits, saturate)


@nb.njit(cache=True, error_model="numpy")
def rnd_mul(a, b, tgt, mode, rword, rbits, saturate):
    """a·b rounded; exact product for operands of at most 26 significant bits each."""
    p = a * b
    if not math.isfinite(p) or p == 0.0:
        return rnd(p, 0.0, tgt, mode, rword, rbits, saturate)
    p, e = two_prod(a, b)
    return rnd(p, e, tgt, mode, rword, rbits, saturate)


@nb.njit(cache=True, error_model="numpy")
def rnd_fma(a, b, c, tgt, mode, rword, rbits, saturate):
    """fma(a, b, c) = a·b + c with one rounding (a, b of <= 26 bits: a·b exact in float64)."""
    p = a * b
    if not (math.isfinite(p) and math.isfinite(c)):
        return rnd(p + c, 0.0, tgt, mode, rword, rbits, saturate)
    if p == 0.0:
        if c != 0.0:
            return rnd(c, 0.0, tgt, mode, rword, rbits, saturate)
        return zero_sum_sign(p, c, mode), 0.0, 0
    s, e = two_sum(p, c)
    if s == 0.0 and e == 0.0:
        return zero_sum_sign(p, c, mode), 0.0, 0
    return rnd(s, e, tgt, mode, rword, rbits, saturate)


@nb.njit(cache=True, error_model="numpy")
def rnd_div(a, b, tgt, mode, rword, rbits, saturate):
    """a / b rounded once (the exact residual a − q·b gives the sticky direction)."""
    q = a / b
    if not math.isfinite(q) or q == 0.0 or not math.isfinite(a) or b == 0.0:
        return rnd(q, 0.0, tgt, mode, rword, rbits, saturate)
    ph, pl = two_prod(q, b)
    r = (a - ph) - pl  # exact: the residual of a correctly rounded quotient is representable
    lo = 0.0
    if r != 0.0:
        # only the sign of the remainder term matters for round-to-odd
        lo = math.copysign(abs(q) * 2.0 ** -60, r / b)
    return rnd(q, lo, tgt, mode, rword, rbits, saturate)
