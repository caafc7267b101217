"""Binary floating-point formats: one immutable description each.

A :class:`FloatFormat` holds only primitive fields (widths, bias, special-value
conventions); every derived quantity (max finite, smallest normal and subnormal,
ulp) is a property computed from them, so the table cannot disagree with itself.
Routines take a format object (or its name, resolved by :func:`get_format`).

Conventions
-----------
* ``ieee``: the largest exponent field encodes ±inf (mantissa 0) and NaN
  (mantissa ≠ 0), as IEEE 754 (fp64, fp32, fp16, bf16, fp8_e5m2).
* ``fn`` ("finite, NaN"): no infinities; only the all-ones exponent *and*
  all-ones mantissa pattern is NaN, so the top binade keeps every other code as
  a finite value (OCP fp8 e4m3, ml_dtypes' ``float8_e4m3fn``).

Canonical NaN encodings produced by flashbits (the sign of the input NaN is
kept, the payload is not): fp32 ``0x7fc00000``, bf16 ``0x7fc0``, fp16
``0x7e00``, fp8_e5m2 ``0x7e``, fp8_e4m3 ``0x7f`` (the only NaN code), fp64
``0x7ff8000000000000`` — each OR'ed with the sign bit.  These are the quiet
NaNs ml_dtypes produces for bf16 and fp8; numpy's float16 cast keeps payload
bits, which flashbits does not reproduce (NaN maps to NaN, by design).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exp_bits``, ``mant_bits``.

    ``mant_bits`` counts the stored fraction bits (the implicit leading 1 of
    normal numbers is not counted).  ``bias`` is the exponent bias.
    ``convention`` is ``"ieee"`` or ``"fn"`` (see module docstring).
    """

    name: str
    exp_bits: int
    mant_bits: int
    bias: int
    convention: str = "ieee"

    def __post_init__(self):
        if self.convention not in ("ieee", "fn"):
            raise ValueError(f"convention must be 'ieee' or 'fn', got {self.convention!r}")

    # --- sizes -----------------------------------------------------------
    @property
    def bits(self) -> int:
        """Total width of an encoding, sign included."""
        return 1 + self.exp_bits + self.mant_bits

    @property
    def precision(self) -> int:
        """Significand precision p in bits, the implicit bit included."""
        return self.mant_bits + 1

    @property
    def has_inf(self) -> bool:
        return self.convention == "ieee"

    # --- exponent range (unbiased) ----------------------------------------
    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number: 1 − bias."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite binade.

        ieee: the all-ones exponent field is reserved, so (2^E − 2) − bias.
        fn:   the all-ones field still holds finite values: (2^E − 1) − bias.
        """
        top_field = (1 << self.exp_bits) - (2 if self.convention == "ieee" else 1)
        return top_field - self.bias

    @property
    def max_significand(self) -> int:
        """Largest integer significand (implicit bit included) in the top binade.

        ieee: 2^p − 1.  fn: 2^p − 2, because all-ones mantissa there is NaN
        (e4m3: (1 + 0b110·2^-3)·2^(15−7) = 448).
        """
        full = (1 << self.precision) - 1
        return full - 1 if self.convention == "fn" else full

    # --- derived values (exact, as Fractions, and as floats) --------------
    @property
    def max_finite_exact(self) -> Fraction:
        return Fraction(self.max_significand) * Fraction(2) ** (self.emax - self.mant_bits)

    @property
    def min_normal_exact(self) -> Fraction:
        return Fraction(2) ** self.emin

    @property
    def min_subnormal_exact(self) -> Fraction:
        return Fraction(2) ** (self.emin - self.mant_bits)

    @property
    def max_finite(self) -> float:
        return float(self.max_finite_exact)

    @property
    def min_normal(self) -> float:
        return float(self.min_normal_exact)

    @property
    def min_subnormal(self) -> float:
        return float(self.min_subnormal_exact)

    @property
    def eps(self) -> float:
        """Distance from 1 to the next larger number: 2^-mant_bits."""
        return 2.0 ** -self.mant_bits

    # --- encodings ----------------------------------------------------------
    @property
    def sign_mask(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def exp_field_max(self) -> int:
        return (1 << self.exp_bits) - 1

    @property
    def canonical_nan(self) -> int:
        """The positive NaN code flashbits emits (OR the sign bit for negative)."""
        if self.convention == "fn":
            return (self.exp_field_max << self.mant_bits) | ((1 << self.mant_bits) - 1)
        return (self.exp_field_max << self.mant_bits) | (1 << (self.mant_bits - 1))

    @property
    def inf_code(self) -> int | None:
        return (self.exp_field_max << self.mant_bits) if self.has_inf else None

    @property
    def max_finite_code(self) -> int:
        return ((self.emax + self.bias) << self.mant_bits) | (self.max_significand - (1 << self.mant_bits))

    @property
    def storage_dtype(self) -> str:
        """numpy unsigned-integer dtype name that holds one encoding."""
        return {8: "uint8", 16: "uint16", 32: "uint32", 64: "uint64"}[self.bits]

    @property
    def value_dtype(self) -> str:
        """numpy float dtype in which every value of this format is exact."""
        return "float64" if self.bits > 32 else "float32"

    def describe_specials(self) -> str:
        if self.has_inf:
            return "inf: exp all ones, mant 0; NaN: exp all ones, mant != 0"
        return "no inf; NaN: exp and mant all ones (S.1111.111); top binade otherwise finite"


FORMATS: dict[str, FloatFormat] = {
    f.name: f
    for f in (
        FloatFormat("fp64", 11, 52, 1023),
        FloatFormat("fp32", 8, 23, 127),
        FloatFormat("bf16", 8, 7, 127),
        FloatFormat("fp16", 5, 10, 15),
        # OCP 8-bit e4m3 as ml_dtypes.float8_e4m3fn: bias 7, no inf, max 448.
        FloatFormat("fp8_e4m3", 4, 3, 7, convention="fn"),
        # OCP 8-bit e5m2: IEEE-like, bias 15, max (1 + 0b11·2^-2)·2^15 = 57344.
        FloatFormat("fp8_e5m2", 5, 2, 15),
    )
}


def get_format(fmt) -> FloatFormat:
    """Return the :class:`FloatFormat` for a name or pass a format through.

    Raises ``ValueError`` naming the accepted formats for an unknown name and
    ``TypeError`` for anything that is neither a name nor a format.
    """
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, str):
        try:
            return FORMATS[fmt]
        except KeyError:
            raise ValueError(
                f"unknown format {fmt!r}; accepted formats: {', '.join(FORMATS)}"
            ) from None
    raise TypeError(
        f"format must be a name ({', '.join(FORMATS)}) or a FloatFormat, got {type(fmt).__name__}"
    )
