"""Loads checkpoints written by `train` into the PyTorch modules documented in the README, with
load_state_dict(strict=True), and compares PyTorch's test loss on the committed MNIST subset with the
test_loss in the record. Usage: python3 check_torch_load.py RECORDS.jsonl [...] (one record per file
is checked: the first). Needs torch, numpy and safetensors; `make crosscheck-torch` runs it."""
import gzip
import json
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


class LeNet(nn.Module):  # the paper's architectures.LeNet(dataset='mnist', extra_layers=k)
    def __init__(self, extra_layers=2):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU())
        self.extra = nn.ModuleList(nn.Sequential(nn.Conv2d(6, 6, 5, padding=2), nn.ReLU())
                                   for _ in range(extra_layers))
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU())
        self.fc_1, self.fc_2, self.fc_3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.conv1(x)
        for layer in self.extra:
            x = layer(x)
        x = F.max_pool2d(self.conv2(F.max_pool2d(x, 2)), 2).flatten(1)
        return self.fc_3(F.relu(self.fc_2(F.relu(self.fc_1(x)))))


def mlp(hidden, activation):
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}[activation]
    layers, fan_in = [nn.Flatten()], 784
    for w in hidden:
        layers += [nn.Linear(fan_in, w), act()]
        fan_in = w
    return nn.Sequential(*layers, nn.Linear(fan_in, 10))


def idx(path, header):
    return np.frombuffer(gzip.open(path).read()[header:], dtype=np.uint8)


d = "tests/fixtures/mnist-small/"
X = ((torch.from_numpy(idx(d + "t10k-images-idx3-ubyte.gz", 16).copy()).float() / 255.0) - 0.1307) / 0.3081
X = X.reshape(-1, 1, 28, 28)
Y = torch.from_numpy(idx(d + "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64))
worst = 0.0
for log in sys.argv[1:]:
    r = json.loads(open(log).readline())
    m = r["model"]
    model = LeNet(m["extra_layers"]) if m["kind"] == "lenet" else mlp(m["hidden"], m["activation"])
    model.load_state_dict(load_file(r["checkpoint"]), strict=True)
    with torch.no_grad():
        loss = F.cross_entropy(model(X), Y).item()
    rel = abs(loss - r["test_loss"]) / loss
    worst = max(worst, rel)
    print(f"{m['name']}: load_state_dict(strict=True) ok; test loss torch {loss:.8f} ours {r['test_loss']:.8f} (rel {rel:.1e})")
# Both sides compute in float32 over 200 samples: sums in a different order differ by ~1e-7.
sys.exit(0 if worst < 1e-5 else 1)
