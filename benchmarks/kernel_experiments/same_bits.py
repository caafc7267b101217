"""What the kernel probes share to check a variant against the production kernel:
raw-bit equality, the inputs, the tally of launches and mismatches, the record."""

from __future__ import annotations


def bits_equal(a, b) -> bool:
    """Whether two torch tensors of the same dtype and shape hold the same bits in
    every element (bf16 compared as int16, fp32 as int32: NaN payloads and the sign
    of zero count)."""
    import torch

    view = torch.int16 if a.dtype == torch.bfloat16 else torch.int32
    return bool(torch.equal(a.view(view), b.view(view)))


# the fa2-launch probes' shapes (B, H, Nq, Nk, D): odd lengths, both head dims, a
# benchmark-sized head, a single query row
SHAPES = ((2, 3, 1000, 1000, 128), (1, 2, 77, 300, 64), (2, 2, 4096, 4096, 128), (1, 1, 1, 65, 128))


def probe_inputs(kinds=("random", "ties")):
    """(B, H, Nq, Nk, D, kind, q, k, v) for every shape of SHAPES and every kind,
    bf16 on the GPU, drawn in that order from one generator seeded 1: ``random``
    (randn); ``ties`` (coarse, repeated keys: tied maxima in most rows);
    ``near-ties`` (a few keys repeated: the fix fires in some rows only)."""
    import torch

    g = torch.Generator(device="cuda").manual_seed(1)
    for B, H, Nq, Nk, D in SHAPES:
        for kind in kinds:
            q = torch.randn(B, H, Nq, D, device="cuda", generator=g).to(torch.bfloat16)
            k = torch.randn(B, H, Nk, D, device="cuda", generator=g).to(torch.bfloat16)
            v = torch.randn(B, H, Nk, D, device="cuda", generator=g).to(torch.bfloat16)
            if kind == "ties":
                k = (k * 2).round().to(torch.bfloat16)
                k[:, :, 1::2] = k[:, :, 0::2][:, :, : k[:, :, 1::2].shape[2]]
                q = (q * 2).round().to(torch.bfloat16)
            elif kind == "near-ties":
                k[:, :, 5::97] = k[:, :, 3::97][:, :, : k[:, :, 5::97].shape[2]]
            yield B, H, Nq, Nk, D, kind, q, k, v


class Tally:
    """Launch-by-launch comparison of gpu.flash_attention results (out, m, l and,
    with dumps, m_blocks, l_blocks, acc), mismatches appended to ``rows``."""

    def __init__(self, rows):
        self.rows = rows
        self.launches = self.elements = self.bad = 0

    def compare(self, ref, got, dump, where):
        """Count one launch; ``where`` (a list) names it in a mismatch row and line."""
        names = ["out", "m", "l"] + (["m_blocks", "l_blocks", "acc"] if dump else [])
        bad = [nm for nm in names if not bits_equal(getattr(ref, nm), getattr(got, nm))]
        self.launches += 1
        self.elements += sum(getattr(ref, nm).numel() for nm in names)
        if bad:
            self.bad += 1
            self.rows.append({"mismatch": [*where, bad]})
            print("MISMATCH", *where, bad, flush=True)

    def summary(self):
        print(f"bits: {self.launches} launches, {self.elements} elements, {self.bad} launches with a "
              "mismatching tensor", flush=True)
        return {"launches": self.launches, "elements": self.elements, "mismatching_launches": self.bad}


def write_record(path, bits, mismatches, bench):
    """A probe's GPU record: provenance, the bit check, its mismatch rows, the timings."""
    import json

    from flashbits.gpu.provenance import provenance

    with open(path, "w") as f:
        json.dump({"provenance": provenance(), "bits_vs_production": bits, "mismatches": mismatches,
                   "bench": bench}, f, indent=1)
