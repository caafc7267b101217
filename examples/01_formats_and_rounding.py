"""Formats, rounding modes and raw bits: the ground everything else stands on.

    python examples/01_formats_and_rounding.py
"""

import numpy as np

from flashbits.emulator import FORMATS, from_bits, quantize, to_bits
from flashbits.emulator import philox, rounding
from flashbits.emulator.jit_notice import notice_if_cold

notice_if_cold(rounding, philox)  # the first run compiles quantize's kernels (about half a minute)

x = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-9, -(1.0 + 2.0**-8), 500.0, 1e-40], dtype=np.float32)
print("x                :", x)
for mode in ("rne", "rna", "rz", "ru", "rd"):
    print(f"bf16 {mode:<4}        :", quantize(x, "bf16", mode))
# stochastic rounding is reproducible from its seed (Philox, the same words tl.randint gives)
print("bf16 sr seed 7   :", quantize(x, "bf16", "sr", seed=7))
print("bf16 sr seed 7   :", quantize(x, "bf16", "sr", seed=7), "(same seed, same bits)")
# fp8 on a Hopper GPU saturates (cvt.rn.satfinite); ml_dtypes' cast does not
print("e4m3 rne         :", quantize(x, "fp8_e4m3", "rne"))
print("e4m3 rne, sat    :", quantize(x, "fp8_e4m3", "rne", saturate=True))
codes = to_bits(quantize(x, "bf16"), "bf16")
print("bf16 codes       :", [f"0x{c:04x}" for c in codes], "->", from_bits(codes, "bf16"))
f = FORMATS["fp8_e4m3"]
print(f"{f.name}: max {f.max_finite}, min normal {f.min_normal}, min subnormal {f.min_subnormal}")
