"""flashbits GPU side: Triton kernels of the recipes and their launch wrappers (needs torch + triton)."""

from .attention import SUPPORTED_HEAD_DIMS, GpuAttentionResult, flash_attention

__all__ = ["flash_attention", "GpuAttentionResult", "SUPPORTED_HEAD_DIMS"]
