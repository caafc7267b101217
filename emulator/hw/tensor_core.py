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

Two implementations of the one rule, tested bit-equal: :func:`tc_dot_ij`, the
readable per-element reference on decoded operands (the attention emulator
calls it from numba), and the fast kernels behind :func:`tensor_core_dot`
(packed operands, one kernel per step size; see "Fast path" below), which hand
every element whose row of ``a`` or column of ``b`` holds an inf or NaN to
:func:`tc_dot_ij`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from ..formats import FORMATS, get_format
from ..rounding import _bit_length, as_float_array, decode_bits, layout, round_parts, target

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
def _step_specials(asig, aspec, i, bsig, bspec, j, k0, k1, cspec):
    """Special-value outcome of one k-step: 0 none, 1 +inf, 2 −inf, 3 NaN.

    NaN if the accumulator or an operand is NaN, a product is inf·0, or +inf
    and −inf meet; otherwise an inf product or accumulator gives that inf."""
    pinf = cspec == 1
    ninf = cspec == 2
    nan = cspec == 3
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
    if nan or (pinf and ninf):
        return 3
    if ninf:
        return 2
    if pinf:
        return 1
    return 0


@nb.njit(cache=True)
def tc_dot_ij(asig, aexp, aspec, i, bsig, bexp, bspec, j, c_bits, k_step, frac_bits, sum_frac_bits, mant):
    """fp32 bits of the chained k-steps of sum_k a[i, k]·b[k, j] + c (c as fp32 bits).

    Operands are pre-decoded by :func:`decode_operands` (significand, unit
    exponent, special code); the attention emulator calls this per element.
    Per step (module docstring): E = the largest alignment exponent among the
    nonzero products (ea + eb) and a nonzero c; every term truncated toward
    zero to a multiple of 2^(E − frac_bits); the exact sum truncated toward
    zero to sum_frac_bits bits below its leading bit (_f32_rz_from_int).
    """
    K = asig.shape[1]
    acc_bits = c_bits
    csig, cexp, cspec = _acc_from_f32(acc_bits)
    for k0 in range(0, K, k_step):
        k1 = min(k0 + k_step, K)
        # pass 1: the largest alignment exponent, and whether a special is present
        special = cspec != 0
        emax = np.int64(-(1 << 40))
        for k in range(k0, k1):
            if aspec[i, k] != 0 or bspec[k, j] != 0:
                special = True
            elif asig[i, k] != 0 and bsig[k, j] != 0:
                emax = max(emax, aexp[i, k] + bexp[k, j] + 2 * mant)  # alignment exponent ea + eb
        if special:
            sp = _step_specials(asig, aspec, i, bsig, bspec, j, k0, k1, cspec)
            # (an inf or NaN operand or accumulator always makes the step special)
            if sp == 3:
                acc_bits = _NAN32
            else:
                acc_bits = np.uint32(0xFF800000) if sp == 2 else np.uint32(0x7F800000)
            csig, cexp, cspec = np.int64(0), np.int64(0), sp
            continue
        if csig != 0:
            emax = max(emax, cexp + 23 if (acc_bits & np.uint32(0x7F800000)) else np.int64(-126))
        if emax == -(1 << 40):
            # every term is zero: the result is +0 (never −0 on the H200)
            acc_bits = np.uint32(0)
            csig, cexp, cspec = np.int64(0), np.int64(-149), 0
            continue
        unit = emax - frac_bits
        # pass 2: the aligned, truncated terms, summed exactly
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
    """out[i, j] = tc_dot_ij(...) for every (i, j), in parallel: the readable
    reference the fast kernel below is tested against, bit for bit."""
    M = asig.shape[0]
    N = bsig.shape[1]
    for ij in nb.prange(M * N):
        i = ij // N
        j = ij % N
        out[i, j] = tc_dot_ij(asig, aexp, aspec, i, bsig, bexp, bspec, j, cbits[i, j],
                              k_step, frac_bits, sum_frac_bits, mant)


