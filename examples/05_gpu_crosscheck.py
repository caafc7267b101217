"""The kernel against the emulator, bit for bit (needs a CUDA GPU), or a record replayed on a CPU.

    python examples/05_gpu_crosscheck.py

The tensors compared are the recipe's (``Config.compared``: m, l and out for the
production launch); the full GPU suite is ``pytest -m gpu tests/gpu``.
"""

import os

import numpy as np

from flashbits.crosscheck.record import replay_record
from flashbits.crosscheck.regimes import regime_inputs
from flashbits.crosscheck.sides import Config, emulator_side

here = os.path.dirname(os.path.abspath(__file__))
try:
    import torch

    has_gpu = torch.cuda.is_available()
except ImportError:
    has_gpu = False
if has_gpu:
    from flashbits.crosscheck.sides import gpu_side

    q, k, v = regime_inputs("ties-12")
    cfg = Config(recipe="fa2", fix="paper", rounding="sr", seed=3)
    g = gpu_side(q, k, v, False, cfg, dump=False)
    e = emulator_side(q, k, v, False, cfg, dump=False)
    for name in cfg.compared("production"):
        print(f"{name}: bits equal {np.array_equal(g[name], e[name])}")
else:
    print("no CUDA GPU: replaying the H200's recorded bits through the emulator instead")
    replay_record(os.path.join(here, "..", "tests", "data", "hw", "attention_bias_golden.npz"))
