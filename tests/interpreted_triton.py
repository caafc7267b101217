"""Triton in interpreter mode (TRITON_INTERPRET=1), for the CPU semantics tests of the
kernels (test_kernels_interpreter.py, test_backward_kernel_interpreter.py).

Import this before anything imports triton in the test module: it sets
TRITON_INTERPRET, and when another test module imported triton or the kernel modules
first (in compiled mode), it imports triton afresh and reloads ``flashbits.gpu.kernels``
and its modules, so that every kernel is an interpreted function.  Skips the importing
test module when torch or triton is missing.
"""

from __future__ import annotations

import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")

from triton.runtime.jit import JITFunction  # noqa: E402

if any(isinstance(f, JITFunction) for f in vars(importlib.import_module("triton.language.standard")).values()):
    # triton was imported before TRITON_INTERPRET was set (its library functions are
    # compiled-mode JITFunctions, which the interpreter cannot call): import it afresh
    # (the compiled extension triton._C stays: it cannot be loaded twice)
    for _m in [m for m in sys.modules if (m == "triton" or m.startswith(("triton.", "flashbits.gpu.kernels")))
               and not m.startswith("triton._C")]:
        del sys.modules[_m]
    import triton  # noqa: E402

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

import flashbits.gpu  # noqa: E402
import flashbits.gpu.interpreter_compat  # noqa: E402

# every kernel module, the package last (it collects the family modules' kernels)
KERNEL_MODULES = ("common", "fa2", "paper", "fa2_bwd")
_modules = [importlib.import_module(f"flashbits.gpu.kernels.{m}") for m in KERNEL_MODULES]
_modules.append(importlib.import_module("flashbits.gpu.kernels"))


def _compiled_kernels(module):
    return [name for name, f in vars(module).items() if isinstance(f, JITFunction)]


if any(_compiled_kernels(m) for m in _modules):
    # imported before TRITON_INTERPRET was set, in this triton: decorate them again
    for _m in _modules:
        importlib.reload(_m)
assert not any(_compiled_kernels(m) for m in _modules), [_compiled_kernels(m) for m in _modules]
assert all(isinstance(f, InterpretedFunction) for f in (_modules[1].KERNEL, _modules[2].KERNEL,
                                                         _modules[3]._bwd_dkdv))


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """TRITON_INTERPRET=1 for the test (a test elsewhere may have unset it); use as
    ``from interpreted_triton import interpret`` (an autouse fixture of the module)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