# --------------------------------------------------------------------------
# Fast path: the same arithmetic as tc_dot_ij, arranged for speed (and tested
# bit-equal to it).
# * Operands are packed once: int32 signed significands with K contiguous for
#   both a (row-major) and b (transposed), zero-padded to whole k-steps; int32
#   alignment exponents (ea, the exponent of the significand's leading bit
#   position, emin for subnormals) with a sentinel far below any real one for
#   zero operands, so a step's largest exponent E is a plain, vectorisable max
#   and a zero product never sets it.
# * Each product is formed once, pre-shifted left by L = F − 2·mant (exact:
#   |a·b| < 2^(2·mant+2), so |a·b|·2^L < 2^(F+2) < 2^63), which turns every
#   alignment into a right shift by d = E − (ea + eb) >= 0 of the magnitude:
#   the term truncated toward zero to a multiple of 2^(E − F), as in tc_dot_ij
#   (_trunc_shift(p, (E − F) − (pe)) with pe = ea + eb − 2·mant).
# * The accumulator between steps is kept as the integer pair (q, qexp) the
#   truncation produced (the same value as the fp32 it encodes) and its
#   alignment exponent; it is encoded to fp32 bits once at the end.
# * The step size is a compile-time constant (one kernel per k_step), so the
#   step loops unroll and vectorise.
# * Elements whose row of a or column of b holds an inf or NaN take the
#   reference tc_dot_ij, so specials keep exactly one implementation.
# --------------------------------------------------------------------------

_ZERO_E = -(1 << 20)  # alignment exponent of a zero operand (sentinel)
_C_ZERO_E = -(1 << 22)  # the same for a zero accumulator
_ALL_ZERO = -(1 << 19)  # a step whose largest exponent is below this has only zero terms


@nb.njit(inline="always")
def _pack_row(src_bits, src_lay, tgt, r, rows, K, transposed, sig, ae):
    """Pack row r of an operand (see _pack_values); returns (inexact-or-no-code
    count, has-inf-or-NaN)."""
    t_mant, t_emin, _, _, t_has_inf = tgt
    bad = 0
    spec = 0
    for k in range(K):
        idx = k * rows + r if transposed else r * K + k
        # read exactly, "round" toward zero: exact iff nothing was discarded
        neg, kind, q, qexp, rem, _, _, over = round_parts(np.uint64(src_bits[idx]), src_lay, tgt, 2,
                                                          np.uint64(0), 32)
        if kind == 0:
            if rem != 0 or over:
                bad += 1
            elif q != 0:
                lead = qexp + _bit_length(q) - 1
                ea = lead if lead > t_emin else t_emin  # alignment exponent (emin: subnormal)
                s = np.int32(q << np.uint64(qexp - (ea - t_mant)))  # units of 2^(ea − mant)
                sig[r, k] = -s if neg else s
                ae[r, k] = ea
        else:
            spec = 1
            if kind == 1 and t_has_inf == 0:
                bad += 1  # ±inf has no code in this format
    return bad, spec


@nb.njit(cache=True)
def _pack_values(src_bits, src_lay, tgt, rows, K, Kp, transposed):
    """float32/float64 bit patterns → (sig int32 (rows, Kp), alignment exponent
    int32 (rows, Kp), has-inf-or-NaN int8 (rows,), count of values not
    representable in the target).  ``src_bits`` is the flat (rows, K) array, or
    the flat (K, rows) array when ``transposed``; columns K..Kp are zero padding.
    A finite value is sig·2^(ea − mant) with ea its exponent (emin for
    subnormals); zeros get the sentinel exponent."""
    sig = np.zeros((rows, Kp), np.int32)
    ae = np.full((rows, Kp), _ZERO_E, np.int32)
    spec = np.zeros(rows, np.int8)
    bad = 0
    for r in range(rows):
        b, sp = _pack_row(src_bits, src_lay, tgt, r, rows, K, transposed, sig, ae)
        bad += b
        spec[r] = sp
    return sig, ae, spec, bad


@nb.njit(cache=True, parallel=True)
def _pack_values_parallel(src_bits, src_lay, tgt, rows, K, Kp, transposed):
    """_pack_values, rows in parallel (for large operands)."""
    sig = np.zeros((rows, Kp), np.int32)
    ae = np.full((rows, Kp), _ZERO_E, np.int32)
    spec = np.zeros(rows, np.int8)
    bads = np.zeros(rows, np.int64)
    for r in nb.prange(rows):
        b, sp = _pack_row(src_bits, src_lay, tgt, r, rows, K, transposed, sig, ae)
        bads[r] = b
        spec[r] = sp
    return sig, ae, spec, bads.sum()


