"""An unmodified transformers GPT-2 (built from a config: no download) trained with
flashbits attention, routed in by ``flashbits.patch_sdpa``.

    PYTHONPATH=. python examples/train_gpt2_patch_sdpa.py [--device cuda] [--steps 50] [--json OUT]

Character-level language modelling on this repository's docs/mechanism.md (bytes as
tokens), bf16 weights, AdamW; two arms from the same initial weights and batches:
torch's own SDPA and flashbits' fa2 recipe with the paper fix.  Needs
``pip install transformers``; on the CPU the emulator runs every attention call
(slow: use a few steps).  The three lines that matter::

    import flashbits
    with flashbits.patch_sdpa(fix="paper"):
        loss = model(x, labels=x).loss
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import flashbits

CORPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "mechanism.md")


def batches(steps, batch, length, seed=0):
    data = torch.frombuffer(bytearray(open(CORPUS, "rb").read()), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - length, (batch,), generator=g)
        yield torch.stack([data[s:s + length] for s in starts.tolist()])


def model_from_config(device):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=256, n_positions=256, n_embd=256, n_layer=4, n_head=4,  # head dim 64
                     attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,  # flashbits has no attention dropout
                     bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).to(device=device, dtype=torch.bfloat16)


def train(arm, steps, device, batch=8, length=128):
    model = model_from_config(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, patch = [], None
    for x in batches(steps, batch, length):
        x = x.to(device)
        if arm == "torch":
            loss = model(x, labels=x).loss
        else:
            with flashbits.patch_sdpa(fix="paper") as patch:
                loss = model(x, labels=x).loss
        loss.backward()       # the backward runs outside the block: autograd kept flashbits' op
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return {"losses": losses, "calls_to_flashbits": patch.routed if patch else 0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", help="write the losses here")
    args = ap.parse_args(argv)
    result = {arm: train(arm, args.steps, args.device) for arm in ("torch", "flashbits")}
    for arm, r in result.items():
        first, last = r["losses"][:5], r["losses"][-5:]
        print(f"{arm:>9}: loss {sum(first) / len(first):.3f} (first 5 steps) → {sum(last) / len(last):.3f} "
              f"(last 5); attention calls through flashbits in the last step: {r['calls_to_flashbits']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "steps": args.steps, **result}, f, indent=1)


if __name__ == "__main__":
    main()
