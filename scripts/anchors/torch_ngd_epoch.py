"""PyTorch anchor for `make bench` (common/benches/optimizers.rs): one epoch of the MNIST MLP
784-128-10, batch 128, with the paper's online natural gradient followed by SGD (lr 0.01, momentum
0.9, Nesterov), and the same epoch with plain SGD, on 1 CPU thread.

The preconditioner is written here from the algorithm as issue 3 paraphrases it (Kaldi's
OnlineNaturalGradient as ported in the paper's ngd.py): per tensor, per axis of size D > 1, a rank-r
factor W, d, rho refreshed on calls t < 10 and every 4th, then norm rescaling. Batches are gathered
from a pre-normalised tensor (no DataLoader), as the Rust benchmark does.
Usage: python3 torch_ngd_epoch.py DATA_DIR [REPS]; prints `ngd_epoch_seconds S` and
`sgd_epoch_seconds S` (medians)."""
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn

torch.set_num_threads(1)
data_dir = sys.argv[1]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3


class AxisNG:
    def __init__(self, dim, alpha=0.01, eta=0.9, eps=1e-10, delta=5e-4, period=4):
        self.D, self.r = dim, min((dim + 1) // 2, 80)
        self.alpha, self.eta, self.eps, self.delta, self.period = alpha, eta, eps, delta, period
        self.t = 0

    def start(self):
        D, r = self.D, self.r
        self.rho, self.d = self.eps, torch.full((r,), self.eps)
        e0 = 1.0 / (2.0 + (D + r) * self.alpha / D)
        cols, rem = D // r, D % r
        W = torch.zeros(r, D)
        for i in range(r):
            k = 1.0 / math.sqrt(1.21 + (cols if i < rem else cols - 1))
            W[i, i::r] = k
            W[i, i] = 1.1 * k
        self.W = math.sqrt(e0) * W

    def core(self, X, trXX):
        upd = self.t < 10 or self.t % self.period == 0
        self.t += 1
        W, d, rho, eta, alpha = self.W, self.d, self.rho, self.eta, self.alpha
        N, D, r = X.shape[0], self.D, self.r
        H = X @ W.T
        Xh = X - H @ W
        if not upd:
            return Xh
        J = H.T @ X
        L = J @ W.T if N > D else H.T @ H
        K = J @ J.T
        dsum = d.sum().item()
        beta = rho * (1 + alpha) + alpha * dsum / D
        ise = 1.0 / torch.sqrt(1.0 / (beta / d + 1.0))
        z = max(1.0, K.trace().item())
        dr = d + rho
        en = eta / N
        o = (en * (1 - eta) / z) * torch.outer(ise, ise * dr)
        Z = K * ((en * en / z) * torch.outer(ise, ise)) + L * (o + o.T) + torch.diag(((1 - eta) ** 2 / z) * dr * dr)
        c, U = torch.linalg.eigh(Z)
        c, U = c.flip(0), U.flip(1)
        c = torch.clamp(c, min=(rho * (1 - eta)) ** 2 / z)
        s = c.sqrt() * math.sqrt(z)
        rho1 = (en * trXX + (1 - eta) * (D * rho + dsum) - s.sum().item()) / (D - r)
        f = max(self.eps, self.delta * s.max().item())
        d1 = torch.clamp(s - rho1, min=f)
        rho1 = max(rho1, f)
        beta1 = rho1 * (1 + alpha) + alpha * d1.sum().item() / D
        e1 = 1.0 / (beta1 / d1 + 1.0)
        B = J + ((1 - eta) / en) * dr.unsqueeze(1) * W
        A = (en * e1.sqrt() / s).unsqueeze(1) * U.T * ise.unsqueeze(0)
        self.W, self.d, self.rho = A @ B, d1, rho1
        return Xh

    def __call__(self, X):
        if self.t == 0:
            self.start()
            self.t = 1
            for _ in range(3):
                self.core(X, (X * X).sum().item())
            self.t = 0
        tr = (X * X).sum()
        Y = self.core(X, tr.item())
        fin = (Y * Y).sum()
        if math.isnan(fin.item()):
            return X
        return Y * torch.sqrt(tr / (fin + 1e-30))


def precondition(g, axes):
    for a, ng in axes:
        Xt = g.transpose(-1, a).contiguous()
        Y = ng(Xt.view(-1, Xt.shape[-1])).view(Xt.shape)
        g = Y.transpose(-1, a)
    return g


def idx(path, header):
    with open(path, "rb") as f:
        return np.frombuffer(f.read()[header:], dtype=np.uint8)


x = idx(f"{data_dir}/mnist/train-images-idx3-ubyte", 16).reshape(-1, 784)
y = idx(f"{data_dir}/mnist/train-labels-idx1-ubyte", 8)
X = ((torch.from_numpy(x.copy()).float() / 255.0) - 0.1307) / 0.3081
Y = torch.from_numpy(y.astype(np.int64))
loss_fn = nn.CrossEntropyLoss()


def epoch(seed, ngd):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    params = list(model.parameters())
    axes = [[(a, AxisNG(n)) for a, n in enumerate(p.shape) if n > 1] for p in params]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)
    perm = torch.randperm(X.shape[0])
    t = time.perf_counter()
    for i in range(0, X.shape[0], 128):
        b = perm[i:i + 128]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(X[b]), Y[b]).backward()
        if ngd:
            with torch.no_grad():
                for p, ax in zip(params, axes):
                    p.grad = precondition(p.grad, ax).contiguous()
        opt.step()
    return time.perf_counter() - t


epoch(0, True)
print(f"ngd_epoch_seconds {statistics.median(epoch(s + 1, True) for s in range(reps)):.4f}")
print(f"sgd_epoch_seconds {statistics.median(epoch(s + 1, False) for s in range(reps)):.4f}")