@nb.njit(inline="always")
def _fast_ij(asg, aex, i, bsg, bex, j, acc, nsteps, k_step, frac_bits, keep, lsh):
    """tc_dot_ij for an element whose operands hold no inf/NaN (packed operands).

    ``keep`` is the model's sum_frac_bits, ``lsh`` = frac_bits − 2·mant."""
    ef = (acc >> np.uint32(23)) & np.uint32(0xFF)
    if nsteps == 0:
        return acc
    if ef == 255:
        # NaN accumulator: NaN; ±inf: stays (no opposite inf can come)
        return _NAN32 if (acc & np.uint32(0x7FFFFF)) != 0 else acc
    csig, cexp, _ = _acc_from_f32(acc)
    cE = np.int64(_C_ZERO_E)  # alignment exponent of the accumulator
    if csig != 0:
        cE = np.int64(ef) - 127 if ef != 0 else np.int64(-126)
    for s in range(nsteps):
        k0 = s * k_step
        emax = cE
        for k in range(k0, k0 + k_step):
            emax = max(emax, np.int64(aex[i, k]) + np.int64(bex[j, k]))
        if emax < _ALL_ZERO:
            csig = np.int64(0)  # every term is zero: +0 (never −0 on the H200)
            cE = np.int64(_C_ZERO_E)
            continue
        unit = emax - frac_bits
        S = _trunc_shift(csig, unit - cexp)
        for k in range(k0, k0 + k_step):
            d = min(emax - (np.int64(aex[i, k]) + np.int64(bex[j, k])), np.int64(63))
            v = (np.int64(asg[i, k]) * np.int64(bsg[j, k])) << lsh
            sg = v >> 63  # 0 or −1
            t = ((v ^ sg) - sg) >> d  # |v| truncated
            S += (t ^ sg) - sg
        # S·2^unit truncated toward zero to `keep` bits below its leading bit,
        # on the fp32 grid (as _f32_rz_from_int), kept as csig·2^cexp
        if S == 0:
            csig = np.int64(0)
            cE = np.int64(_C_ZERO_E)
            continue
        sg = S >> 63
        mag = (S ^ sg) - sg
        E = unit + _bit_length(np.uint64(mag)) - 1  # floor(log2 |sum|)
        if E > 127:
            return np.uint32(0xFF800000) if sg != 0 else np.uint32(0x7F800000)
        qexp = max(E - keep, np.int64(-149))
        sh = qexp - unit
        if sh > 0:
            q = mag >> sh if sh < 63 else np.int64(0)
        else:
            q = mag << (-sh)
        if q == 0:
            csig = np.int64(0)
            cE = np.int64(_C_ZERO_E)
            continue
        csig = (q ^ sg) - sg
        cexp = qexp
        cE = max(E, np.int64(-126))
    if csig == 0:
        return np.uint32(0)
    neg = csig < 0
    q = -csig if neg else csig
    E = cexp + _bit_length(np.uint64(q)) - 1
    if E >= -126:
        r = np.uint32(((E + 127) << 23) | ((q << (cexp - (E - 23))) & 0x7FFFFF))
    else:
        r = np.uint32(q << (cexp + 149))  # subnormal
    return r | (np.uint32(0x80000000) if neg else np.uint32(0))


@nb.njit
def _tc_dot_ij_call(asig, aexp, aspec, i, bsig, bexp, bspec, j, c_bits, k_step, frac_bits, sum_frac_bits, mant):
    """tc_dot_ij behind a real call (not inlined): the fast kernels' rare
    special-value path, compiled once instead of once per kernel."""
    return tc_dot_ij(asig, aexp, aspec, i, bsig, bexp, bspec, j, c_bits, k_step, frac_bits, sum_frac_bits, mant)


_JB = 64  # columns per parallel work item


@nb.njit(inline="always")
def _fast_body(asg, aex, aspc, bsg, bex, bspc, cbits, out, k_step, frac_bits, sum_frac_bits, mant,
               asig, aexp, aspec, bsig, bexp, bspec):
    M = asg.shape[0]
    N = bsg.shape[0]
    nsteps = asg.shape[1] // k_step
    lsh = frac_bits - 2 * mant
    nj = (N + _JB - 1) // _JB
    for t in nb.prange(M * nj):
        i = t // nj
        j0 = (t % nj) * _JB
        for j in range(j0, min(j0 + _JB, N)):
            if aspc[i] != 0 or bspc[j] != 0:
                out[i, j] = _tc_dot_ij_call(asig, aexp, aspec, i, bsig, bexp, bspec, j, cbits[i, j],
                                            k_step, frac_bits, sum_frac_bits, mant)
            else:
                out[i, j] = _fast_ij(asg, aex, i, bsg, bex, j, cbits[i, j], nsteps, k_step, frac_bits,
                                     sum_frac_bits, lsh)


