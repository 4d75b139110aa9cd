"""PyTorch anchor for `cargo bench -p common --bench transformer` (issue #16): one training step of
the `transformer_1l` preset (common::model::transformer_preset: token embedding 114 x 128, a learned
position per token, a pre-LayerNorm residual block of causal nn.MultiheadAttention with 4 heads, one
of LayerNorm, Linear 128 -> 512, GELU, Linear 512 -> 128, a final LayerNorm, the last position, a
Linear head of 113 classes) on a batch of modular-addition sequences [a, b, =], float32, 1 CPU thread:
forward, cross-entropy, backward and a torch.optim.AdamW step, as the Rust bench times ours.
Usage: python3 torch_transformer_step.py [REPS] [BATCH]; prints `step_seconds S` (the median of REPS
steps after three warm-up steps)."""
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(1)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 15
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 512
p, width, heads, mlp, seq = 113, 128, 4, 512, 3


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(p + 1, width)
        self.pos = nn.Parameter(torch.randn(seq, width) * 0.02)
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, p)
        self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1))

    def forward(self, x):
        h = self.embed(x) + self.pos
        a = self.ln1(h)
        h = h + self.attn(a, a, a, attn_mask=self.mask, need_weights=False)[0]
        h = h + self.mlp(self.ln2(h))
        return self.head(self.ln_f(h)[:, -1])


# The Rust bench's pairs: (a, b) = (37 n mod 113, (91 n + 5) mod 113), label (a + b) mod 113.
n = torch.arange(batch)
a, b = (n * 37) % p, (n * 91 + 5) % p
x = torch.stack([a, b, torch.full_like(a, p)], 1)
y = (a + b) % p
model = Model()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)


def step():
    opt.zero_grad(set_to_none=False)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


for _ in range(3):
    step()
times = []
for _ in range(reps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
print(f"step_seconds {statistics.median(times)}")
