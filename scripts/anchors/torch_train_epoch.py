"""PyTorch anchor for `make bench`: one epoch of SGD (lr 0.01, momentum 0.9, Nesterov, batch 128) on
1 CPU thread, of the MNIST MLP 784-128-10 or the paper's LeNet (two extra convolutions, as
common::model::Architecture::lenet(2)). Batches are gathered from a pre-normalised tensor with a
random permutation (no DataLoader overhead), as the Rust benchmark does.
Usage: python3 torch_train_epoch.py DATA_DIR [REPS] [mlp|lenet] [SAMPLES]; prints
`epoch_seconds S` (median of REPS epochs after one warm-up epoch)."""
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
data_dir = sys.argv[1]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
model_name = sys.argv[3] if len(sys.argv) > 3 else "mlp"
samples = int(sys.argv[4]) if len(sys.argv) > 4 else None


class LeNet(nn.Module):
    """The paper's LeNet (architectures.LeNet, mnist, extra_layers=2)."""

    def __init__(self, extra_layers=2):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU())
        self.extra = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(6, 6, 5, padding=2), nn.ReLU()) for _ in range(extra_layers)]
        )
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU())
        self.fc_1 = nn.Linear(256, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.fc_3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.conv1(x)
        for layer in self.extra:
            x = layer(x)
        x = F.max_pool2d(x, 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc_1(x))
        x = F.relu(self.fc_2(x))
        return self.fc_3(x)


def idx(path, header):
    with open(path, "rb") as f:
        return np.frombuffer(f.read()[header:], dtype=np.uint8)


x = idx(f"{data_dir}/mnist/train-images-idx3-ubyte", 16).reshape(-1, 784)
y = idx(f"{data_dir}/mnist/train-labels-idx1-ubyte", 8)
if samples is not None:
    x, y = x[:samples], y[:samples]
X = ((torch.from_numpy(x.copy()).float() / 255.0) - 0.1307) / 0.3081
if model_name == "lenet":
    X = X.reshape(-1, 1, 28, 28).contiguous()
Y = torch.from_numpy(y.astype(np.int64))
loss_fn = nn.CrossEntropyLoss()


def make():
    if model_name == "lenet":
        return LeNet(2)
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def epoch(seed):
    torch.manual_seed(seed)
    model = make()
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