# One kernel per step size, the step a literal so that LLVM unrolls and
# vectorises the step loops; any other step size takes the generic one.
@nb.njit(cache=True, parallel=True)
def _tc_fast_k16(asg, aex, aspc, bsg, bex, bspc, cbits, out, k_step, frac_bits, sum_frac_bits, mant,
                 asig, aexp, aspec, bsig, bexp, bspec):
    _fast_body(asg, aex, aspc, bsg, bex, bspc, cbits, out, 16, frac_bits, sum_frac_bits, mant,
               asig, aexp, aspec, bsig, bexp, bspec)


@nb.njit(cache=True, parallel=True)
def _tc_fast_k32(asg, aex, aspc, bsg, bex, bspc, cbits, out, k_step, frac_bits, sum_frac_bits, mant,
                 asig, aexp, aspec, bsig, bexp, bspec):
    _fast_body(asg, aex, aspc, bsg, bex, bspc, cbits, out, 32, frac_bits, sum_frac_bits, mant,
               asig, aexp, aspec, bsig, bexp, bspec)


@nb.njit(cache=True, parallel=True)
def _tc_fast_kany(asg, aex, aspc, bsg, bex, bspc, cbits, out, k_step, frac_bits, sum_frac_bits, mant,
                  asig, aexp, aspec, bsig, bexp, bspec):
    _fast_body(asg, aex, aspc, bsg, bex, bspc, cbits, out, k_step, frac_bits, sum_frac_bits, mant,
               asig, aexp, aspec, bsig, bexp, bspec)


@nb.njit(cache=True)
def _tc_fast_serial(asg, aex, aspc, bsg, bex, bspc, cbits, out, k_step, frac_bits, sum_frac_bits, mant,
                    asig, aexp, aspec, bsig, bexp, bspec):
    """The generic kernel on one thread: small products, where waking the
    thread pool would cost more than the work."""
    _fast_body(asg, aex, aspc, bsg, bex, bspc, cbits, out, k_step, frac_bits, sum_frac_bits, mant,
               asig, aexp, aspec, bsig, bexp, bspec)


_FAST_KERNELS = {16: _tc_fast_k16, 32: _tc_fast_k32}
_PARALLEL_MACS = 1 << 17  # products with fewer multiply-adds run on one thread


def decode_operands(x, fmt):
    """(sig int64, unit exponent int64, special int8) arrays of x's shape, for tc_dot_ij.

    x must hold values representable in ``fmt`` (checked); ``fmt`` a format or its name.
    """
    from ..bits import to_bits

    fmt = get_format(fmt)
    bits = np.ascontiguousarray(to_bits(x, fmt))
    s, e, sp = _decode_operand(bits.reshape(-1), layout(fmt))
    return s.reshape(bits.shape), e.reshape(bits.shape), sp.reshape(bits.shape)


def _resolve(in_fmt, arch):
    fmt = get_format(in_fmt)
    models = TC_MODELS.get(arch) if isinstance(arch, str) else None
    if models is None:
        raise ValueError(f"unknown arch {arch!r}; accepted: {', '.join(TC_MODELS)}")
    if fmt.name not in models:
        raise ValueError(
            f"tensor_core_dot input format {fmt.name!r} is not a tensor-core input on {arch}; "
            f"accepted: {', '.join(models)}")
    return fmt, models[fmt.name]


def _check_shapes(a, b, c):
    a = as_float_array(a, "a")
    b = as_float_array(b, "b")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"tensor_core_dot needs a (M, K) and b (K, N); got a {a.shape}, b {b.shape}")
    M, K = a.shape
    N = b.shape[1]
    if c is None:
        cbits = np.zeros((M, N), np.uint32)
    else:
        c = as_float_array(c, "c")
        if c.shape != (M, N):
            raise ValueError(f"c must have shape {(M, N)}, got {c.shape}")
        if c.dtype == np.float32 and K > 0:
            # every float32 is an fp32 value; a NaN's payload never reaches the
            # output (the first step writes 0x7FFFFFFF), so the raw bits will do
            cbits = np.ascontiguousarray(c).view(np.uint32)
        else:
            from ..bits import to_bits

            cbits = np.ascontiguousarray(to_bits(c, "fp32"))
    return a, b, cbits


_PARALLEL_PACK = 1 << 16  # operands of at least this many elements are packed in parallel


