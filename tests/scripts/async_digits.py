"""Test job for `ftrain launch --mode async`: an MLP on sklearn's digits with a held-out split.

The loop is the plain ftrain loop; in async mode each worker trains on its own shard and the
session pushes/pulls every H local steps. After the loop every worker holds the final global
model. Every worker writes OUT.rank{R}.json (the sample ids it trained on, its step count);
rank 0 also writes OUT (held-out accuracy of the final model, the aggregator's status with
every update's staleness record). `--step-sleep` stands in for real compute per step (the
`slow-rank` fault multiplies compute time, so it makes slowness visible at this tiny size).
"""
import argparse
import json
import os
import time

import torch
from torch import nn

import ftrain
from ftrain.aggregate.server import aggregator_status


def load_split(path: str | None) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): sklearn digits / 16, 70/30 stratified, random_state 0."""
    if path:
        data = torch.load(path)
        return data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(digits.data, digits.target, test_size=0.3,
                                                        stratify=digits.target, random_state=0)
    return (torch.tensor(x_train, dtype=torch.float32) / 16.0, torch.tensor(y_train),
            torch.tensor(x_test, dtype=torch.float32) / 16.0, torch.tensor(y_test))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--data", default=None, help="digits split saved by the test (else sklearn, 70/30 stratified)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = load_split(args.data)
    dataset = torch.utils.data.TensorDataset(x_train, y_train, torch.arange(len(y_train)))
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)  # local SGD; DiLoCo's outer Nesterov does the rest

    session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, seed=0)
    seen: set[int] = set()
    first_step = None
    for step, (features, labels, ids) in session.steps(args.steps):
        first_step = step if first_step is None else first_step
        loss = nn.functional.cross_entropy(session.model(features), labels)
        loss.backward()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        session.optimizer.step()
        session.optimizer.zero_grad()
        seen.update(ids.tolist())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        train_accuracy = (model(x_train).argmax(1) == y_train).float().mean().item()
        digest = float(sum(p.double().sum() for p in model.parameters()))
    with open(f"{args.out}.rank{session.rank}.json", "w") as f:
        json.dump({"rank": session.rank, "generation": session.generation, "first_step": first_step,
                   "step": session.step, "seen": sorted(seen), "accuracy": accuracy, "digest": digest,
                   "world_size": session.world_size, "pid": os.getpid()}, f)
    if session.rank == 0:
        try:  # under `ftrain launch` the coordinator outlives the trainers; a standalone one may be gone
            status = aggregator_status(os.environ["FTRAIN_COORDINATOR"], os.environ["FTRAIN_TOKEN"],
                                       include_records=True)
        except Exception as error:
            print(f"no aggregator status: {error}", flush=True)
            status = {"version": None, "updates_applied": None, "mean_staleness": None}
        with open(args.out, "w") as f:
            json.dump({"accuracy": accuracy, "train_accuracy": train_accuracy, "digest": digest,
                       "train_samples": len(y_train), "test_samples": len(y_test), "aggregator": status}, f)
        print(f"final test accuracy {accuracy:.3f} (train {train_accuracy:.3f}); aggregator version "
              f"{status['version']}, {status['updates_applied']} updates applied, mean staleness "
              f"{status['mean_staleness']}", flush=True)
    session.finish()


if __name__ == "__main__":
    main()
