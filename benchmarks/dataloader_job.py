"""Job for benchmarks/dataloader.py: samples/s of a DataLoader-fed loop whose items cost ~1 ms.

Runs under torchrun (+ DDP + DistributedSampler + DataLoader) or under ftrain (ftrain.init with
num_workers); rank 0 prints `samples/s N` over the steps after the warm-up.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn

from jobs import KEPT_GROUPS

ITEMS, BATCH = 4096, 16  # the dataset's length and the default batch per rank (dataloader.py reads both)


class CostlyItems(torch.utils.data.Dataset):
    def __init__(self, n: int, kind: str, cost_s: float) -> None:
        self.n, self.kind, self.cost_s = n, kind, cost_s
        self.x = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.kind == "sleep":
            time.sleep(self.cost_s)  # I/O-like
        else:
            end = time.perf_counter() + self.cost_s  # CPU-bound decode
            while time.perf_counter() < end:
                pass
        return self.x[i], self.x[i, :1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["sleep", "cpu"], default="sleep")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = CostlyItems(ITEMS, args.kind, 1e-3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    if "RANK" in os.environ and "FTRAIN_COORDINATOR" not in os.environ:
        dist.init_process_group("gloo")
        KEPT_GROUPS.append(dist.group.WORLD)
        net = nn.parallel.DistributedDataParallel(model)
        sampler = torch.utils.data.DistributedSampler(dataset, seed=0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                             num_workers=args.workers)
        batches = enumerate(loader)
        rank, world, session = dist.get_rank(), dist.get_world_size(), None
    else:
        import ftrain

        session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, num_workers=args.workers)
        net, batches, rank, world = session.model, session.steps(args.steps), session.rank, session.world_size
    started = None
    for step, (x, y) in batches:
        if step == args.warmup:
            started = time.perf_counter()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step + 1 >= args.steps:
            break
    elapsed = time.perf_counter() - started
    if rank == 0:
        print(f"samples/s {(args.steps - args.warmup) * args.batch_size * world / elapsed:.1f}", flush=True)
    if session is not None:
        session.finish()
    else:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    KEPT_GROUPS.clear()
