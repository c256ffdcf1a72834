"""Job for benchmarks/step_overhead.py: steady-state step time of one MLP + Adam training loop.

The same model, data and loop run under three runtimes, chosen by how the script is started:
- torchrun + DistributedDataParallel (gloo): `RANK` is set and no ftrain/TorchFT variable is;
- ftrain (`ftrain launch -- step_overhead_job.py ...`): `FTRAIN_COORDINATOR` is set;
- TorchFT (`--torchft --replica R --lighthouse URL`): one replica group of one process each,
  torchft.Manager + torchft.DistributedDataParallel + torchft.Optimizer over ProcessGroupGloo.

`--state-mib` sizes the model so that parameters + Adam's two moments take that many MiB.
Rank 0 prints `step_s S` (mean wall time per step after the warm-up steps).
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn

from jobs import KEPT_GROUPS, free_port


def build_model(state_mib: float) -> tuple[nn.Module, int]:
    width = 512 if state_mib <= 64 else 2048
    per_layer = width * width + width
    params = int(state_mib * 2**20 / 4 / 3)  # fp32 parameters + Adam exp_avg + exp_avg_sq
    depth = max(2, round(params / per_layer))
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, width))
    return nn.Sequential(*layers), width


def batch(step: int, rank: int, size: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step * 1000 + rank)
    return torch.randn(size, width, generator=generator), torch.randn(size, width, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-mib", type=float, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--snapshot-every", type=int, default=1, help="ftrain: 0 = no snapshots after step 0")
    parser.add_argument("--torchft", action="store_true")
    parser.add_argument("--replica", type=int, default=0)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--lighthouse", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, width = build_model(args.state_mib)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    session = None
    if args.torchft:
        import torchft

        store_port = free_port()
        store = dist.TCPStore("127.0.0.1", store_port, is_master=True, wait_for_workers=False)
        manager = torchft.Manager(pg=torchft.ProcessGroupGloo(), min_replica_size=args.replicas,
                                  load_state_dict=model.load_state_dict, state_dict=model.state_dict,
                                  rank=0, world_size=1, store_addr="127.0.0.1", store_port=store_port,
                                  lighthouse_addr=args.lighthouse, replica_id=f"bench{args.replica}",
                                  hostname="127.0.0.1")
        net: nn.Module = torchft.DistributedDataParallel(manager, model)
        step_optimizer: torch.optim.Optimizer = torchft.Optimizer(manager, optimizer)
        rank = args.replica

        def torchft_steps():  # TorchFT's own step count: a step whose commit fails is done again
            while manager.current_step() < args.steps:
                yield manager.current_step()

        steps = torchft_steps()
        del store  # the manager holds its own client; the server lives while the process does
    elif "FTRAIN_COORDINATOR" in os.environ:
        import ftrain

        every = args.snapshot_every if args.snapshot_every > 0 else 10**9
        session = ftrain.init(model, optimizer, snapshot_every=every)
        net, step_optimizer, rank = session.model, optimizer, session.rank
        steps = iter(session.steps(args.steps))
    else:
        dist.init_process_group("gloo")
        KEPT_GROUPS.append(dist.group.WORLD)
        net, step_optimizer, rank = nn.parallel.DistributedDataParallel(model), optimizer, dist.get_rank()
        steps = iter(range(args.steps))
    started = 0.0
    phases = [0.0, 0.0, 0.0, 0.0]  # between steps, forward, backward, optimizer step
    mark = time.perf_counter()
    for item in steps:
        step = item[0] if isinstance(item, tuple) else item
        if step == args.warmup and not started:
            started = mark = time.perf_counter()
            phases = [0.0, 0.0, 0.0, 0.0]
        t0 = time.perf_counter()
        step_optimizer.zero_grad()
        x, y = batch(step, rank, args.batch_size, width)
        loss = nn.functional.mse_loss(net(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        step_optimizer.step()
        t3 = time.perf_counter()
        for i, d in enumerate((t0 - mark, t1 - t0, t2 - t1, t3 - t2)):
            phases[i] += d
        mark = t3
    elapsed = mark - started  # to the end of the last step's body: the job's end (final snapshot) is not a step
    n = args.steps - args.warmup
    if rank == 0:
        print(f"phases_s between {phases[0] / n:.4f} forward {phases[1] / n:.4f} backward {phases[2] / n:.4f} "
              f"optimizer {phases[3] / n:.4f}", flush=True)
        print(f"step_s {elapsed / n:.4f}", flush=True)
    if session is not None:
        session.finish()
    elif not args.torchft:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    KEPT_GROUPS.clear()
