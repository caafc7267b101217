"""Flash attention in the emulator: recipes, the rounding ledger, the kernels."""

from .api import AttentionResult, flash_attention, reference_attention, stage_seed
from .backward import BackwardResult, flash_attention_backward
from .ledger import RoundingLedger
from .families import FAMILIES, Family, KernelScalars, get_family
from .recipes import FIXES, RECIPES, Fix, Recipe, get_fix, get_recipe
from .stages import StageSpec

__all__ = ["flash_attention", "flash_attention_backward", "BackwardResult", "reference_attention", "AttentionResult", "RoundingLedger", "Recipe",
           "StageSpec", "RECIPES", "get_recipe", "Fix", "FIXES", "get_fix", "stage_seed",
           "FAMILIES", "Family", "KernelScalars", "get_family"]
