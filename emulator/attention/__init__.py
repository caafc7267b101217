"""Flash attention in the emulator: recipes, the rounding ledger, the kernels."""

from .api import AttentionResult, flash_attention, reference_attention, stage_seed
from .ledger import RoundingLedger
from .recipes import FIXES, RECIPES, Fix, Recipe, StageSpec, get_fix, get_recipe

__all__ = ["flash_attention", "reference_attention", "AttentionResult", "RoundingLedger", "Recipe",
           "StageSpec", "RECIPES", "get_recipe", "Fix", "FIXES", "get_fix", "stage_seed"]
