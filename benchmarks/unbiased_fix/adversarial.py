"""Regimes outside the bias study's grid, to test a fix for robustness (issue 16).

    PYTHONPATH=. python benchmarks/unbiased_fix/adversarial.py [--rows 4096]

same-tie    two duplicated keys give every row a tied maximum of the same value (a·b),
            the other scores 2-6 below, V < 0 (the regime where the paper fix in fa2
            is as biased as the unfixed paper recipe)
sink        one key 8 nats above the rest in every row (an attention sink), V ~ N(-0.3, 0.5)
repeated    identical query rows (a repeated token), random keys, V ~ N(-0.3, 0.5)
long        1024 keys, scores N(0, 1)·2, V ~ N(-0.3, 0.5): many key blocks
Printed: t of O's signed error (bf16 ulps against float64) for fa2 with each fix/rounding.
"""
import argparse

import numpy as np

from flashbits.crosscheck.bias_study import run_cell
from flashbits.emulator import quantize, reference_attention

D = 64


def bf16(x):
    return quantize(np.asarray(x, np.float32), "bf16")


def regime(name, rows, rng):
    scale = D ** -0.5
    if name == "same-tie":
        nk = 64
        k = np.zeros((nk, D), np.float32)
        k[:2, 0] = 4.0                                   # two identical keys
        k[2:, 1:] = rng.standard_normal((nk - 2, D - 1)) * 0.5
        q = np.zeros((rows, D), np.float32)
        q[:, 0] = 4.0                                    # the tied max a·b·scale = 2 in every row
        q[:, 1:] = rng.standard_normal((rows, D - 1)) * 0.5
        v = -np.abs(rng.standard_normal((nk, D))) - 0.1
    elif name == "sink":
        nk = 128
        k = rng.standard_normal((nk, D)).astype(np.float32)
        k[0] = 0
        k[0, 0] = 8.0
        q = rng.standard_normal((rows, D)).astype(np.float32) * 0.5
        q[:, 0] = 8.0
        v = rng.normal(-0.3, 0.5, (nk, D))
    elif name == "repeated":
        nk = 128
        k = rng.standard_normal((nk, D)).astype(np.float32)
        q = np.repeat(rng.standard_normal((1, D)), rows, axis=0).astype(np.float32) * 2
        v = rng.normal(-0.3, 0.5, (nk, D))
    elif name == "long":
        nk = 1024
        k = rng.standard_normal((nk, D)).astype(np.float32)
        q = rng.standard_normal((rows, D)).astype(np.float32) * 2
        v = rng.normal(-0.3, 0.5, (nk, D))
    else:
        raise ValueError(name)
    del scale
    return bf16(q), bf16(k), bf16(v)


CELLS = [("none", "rne", None), ("none", "rne", {"O_cast": {"rounding": "sr"}}), ("paper-b2", "rne", None),
         ("unbiased", "rne", None), ("none", "sr", None), ("unbiased", "sr", None)]
LABELS = ["none", "none+O-sr", "paper-b2", "unbiased", "sr", "unbiased+sr"]

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=4096)
ap.add_argument("--regimes", default="same-tie,sink,repeated,long")
ap.add_argument("--seed", type=int, default=7)
args = ap.parse_args()
print(f"{'regime':<10}" + "".join(f"{lb:>14}" for lb in LABELS))
for name in args.regimes.split(","):
    q, k, v = regime(name, args.rows, np.random.default_rng(args.seed))
    ref, _ = reference_attention(q, k, v)
    ts = []
    for fix, rnd, extra in CELLS:
        _, _, st = run_cell(q, k, v, ref, "fa2", fix, rnd, extra=extra, record=False)
        ts.append(f"{st['t']:+8.1f}")
    print(f"{name:<10}" + "".join(f"{t:>14}" for t in ts), flush=True)
