"""flashbits emulator: bit-exact CPU models of low-precision attention arithmetic.

Imports only numpy, numba and ml_dtypes.
"""

from . import numba_cache  # noqa: F401  (first: stamps every cached kernel with the sources' hash)

from .attention import (FIXES, RECIPES, AttentionResult, BackwardResult, Fix, Recipe, RoundingLedger, flash_attention,
                        flash_attention_backward, get_recipe, reference_attention)
from .attention.stats import bias_stats, signed_error_ulps
from .bits import from_bits, to_bits
from .formats import FORMATS, FloatFormat, get_format
from .hw.sfu import sfu_exp2
from .hw.tensor_core import tensor_core_dot
from .rounding import RoundMode, quantize

__all__ = [
    "FORMATS", "FloatFormat", "get_format", "RoundMode", "quantize", "to_bits", "from_bits",
    "tensor_core_dot", "sfu_exp2", "flash_attention", "flash_attention_backward", "BackwardResult",
    "reference_attention", "AttentionResult",
    "RoundingLedger", "Recipe", "RECIPES", "get_recipe", "Fix", "FIXES", "bias_stats", "signed_error_ulps",
]
