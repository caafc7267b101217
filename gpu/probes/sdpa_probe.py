"""The torch drop-in on the GPU: its golden record, its accuracy, its overhead.

    PYTHONPATH=. python -m flashbits.gpu.probes.sdpa_probe OUT [--skip-timing]

Writes into OUT:

* ``sdpa_golden.npz``: for each case of ``CASES`` (awkward lengths, Nq != Nk, causal,
  GQA, MQA; fa2 without and with the paper fix, rne and sr; the paper recipe's
  forward), the inputs and dO as bf16 bits and what
  ``flashbits.scaled_dot_product_attention`` on CUDA returned: out, and (fa2) dq, dk,
  dv from ``out.backward(dO)``.  CI replays it through the drop-in's CPU path
  (tests/test_sdpa.py) and demands every bit.
* ``sdpa_gpu.json``: the same record replayed here on the host CPU (mismatch
  counts); FlashAttention's rule on the GPU (per shape and tensor the max error
  against float64 SDPA, flashbits' and torch's bf16 SDPA's, and their ratio; the rule
  holds when flashbits' <= 2× torch's + 2× the bf16 noise of the reference); the
  wrapper's overhead against direct kernel calls; provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

# B, H, Hk, Nq, Nk, D, causal
RECORD_SHAPES = [(1, 2, 2, 97, 97, 64, True), (1, 4, 2, 130, 61, 128, False), (2, 2, 1, 1, 200, 64, False),
                 (1, 1, 1, 257, 257, 128, True)]
RECORD_CONFIGS = [("fa2", None, "rne"), ("fa2", "paper", "rne"), ("fa2", None, "sr"), ("fa2", "paper", "sr")]
PAPER_SHAPES = [(1, 2, 2, 97, 97, 64, True), (1, 2, 2, 130, 61, 128, False)]
ACCURACY_SHAPES = [(2, 4, 4, 1, 97, 64, False), (2, 4, 4, 97, 97, 64, True), (1, 4, 4, 1025, 1025, 128, True),
                   (2, 4, 4, 97, 300, 128, False), (2, 8, 2, 300, 97, 64, True), (2, 8, 1, 1025, 1025, 64, False)]


def cases():
    """(shape, recipe, fix, rounding, seed, backward) of every record entry."""
    out = []
    for si, shape in enumerate(RECORD_SHAPES):
        for ci, (recipe, fix, rounding) in enumerate(RECORD_CONFIGS):
            out.append((shape, recipe, fix, rounding, 1000 + 10 * si + ci, True))
    for si, shape in enumerate(PAPER_SHAPES):
        for fix in (None, "paper"):
            out.append((shape, "paper", fix, "rne", 2000 + si, False))
    return out


def inputs(shape, seed, torch):
    """q, k, v, dO: bf16 CPU tensors from torch's CPU generator."""
    B, H, Hk, Nq, Nk, D, _ = shape
    g = torch.Generator().manual_seed(seed)
    dims = ((B, H, Nq, D), (B, Hk, Nk, D), (B, Hk, Nk, D), (B, H, Nq, D))
    return [torch.randn(*d, generator=g).to(torch.bfloat16) for d in dims]


def bits(t):
    """A bf16 tensor's raw bits as an int16 numpy array."""
    import torch

    return t.detach().contiguous().cpu().view(torch.int16).numpy()


def run_case(case, device, torch):
    """The drop-in's out (and dq, dk, dv) for ``case`` on ``device``, as bf16 bits."""
    from flashbits import scaled_dot_product_attention as sdpa

    shape, recipe, fix, rounding, seed, backward = case
    q, k, v, do = (t.to(device) for t in inputs(shape, seed, torch))
    q, k, v = (t.requires_grad_(backward) for t in (q, k, v))
    out = sdpa(q, k, v, is_causal=shape[6], enable_gqa=shape[1] != shape[2], recipe=recipe, fix=fix,
               rounding=rounding, seed=seed if rounding == "sr" else None)
    res = {"out": bits(out)}
    if backward:
        out.backward(do)
        res.update(dq=bits(q.grad), dk=bits(k.grad), dv=bits(v.grad))
    return res


def meta(case):
    shape, recipe, fix, rounding, seed, backward = case
    return {"shape": list(shape[:6]), "causal": shape[6], "recipe": recipe, "fix": fix, "rounding": rounding,
            "seed": seed, "backward": backward}


def load_record(path):
    """[(case, {tensor: bits})] of an sdpa_golden.npz, and its provenance."""
    z = np.load(path)
    entries = []
    for i in range(int(z["n"])):
        m = json.loads(str(z[f"e{i}_meta"]))
        case = (tuple(m["shape"]) + (m["causal"],), m["recipe"], m["fix"], m["rounding"], m["seed"], m["backward"])
        got = {key.split("_", 1)[1]: z[key] for key in z.files if key.startswith(f"e{i}_") and key != f"e{i}_meta"}
        entries.append((case, got))
    return entries, json.loads(str(z["provenance"]))


