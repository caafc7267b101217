"""Properties of the Hopper hardware models: tensor_core_dot / tc_dot_ij and sfu_exp2.

Expected values come from (a) exact arithmetic (Python integers), (b) a slow
pure-Python statement of the documented rule (docs/hardware.md), itself replayed
against the H200's golden records below, (c) hand derivations written next to
each targeted case, or (d) the GPU records.  Nothing is copied from the code
under test.  Hypothesis runs derandomised (fixed seeds).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashbits.emulator import FORMATS, from_bits, quantize, sfu_exp2, tensor_core_dot
from flashbits.emulator.hw.sfu import load_exp2_tables
from flashbits.emulator.hw.tensor_core import TC_MODELS, _tensor_core_dot_reference, decode_operands, tc_dot_ij

HW = os.path.join(os.path.dirname(__file__), "data", "hw")
TC_FORMATS = ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2")
# The documented model (docs/hardware.md), restated here on purpose:
# (k_step, F = fraction bits kept below the step's largest alignment exponent,
#  S = fraction bits the step's sum keeps below its own leading bit)
RULE = {"bf16": (16, 25, 23), "fp16": (16, 25, 23), "fp8_e4m3": (32, 13, 13), "fp8_e5m2": (32, 13, 13)}
NAN32 = 0x7FFFFFFF
PINF32, NINF32 = 0x7F800000, 0xFF800000

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def bits32(x):
    return np.asarray(x, np.float32).view(np.uint32)


def f32(*vals):
    return np.array(vals, np.float32)


# ------------------------------------------------------------------------
# The rule in plain Python, on exact integers (values scaled by 2^SCALE).
# ------------------------------------------------------------------------
SCALE = 320  # every fp32 / fp8 / bf16 value and product is an integer multiple of 2^-320


def _exp_of(v: int) -> int:
    """floor(log2(|v|·2^-SCALE)) for an integer v != 0."""
    return abs(v).bit_length() - 1 - SCALE


def _trunc_to(v: int, e: int) -> int:
    """v truncated toward zero to a multiple of 2^e (v and the result scaled)."""
    q = 1 << (e + SCALE)
    return (abs(v) // q) * q * (1 if v >= 0 else -1)


def _scaled(x: float) -> int:
    """x (a float32 value) · 2^SCALE as an exact integer."""
    m, e = math.frexp(x)  # x = m·2^e exactly, m·2^53 an integer
    assert e - 53 + SCALE >= 0  # true for every float32 (e >= −148)
    return int(m * 2**53) << (e - 53 + SCALE)


def rule_dot(a_row, b_col, c, fmt):
    """fp32 bits of one tensor-core dot, by the documented rule (slow, readable)."""
    k_step, F, S = RULE[fmt]
    emin = FORMATS[fmt].emin
    acc = float(c)
    K = len(a_row)
    if K == 0:
        raise ValueError("the rule is stated for K >= 1")
    for k0 in range(0, K, k_step):
        # specials first (IEEE): NaN in, inf·0, +inf with −inf → NaN; else inf wins
        kinds = []
        if math.isnan(acc):
            kinds.append("nan")
        elif math.isinf(acc):
            kinds.append("i+" if acc > 0 else "i-")
        terms = []  # (scaled value, alignment exponent)
        if not math.isnan(acc) and not math.isinf(acc) and acc != 0:
            v = _scaled(acc)
            terms.append((v, max(_exp_of(v), -126)))
        for x, y in zip(a_row[k0:k0 + k_step], b_col[k0:k0 + k_step]):
            x, y = float(x), float(y)
            if math.isnan(x) or math.isnan(y):
                kinds.append("nan")
            elif math.isinf(x) or math.isinf(y):
                if x == 0 or y == 0:
                    kinds.append("nan")
                else:
                    kinds.append("i+" if (x > 0) == (y > 0) else "i-")
            elif x != 0 and y != 0:
                vx, vy = _scaled(x), _scaled(y)
                ex = max(_exp_of(vx), emin)
                ey = max(_exp_of(vy), emin)
                terms.append((vx * vy >> SCALE, ex + ey))  # exact: the product is a multiple of 2^-SCALE
        if "nan" in kinds or ("i+" in kinds and "i-" in kinds):
            acc = float("nan")
            continue
        if "i+" in kinds or "i-" in kinds:
            acc = math.inf if "i+" in kinds else -math.inf
            continue
        if not terms:
            acc = 0.0
            continue
        E = max(e for _, e in terms)
        s = sum(_trunc_to(v, E - F) for v, _ in terms)
        if s == 0:
            acc = 0.0
            continue
        Es = _exp_of(s)
        if Es > 127:
            acc = math.inf if s > 0 else -math.inf
            continue
        r = _trunc_to(s, max(Es - S, -149))
        acc = math.ldexp(float(r >> (SCALE - 149)), -149) if r else 0.0  # exact: r is on the 2^-149 grid
    if math.isnan(acc):
        return NAN32
    return int(bits32(acc))


def rule_matmul(a, b, c, fmt):
    M, K = a.shape
    N = b.shape[1]
    out = np.empty((M, N), np.uint32)
    for i in range(M):
        for j in range(N):
            out[i, j] = rule_dot(a[i], b[:, j], c[i, j], fmt)
    return out


def test_rule_statement_matches_the_models_parameters():
    """TC_MODELS holds the parameters docs/hardware.md states (and RULE restates)."""
    for fmt, (k, F, S) in RULE.items():
        m = TC_MODELS["sm90"][fmt]
        assert (m.k_step, m.frac_bits, m.sum_frac_bits) == (k, F, S)


@pytest.mark.parametrize("fmt", TC_FORMATS)
def test_rule_statement_reproduces_gpu_records(fmt):
    """The pure-Python rule, replayed on a corner of every golden H200 tile
    (4×4 outputs of each kind/K/accumulator combination): anchors the rule
    used below to the hardware, not to the emulator."""
    with np.load(os.path.join(HW, "dot_golden.npz")) as z:
        A, B, C, D, meta = (z[f"golden_{fmt}_{k}"] for k in ("a", "b", "c", "d", "meta"))
    for t in range(len(meta)):
        K = int(str(meta[t]).split("/")[1])
        a = from_bits(A[t][:4, :K], fmt).astype(np.float64)
        b = from_bits(B[t][:K, :4], fmt).astype(np.float64)
        c = C[t][:4, :4].view(np.float32).astype(np.float64)
        got = rule_matmul(a, b, c, fmt)
        assert np.array_equal(got, D[t][:4, :4]), f"{fmt} {meta[t]}"


# ------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------

def _codes_to_values(codes, fmt, allow_special):
    x = from_bits(np.asarray(codes, FORMATS[fmt].storage_dtype), fmt)
    if not allow_special:
        x = np.where(np.isfinite(x), x, np.float32(0))
    return x.astype(np.float32)


@st.composite
def dot_problem(draw, fmt, max_mn=3, max_k=70, special=True):
    M = draw(st.integers(1, max_mn))
    N = draw(st.integers(1, max_mn))
    K = draw(st.integers(1, max_k))
    nbits = FORMATS[fmt].bits
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    style = draw(st.sampled_from(["codes", "normal", "cancel"]))
    if style == "codes":  # every code equally likely: specials, subnormals, extremes
        a = _codes_to_values(rng.integers(0, 1 << nbits, (M, K)), fmt, special)
        b = _codes_to_values(rng.integers(0, 1 << nbits, (K, N)), fmt, special)
    else:
        sat = fmt.startswith("fp8")
        a = quantize(rng.standard_normal((M, K)) * 2.0 ** rng.integers(-3, 3), fmt, saturate=sat)
        b = quantize(rng.standard_normal((K, N)), fmt, saturate=sat)
        if style == "cancel" and K > 1:
            a[:, 1::2] = -a[:, 0:K - 1:2]
            b[1::2, :] = b[0:K - 1:2, :]
    cstyle = draw(st.sampled_from(["zero", "bits", "normal"]))
    if cstyle == "zero":
        c = np.zeros((M, N), np.float32)
    elif cstyle == "bits":
        cb = rng.integers(0, 1 << 32, (M, N), dtype=np.uint64).astype(np.uint32)
        c = cb.view(np.float32)
        if not special:
            c = np.where(np.isfinite(c), c, np.float32(1.0))
    else:
        c = quantize(rng.standard_normal((M, N)) * 4.0, "fp32")
    return a, b, np.ascontiguousarray(c, np.float32)


# ------------------------------------------------------------------------
# tensor_core_dot against the rule, and the two implementations against each other
# ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", TC_FORMATS)
@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_matches_rule_statement(fmt, data):
    a, b, c = data.draw(dot_problem(fmt))
    got = tensor_core_dot(a, b, c, in_fmt=fmt).view(np.uint32)
    want = rule_matmul(a.astype(np.float64), b.astype(np.float64), c.astype(np.float64), fmt)
    assert np.array_equal(got, want), (got, want)


@pytest.mark.parametrize("fmt", TC_FORMATS)
@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_fast_path_equals_reference_tc_dot_ij(fmt, data):
    """tensor_core_dot (packed fast kernels) == tc_dot_ij on every element, bits."""
    a, b, c = data.draw(dot_problem(fmt, max_mn=9, max_k=140))
    fast = tensor_core_dot(a, b, c, in_fmt=fmt).view(np.uint32)
    ref = _tensor_core_dot_reference(a, b, c, in_fmt=fmt).view(np.uint32)
    assert np.array_equal(fast, ref)


def test_tc_dot_ij_is_callable_from_numba():
    """The per-element entry point the attention emulator uses, with decode_operands."""
    import numba as nb

    @nb.njit
    def one(asig, aexp, aspec, bsig, bexp, bspec, cb, k_step, F, S, mant):
        return tc_dot_ij(asig, aexp, aspec, 0, bsig, bexp, bspec, 0, cb, k_step, F, S, mant)

    # exact 1 − 2^-25 truncated to fp32 toward zero: 1 − 2^-24 (H200.md)
    a = f32(1.0, -(2.0**-25)).reshape(1, 2)
    b = f32(1.0, 1.0).reshape(2, 1)
    asig, aexp, aspec = decode_operands(a, "bf16")
    bsig, bexp, bspec = decode_operands(b, "bf16")
    r = one(asig, aexp, aspec, bsig, bexp, bspec, np.uint32(0), 16, 25, 23, 7)
    assert r == bits32(1.0 - 2.0**-24)


# ------------------------------------------------------------------------
# Exactness, error bound, truncation direction
# ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", TC_FORMATS)
@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_exact_when_everything_is_representable(fmt, data):
    """Small integers times powers of two: every product and partial sum is
    exact in each model (|a|, |b| <= 8 so products < 2^7 share one grid with an
    integer accumulator |c| <= 1024; partial sums < 2^14 fit even the fp8
    14-bit step sum), so the result equals the exact dot product."""
    M = data.draw(st.integers(1, 4))
    N = data.draw(st.integers(1, 4))
    K = data.draw(st.integers(1, 100))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    f = FORMATS[fmt]
    # scales keeping 1..8 normal and finite in fmt (2^s >= 2^emin, 8·2^s <= 2^emax)
    # and the fp32 accumulator far from its range ends (|sa + sb| <= 100)
    sa = data.draw(st.integers(max(f.emin, -50), min(f.emax - 3, 50)))
    sb = data.draw(st.integers(max(f.emin, -50), min(f.emax - 3, 50)))
    ai = rng.integers(-8, 9, (M, K))
    bi = rng.integers(-8, 9, (K, N))
    ci = rng.integers(-1024, 1025, (M, N))
    a = (ai * 2.0**sa).astype(np.float32)
    b = (bi * 2.0**sb).astype(np.float32)
    c = (ci * 2.0 ** (sa + sb)).astype(np.float32)
    exact = (ai @ bi + ci) * 2.0 ** (sa + sb)  # integers < 2^14: exact in float64
    got = tensor_core_dot(a, b, c, in_fmt=fmt)
    assert np.array_equal(bits32(got), bits32(exact.astype(np.float32)))  # also +0 for a zero sum


def _exact_and_bound(a, b, c, fmt):
    """Exact a@b+c and the model's error bound, both as scaled integers.

    Per k-step with largest alignment exponent E, each of the <= k_step + 1
    terms (products and the incoming accumulator) is truncated toward zero to
    a multiple of 2^(E−F): error < (k_step+1)·2^(E−F).  The step's sum s is
    then truncated to S bits below its leading bit 2^Es: error < 2^(Es−S)
    (normal range; the inputs keep it there).  With normal operands
    2^(ea+eb) <= |a·b|, and truncation toward zero never grows a magnitude, so
    2^E and 2^Es are both <= P_s = |c| + Σ_{k before the step's end} |a_k·b_k|:
        |result − exact| < Σ_steps ((k_step+1)·2^−F + 2^−S) · P_s.
    """
    k_step, F, S = RULE[fmt]
    M, K = a.shape
    N = b.shape[1]
    exact = np.empty((M, N), object)
    bound2 = np.empty((M, N), object)  # bound · 2^(F+S), kept integral
    for i in range(M):
        for j in range(N):
            prods = [(_scaled(float(a[i, k])) * _scaled(float(b[k, j]))) >> SCALE for k in range(K)]
            cv = _scaled(float(c[i, j]))
            exact[i, j] = cv + sum(prods)
            tot = 0
            for k0 in range(0, K, k_step):
                P = abs(cv) + sum(abs(p) for p in prods[:k0 + k_step])
                tot += ((k_step + 1) * 2**S + 2**F) * P
            bound2[i, j] = tot
    return exact, bound2


@pytest.mark.parametrize("fmt", TC_FORMATS)
@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_error_bounded_by_the_models_truncations(fmt, data):
    M = data.draw(st.integers(1, 3))
    N = data.draw(st.integers(1, 3))
    K = data.draw(st.integers(1, 130))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    f = FORMATS[fmt]
    lo, hi = max(f.emin, -10), min(f.emax - 1, 10)  # normal operands, fp32 stays normal
    sign_mode = data.draw(st.sampled_from(["mixed", "positive", "negative"]))

    def normal(shape):
        m = 1.0 + rng.random(shape)
        e = rng.integers(lo, hi + 1, shape)
        s = rng.choice([-1.0, 1.0], shape) if sign_mode == "mixed" else 1.0
        return quantize(s * m * 2.0**e, fmt, "rz")

    a = normal((M, K))
    b = normal((K, N))
    if sign_mode == "negative":
        a = -a
    c = quantize((1.0 + rng.random((M, N))) * 2.0 ** rng.integers(-10, 10, (M, N)), "fp32", "rz")
    c = c if sign_mode == "positive" else (-c if sign_mode == "negative" else c * rng.choice([-1, 1], (M, N)))
    c = np.where(rng.random((M, N)) < 0.3, np.float32(0), c).astype(np.float32)
    got = tensor_core_dot(a, b, c, in_fmt=fmt)
    assert np.all(np.isfinite(got))
    exact, bound2 = _exact_and_bound(a, b, c, fmt)
    k_step, F, S = RULE[fmt]
    for i in range(M):
        for j in range(N):
            err = _scaled(float(got[i, j])) - exact[i, j]
            assert abs(err) * 2 ** (F + S) < bound2[i, j] or err == 0, (i, j)
            # truncation toward zero: a sum of same-sign terms never grows in magnitude
            if sign_mode == "positive":
                assert err <= 0
            elif sign_mode == "negative":
                assert err >= 0


# ------------------------------------------------------------------------
# Targeted cases, derived by hand from the rule
# ------------------------------------------------------------------------

def dot1(a, b, c=0.0, fmt="bf16"):
    """Bits of one dot product of 1-D lists."""
    a = np.asarray(a, np.float32).reshape(1, -1)
    b = np.asarray(b, np.float32).reshape(-1, 1)
    return int(tensor_core_dot(a, b, np.full((1, 1), c, np.float32), in_fmt=fmt).view(np.uint32)[0, 0])


@pytest.mark.parametrize("fmt", ("bf16", "fp16"))
def test_truncation_toward_zero_of_the_step_sum(fmt):
    # exact 1 − 2^-25 (the product −2^-25 has alignment exponent −25; E = 0, so it
    # sits on the 2^-25 grid); the fp32 sum (leading bit 2^-1, 24 bits) truncates
    # it to 1 − 2^-24 (H200.md), where round-to-nearest would give 1.0
    a, b = ([1.0, -(2.0**-25)], [1.0, 1.0]) if fmt == "bf16" else ([1.0, -(2.0**-12)], [1.0, 2.0**-13])
    assert dot1(a, b, fmt=fmt) == bits32(1.0 - 2.0**-24)
    # −1 − 2^-25 → −1 (toward zero)
    assert dot1([-1.0, a[1]], b, fmt=fmt) == bits32(-1.0)


def test_alignment_drops_bits_below_the_F_grid():
    # 1 + 2^-26: 2^-26 is below the 2^-25 grid of E = 0 → lost before the sum
    assert dot1([1.0, 2.0**-26], [1.0, 1.0]) == bits32(1.0)
    # 1 + 1.5·2^-24 = 1 + 3·2^-25: kept by alignment, then the fp32 sum (grid 2^-23)
    # truncates 0.75 ulp → 1.0, where round-to-nearest would give 1 + 2^-23
    assert dot1([1.0, 1.5 * 2.0**-24], [1.0, 1.0]) == bits32(1.0)


def test_alignment_uses_unnormalised_product_exponent():
    # 1.5·1.5 = 2.25 has alignment exponent 0 + 0 = 0 (not 1): the grid is 2^-25,
    # so the 2^-25 term survives and, after 2.25 − 2.25 cancels, is the result.
    # (Aligned to the normalised exponent 1 it would be truncated to 0.)
    assert dot1([1.5, -1.5, 2.0**-25], [1.5, 1.5, 1.0]) == bits32(2.0**-25)
    # with 1.0·2.0 (exponent 1) instead, the grid is 2^-24 and 2^-25 is lost: +0
    assert dot1([1.0, -1.0, 2.0**-25], [2.0, 2.0, 1.0]) == 0


def test_fp8_step_sum_keeps_14_bits():
    # fp8: every term is aligned to 13 fraction bits below E, and the sum keeps
    # 14 significant bits.  c = 1 + 2^-20 with zero products: E = 0, c truncated
    # to the 2^-13 grid → 1.0.  The same through bf16 (F = 25) keeps c.
    c = 1.0 + 2.0**-20
    for fmt in ("fp8_e4m3", "fp8_e5m2"):
        assert dot1([0.0], [1.0], c, fmt) == bits32(1.0)
    assert dot1([0.0], [1.0], c, "bf16") == bits32(c)
    # c = 1, product 2^-13 (on the grid) stays; 2^-14 is lost (e4m3 subnormal 2^-7)
    assert dot1([2.0**-7], [2.0**-6], 1.0, "fp8_e4m3") == bits32(1.0 + 2.0**-13)
    assert dot1([2.0**-7], [2.0**-7], 1.0, "fp8_e4m3") == bits32(1.0)
    # c = 2^13 + 1 has 14 bits: kept; 2^13 + 0.5 (15 bits; E = 13, grid 1) → 2^13
    assert dot1([0.0], [0.0], 2.0**13 + 1, "fp8_e4m3") == bits32(2.0**13 + 1)
    assert dot1([0.0], [0.0], 2.0**13 + 0.5, "fp8_e4m3") == bits32(2.0**13)
    # the sum's own truncation: c = 2^13 − 0.5 (E = 12, grid 2^-1: exact) plus the
    # product 1 is exactly 2^13 + 0.5, 15 significant bits → 2^13 (fp32 would keep it)
    assert dot1([1.0], [1.0], 2.0**13 - 0.5, "fp8_e4m3") == bits32(2.0**13)
    assert dot1([1.0], [1.0], 2.0**13 - 0.5, "bf16") == bits32(2.0**13 + 0.5)


@pytest.mark.parametrize("fmt", TC_FORMATS)
def test_zero_results_are_positive_zero(fmt):
    # IEEE would give −0 here; the records hold no all-(−0) dot yet (docs/hardware.md:
    # the negzero probe kind, TODO(gpu-run-2)), so this pins the model's stated rule
    assert dot1([-0.0], [1.0], -0.0, fmt) == 0
    assert dot1([0.0, -0.0], [-1.0, 1.0], -0.0, fmt) == 0
    assert dot1([1.0], [1.0], -1.0, fmt) == 0
    assert dot1([1.0, -1.0], [2.0, 2.0], 0.0, fmt) == 0
    # a nonzero negative result keeps its sign
    assert dot1([1.0], [-1.0], 0.0, fmt) == bits32(-1.0)


@pytest.mark.parametrize("fmt", TC_FORMATS)
def test_specials(fmt):
    has_inf = FORMATS[fmt].has_inf
    nan = float("nan")
    assert dot1([nan, 1.0], [1.0, 1.0], 0.0, fmt) == NAN32
    assert dot1([1.0], [1.0], nan, fmt) == NAN32
    assert dot1([0.0], [0.0], -nan, fmt) == NAN32  # any NaN in → the GPU's one code
    assert dot1([1.0], [1.0], np.inf, fmt) == PINF32
    assert dot1([1.0], [1.0], -np.inf, fmt) == NINF32
    if has_inf:
        inf = float("inf")
        assert dot1([inf], [0.0], 1.0, fmt) == NAN32  # inf·0
        assert dot1([0.0], [-inf], 1.0, fmt) == NAN32
        assert dot1([inf, 1.0], [1.0, 1.0], 0.0, fmt) == PINF32
        assert dot1([inf], [-2.0], 0.0, fmt) == NINF32
        assert dot1([inf, inf], [1.0, -1.0], 0.0, fmt) == NAN32  # inf − inf
        assert dot1([inf], [1.0], -np.inf, fmt) == NAN32  # product +inf, accumulator −inf
        assert dot1([-inf], [1.0], -np.inf, fmt) == NINF32
        # a special in a later step: the first step's finite result is replaced
        K = RULE[fmt][0]
        a = [1.0] * K + [inf]
        assert dot1(a, [1.0] * (K + 1), 0.0, fmt) == PINF32
        # an inf in step one stays inf through finite later steps
        assert dot1([inf] + [1.0] * K, [1.0] * (K + 1), 0.0, fmt) == PINF32


def test_overflow_gives_inf():
    fmax = float(np.finfo(np.float32).max)  # (2 − 2^-23)·2^127
    # FLT_MAX + a product below its ulp 2^104: the exact sum < 2^128 truncates back
    assert dot1([2.0**100], [1.0], fmax) == bits32(fmax)
    # FLT_MAX + 2^104 = 2^128 exactly: the step's sum reaches 2^128 → +inf (measured on
    # the H200), although the rounding is otherwise toward zero
    assert dot1([2.0**104], [1.0], fmax) == PINF32
    assert dot1([-(2.0**104)], [1.0], -fmax) == NINF32
    # bf16 products alone: 2^127 · 2 · 2 terms = 2^129
    assert dot1([2.0**127, 2.0**127], [2.0, 2.0]) == PINF32
    # fp8: the 14-bit truncation of FLT_MAX + tiny: (2 − 2^-13)·2^127
    assert dot1([1.0], [1.0], fmax, "fp8_e4m3") == bits32((2 - 2.0**-13) * 2.0**127)


@pytest.mark.parametrize("fmt", TC_FORMATS)
def test_subnormal_operands_and_results(fmt):
    f = FORMATS[fmt]
    tiny = float(f.min_subnormal)
    # a subnormal operand times 1: exact (its alignment exponent is emin)
    want = float(np.float32(tiny))
    assert dot1([tiny], [1.0], 0.0, fmt) == bits32(want)
    # fp32 subnormal accumulator kept: c = 2^-149, zero products (all formats, E = −126,
    # on the grid 2^(−126−F) <= 2^-149 only when F >= 23)
    r = dot1([0.0], [0.0], 2.0**-149, fmt)
    assert r == (bits32(2.0**-149) if RULE[fmt][1] >= 23 else 0)


# ------------------------------------------------------------------------
# Zero padding, chaining, K = 0
# ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", TC_FORMATS)
@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_padding_K_to_whole_steps_changes_nothing(fmt, data):
    """A K that is not a multiple of the step equals the same dot zero-padded
    (with +0 or −0) up to the step boundary: zero products change nothing."""
    k_step = RULE[fmt][0]
    a, b, c = data.draw(dot_problem(fmt, max_mn=4, max_k=3 * k_step))
    K = a.shape[1]
    Kp = -(-K // k_step) * k_step
    if Kp == K:
        Kp += k_step  # whole steps: pad to the next multiple instead, tested below
    pad = data.draw(st.integers(1, Kp - K)) if Kp - K < k_step else Kp - K
    z = data.draw(st.sampled_from([0.0, -0.0]))
    ap = np.concatenate([a, np.full((a.shape[0], pad), z, np.float32)], axis=1)
    bp = np.concatenate([b, np.full((pad, b.shape[1]), z, np.float32)], axis=0)
    got = tensor_core_dot(a, b, c, in_fmt=fmt).view(np.uint32)
    padded = tensor_core_dot(ap, bp, c, in_fmt=fmt).view(np.uint32)
    if K % k_step:
        assert np.array_equal(got, padded)
    elif RULE[fmt][1] >= 23:
        # a whole extra step of zeros: E is the accumulator's own exponent and
        # F >= 23 keeps all 24 bits of any fp32 (subnormals too: grid
        # 2^(−126−F) <= 2^-149), so bf16/fp16 results are unchanged as well
        assert np.array_equal(got, padded)
    else:
        # fp8 (F = 13): a zero step re-truncates a subnormal accumulator to the
        # 2^-139 grid; check that case against the rule instead
        want = rule_matmul(ap.astype(np.float64), bp.astype(np.float64), c.astype(np.float64), fmt)
        assert np.array_equal(padded, want)


@pytest.mark.parametrize("fmt", TC_FORMATS)
@settings(max_examples=20, **SETTINGS)
@given(data=st.data())
def test_chained_equals_step_by_step(fmt, data):
    """One K = 4·k_step call == four k_step calls, each feeding the next as c."""
    k_step = RULE[fmt][0]
    a, b, c = data.draw(dot_problem(fmt, max_mn=5, max_k=1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    M, N = c.shape
    nbits = FORMATS[fmt].bits
    special = data.draw(st.booleans())
    a = _codes_to_values(rng.integers(0, 1 << nbits, (M, 4 * k_step)), fmt, special)
    b = _codes_to_values(rng.integers(0, 1 << nbits, (4 * k_step, N)), fmt, special)
    whole = tensor_core_dot(a, b, c, in_fmt=fmt).view(np.uint32)
    acc = c
    for s in range(4):
        sl = slice(s * k_step, (s + 1) * k_step)
        acc = tensor_core_dot(a[:, sl], b[sl, :], acc, in_fmt=fmt)
    assert np.array_equal(whole, acc.view(np.uint32))


def test_K_zero_returns_c():
    c = f32(1.5, -0.0, np.inf).reshape(1, 3)
    out = tensor_core_dot(np.zeros((1, 0), np.float32), np.zeros((0, 3), np.float32), c)
    assert np.array_equal(out.view(np.uint32), c.view(np.uint32))


def test_thread_count_does_not_change_bits():
    import numba

    rng = np.random.default_rng(3)
    a = quantize(rng.standard_normal((33, 50)), "bf16")
    b = quantize(rng.standard_normal((50, 70)), "bf16")
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = tensor_core_dot(a, b).view(np.uint32)
    finally:
        numba.set_num_threads(n)
    assert np.array_equal(one, tensor_core_dot(a, b).view(np.uint32))


# ------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------

def test_errors():
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"a \(M, K\) and b \(K, N\)"):
        tensor_core_dot(a, np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"a \(M, K\) and b \(K, N\)"):
        tensor_core_dot(np.ones(3, np.float32), b)
    with pytest.raises(ValueError, match="unknown format"):
        tensor_core_dot(a, b, in_fmt="fp4")
    with pytest.raises(ValueError, match="not a tensor-core input.*accepted: bf16"):
        tensor_core_dot(a, b, in_fmt="fp32")
    with pytest.raises(ValueError, match="unknown arch 'sm80'; accepted: sm90"):
        tensor_core_dot(a, b, arch="sm80")
    with pytest.raises(ValueError, match="not representable in bf16"):
        tensor_core_dot(np.full((2, 3), 0.1, np.float32), b)
    with pytest.raises(ValueError, match="not representable in fp8_e4m3"):
        tensor_core_dot(a, np.full((3, 4), 17.0, np.float32), in_fmt="fp8_e4m3")
    with pytest.raises(ValueError, match="no code"):  # e4m3 has no inf
        tensor_core_dot(a, np.full((3, 4), np.inf, np.float32), in_fmt="fp8_e4m3")
    with pytest.raises(ValueError, match=r"c must have shape \(2, 4\), got \(4, 2\)"):
        tensor_core_dot(a, b, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="not representable in fp32"):
        tensor_core_dot(a, b, np.full((2, 4), 0.1))  # float64 0.1 is no float32
    with pytest.raises(TypeError, match="float32 or float64"):
        tensor_core_dot(np.ones((2, 3), np.int32), b)
    with pytest.raises(ValueError, match="unknown format"):
        decode_operands(a, "bf17")


# ------------------------------------------------------------------------
# sfu_exp2
# ------------------------------------------------------------------------

@pytest.mark.parametrize("ftz", [True, False])
def test_exp2_of_integers_is_exact(ftz):
    n = np.arange(-126, 128)
    got = sfu_exp2(n.astype(np.float32), ftz=ftz)
    assert np.array_equal(bits32(got), bits32(np.ldexp(1.0, n).astype(np.float32)))
    assert np.array_equal(bits32(sfu_exp2(f32(128.0, 200.0), ftz=ftz)), [PINF32, PINF32])


def test_exp2_tables_are_monotone():
    """Reported fact of the captured tables: T+[f] = MUFU.EX2(f·2^-23) is
    non-decreasing in f and T−[f] = MUFU.EX2(−f·2^-23) non-increasing, from
    T±[0] = 1 to T+ < 2 and T− >= 1/2 (so exp2 is monotone across binades too)."""
    tpos, tneg, params = load_exp2_tables()
    p, n = tpos.view(np.float32), tneg.view(np.float32)
    assert params["F"] == 23 and p.size == n.size == 1 << 23
    assert p[0] == n[0] == 1.0
    assert np.all(np.diff(p) >= 0) and np.all(np.diff(n) <= 0)
    assert p[-1] < 2.0 and n[-1] >= 0.5


def _float32_sweep(lo, hi, n):
    """About n float32 values in [lo, hi], sorted by value: every (odd) stride-th
    bit pattern of each sign's part, so that all binades and mantissa patterns
    are visited."""
    spans = []
    if hi >= 0:
        spans.append((int(bits32(max(lo, 0.0))), int(bits32(hi))))
    if lo < 0:
        spans.append((int(bits32(-0.0 if hi >= 0 else hi)), int(bits32(lo))))  # −|x| increases with the bits
    per = max(1, n // len(spans))
    xs = []
    for a, b in spans:
        stride = max(1, (b - a) // per) | 1
        xs.append(np.arange(a, b + 1, stride, dtype=np.int64).astype(np.uint32).view(np.float32))
    x = np.sort(np.concatenate(xs))
    return x[(x >= lo) & (x <= hi)]


@pytest.mark.parametrize("ftz", [True, False])
@pytest.mark.parametrize("lo,hi", [(-1.0, 1.0), (-150.0, -120.0), (-30.0, 30.0), (100.0, 129.0)])
def test_exp2_monotone_over_sorted_inputs(ftz, lo, hi):
    """exp2 is non-decreasing over about 2M sorted float32 inputs per range."""
    x = _float32_sweep(lo, hi, 2_000_000)
    assert x.size > 1_000_000 and x[0] >= lo and x[-1] <= hi
    y = sfu_exp2(x, ftz=ftz)
    assert np.all(y[1:] >= y[:-1])


def test_exp2_ftz_and_nonftz_differ_only_below_minus_126():
    rng = np.random.default_rng(11)
    xb = np.concatenate([rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32),
                         bits32(rng.uniform(-160, -100, 1 << 18).astype(np.float32)),
                         rng.integers(0, 1 << 23, 4096).astype(np.uint32) | np.uint32(0x80000000)])
    x = xb.view(np.float32)
    ftz = bits32(sfu_exp2(x, ftz=True))
    non = bits32(sfu_exp2(x, ftz=False))
    differ = ftz != non
    assert differ.any()
    assert np.all(x[differ] < -126)
    # below −126 the FTZ form flushes to +0; subnormal x reads as 0 in both: 2^0 = 1
    assert np.all(ftz[x < -126] == 0)
    sub = (xb & 0x7F800000) == 0
    assert np.all(ftz[sub] == bits32(1.0)) and np.all(non[sub] == bits32(1.0))


def test_exp2_nonftz_composition():
    """Non-FTZ x < −126: MUFU(x/2)², the square one IEEE float32 multiply (RNE,
    subnormals kept) — numpy's float32 multiply, an independent implementation."""
    rng = np.random.default_rng(12)
    x = rng.uniform(-152, -126, 200_000).astype(np.float32)
    x = x[x < -126]
    h = sfu_exp2(x / np.float32(2), ftz=True)  # x/2 exact
    want = h * h
    assert np.array_equal(bits32(sfu_exp2(x, ftz=False)), bits32(want))
    assert (want > 0).any() and (want == 0).any()


def test_exp2_specials():
    x = f32(np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45)
    for ftz in (True, False):
        got = bits32(sfu_exp2(x, ftz=ftz))
        assert list(got) == [NAN32, NAN32, PINF32, 0, bits32(1.0), bits32(1.0), bits32(1.0), bits32(1.0)]


def test_exp2_shape_and_errors():
    x = np.zeros((2, 3, 4), np.float32)
    assert sfu_exp2(x).shape == (2, 3, 4) and sfu_exp2(x).dtype == np.float32
    assert np.array_equal(sfu_exp2(np.array([0.5, -3.0])), sfu_exp2(f32(0.5, -3.0)))  # float64 holding float32s
    with pytest.raises(ValueError, match="float32"):
        sfu_exp2(np.array([0.1]))
    with pytest.raises(TypeError, match="float32 or float64"):
        sfu_exp2(np.array([1, 2]))
    with pytest.raises(ValueError, match="unknown arch"):
        sfu_exp2(f32(1.0), arch="sm80")
