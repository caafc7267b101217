"""Stage ablation, the paper's method made exact: switch stages to fp32 and measure again.

    python examples/04_stage_ablation.py
"""

from flashbits.crosscheck.regimes import regime_inputs
from flashbits.emulator import flash_attention, reference_attention
from flashbits.emulator.attention.stats import bias_stats, signed_error_ulps

q, k, v = regime_inputs("ties-12")
ref, _ = reference_attention(q, k, v)
trials = {
    "as is": {},
    "block output PV_cast → fp32": {"PV_cast": {"format": "fp32"}},
    "Ō path → fp32": {s: {"format": "fp32"} for s in ("PV_cast", "O_mul_cast", "O_add_cast")},
    "Ō and l paths → fp32": {s: {"format": "fp32"} for s in ("PV_cast", "O_mul_cast", "O_add_cast",
                                                              "l_blk_cast", "l_mul_cast", "l_add_cast")},
    "tensor-core PV → exact": {"PV": {"exact": True}},
}
for name, ov in trials.items():
    r = flash_attention(q, k, v, recipe="paper", overrides=ov)
    s = bias_stats(signed_error_ulps(r.out, ref))
    print(f"{name:<32} mean {s['mean_ulp']:+.4f} ulp, t {s['t']:+7.1f}")
