"""The bias of docs/paper.md in one regime, and what the fixes do to it.

    python examples/03_bias_and_fixes.py
"""

from flashbits import bias_stats, flash_attention, reference_attention, signed_error_ulps
from flashbits.crosscheck import regime_inputs

q, k, v = regime_inputs("ties-12")  # two tied maxima, the rest 12 nats lower, V < 0; 2^18 samples
ref, _ = reference_attention(q, k, v)
for recipe in ("paper", "fa2"):
    for fix, kw in ((None, {}), ("paper", {"beta": 2.0}), ("paper", {"beta": 8.0}), ("offset", {})):
        for rounding in ("rne", "sr"):
            r = flash_attention(q, k, v, recipe=recipe, fix=fix, rounding=rounding, seed=1, **kw)
            s = bias_stats(signed_error_ulps(r.out, ref))
            name = r.fix.label if r.fix else "none"
            print(f"{recipe:<6} fix {name:<22} {rounding}: mean {s['mean_ulp']:+.4f} ulp, t {s['t']:+7.1f}")
r = flash_attention(q, k, v, recipe="paper", record=True)
print()
print(r.ledger.format_table())
