"""Test job: a deterministic bug in the user's loop. Every rank raises ValueError('bad batch') at
step --raise-at (or only rank --rank when given); ftrain must report it as a bug, not recover."""
import argparse

import torch
from torch import nn

import ftrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--raise-at", type=int, default=3)
    parser.add_argument("--rank", type=int, default=-1, help="only this rank raises (default: every rank)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = ftrain.init(model, optimizer)
    for step, _ in session.steps(args.steps):
        if step == args.raise_at and args.rank in (-1, session.rank):
            raise ValueError("bad batch")
        loss = session.model(torch.ones(4, 8)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    session.finish()


if __name__ == "__main__":
    main()
