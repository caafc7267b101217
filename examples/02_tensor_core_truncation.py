"""Hopper tensor cores truncate: the wgmma model against an exact dot product.

    python examples/02_tensor_core_truncation.py
"""

import numpy as np

from flashbits.emulator import quantize, tensor_core_dot

# 1 − 2^-25 comes back as 1 − 2^-24: the sum of a k16 step is truncated, not rounded
a = np.zeros((1, 16), np.float32)
b = np.zeros((16, 1), np.float32)
a[0, 0], b[0, 0] = 1.0, 1.0
a[0, 1], b[1, 0] = -(2.0**-25), 1.0
r = tensor_core_dot(a, b)[0, 0]
print(f"1 - 2^-25 on the tensor core: {r!r} (0x{np.float32(r).view(np.uint32):08x}); exact {1 - 2**-25!r}")

# many small same-sign terms next to a large one: each is cut to 25 bits below the largest
rng = np.random.default_rng(0)
p = quantize(np.concatenate([[1.0, 1.0], np.full(62, 6e-6)])[None], "bf16")
v = quantize(-np.abs(rng.normal(0.5, 0.3, size=(64, 8))), "bf16")
tc = tensor_core_dot(p, v)[0]
exact = p.astype(np.float64) @ v.astype(np.float64)
ulp = 2.0 ** (np.floor(np.log2(np.abs(exact))) - 23)
print("tensor core − exact, in fp32 ulps:", np.round((tc - exact[0]) / ulp[0], 2))
print("(positive: the truncation moves these negative sums toward zero)")

# fp8: each k32 step keeps only 14 significant bits
a8 = quantize(rng.standard_normal((1, 32)), "fp8_e4m3")
b8 = quantize(rng.standard_normal((32, 1)), "fp8_e4m3")
c = np.array([[1000.0]], np.float32)
print("fp8 step with c = 1000:", tensor_core_dot(a8, b8, c, in_fmt="fp8_e4m3")[0, 0],
      "exact:", float((a8.astype(np.float64) @ b8.astype(np.float64))[0, 0] + 1000.0))
