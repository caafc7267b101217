"""Suite-wide hooks: tests marked ``gpu`` need a CUDA GPU and skip, with the reason,
on a machine without one (CI).  Nothing else here: a GPU being present never skips a
CPU test."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=1)
def no_cuda_reason() -> str | None:
    """Why the ``gpu`` tests cannot run here, or None when they can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'flashbits[gpu]'); the gpu tests need a CUDA GPU"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install 'flashbits[gpu]'); the gpu tests need a CUDA GPU"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False); gpu tests run on the GPU host"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = no_cuda_reason()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in gpu_items:
            item.add_marker(skip)
