"""flashbits in a torch model: a nanoGPT-style causal self-attention block trained for a
few steps on the CPU with its attention rerouted to flashbits (the emulator here; the
Triton kernels on a GPU), beside the same block with torch's SDPA (docs/torch.md).

    PYTHONPATH=. python examples/06_torch_drop_in.py
"""

import torch
import torch.nn.functional as F

import flashbits


class CausalSelfAttention(torch.nn.Module):
    """nanoGPT's block, unmodified: it calls F.scaled_dot_product_attention."""

    def __init__(self, d=128, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


def train(use_flashbits, steps=5):
    torch.manual_seed(0)
    model = CausalSelfAttention().to(torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(4, 64, 128).to(torch.bfloat16)
    target = x.roll(1, dims=1)           # predict the previous token's vector
    losses = []
    for _ in range(steps):
        with flashbits.patch_sdpa(fix="paper", rounding="sr", seed=None) if use_flashbits else torch.enable_grad():
            loss = F.mse_loss(model(x).float(), target.float())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    print("torch SDPA     :", " ".join(f"{v:.4f}" for v in train(False)))
    print("flashbits (fa2, paper fix, sr):", " ".join(f"{v:.4f}" for v in train(True)))
