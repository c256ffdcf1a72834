"""Test job: a tiny MLP (with dropout, so RNG matters) on synthetic data, with exact sample accounting.

Rank 0 writes final parameters and the per-epoch ledger of sample ids to --out. Every rank also
checks that the batch it was handed is exactly its part of the global batch.
"""
import argparse
import collections
import os
import signal
import time

import torch
from torch import nn

import ftrain


class Ledger:
    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.world_sizes: list[int] = []  # world size of every applied step

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "world_sizes": list(self.world_sizes)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = collections.Counter(state["counts"])
        self.world_sizes = list(state["world_sizes"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hidden", type=int, default=32, help="hidden width (a larger state)")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (slows the job)")
    parser.add_argument("--die-mid-step", default="", metavar="RANK@STEP",
                        help="that rank SIGKILLs itself in the middle of that step of generation 0, after its "
                             "previous snapshot committed, while its peers are in the step's gradient all-reduce")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(args.samples, 12)
    y = (x[:, :3].sum(1) > 0).long()
    dataset = torch.utils.data.TensorDataset(x, y, torch.arange(args.samples))
    model = nn.Sequential(nn.Linear(12, args.hidden), nn.Tanh(), nn.Dropout(0.2), nn.Linear(args.hidden, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    ledger = Ledger()
    session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, seed=7)
    session.register("ledger", ledger)
    for step, (features, labels, ids) in session.steps(args.steps):
        parts = session.global_batch_indices()
        assert ids.tolist() == parts[session.rank], (ids.tolist(), parts[session.rank])
        loss = nn.functional.cross_entropy(session.model(features), labels)
        if args.die_mid_step and session.generation == 0 and \
                args.die_mid_step == f"{session.rank}@{step}":
            time.sleep(1.5)  # the previous step's snapshot commits meanwhile
            os.kill(os.getpid(), signal.SIGKILL)
        loss.backward()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        session.optimizer.step()
        session.optimizer.zero_grad()
        epoch = session.sampler.epoch
        ledger.world_sizes.append(session.world_size)
        for part in parts:
            ledger.counts.update(f"{epoch}:{i}" for i in part)
    if session.rank == 0:
        torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()}, "ledger": dict(ledger.counts), "world_sizes": ledger.world_sizes,
                    "batch_size": args.batch_size,
                    "world_size": session.world_size, "generation": session.generation, "step": session.step,
                    "resumed_from": session.resumed_from, "stats": dict(session.stats),
                    "samples": args.samples}, args.out)
    session.finish()


if __name__ == "__main__":
    main()
