"""Backward-attention throughput on the GPU, every kernel measured in one run.

    PYTHONPATH=. python -m flashbits.gpu.bench_backward [--variants 32x128_128x32w8s2,...] [--json OUT]

B=8, H=16, N=4096, D=128, bf16, causal and not: the fa2 backward kernels
(``gpu.flash_attention_backward``: tile variants, its casts rne or sr, after a
forward without and with the paper fix) against the backward of FlexAttention
(torch.compile, Triton generated) and of torch's SDPA flash and cuDNN backends
(``torch.autograd.grad`` of a kept forward graph, so only the backward runs).
Medians of triton.testing.do_bench; FLOPs = 2.5 × the forward's, i.e.
10·B·H·N²·D (half of that causal).  The fa2 time is that of the API call: its
three launches and the lse operand, which it computes on the host
(``Family.backward.lse_operand``, the emulator's function).  Prints a table
and the ratios against FlexAttention measured in the same run.
"""

from __future__ import annotations

import argparse
import sys


def time_backward(fn, B, H, N, D, causal):
    """gpu.bench.time_launch of a backward on (B, H, N, D): FLOPs = 10·B·H·N²·D (2.5
    forwards), half of that causal."""
    from .bench import time_launch

    return time_launch(fn, 10 * B * H * N * N * D * (0.5 if causal else 1.0))


def parse_variant(var):
    """'32x128_128x32w8s2' → dict of gpu.flash_attention_backward tile arguments."""
    tiles, rest = var.split("w")
    one, two = tiles.split("_")
    m1, n1 = (int(x) for x in one.split("x"))
    m2, n2 = (int(x) for x in two.split("x"))
    w, s = (int(x) for x in rest.split("s"))
    return dict(block_m1=m1, block_n1=n1, block_m2=m2, block_n2=n2, num_warps=w, num_stages=s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--variants", default="32x128_128x32w8s2,64x128_128x64w8s2,32x64_64x32w4s3,64x64_64x64w8s2",
                    help="fa2 backward tile variants M1xN1_M2xN2wWARPSsSTAGES (dK/dV kernel's query rows × keys, "
                         "dQ kernel's, warps, stages)")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from flashbits.gpu import flash_attention, flash_attention_backward

    from .bench import BenchTable

    B, H, N, D = args.B, args.H, args.N, args.D
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    flex = torch.compile(flex_attention)
    table = BenchTable(lambda fn, causal: time_backward(fn, B, H, N, D, causal), width=40)
    bench = table.bench

    def torch_backward(forward):
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        out = forward(qg, kg, vg)
        return lambda: torch.autograd.grad(out, (qg, kg, vg), do, retain_graph=True)

    for causal in (False, True):
        bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, B, H, N, N) if causal else None
        try:
            bench("flex_attention backward (torch.compile)",
                  torch_backward(lambda a, b, c: flex(a, b, c, block_mask=bm)), causal)
        except Exception as e:  # noqa: BLE001 - the forward itself may fail to compile
            print(f"flex_attention unavailable: {repr(e)[:120]}", flush=True)
        for be, nm in ((SDPBackend.FLASH_ATTENTION, "sdpa flash backward"),
                       (SDPBackend.CUDNN_ATTENTION, "sdpa cudnn backward")):
            def fwd(a, b, c, be=be):
                with sdpa_kernel(be):
                    return torch.nn.functional.scaled_dot_product_attention(a, b, c, is_causal=causal)
            try:
                bench(nm, torch_backward(fwd), causal)
            except Exception as e:  # noqa: BLE001
                print(f"{nm} unavailable: {repr(e)[:120]}", flush=True)
        for fix in (None, "paper"):
            try:
                fw = flash_attention(q, k, v, causal=causal, fix=fix)
            except Exception as e:  # noqa: BLE001 - then no fa2 rows, and the reason
                print(f"fa2 forward{' +fix' if fix else ''} failed: {repr(e)[:160]}", flush=True)
                continue
            out, lse = fw.out, fw.lse
            for var in args.variants.split(","):
                tiles = parse_variant(var)
                for rd in ("rne", "sr"):
                    bench(f"fa2 bwd {var}{' +fix' if fix else ''}{' sr' if rd == 'sr' else ''}",
                          lambda tiles=tiles, rd=rd, out=out, lse=lse: flash_attention_backward(
                              q, k, v, out, lse, do, causal=causal, fix=fix, rounding=rd,
                              seed=1 if rd == "sr" else None, **tiles),
                          causal)
    table.report(args.json, (B, H, N, D))
    return 0


if __name__ == "__main__":
    sys.exit(main())
