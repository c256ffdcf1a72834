"""A small job that keeps training at ~20 ms a step (for tests that look at a running job)."""
import argparse
import time

import torch
from torch import nn

import ftrain

parser = argparse.ArgumentParser()
parser.add_argument("--samples", type=int, default=128)
parser.add_argument("--steps", type=int, default=2000)
args = parser.parse_args()
torch.manual_seed(0)
torch.set_num_threads(1)
x = torch.randn(args.samples, 8)
y = (x.sum(1) > 0).long()
model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
session = ftrain.init(model, optimizer, dataset=torch.utils.data.TensorDataset(x, y), batch_size=16, seed=1)
for step, (features, labels) in session.steps(args.steps):
    time.sleep(0.02)
    nn.functional.cross_entropy(session.model(features), labels).backward()
    session.optimizer.step()
    session.optimizer.zero_grad()
session.finish()