def _pack(x, fmt, rows, K, Kp, transposed):
    """Check and pack one operand (values exactly representable in fmt, else
    to_bits raises its error); (sig, ae, has-special per row)."""
    src = np.ascontiguousarray(x)
    src_fmt = FORMATS["fp32"] if src.dtype == np.float32 else FORMATS["fp64"]
    bits = src.view(src_fmt.storage_dtype).reshape(-1)
    fn = _pack_values_parallel if src.size >= _PARALLEL_PACK else _pack_values
    sig, ae, spec, bad = fn(bits, layout(src_fmt), target(fmt), rows, K, Kp, transposed)
    if bad:
        from ..bits import to_bits

        to_bits(x, fmt)  # raises, naming the problem
        raise AssertionError("unreachable: to_bits accepted what _pack_values rejected")
    return sig, ae, spec


def _prepare(a, b, c, fmt, model):
    """Checked, packed operands for :func:`_run_kernel` (the benchmark times the two apart)."""
    a, b, cbits = _check_shapes(a, b, c)
    M, K = a.shape
    N = b.shape[1]
    Kp = -(-K // model.k_step) * model.k_step
    asg, aex, aspc = _pack(a, fmt, M, K, Kp, False)
    bsg, bex, bspc = _pack(b, fmt, N, K, Kp, True)
    if aspc.any() or bspc.any():  # rows/columns with inf or NaN take tc_dot_ij
        asig, aexp, aspec = decode_operands(a, fmt)
        bsig, bexp, bspec = decode_operands(b, fmt)
    else:  # no inf/NaN anywhere: the reference path is never taken
        asig = bsig = np.zeros((1, 1), np.int64)
        aexp = bexp = np.zeros((1, 1), np.int64)
        aspec = bspec = np.zeros((1, 1), np.int8)
    return (asg, aex, aspc, bsg, bex, bspc, cbits, asig, aexp, aspec, bsig, bexp, bspec)


def _run_kernel(ops, model, fmt):
    asg, aex, aspc, bsg, bex, bspc, cbits, asig, aexp, aspec, bsig, bexp, bspec = ops
    out = np.empty(cbits.shape, np.uint32)
    if cbits.size * asg.shape[1] < _PARALLEL_MACS:
        kernel = _tc_fast_serial
    else:
        kernel = _FAST_KERNELS.get(model.k_step, _tc_fast_kany)
    kernel(asg, aex, aspc, bsg, bex, bspc, cbits, out, model.k_step, model.frac_bits,
           model.sum_frac_bits, fmt.mant_bits, asig, aexp, aspec, bsig, bexp, bspec)
    return out


def tensor_core_dot(a, b, c=None, *, in_fmt="bf16", arch="sm90"):
    """``a @ b + c`` exactly as chained Hopper wgmma k-steps compute it.

    a : (M, K) and b : (K, N) float arrays whose values are representable in
        ``in_fmt`` (bf16, fp16, fp8_e4m3, fp8_e5m2); checked, not rounded.  Any dtype
        of the shared policy (:func:`~flashbits.emulator.rounding.as_float_array`):
        float32/float64, or numpy float16 / ml_dtypes bfloat16, float8_* arrays.
    c : (M, N) accumulator (values representable in fp32, same dtype policy) or None (+0).
    Returns float32 (M, N).  See the module docstring for the arithmetic.
    """
    fmt, model = _resolve(in_fmt, arch)
    if model.frac_bits < 2 * fmt.mant_bits:
        # the fast path's pre-shift L = F − 2·mant must be >= 0 (true of every sm90 model)
        return _tensor_core_dot_reference(a, b, c, in_fmt=fmt, arch=arch)
    return _run_kernel(_prepare(a, b, c, fmt, model), model, fmt).view(np.float32)


def _tensor_core_dot_reference(a, b, c=None, *, in_fmt="bf16", arch="sm90"):
    """The same product through the readable per-element reference (tc_dot_ij
    for every element, decoded operands): slow; tests check the fast path
    against it bit for bit."""
    fmt, model = _resolve(in_fmt, arch)
    a, b, cbits = _check_shapes(a, b, c)
    asig, aexp, aspec = decode_operands(a, fmt)
    bsig, bexp, bspec = decode_operands(b, fmt)
    out = np.empty(cbits.shape, np.uint32)
    _tc_dot_kernel(asig, aexp, aspec, bsig, bexp, bspec, cbits, out, model.k_step, model.frac_bits,
                   model.sum_frac_bits, fmt.mant_bits)
    return out.view(np.float32)
