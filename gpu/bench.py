"""Forward-attention throughput on the GPU, every kernel measured in one run.

    PYTHONPATH=. python -m flashbits.gpu.bench [--variants 128x64w8s3,...] [--roundings rne,sr] [--json OUT]

B=8, H=16, N=4096, D=128, bf16, causal and not: the fa2 kernel (tile variants,
without a fix, with the paper fix and with the unbiased fix, its casts rounded rne or also sr) against
FlexAttention (torch.compile, Triton generated) and torch's SDPA flash and cuDNN
backends.  Medians of triton.testing.do_bench; FLOPs = 4·B·H·N²·D (half of that
causal).  Prints a table and the ratios against FlexAttention measured in the
same run.
"""

from __future__ import annotations

import argparse
import json
import sys


def time_launch(fn, flops):
    """(ms, TFLOP/s) of the launch ``fn()`` doing ``flops``: one call, then the median of
    triton.testing.do_bench (25 ms warm-up, 200 ms of repeats).  Every benchmark here
    times this way."""
    import torch
    import triton

    fn()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    return ms, flops / ms * 1e-9


def time_forward(fn, B, H, N, D, causal):
    """time_launch of a forward on (B, H, N, D): FLOPs = 4·B·H·N²·D, half of that causal."""
    return time_launch(fn, 4 * B * H * N * N * D * (0.5 if causal else 1.0))


class BenchTable:
    """Rows of one benchmark run: ``bench(name, fn, causal)`` times a launch with ``timer``
    (fn, causal) → (ms, TFLOP/s), recording a backend that fails as unavailable;
    ``report(json_path, shape)`` prints the table with the ratios against FlexAttention
    measured in the same run, and writes the numbers with provenance."""

    def __init__(self, timer, width=34):
        self.timer, self.width, self.rows = timer, width, []

    def bench(self, name, fn, causal):
        w, mask = self.width, "causal" if causal else "full"
        try:
            ms, tf = self.timer(fn, causal)
        except Exception as e:  # noqa: BLE001 - a backend may be unavailable; say so
            self.rows.append({"kernel": name, "causal": causal, "error": repr(e)[:200]})
            print(f"{name:<{w}}{mask:<8} unavailable: {repr(e)[:120]}", flush=True)
            return
        self.rows.append({"kernel": name, "causal": causal, "ms": ms, "tflops": tf})
        print(f"{name:<{w}}{mask:<8}{ms:9.3f} ms {tf:8.1f} TFLOP/s", flush=True)

    def report(self, json_path, shape):
        rows, w = self.rows, self.width
        print()
        for causal in (False, True):
            base = next((r for r in rows if r["kernel"].startswith("flex") and r["causal"] == causal and "ms" in r),
                        None)
            if base:
                for r in rows:
                    if r["causal"] == causal and "ms" in r:
                        r["vs_flex"] = base["ms"] / r["ms"]
        print(f"{'kernel':<{w}}{'mask':<8}{'TFLOP/s':>9}{'vs flex':>9}")
        for r in rows:
            if "ms" in r:
                print(f"{r['kernel']:<{w}}{'causal' if r['causal'] else 'full':<8}{r['tflops']:9.1f}"
                      f"{r.get('vs_flex', 0):9.3f}")
        if json_path:
            from flashbits.gpu.provenance import provenance

            with open(json_path, "w") as f:
                json.dump({"provenance": provenance(), "shape": list(shape), "rows": rows}, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--variants", default="128x64w8s3,128x64w8s2,128x64w8s4,64x64w4s3",
                    help="fa2 tile variants BMxBNwWARPSsSTAGES")
    ap.add_argument("--roundings", default="rne",
                    help="comma-separated roundings of the P̄ and output casts for the fa2 rows: rne, sr "
                         "(default rne; sr is the bias study's unbiased fa2 cell, docs/bias/bias.md)")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from flashbits.gpu import flash_attention

    B, H, N, D = args.B, args.H, args.N, args.D
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flex = torch.compile(flex_attention)
    table = BenchTable(lambda fn, causal: time_forward(fn, B, H, N, D, causal))
    bench = table.bench

    for causal in (False, True):
        bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, B, H, N, N) if causal else None
        bench("flex_attention (torch.compile)", lambda: flex(q, k, v, block_mask=bm), causal)
        for be, nm in ((SDPBackend.FLASH_ATTENTION, "sdpa flash"), (SDPBackend.CUDNN_ATTENTION, "sdpa cudnn")):
            def f(be=be):
                with sdpa_kernel(be):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
            bench(nm, f, causal)
        for var in args.variants.split(","):
            bmn, rest = var.split("w")
            bmv, bnv = (int(x) for x in bmn.split("x"))
            w, s = (int(x) for x in rest.split("s"))
            for rd in args.roundings.split(","):
                for fix in (None, "paper", "unbiased"):
                    if fix == "unbiased" and rd != "rne":
                        continue   # the unbiased fix sets its casts' rounding itself
                    label = {None: "", "paper": " +fix", "unbiased": " +unbiased"}[fix]
                    bench(f"fa2 {var}{label}{' sr' if rd == 'sr' else ''}",
                          lambda bmv=bmv, bnv=bnv, w=w, s=s, fix=fix, rd=rd: flash_attention(
                              q, k, v, causal=causal, fix=fix, block_m=bmv, block_n=bnv, num_warps=w,
                              num_stages=s, rounding=rd, seed=1 if rd == "sr" or fix == "unbiased" else None),
                          causal)
    table.report(args.json, (B, H, N, D))
    return 0


if __name__ == "__main__":
    sys.exit(main())
