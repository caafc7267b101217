"""flashbits GPU side: Triton kernels of the recipes and their launch wrappers (needs torch + triton)."""

from .attention import SUPPORTED_HEAD_DIMS, GpuAttentionResult, flash_attention
from .backward import GpuBackwardResult, flash_attention_backward

__all__ = ["flash_attention", "GpuAttentionResult", "flash_attention_backward", "GpuBackwardResult",
           "SUPPORTED_HEAD_DIMS"]
