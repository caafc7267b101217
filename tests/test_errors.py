"""Clear errors from emulator.quantize and the paper fix's parameters: each names what was wrong and what is accepted."""

from __future__ import annotations

import numpy as np
import pytest

from flashbits.emulator import FORMATS, quantize

X = np.array([1.0, 2.5, -3.25], np.float32)
MODES = ("rne", "rna", "rz", "ru", "rd", "sr")


@pytest.mark.parametrize("bad", ["bf17", "float16", "BF16", ""])
def test_unknown_format_lists_the_valid_ones(bad):
    with pytest.raises(ValueError) as e:
        quantize(X, bad)
    msg = str(e.value)
    assert repr(bad) in msg
    for name in FORMATS:
        assert name in msg


@pytest.mark.parametrize("bad", [16, None, 1.5])
def test_format_of_wrong_type(bad):
    with pytest.raises(TypeError) as e:
        quantize(X, bad)
    assert "bf16" in str(e.value) and "FloatFormat" in str(e.value)


@pytest.mark.parametrize("bad", ["nearest", "RNE", "rn", "", 7])
def test_unknown_rounding_lists_the_valid_ones(bad):
    with pytest.raises(ValueError) as e:
        quantize(X, "bf16", bad)
    msg = str(e.value)
    assert repr(bad) in msg
    for m in MODES:
        assert m in msg


@pytest.mark.parametrize("arr,kind", [
    (np.array([1, 2, 3], np.int32), "integer"),
    (np.array([1, 2, 3], np.int64), "integer"),
    (np.array([1, 2, 3], np.uint16), "unsigned integer"),
    (np.array([1 + 2j], np.complex128), "complex"),
    (np.array([True, False]), "boolean"),
    (np.array([1.0], np.longdouble), "wider than float64"),
    ([1, 2, 3], "integer"),
])
def test_non_float_inputs_raise_typeerror(arr, kind):
    with pytest.raises(TypeError) as e:
        quantize(arr, "bf16")
    msg = str(e.value)
    assert "float32 or float64" in msg and kind in msg


def test_float16_is_accepted_by_the_dtype_policy():
    """float16 (and ml_dtypes floats) are widened exactly: tests/test_dtype_policy.py."""
    assert quantize(np.array([1.0, 3.0], np.float16), "bf16").tolist() == [1.0, 3.0]


def test_complex_message_says_what_to_do():
    with pytest.raises(TypeError, match=r"\.real and \.imag"):
        quantize(np.array([1 + 2j]), "fp16")


def test_python_floats_are_accepted():
    """A list of Python floats is float64: accepted (the counterpart of the int case)."""
    assert np.array_equal(quantize([1.0, 2.0], "bf16"), np.array([1.0, 2.0], np.float32))


@pytest.mark.parametrize("bad", [0, 33, -1, 64])
def test_rand_bits_out_of_range(bad):
    with pytest.raises(ValueError, match=r"1\.\.32") as e:
        quantize(X, "bf16", "sr", seed=0, rand_bits=bad)
    assert str(bad) in str(e.value)


@pytest.mark.parametrize("bad", [7.0, "7", True, np.float32(3)])
def test_rand_bits_not_an_int(bad):
    with pytest.raises(TypeError, match=r"rand_bits must be an integer in 1\.\.32"):
        quantize(X, "bf16", "sr", seed=0, rand_bits=bad)


def test_rand_bits_numpy_int_is_fine():
    a = quantize(X, "bf16", "sr", seed=0, rand_bits=np.int64(7))
    b = quantize(X, "bf16", "sr", seed=0, rand_bits=7)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_sr_without_seed_says_what_to_pass():
    with pytest.raises(ValueError) as e:
        quantize(X, "bf16", "sr")
    msg = str(e.value)
    assert "seed=" in msg and "sr" in msg


@pytest.mark.parametrize("mode", ["rne", "rna", "rz", "ru", "rd"])
def test_seed_or_rand_bits_without_sr(mode):
    with pytest.raises(ValueError, match=r"seed only applies to rounding='sr'"):
        quantize(X, "bf16", mode, seed=1)
    with pytest.raises(ValueError, match=r"rand_bits only applies to rounding='sr'"):
        quantize(X, "bf16", mode, rand_bits=8)


@pytest.mark.parametrize("bad", [1.5, "1", [1], np.float64(2)])
def test_seed_not_an_int(bad):
    with pytest.raises(TypeError, match="seed must be an integer"):
        quantize(X, "bf16", "sr", seed=bad)


@pytest.mark.parametrize("bad", [2 ** 64, -(2 ** 63) - 1])
def test_seed_out_of_64_bits(bad):
    with pytest.raises(ValueError, match="64 bits"):
        quantize(X, "bf16", "sr", seed=bad)


@pytest.mark.parametrize("kw, says", [({"eps": -1e-3}, "eps must be finite and >= 0"),
                                      ({"eps": float("inf")}, "eps must be finite and >= 0"),
                                      ({"eps": float("nan")}, "eps must be finite and >= 0"),
                                      ({"beta": 0.5}, "beta must be finite and >= 1"),
                                      ({"beta": float("inf")}, "beta must be finite and >= 1")])
def test_paper_fix_parameters_are_checked(kw, says):
    from flashbits.emulator.attention.recipes import get_fix

    with pytest.raises(ValueError, match=says):
        get_fix("paper", **kw)
    assert get_fix("paper", eps=0.0, beta=1.0).beta == 1.0
