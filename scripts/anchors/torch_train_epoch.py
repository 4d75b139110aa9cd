"""PyTorch anchor for `make bench`: one epoch of the MNIST MLP 784-128-10, batch 128, SGD lr 0.01,
momentum 0.9, Nesterov, on 1 CPU thread. Batches are gathered from a pre-normalised tensor with a
random permutation (no DataLoader overhead), as the Rust benchmark does.
Usage: python3 torch_train_epoch.py DATA_DIR [REPS]; prints `epoch_seconds S` (median)."""
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn

torch.set_num_threads(1)
data_dir = sys.argv[1]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def idx(path, header):
    with open(path, "rb") as f:
        return np.frombuffer(f.read()[header:], dtype=np.uint8)


x = idx(f"{data_dir}/mnist/train-images-idx3-ubyte", 16).reshape(-1, 784)
y = idx(f"{data_dir}/mnist/train-labels-idx1-ubyte", 8)
X = ((torch.from_numpy(x.copy()).float() / 255.0) - 0.1307) / 0.3081
Y = torch.from_numpy(y.astype(np.int64))
loss_fn = nn.CrossEntropyLoss()


def epoch(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    perm = torch.randperm(X.shape[0])
    t = time.perf_counter()
    for i in range(0, X.shape[0], 128):
        b = perm[i:i + 128]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X[b]), Y[b])
        loss.backward()
        opt.step()
    return time.perf_counter() - t


epoch(0)
print(f"epoch_seconds {statistics.median(epoch(s + 1) for s in range(reps)):.4f}")
