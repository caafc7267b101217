"""Hopper (sm_90) tensor-core dot products, bit-exact: ``tensor_core_dot``.

Model of one ``wgmma.mma_async`` k-step with an fp32 accumulator, after
Khattak & Mikaitis, "Accurate Models of NVIDIA Tensor Cores" (arXiv
2512.07004), confirmed against the H200 (docs/hardware.md, tests/data/hw/):

1. the ``k`` products a_i·b_i of one step (k = 16 for bf16/fp16, 32 for fp8)
   are formed exactly, their significand products kept unnormalised: the
   product of ``1.ma·2^ea`` and ``1.mb·2^eb`` has the alignment exponent
   ``ea + eb`` even when the significand product is >= 2;
2. the products and the accumulator c are aligned to the largest alignment
   exponent E among the nonzero ones, and each is truncated (toward zero) to a
   multiple of 2^(E − F): F = 25 fraction bits (23 + 2; no sticky bit) for
   bf16/fp16, F = 13 for fp8;
3. the aligned terms are added exactly;
4. the sum is truncated (round toward zero) to S fraction bits below its
   leading bit — S = 23, i.e. plain fp32, for bf16/fp16; S = 13 for fp8, so
   an fp8 step keeps only 14 significant bits — subnormals kept, and becomes c
   for the next step.

Steps run in ascending k; a K that is not a multiple of the step size is
zero-padded (zero products change nothing).  Specials follow IEEE: NaN in, or
inf·0, or inf − inf give NaN (written as 0x7FFFFFFF); otherwise an inf product
or accumulator gives that inf.  Measured, not IEEE: a zero result is always +0
(also −0 + −0), and a step whose aligned sum reaches 2^128 gives ±inf although
the rounding is otherwise toward zero.

The parameters of the model (step size, fraction bits) live in
:data:`TC_MODELS` per input format; they are what the hardware records pin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from ..formats import get_format
from ..rounding import _bit_length, as_float_array, decode_bits, layout

__all__ = ["tensor_core_dot", "TC_MODELS", "TensorCoreModel", "tc_dot_ij", "decode_operands"]


@dataclass(frozen=True)
class TensorCoreModel:
    """Parameters of one input format's wgmma arithmetic (see module docstring).

    k_step: products per step; frac_bits: fraction bits each aligned term
    keeps below the largest alignment exponent; sum_frac_bits: fraction bits
    the step's sum keeps below its own leading bit (23 = plain fp32).
    """

    k_step: int
    frac_bits: int
    sum_frac_bits: int


TC_MODELS = {
    "sm90": {
        "bf16": TensorCoreModel(16, 25, 23),
        "fp16": TensorCoreModel(16, 25, 23),
        # fp8: 13-bit alignment and a 14-significant-bit step result (the
        # "about 14 bits" of fp8 accumulation DeepSeek-V3 reported on Hopper)
        "fp8_e4m3": TensorCoreModel(32, 13, 13),
        "fp8_e5m2": TensorCoreModel(32, 13, 13),
    }
}

_NAN32 = np.uint32(0x7FFFFFFF)  # what wgmma writes for NaN (canonical, checked on H200)


@nb.njit(cache=True)
def _decode_operand(bits, lay):
    """Split encodings into (sig int64 signed, exp int64, special code).

    value = sig · 2^(exp); special 0 finite, 1 +inf, 2 −inf, 3 NaN.
    ``exp`` is the alignment exponent minus the mantissa width, i.e. the
    exponent of the significand's unit bit.
    """
    mant = lay[0]
    n = bits.size
    sig = np.empty(n, np.int64)
    ex = np.empty(n, np.int64)
    spec = np.zeros(n, np.int8)
    for i in range(n):
        b = np.uint64(bits[i])
        neg, kind, s, e0 = decode_bits(b, lay)
        if kind == 2:
            spec[i] = 3
            sig[i] = 0
            ex[i] = 0
        elif kind == 1:
            spec[i] = 2 if neg else 1
            sig[i] = 0
            ex[i] = 0
        else:
            sig[i] = -np.int64(s) if neg else np.int64(s)
            ex[i] = e0 - mant
    return sig, ex, spec


@nb.njit(inline="always")
def _trunc_shift(v, sh):
    """v · 2^(−sh) truncated toward zero (sh may be negative: exact left shift)."""
    if sh <= 0:
        return v << (-sh)
    if sh >= 63:
        return np.int64(0)
    if v >= 0:
        return v >> sh
    return -((-v) >> sh)


@nb.njit(inline="always")
def _acc_from_f32(bits):
    """fp32 accumulator bits → (sig signed, unit exponent, special)."""
    neg = bits >> np.uint32(31)
    ef = np.int64((bits >> np.uint32(23)) & np.uint32(0xFF))
    m = np.int64(bits & np.uint32(0x7FFFFF))
    if ef == 255:
        if m != 0:
            return np.int64(0), np.int64(0), 3
        return np.int64(0), np.int64(0), 2 if neg else 1
    if ef == 0:
        s = m
        e = np.int64(-149)
    else:
        s = m | (np.int64(1) << 23)
        e = ef - 150
    return (-s if neg else s), e, 0


@nb.njit(inline="always")
def _f32_rz_from_int(S, unit_exp, keep):
    """fp32 bits of S · 2^unit_exp as the tensor core writes them: truncated
    toward zero to ``keep`` fraction bits below the leading bit (23: plain
    fp32), subnormals kept; a zero result is +0 whatever the signs, and a sum
    of magnitude >= 2^128 is ±inf (both seen on the H200)."""
    if S == 0:
        return np.uint32(0)
    neg = S < 0
    mag = np.uint64(-S if neg else S)
    E = unit_exp + _bit_length(mag) - 1  # floor(log2 |value|)
    if E > 127:
        r = np.uint32(0x7F800000)
    else:
        qexp = E - keep if E - keep > -149 else -149
        sh = qexp - unit_exp
        if sh > 0:
            q = mag >> np.uint64(sh) if sh < 64 else np.uint64(0)
        else:
            q = mag << np.uint64(-sh)
        if q == 0:
            return np.uint32(0)
        # re-express q · 2^qexp on the fp32 grid (a multiple of it)
        if E >= -126:
            m = np.int64(q) << (qexp - (E - 23))
            r = np.uint32(((E + 127) << 23) | (m & 0x7FFFFF))
        else:
            r = np.uint32(np.int64(q) << (qexp + 149))  # subnormal
    return r | (np.uint32(0x80000000) if neg else np.uint32(0))


@nb.njit(inline="always")
def tc_dot_ij(asig, aexp, aspec, i, bsig, bexp, bspec, j, c_bits, k_step, frac_bits, sum_frac_bits, mant):
    """fp32 bits of the chained k-steps of sum_k a[i, k]·b[k, j] + c (c as fp32 bits).

    Operands are pre-decoded by :func:`decode_operands` (significand, unit
    exponent, special code); the attention emulator calls this per element.
    """
    K = asig.shape[1]
    acc_bits = c_bits
    csig, cexp, cspec = _acc_from_f32(acc_bits)
    for k0 in range(0, K, k_step):
        k1 = min(k0 + k_step, K)
        # specials: NaN if any NaN, inf*0, or +inf and -inf; else the inf
        pinf = cspec == 1
        ninf = cspec == 2
        nan = cspec == 3
        emax = np.int64(-(1 << 40))
        if csig != 0:
            emax = cexp + 23 if (acc_bits & np.uint32(0x7F800000)) else np.int64(-126)
        for k in range(k0, k1):
            sa = aspec[i, k]
            sb = bspec[k, j]
            if sa != 0 or sb != 0:
                if sa == 3 or sb == 3:
                    nan = True
                elif (sa != 0 and bsig[k, j] == 0 and sb == 0) or (sb != 0 and asig[i, k] == 0 and sa == 0):
                    nan = True
                else:
                    # sign of the inf product
                    na = (sa == 2) if sa != 0 else (asig[i, k] < 0)
                    nbb = (sb == 2) if sb != 0 else (bsig[k, j] < 0)
                    if na != nbb:
                        ninf = True
                    else:
                        pinf = True
                continue
            p = asig[i, k] * bsig[k, j]
            if p != 0:
                e = aexp[i, k] + bexp[k, j] + 2 * mant  # alignment exponent ea + eb
                if e > emax:
                    emax = e
        if nan or (pinf and ninf):
            acc_bits = _NAN32
            csig, cexp, cspec = np.int64(0), np.int64(0), 3
            continue
        if pinf or ninf:
            acc_bits = np.uint32(0xFF800000) if ninf else np.uint32(0x7F800000)
            csig, cexp, cspec = np.int64(0), np.int64(0), 2 if ninf else 1
            continue
        if emax == -(1 << 40):
            # every term is zero: the result is +0 (never −0 on the H200)
            acc_bits = np.uint32(0)
            csig, cexp, cspec = np.int64(0), np.int64(-149), 0
            continue
        unit = emax - frac_bits
        S = _trunc_shift(csig, unit - cexp)
        for k in range(k0, k1):
            p = asig[i, k] * bsig[k, j]
            if p != 0:
                S += _trunc_shift(p, unit - (aexp[i, k] + bexp[k, j]))
        acc_bits = _f32_rz_from_int(S, unit, sum_frac_bits)
        csig, cexp, cspec = _acc_from_f32(acc_bits)
    return acc_bits


@nb.njit(cache=True, parallel=True)
def _tc_dot_kernel(asig, aexp, aspec, bsig, bexp, bspec, cbits, out, k_step, frac_bits, sum_frac_bits, mant):
    """out[i, j] = tc_dot_ij(...) for every (i, j), in parallel."""
    M = asig.shape[0]
    N = bsig.shape[1]
    for ij in nb.prange(M * N):
        i = ij // N
        j = ij % N
        out[i, j] = tc_dot_ij(asig, aexp, aspec, i, bsig, bexp, bspec, j, cbits[i, j],
                              k_step, frac_bits, sum_frac_bits, mant)


def decode_operands(x, fmt):
    """(sig int64, unit exponent int64, special int8) arrays of x's shape, for tc_dot_ij.

    x must hold values representable in ``fmt`` (checked).
    """
    from ..bits import to_bits

    bits = to_bits(x, fmt)
    s, e, sp = _decode_operand(bits.reshape(-1), layout(fmt))
    return s.reshape(bits.shape), e.reshape(bits.shape), sp.reshape(bits.shape)


def tensor_core_dot(a, b, c=None, *, in_fmt="bf16", arch="sm90"):
    """``a @ b + c`` exactly as chained Hopper wgmma k-steps compute it.

    a : (M, K) and b : (K, N) float arrays whose values are representable in
        ``in_fmt`` (bf16, fp16, fp8_e4m3, fp8_e5m2); checked, not rounded.
    c : (M, N) float32 accumulator (values representable in fp32) or None (+0).
    Returns float32 (M, N).  See the module docstring for the arithmetic.
    """
    fmt = get_format(in_fmt)
    models = TC_MODELS.get(arch)
    if models is None:
        raise ValueError(f"unknown arch {arch!r}; accepted: {', '.join(TC_MODELS)}")
    if fmt.name not in models:
        raise ValueError(
            f"tensor_core_dot input format {fmt.name!r} is not a tensor-core input on {arch}; "
            f"accepted: {', '.join(models)}")
    model = models[fmt.name]
    a = as_float_array(a, "a")
    b = as_float_array(b, "b")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"tensor_core_dot needs a (M, K) and b (K, N); got a {a.shape}, b {b.shape}")
    M, K = a.shape
    N = b.shape[1]
    from ..bits import to_bits

    if c is None:
        cbits = np.zeros((M, N), np.uint32)
    else:
        c = as_float_array(c, "c")
        if c.shape != (M, N):
            raise ValueError(f"c must have shape {(M, N)}, got {c.shape}")
        cbits = to_bits(c, "fp32").reshape(M, N)
    asig, aexp, aspec = decode_operands(a, fmt)
    bsig, bexp, bspec = decode_operands(b, fmt)
    out = np.empty((M, N), np.uint32)
    _tc_dot_kernel(asig, aexp, aspec, bsig, bexp, bspec, np.ascontiguousarray(cbits), out, model.k_step, model.frac_bits, model.sum_frac_bits,
                   fmt.mant_bits)
    return out.view(np.float32)
