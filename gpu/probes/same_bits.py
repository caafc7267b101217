"""Raw-bit equality of two GPU tensors, for the probes that compare a kernel
variant with the production kernel."""

from __future__ import annotations


def bits_equal(a, b) -> bool:
    """Whether two torch tensors of the same dtype and shape hold the same bits in
    every element (bf16 compared as int16, fp32 as int32: NaN payloads and the sign
    of zero count)."""
    import torch

    view = torch.int16 if a.dtype == torch.bfloat16 else torch.int32
    return bool(torch.equal(a.view(view), b.view(view)))
