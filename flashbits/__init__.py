"""flashbits: where low-precision flash attention rounds with a bias, bit for bit.

One import name for three parts (docs/architecture.md):

* ``flashbits.emulator`` — the numba CPU emulator (numpy, numba, ml_dtypes only);
* ``flashbits.gpu`` — the Triton kernels of the same recipes (needs torch + triton);
* ``flashbits.crosscheck`` — kernel against emulator, bit for bit; the bias study; the CLI.

The emulator's main API is re-exported here (importing flashbits never imports torch).
"""

import importlib.abc as _abc
import importlib.util as _util
import os as _os
import sys as _sys

_PARTS = ("emulator", "gpu", "crosscheck")
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)


class _CheckoutFinder(_abc.MetaPathFinder):
    """In a source checkout the repository keeps emulator/, gpu/ and crosscheck/ at its
    top level (the design's layout); pyproject.toml maps them into this package when it
    is installed.  Here they are found as flashbits.<part>, and nothing else is."""

    def find_spec(self, name, path=None, target=None):
        head, _, part = name.partition(".")
        if head != "flashbits" or part not in _PARTS:
            return None
        folder = _os.path.join(_root, part)
        return _util.spec_from_file_location(name, _os.path.join(folder, "__init__.py"),
                                             submodule_search_locations=[folder])


if not _os.path.isdir(_os.path.join(_here, "emulator")) and all(
        _os.path.isfile(_os.path.join(_root, p, "__init__.py")) for p in _PARTS):
    _sys.meta_path.insert(0, _CheckoutFinder())

from .emulator import (FIXES, FORMATS, RECIPES, AttentionResult, BackwardResult, Fix, FloatFormat, Recipe,  # noqa: E402
                       RoundingLedger, RoundMode, flash_attention, flash_attention_backward, from_bits, get_format, get_recipe,
                       quantize, reference_attention, sfu_exp2, tensor_core_dot, to_bits, bias_stats,
                       signed_error_ulps)

__version__ = "0.1.0"

# the torch drop-in (flashbits.gpu.sdpa) needs torch: imported on first use only
_TORCH_NAMES = ("scaled_dot_product_attention", "patch_sdpa")


def __getattr__(name):
    if name in _TORCH_NAMES:
        from .gpu import sdpa

        return getattr(sdpa, name)
    raise AttributeError(f"module 'flashbits' has no attribute {name!r}")


__all__ = [
    "flash_attention", "flash_attention_backward", "BackwardResult", "reference_attention", "AttentionResult", "RoundingLedger", "Recipe", "RECIPES",
    "get_recipe", "Fix", "FIXES", "FORMATS", "FloatFormat", "get_format", "RoundMode", "quantize", "to_bits",
    "from_bits", "tensor_core_dot", "sfu_exp2", "bias_stats", "signed_error_ulps",
    "scaled_dot_product_attention", "patch_sdpa",
]