def accuracy(torch):
    """FlashAttention's rule on the GPU, per shape and tensor."""
    from flashbits import scaled_dot_product_attention as sdpa

    F = torch.nn.functional
    rows = []
    for shape in ACCURACY_SHAPES:
        q, k, v, do = (t.cuda() for t in inputs(shape, 7, torch))
        gqa = shape[1] != shape[2]

        def grads(fn, dtype):
            xs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
            o = fn(*xs, is_causal=shape[6], enable_gqa=gqa)
            o.backward(do.to(dtype))
            return [o.detach()] + [x.grad for x in xs]

        ref = grads(F.scaled_dot_product_attention, torch.float64)
        theirs = grads(F.scaled_dot_product_attention, torch.bfloat16)
        ours = grads(sdpa, torch.bfloat16)
        for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, theirs, ref):
            noise = (r + 0.3 - 0.3 - r).abs().max().item()
            ea, eb = ((x.double() - r).abs().max().item() for x in (a, b))
            rows.append({"shape": list(shape[:6]), "causal": shape[6], "tensor": name, "flashbits_err": ea,
                         "torch_bf16_err": eb, "ratio": ea / eb if eb else None,
                         "holds": ea <= 2 * eb + 2 * noise})
            print(f"accuracy {shape} {name:>3}: flashbits {ea:.3e}  torch bf16 {eb:.3e}  "
                  f"ratio {ea / eb if eb else float('nan'):.2f}  {'ok' if rows[-1]['holds'] else 'FAILS'}", flush=True)
    return rows


def overhead(torch):
    """Median ms of forward+backward through the drop-in against the direct kernel calls."""
    import triton

    from flashbits import scaled_dot_product_attention as sdpa
    from flashbits.gpu import flash_attention, flash_attention_backward

    rows = []
    for B, H, N, D in ((8, 16, 4096, 128), (4, 8, 1024, 64), (1, 4, 256, 64)):
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))

        def direct():
            r = flash_attention(q, k, v, causal=True)
            flash_attention_backward(q, k, v, r.out, r.lse, do, causal=True)

        qs, ks, vs = (t.detach().clone().requires_grad_() for t in (q, k, v))

        def drop_in():
            sdpa(qs, ks, vs, is_causal=True).backward(do)

        def direct_fwd():
            flash_attention(q, k, v, causal=True)

        def drop_in_fwd():
            sdpa(q, k, v, is_causal=True)

        row = {"shape": [B, H, N, D], "causal": True}
        for name, fn in (("direct_fwd_bwd", direct), ("drop_in_fwd_bwd", drop_in), ("direct_fwd", direct_fwd),
                         ("drop_in_fwd", drop_in_fwd)):
            fn()
            torch.cuda.synchronize()
            row[name + "_ms"] = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        row["fwd_bwd_ratio"] = row["drop_in_fwd_bwd_ms"] / row["direct_fwd_bwd_ms"]
        row["fwd_ratio"] = row["drop_in_fwd_ms"] / row["direct_fwd_ms"]
        print(f"overhead {row['shape']}: fwd+bwd {row['direct_fwd_bwd_ms']:.3f} → {row['drop_in_fwd_bwd_ms']:.3f} ms "
              f"(×{row['fwd_bwd_ratio']:.3f}); fwd {row['direct_fwd_ms']:.3f} → {row['drop_in_fwd_ms']:.3f} ms "
              f"(×{row['fwd_ratio']:.3f})", flush=True)
        rows.append(row)
    return rows


def replay(path, torch, log=print):
    """Run every entry of an sdpa record through the drop-in's CPU path: {entry: mismatches}."""
    entries, _ = load_record(path)
    result = {}
    for i, (case, want) in enumerate(entries):
        got = run_case(case, "cpu", torch)
        bad = {n: int((got[n] != want[n]).sum()) for n in want}
        result[i] = bad
        log(f"replay e{i} {meta(case)}: mismatches {bad}")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--skip-timing", action="store_true", help="no overhead measurement")
    args = ap.parse_args(argv)
    import torch

    from flashbits.gpu.provenance import provenance

    if not torch.cuda.is_available():
        print("sdpa_probe needs a CUDA GPU; CI replays its record: pytest tests/test_sdpa.py", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    prov = provenance(probe="gpu.probes.sdpa_probe")
    arrays = {"provenance": np.array(json.dumps(prov))}
    t0 = time.time()
    cs = cases()
    for i, case in enumerate(cs):
        arrays[f"e{i}_meta"] = np.array(json.dumps(meta(case)))
        for name, b in run_case(case, "cuda", torch).items():
            arrays[f"e{i}_{name}"] = b
    arrays["n"] = np.int64(len(cs))
    path = os.path.join(args.out, "sdpa_golden.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {len(cs)} entries ({os.path.getsize(path) / 2**20:.2f} MiB, {time.time() - t0:.0f} s)")
    report = {"provenance": prov, "replay_here": replay(path, torch), "accuracy": accuracy(torch)}
    if not args.skip_timing:
        report["overhead"] = overhead(torch)
    with open(os.path.join(args.out, "sdpa_gpu.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    bad = sum(sum(v.values()) for v in report["replay_here"].values())
    fails = [r for r in report["accuracy"] if not r["holds"]]
    print(f"replay on this host's CPU: {bad} mismatching elements; accuracy rule fails in {len(fails)} rows")
    return 0 if bad == 0 and not fails else 1


if __name__ == "__main__":
    sys.exit(main())
