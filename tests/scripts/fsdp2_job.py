"""Test job: a torchrun-style FSDP2 script plus ftrain's three lines (`ftrain launch --recovery restart`).

It calls dist.init_process_group("gloo") itself (from the RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
the agent sets), shards each Linear and the whole model with fully_shard, and trains with AdamW;
ftrain snapshots each rank's own shards. Or, with --ddp, it wraps its own DistributedDataParallel.
Under plain `torchrun` (no ftrain agent) it feeds each rank the batch ftrain's sampler would give
it, as the reference. Rank 0 writes the full parameters and optimizer state (gathered with get_model_state_dict and
get_optimizer_state_dict, full_state_dict=True), the sample ledger and the world sizes to --out.
With --load-dcp (reference only) it resumes a DCP checkpoint with torch's own recipe.
"""
import argparse
import collections
import os
import time

import torch
import torch.distributed as dist
from torch import nn

import ftrain


class Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 16, generator=g)
        self.y = self.x[:, :4].sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class Ledger:
    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = collections.Counter(state["counts"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ddp", action="store_true", help="the script's own DDP instead of FSDP2")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (slows the job)")
    parser.add_argument("--load-dcp", default="", help="reference only: resume from this DCP checkpoint (torch's "
                        "own recipe), taken after --from-step steps on --from-world ranks")
    parser.add_argument("--from-step", type=int, default=0)
    parser.add_argument("--from-world", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # env://, exactly as under torchrun
    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Dropout(args.dropout), nn.Linear(64, 64), nn.Tanh(),
                                     nn.Linear(64, 1))
    if args.ddp:
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ledger = Ledger()
    dataset = Items(args.samples)
    if "FTRAIN_COORDINATOR" in os.environ:
        session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, seed=5)
        session.register("ledger", ledger)
        loop = ((step, batch, session.global_batch_indices(), session.sampler.epoch)
                for step, batch in session.steps(args.steps))
    else:  # the reference: plain torchrun, fed the batches ftrain's sampler gives each rank
        from ftrain.train.data import ElasticSampler

        session, sampler = None, ElasticSampler(len(dataset), args.batch_size, seed=5)
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(5 + rank)  # as ftrain seeds each rank (dropout)

        if args.load_dcp:  # a torchrun user resuming a DCP checkpoint on another number of ranks
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=args.load_dcp)
            set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
            for _ in range(args.from_step):
                sampler.advance(args.from_world)

        def batches():
            for step in range(args.from_step, args.steps):
                parts = sampler.global_indices(world)
                yield step, torch.utils.data.default_collate([dataset[i] for i in parts[rank]]), parts, sampler.epoch
                sampler.advance(world)

        loop = batches()
    for step, (x, y, ids), parts, epoch in loop:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        optimizer.step()
        optimizer.zero_grad()
        for part in parts:
            ledger.counts.update(f"{epoch}:{i}" for i in part)
    full_optim: dict = {}
    if args.ddp:
        full = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    else:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(model, options=options)
        full_optim = get_optimizer_state_dict(model, optimizer, options=options)
    if dist.get_rank() == 0:
        torch.save({"params": {k: v.clone() for k, v in full.items()}, "optim": full_optim, "ledger": dict(ledger.counts),
                    "world_size": dist.get_world_size(), "generation": session.generation if session else 0,
                    "resumed_from": session.resumed_from if session else None,
                    "full_copy_restores": session.stats.get("full_copy_restores", 0) if session else 0,
                    "shm_restores": session.stats.get("shm_restores", 0) if session else 0}, args.out)
    if session is not None:
        session.finish()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
