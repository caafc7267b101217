"""flashbits.crosscheck: kernel against emulator bit for bit, the bias study, the CLI.

Public here: the bias study's inputs (``regime_inputs``, ``REGIMES``); the error
statistics are ``flashbits.bias_stats`` and ``flashbits.signed_error_ulps``.
"""

from .regimes import REGIMES, regime_inputs

__all__ = ["REGIMES", "regime_inputs"]
